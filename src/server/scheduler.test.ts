import { describe, expect, it } from 'vitest';
import { BulwarkError } from '../util/errors.js';
import { parseSchedule, Scheduler, type JobDefinition, type SchedulerClock, type SchedulerEvent, type SchedulerOptions, type Timer } from './scheduler.js';

// Wall time and elapsed time are separate here, as on a real host: advance() moves both and fires
// timers; jump() moves only the wall clock (NTP step, resume from suspend), timers keep counting.
class FakeClock implements SchedulerClock {
  wall: number;
  private mono = 0;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; callback: () => void }>();
  readonly delays: number[] = [];

  constructor(start: string) {
    this.wall = Date.parse(start);
  }
  now(): Date {
    return new Date(this.wall);
  }
  setTimer(delayMs: number, callback: () => void): Timer {
    const id = ++this.seq;
    this.delays.push(delayMs);
    this.timers.set(id, { at: this.mono + delayMs, callback });
    return { cancel: () => this.timers.delete(id) };
  }
  get pendingTimers(): number {
    return this.timers.size;
  }
  jump(ms: number): void {
    this.wall += ms;
  }
  async advance(ms: number): Promise<void> {
    const end = this.mono + ms;
    await flush();
    while (true) {
      let nextId = -1;
      let nextAt = Infinity;
      for (const [id, t] of this.timers) if (t.at <= end && t.at < nextAt) [nextId, nextAt] = [id, t.at];
      if (nextId < 0) break;
      const t = this.timers.get(nextId)!;
      this.timers.delete(nextId);
      this.wall += t.at - this.mono;
      this.mono = t.at;
      t.callback();
      await flush();
    }
    this.wall += end - this.mono;
    this.mono = end;
    await flush();
  }
  async advanceTo(iso: string): Promise<void> {
    await this.advance(Date.parse(iso) - this.wall);
  }
}

