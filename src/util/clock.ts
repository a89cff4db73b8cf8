// Time is injected so locks, retention and schedules can be tested with a fake clock.
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
