import { describe, expect, it } from 'vitest';
import { RateLimiter, type Sleeper } from './rate-limit.js';

function fakeTime(): Sleeper & { t: number; slept: number[] } {
  const f = {
    t: 0,
    slept: [] as number[],
    now: () => f.t,
    sleep: async (ms: number) => {
      f.slept.push(ms);
      f.t += ms;
    },
  };
  return f;
}

describe('RateLimiter', () => {
  it('lets the first take through and spaces the next ones by the rate', async () => {
    const time = fakeTime();
    const lim = new RateLimiter(1024 * 1024, time); // 1 MiB/s
    for (let i = 0; i < 4; i++) await lim.take(256 * 1024);
    expect(time.slept).toEqual([250, 250, 250]);
    expect(time.t).toBe(750);
  });
  it('does not save up idle time for a burst', async () => {
    const time = fakeTime();
    const lim = new RateLimiter(1000, time);
    await lim.take(1000);
    time.t += 10_000;
    await lim.take(1000);
    await lim.take(1000);
    expect(time.slept).toEqual([1000]);
  });
  it('refuses a rate that is not positive', () => {
    expect(() => new RateLimiter(0)).toThrow(RangeError);
  });
});