/** Lets promise callbacks and async job bodies run to their next real wait. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function setup(jobs: JobDefinition[], start: string, options: Omit<SchedulerOptions, 'clock' | 'onEvent'> = {}) {
  const clock = new FakeClock(start);
  const events: SchedulerEvent[] = [];
  const scheduler = new Scheduler(jobs, { clock, onEvent: (e) => events.push(e), ...options });
  const started = (id?: string) => events.filter((e) => e.type === 'started' && (id === undefined || e.jobId === id)).map((e) => (e.type === 'started' ? e.startedAt.toISOString() : ''));
  return { clock, events, scheduler, started };
}

const noop = async () => {};
const BERLIN = 'Europe/Berlin';

describe('parseSchedule', () => {
  it('accepts 5 fields, 6 with seconds, and defaults to the host zone', () => {
    expect(parseSchedule('30 2 * * *', BERLIN).next(new Date('2026-01-01T00:00:00Z'))).toEqual(new Date('2026-01-01T01:30:00Z'));
    expect(parseSchedule('15 30 2 * * *', 'UTC').next(new Date('2026-01-01T00:00:00Z'))).toEqual(new Date('2026-01-01T02:30:15Z'));
    expect(parseSchedule('0 * * * *').timeZone).toBe(Intl.DateTimeFormat().resolvedOptions().timeZone);
  });

  const rejects = (fn: () => unknown, ...parts: RegExp[]) => {
    let caught: unknown;
    try {
      fn();
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(BulwarkError);
    const err = caught as BulwarkError;
    expect(err.code).toBe('usage');
    expect(err.hint).toBeTruthy();
    for (const p of parts) expect(err.message).toMatch(p);
  };

  it('names the bad field, the field count, the zone, and a never-matching date', () => {
    rejects(() => parseSchedule('0 25 * * *', 'UTC'), /hour field '25'/);
    rejects(() => parseSchedule('0 0 * 13 *', 'UTC'), /month field '13'/);
    rejects(() => parseSchedule('x 0 0 * * *', 'UTC'), /second field 'x'/);
    rejects(() => parseSchedule('0 0 * *', 'UTC'), /has 4 fields/);
    rejects(() => parseSchedule('0 0 * * * * *', 'UTC'), /has 7 fields/);
    rejects(() => parseSchedule('0 2 * * *', 'Mars/Olympus'), /time zone 'Mars\/Olympus'/);
    rejects(() => parseSchedule('0 0 30 2 *', 'UTC'), /never matches/);
  });

  it('rejects a bad job through the scheduler with the job named, and a duplicate id', () => {
    const s = new Scheduler([], { clock: new FakeClock('2026-01-01T00:00:00Z') });
    expect(() => s.add({ id: 'vm1', cron: '61 * * * *', run: noop })).toThrow(/job 'vm1'.*minute field '61'/);
    s.add({ id: 'vm1', cron: '0 * * * *', run: noop });
    expect(() => s.add({ id: 'vm1', cron: '0 * * * *', run: noop })).toThrow(/already scheduled/);
  });
});

describe('Scheduler with a fake clock', () => {
  it('runs a daily job at its local time each day and reports the next runs', async () => {
    const { clock, scheduler, started } = setup([{ id: 'daily', cron: '30 2 * * *', timeZone: BERLIN, run: noop }], '2026-01-10T12:00:00Z');
    scheduler.start();
    expect(scheduler.status()[0]).toMatchObject({ id: 'daily', nextRunAt: new Date('2026-01-11T01:30:00Z'), state: 'idle' });
    expect(scheduler.upcoming('daily', 2)).toEqual([new Date('2026-01-11T01:30:00Z'), new Date('2026-01-12T01:30:00Z')]);
    await clock.advanceTo('2026-01-13T12:00:00Z');
    expect(started()).toEqual(['2026-01-11T01:30:00.000Z', '2026-01-12T01:30:00.000Z', '2026-01-13T01:30:00.000Z']);
    await scheduler.stop();
  });

  it('runs an hourly job every hour', async () => {
    const { clock, scheduler, started } = setup([{ id: 'h', cron: '0 * * * *', timeZone: BERLIN, run: noop }], '2026-01-10T00:30:00Z');
    scheduler.start();
    await clock.advanceTo('2026-01-10T05:30:00Z');
    expect(started()).toEqual(['01', '02', '03', '04', '05'].map((h) => `2026-01-10T${h}:00:00.000Z`));
    await scheduler.stop();
  });

  it('runs a 02:30 job once on the spring-forward day (at 03:00, the first time after the gap)', async () => {
    const { clock, scheduler, started } = setup([{ id: 'd', cron: '30 2 * * *', timeZone: BERLIN, run: noop }], '2026-03-28T12:00:00Z');
    scheduler.start();
    await clock.advanceTo('2026-03-30T12:00:00Z');
    // 29 March 2026: 02:00 CET becomes 03:00 CEST, so 02:30 does not exist that day.
    expect(started()).toEqual(['2026-03-29T01:00:00.000Z', '2026-03-30T00:30:00.000Z']);
    await scheduler.stop();
  });

  it('runs a 02:30 job once on the fall-back day, though 02:30 happens twice', async () => {
    const { clock, scheduler, started } = setup([{ id: 'd', cron: '30 2 * * *', timeZone: BERLIN, run: noop }], '2026-10-24T12:00:00Z');
    scheduler.start();
    await clock.advanceTo('2026-10-26T12:00:00Z');
    // 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:30 CEST is 00:30Z, 02:30 CET would be 01:30Z.
    expect(started()).toEqual(['2026-10-25T00:30:00.000Z', '2026-10-26T01:30:00.000Z']);
    await scheduler.stop();
  });

  it('runs an hourly job 23 times on the spring-forward day and 25 on the fall-back day (every real hour)', async () => {
    const spring = setup([{ id: 'h', cron: '0 * * * *', timeZone: BERLIN, run: noop }], '2026-03-28T22:59:00Z');
    spring.scheduler.start();
    await spring.clock.advanceTo('2026-03-29T21:59:00Z'); // local midnight to midnight
    expect(spring.started()).toHaveLength(23);
    await spring.scheduler.stop();

    const fall = setup([{ id: 'h', cron: '0 * * * *', timeZone: BERLIN, run: noop }], '2026-10-24T21:59:00Z');
    fall.scheduler.start();
    await fall.clock.advanceTo('2026-10-25T22:59:00Z');
    const times = fall.started();
    expect(times).toHaveLength(25);
    expect(new Set(times).size).toBe(25);
    await fall.scheduler.stop();
  });

  it('catches up a missed run once at start, then follows the schedule', async () => {
    const { clock, scheduler, started, events } = setup(
      [
        { id: 'missed', cron: '30 2 * * *', timeZone: BERLIN, lastStartedAt: new Date('2026-01-07T01:30:00Z'), run: noop },
        { id: 'uptodate', cron: '30 2 * * *', timeZone: BERLIN, lastStartedAt: new Date('2026-01-10T01:30:05Z'), run: noop },
        { id: 'new', cron: '30 2 * * *', timeZone: BERLIN, run: noop },
      ],
      '2026-01-10T12:00:00Z',
    );
    scheduler.start();
    await clock.advance(0);
    expect(started('missed')).toEqual(['2026-01-10T12:00:00.000Z']);
    const first = events.find((e) => e.type === 'started' && e.jobId === 'missed');
    expect(first).toMatchObject({ scheduledFor: new Date('2026-01-08T01:30:00Z') });
    expect(started('uptodate')).toEqual([]);
    expect(started('new')).toEqual([]);
    await clock.advanceTo('2026-01-11T12:00:00Z');
    expect(started('missed')).toEqual(['2026-01-10T12:00:00.000Z', '2026-01-11T01:30:00.000Z']);
    expect(started('uptodate')).toEqual(['2026-01-11T01:30:00.000Z']);
    expect(started('new')).toEqual(['2026-01-11T01:30:00.000Z']);
    await scheduler.stop();
  });

  it('never overlaps jobs on a shared resource; a waiting job is queued once and starts when it is free', async () => {
    const gates = new Map<string, ReturnType<typeof deferred>>();
    const holder = new Map<string, string>();
    let overlap = false;
    const job = (id: string, resources: string[]): JobDefinition => ({
      id,
      cron: '0 * * * *',
      timeZone: 'UTC',
      resources,
      run: async () => {
        for (const r of resources) {
          if (holder.has(r)) overlap = true;
          holder.set(r, id);
        }
        const gate = deferred();
        gates.set(id, gate);
        await gate.promise;
        for (const r of resources) holder.delete(r);
      },
    });
    const { clock, scheduler, started, events } = setup([job('a', ['vm1']), job('b', ['vm1', 'vm2']), job('c', ['vm3'])], '2026-01-10T00:30:00Z', { concurrency: 5 });
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:00:00Z');
    expect(started('a')).toEqual(['2026-01-10T01:00:00.000Z']);
    expect(started('b')).toEqual([]);
    expect(started('c')).toEqual(['2026-01-10T01:00:00.000Z']);
    expect(scheduler.status().find((s) => s.id === 'b')?.state).toBe('waiting');
    gates.get('c')!.resolve();
    // a keeps vm1 for three more slots; b must wait, then run once, not once per missed slot.
    await clock.advanceTo('2026-01-10T03:30:00Z');
    expect(started('b')).toEqual([]);
    expect(events.filter((e) => e.type === 'waiting' && e.jobId === 'b')).toHaveLength(1);
    gates.get('a')!.resolve();
    await clock.advance(0);
    expect(started('b')).toEqual(['2026-01-10T03:30:00.000Z']);
    // a's own missed slots while it ran also count once: it queues behind b (which holds vm1).
    expect(started('a')).toEqual(['2026-01-10T01:00:00.000Z']);
    gates.get('b')!.resolve();
    await clock.advance(0);
    expect(started('a')).toEqual(['2026-01-10T01:00:00.000Z', '2026-01-10T03:30:00.000Z']);
    expect(overlap).toBe(false);
    gates.get('a')!.resolve();
    await scheduler.stop({ abandon: true });
  });

  it('a job that needs two resources is not starved by jobs that take them one at a time', async () => {
    const order: string[] = [];
    const gates: Array<() => void> = [];
    const job = (id: string, resources: string[], cron: string): JobDefinition => ({
      id,
      cron,
      timeZone: 'UTC',
      resources,
      run: async () => {
        order.push(id);
        await new Promise<void>((r) => gates.push(r));
      },
    });
    const { clock, scheduler } = setup([job('x', ['vm1'], '0 * * * *'), job('both', ['vm1', 'vm2'], '1 * * * *'), job('y', ['vm2'], '2 * * * *')], '2026-01-10T00:30:00Z', { concurrency: 5 });
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:05:00Z');
    // x holds vm1, both waits for vm1 and vm2, y (due later) must not take vm2 ahead of it.
    expect(order).toEqual(['x']);
    gates.shift()!();
    await clock.advance(0);
    expect(order).toEqual(['x', 'both']);
    gates.shift()!();
    await clock.advance(0);
    expect(order).toEqual(['x', 'both', 'y']);
    gates.shift()!();
    await scheduler.stop();
  });

  it('runs at most `concurrency` jobs at once', async () => {
    let running = 0;
    let peak = 0;
    const gates: Array<() => void> = [];
    const job = (id: string): JobDefinition => ({
      id,
      cron: '0 * * * *',
      timeZone: 'UTC',
      resources: [id],
      run: async () => {
        running++;
        peak = Math.max(peak, running);
        await new Promise<void>((r) => gates.push(r));
        running--;
      },
    });
    const { clock, scheduler, started, events } = setup(['a', 'b', 'c', 'd'].map(job), '2026-01-10T00:30:00Z', { concurrency: 2 });
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:00:00Z');
    expect(started()).toHaveLength(2);
    expect(events.filter((e) => e.type === 'waiting').map((e) => e.type === 'waiting' && e.reason)).toEqual(['concurrency', 'concurrency']);
    gates.shift()!();
    await clock.advance(0);
    expect(started()).toHaveLength(3);
    while (gates.length > 0) {
      gates.shift()!();
      await clock.advance(0);
    }
    expect(started()).toHaveLength(4);
    expect(peak).toBe(2);
    await scheduler.stop();
  });

  it('reports a failing job and keeps scheduling it and the others', async () => {
    let okRuns = 0;
    const { clock, scheduler, events } = setup(
      [
        { id: 'rejects', cron: '0 * * * *', timeZone: 'UTC', run: async () => Promise.reject(new Error('disk gone')) },
        {
          id: 'throws',
          cron: '0 * * * *',
          timeZone: 'UTC',
          run: () => {
            throw new Error('sync boom');
          },
        },
        { id: 'ok', cron: '0 * * * *', timeZone: 'UTC', run: async () => void okRuns++ },
      ],
      '2026-01-10T00:30:00Z',
      { concurrency: 3 },
    );
    scheduler.start();
    await clock.advanceTo('2026-01-10T02:30:00Z');
    const failed = events.filter((e) => e.type === 'failed');
    expect(failed.map((e) => e.jobId).sort()).toEqual(['rejects', 'rejects', 'throws', 'throws']);
    expect(failed.map((e) => (e.type === 'failed' ? (e.error as Error).message : ''))).toContain('disk gone');
    expect(okRuns).toBe(2);
    expect(events.filter((e) => e.type === 'succeeded')).toHaveLength(2);
    await scheduler.stop();
  });

  it('keeps going when the event listener throws', async () => {
    const clock = new FakeClock('2026-01-10T00:30:00Z');
    let runs = 0;
    const s = new Scheduler([{ id: 'h', cron: '0 * * * *', timeZone: 'UTC', run: async () => void runs++ }], {
      clock,
      onEvent: () => {
        throw new Error('listener bug');
      },
    });
    s.start();
    await clock.advanceTo('2026-01-10T03:30:00Z');
    expect(runs).toBe(3);
    await s.stop();
  });

  it('stop() waits for running jobs by default and leaves no timers', async () => {
    const gate = deferred();
    let finished = false;
    const { clock, scheduler, events } = setup(
      [
        {
          id: 'slow',
          cron: '0 * * * *',
          timeZone: 'UTC',
          run: async () => {
            await gate.promise;
            finished = true;
          },
        },
      ],
      '2026-01-10T00:30:00Z',
    );
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:00:00Z');
    expect(clock.pendingTimers).toBe(1);
    let stopped = false;
    const stopping = scheduler.stop().then(() => (stopped = true));
    await flush();
    expect(stopped).toBe(false);
    expect(clock.pendingTimers).toBe(0);
    gate.resolve();
    await stopping;
    expect(finished).toBe(true);
    expect(events.at(-1)?.type).toBe('succeeded');
    expect(clock.pendingTimers).toBe(0);
    await clock.advanceTo('2026-01-10T05:00:00Z');
    expect(events.filter((e) => e.type === 'started')).toHaveLength(1);
  });

  it('stop({ abandon: true }) returns at once, aborts the run and leaves no timers', async () => {
    const gate = deferred();
    let signal: AbortSignal | undefined;
    const { clock, scheduler, events } = setup(
      [
        {
          id: 'slow',
          cron: '0 * * * *',
          timeZone: 'UTC',
          run: async (ctx) => {
            signal = ctx.signal;
            await gate.promise;
          },
        },
        { id: 'queued', cron: '0 * * * *', timeZone: 'UTC', run: noop },
      ],
      '2026-01-10T00:30:00Z',
    );
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:00:00Z');
    expect(scheduler.status().find((s) => s.id === 'queued')?.state).toBe('waiting');
    await scheduler.stop({ abandon: true });
    expect(signal?.aborted).toBe(true);
    expect(clock.pendingTimers).toBe(0);
    const seen = events.length;
    gate.resolve();
    await clock.advanceTo('2026-01-10T05:00:00Z');
    expect(events).toHaveLength(seen);
    expect(clock.pendingTimers).toBe(0);
  });

  it('never sets a timer beyond setTimeout\'s limit, yet fires a yearly job on time', async () => {
    const capped = setup([{ id: 'y', cron: '0 0 1 1 *', timeZone: 'UTC', run: noop }], '2026-01-01T12:00:00Z');
    capped.scheduler.start();
    await capped.clock.advance(3600_000);
    expect(Math.max(...capped.clock.delays)).toBeLessThanOrEqual(60_000);
    await capped.scheduler.stop();

    const widest = setup([{ id: 'y', cron: '0 0 1 1 *', timeZone: 'UTC', run: noop }], '2026-01-01T12:00:00Z', { maxSleepMs: 2 ** 31 - 1 });
    widest.scheduler.start();
    await widest.clock.advanceTo('2027-01-02T00:00:00Z');
    expect(widest.started()).toEqual(['2027-01-01T00:00:00.000Z']);
    expect(Math.max(...widest.clock.delays)).toBe(2 ** 31 - 1);
    await widest.scheduler.stop();
  });

  it('after a jump forward (suspend) runs once within maxSleepMs, then on schedule', async () => {
    const { clock, scheduler, started } = setup([{ id: 'h', cron: '0 * * * *', timeZone: 'UTC', run: noop }], '2026-01-10T00:30:00Z');
    scheduler.start();
    await clock.advance(60_000);
    clock.jump(5 * 3600_000); // 05:31 on the wall clock, no timer has seen it yet
    await clock.advance(60_000);
    expect(started()).toEqual(['2026-01-10T05:32:00.000Z']);
    await clock.advanceTo('2026-01-10T07:30:00Z');
    expect(started()).toEqual(['2026-01-10T05:32:00.000Z', '2026-01-10T06:00:00.000Z', '2026-01-10T07:00:00.000Z']);
    await scheduler.stop();
  });

  it('after a small jump back does not repeat the slot it ran; after a huge one it does not stall', async () => {
    const { clock, scheduler, started } = setup([{ id: 'h', cron: '0 * * * *', timeZone: 'UTC', run: noop }], '2026-01-10T00:30:00Z');
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:10:00Z');
    expect(started()).toEqual(['2026-01-10T01:00:00.000Z']);
    clock.jump(-40 * 60_000); // 00:30 again: 01:00 comes round a second time on the wall clock
    await clock.advance(60 * 60_000); // to 01:30
    expect(started()).toEqual(['2026-01-10T01:00:00.000Z']);
    await clock.advance(31 * 60_000);
    expect(started()).toEqual(['2026-01-10T01:00:00.000Z', '2026-01-10T02:00:00.000Z']);

    clock.jump(-30 * 24 * 3600_000); // a month back: waiting for 03:00 on 10 January would stall it
    await clock.advance(60 * 60_000);
    expect(started()).toHaveLength(3);
    expect(started()[2]).toBe('2025-12-11T03:00:00.000Z');
    await scheduler.stop();
  });

  it('does not trust a stored last start far in the future', async () => {
    const { clock, scheduler, started } = setup([{ id: 'h', cron: '0 * * * *', timeZone: 'UTC', lastStartedAt: new Date('2030-01-01T00:00:00Z'), run: noop }], '2026-01-10T00:30:00Z');
    scheduler.start();
    await clock.advanceTo('2026-01-10T01:30:00Z');
    expect(started()).toEqual(['2026-01-10T01:00:00.000Z']);
    await scheduler.stop();
  });

  it('adds and removes jobs while running', async () => {
    const { clock, scheduler, started } = setup([], '2026-01-10T00:30:00Z');
    scheduler.start();
    expect(clock.pendingTimers).toBe(0);
    scheduler.add({ id: 'h', cron: '0 * * * *', timeZone: 'UTC', run: noop });
    scheduler.add({ id: 'd', cron: '0 5 * * *', timeZone: 'UTC', run: noop });
    expect(clock.pendingTimers).toBe(1);
    await clock.advanceTo('2026-01-10T01:30:00Z');
    expect(started()).toEqual(['2026-01-10T01:00:00.000Z']);
    expect(scheduler.remove('h')).toBe(true);
    expect(scheduler.remove('d')).toBe(true);
    expect(scheduler.remove('d')).toBe(false);
    expect(clock.pendingTimers).toBe(0);
    await clock.advanceTo('2026-01-10T03:30:00Z');
    expect(started()).toHaveLength(1);
    await scheduler.stop();
  });
});

describe('Scheduler.runNow', () => {
  it('queues a manual run that waits for its resources, and runs jobs that have no schedule', async () => {
    const clock = new FakeClock('2026-01-10T00:00:00Z');
    const gate = deferred();
    const seen: { id: string; manual: boolean; at: string }[] = [];
    const record = (ctx: { jobId: string; manual: boolean; startedAt: Date }) => void seen.push({ id: ctx.jobId, manual: ctx.manual, at: ctx.startedAt.toISOString() });
    const scheduler = new Scheduler(
      [
        { id: 'nightly', cron: '0 1 * * *', timeZone: 'UTC', resources: ['vm:a'], run: async (ctx) => { record(ctx); await gate.promise; } },
        { id: 'by-hand', resources: ['vm:a'], run: async (ctx) => record(ctx) },
      ],
      { clock, concurrency: 2 },
    );
    scheduler.start();
    expect(scheduler.status().find((s) => s.id === 'by-hand')).toMatchObject({ cron: null, nextRunAt: null, state: 'idle' });
    await clock.advanceTo('2026-01-10T01:00:00Z');
    expect(seen).toEqual([{ id: 'nightly', manual: false, at: '2026-01-10T01:00:00.000Z' }]);
    // Same VM: the manual run waits, and a second request while it waits is refused.
    expect(scheduler.runNow('by-hand')).toBe(true);
    expect(scheduler.runNow('by-hand')).toBe(false);
    expect(scheduler.runNow('unknown')).toBe(false);
    await clock.advance(60_000);
    expect(seen).toHaveLength(1);
    expect(scheduler.status().find((s) => s.id === 'by-hand')?.state).toBe('waiting');
    gate.resolve();
    await clock.advance(1);
    expect(seen[1]).toEqual({ id: 'by-hand', manual: true, at: '2026-01-10T01:01:00.000Z' });
    // A manual run of a scheduled job does not shift its schedule.
    expect(scheduler.runNow('nightly')).toBe(true);
    await clock.advance(1);
    expect(seen[2]).toMatchObject({ id: 'nightly', manual: true });
    expect(scheduler.status().find((s) => s.id === 'nightly')?.nextRunAt?.toISOString()).toBe('2026-01-11T01:00:00.000Z');
    await scheduler.stop();
  });
});

// Real time (a job every minute runs twice) is tested through the server: test/e2e/server.test.ts.
