// The scheduler behind `bulwark serve`: cron schedules in a time zone, runs that never overlap on a
// shared resource (two backups of one VM would fight over its snapshot), a limit on runs at once, and
// one catch-up run for slots missed while the service was down.
//
// Time is two clocks on purpose. Slots are wall-clock times (croner turns the expression and zone
// into instants, DST included), but timers count elapsed time, and the wall clock can jump under
// them (host suspended, NTP step). So no timer is trusted to land on a slot: every wake re-reads the
// wall clock, sleeps are capped (well under setTimeout's 2^31-1 ms, and short enough to notice a
// jump forward soon), and a slot is taken at most once because the next slot is always computed
// after the moment the previous one was taken, which a small jump back does not undo.
import { Cron } from 'croner';
import type { Clock } from '../util/clock.js';
import { BulwarkError } from '../util/errors.js';

/** A pending timer; cancel() after it fired is a no-op. */
export interface Timer {
  cancel(): void;
}

/**
 * Wall time plus timers. Timers are expected to count elapsed time (as setTimeout does), not wall
 * time; the scheduler re-reads now() on every wake, so either works, a jumping wall clock included.
 */
export interface SchedulerClock extends Clock {
  setTimer(delayMs: number, callback: () => void): Timer;
}

/** A validated schedule. */
export interface Schedule {
  /** The expression as given: 5 fields, or 6 with seconds first (croner's nicknames such as @daily too). */
  readonly cron: string;
  /** IANA zone the expression is read in. */
  readonly timeZone: string;
  /** The first slot strictly after `after`, or null when the expression has no further match. */
  next(after: Date): Date | null;
}

export interface JobRunContext {
  readonly jobId: string;
  /** The earliest slot this run stands for: before startedAt when it was missed or waited for its resources. */
  readonly scheduledFor: Date;
  readonly startedAt: Date;
  /** Aborted when stop({ abandon: true }) gives up on the run; the work should wind down. */
  readonly signal: AbortSignal;
  /** Queued by runNow() rather than by a slot of the schedule. */
  readonly manual: boolean;
}

export interface JobDefinition {
  /** Unique within the scheduler. */
  id: string;
  /** Without one the job runs only when asked (runNow). */
  cron?: string;
  /** IANA zone; default the host's. */
  timeZone?: string;
  /** Keys (VM ids, repository paths …) no two running jobs may share. */
  resources?: readonly string[];
  /**
   * When the job last started (from the caller's store). If a slot passed since then, the job runs
   * once when the scheduler starts. Without it the job waits for its next slot.
   */
  lastStartedAt?: Date;
  run(ctx: JobRunContext): Promise<void>;
}

export type SchedulerEvent =
  | { type: 'waiting'; jobId: string; scheduledFor: Date; reason: 'resources' | 'concurrency' | 'running' }
  | { type: 'started'; jobId: string; scheduledFor: Date; startedAt: Date }
  | { type: 'succeeded'; jobId: string; scheduledFor: Date; startedAt: Date; finishedAt: Date }
  | { type: 'failed'; jobId: string; scheduledFor: Date; startedAt: Date; finishedAt: Date; error: unknown };

export interface JobStatus {
  id: string;
  cron: string | null;
  timeZone: string;
  resources: readonly string[];
  /** The next slot, or null if the expression has none left (or the scheduler is not started). */
  nextRunAt: Date | null;
  lastStartedAt: Date | undefined;
  /** 'waiting': due, held back by its resources, the concurrency limit or its own previous run. */
  state: 'idle' | 'waiting' | 'running';
}

export interface SchedulerOptions {
  clock?: SchedulerClock;
  /** Runs at once across all jobs; default 1, since backups compete for the same disks and network. */
  concurrency?: number;
  /** Longest single timer; default 60 s. Bounds how late a run is after a jump forward of the wall clock. */
  maxSleepMs?: number;
  /**
   * A jump back of the wall clock up to this much delays the next run rather than repeating a slot;
   * beyond it (a clock that was badly wrong and got fixed) the schedule restarts from the corrected
   * time, so the job cannot stall until the wrong time comes round again. Default 24 h.
   */
  maxBackwardJumpMs?: number;
  /** Job outcomes. A throwing listener is ignored: it must not break the schedule of every other job. */
  onEvent?: (event: SchedulerEvent) => void;
}

/** Due runs that have not started are dropped either way; the next start catches them up through lastStartedAt. */
export interface StopOptions {
  /** Resolve at once, aborting running jobs' signals and ignoring their outcome; default: wait for them. */
  abandon?: boolean;
}

interface RunningRun {
  readonly controller: AbortController;
  done: Promise<void>;
  abandoned: boolean;
}

interface JobState {
  readonly id: string;
  readonly schedule: Schedule | null;
  readonly resources: readonly string[];
  readonly run: JobDefinition['run'];
  lastStartedAt: Date | undefined;
  /** Wall time the last slot was taken at (or lastStartedAt); the next slot is the first after it. */
  anchor: number;
  nextDue: number | null;
  /** Set while the job is due but not started (in the queue); the earliest slot it stands for. */
  dueSlot: number | null;
  /** The queued run was asked for by runNow(). */
  manual: boolean;
  running: RunningRun | null;
}

const MAX_TIMER_MS = 2 ** 31 - 1;
const DEFAULT_MAX_SLEEP_MS = 60_000;
const DEFAULT_MAX_BACKWARD_JUMP_MS = 24 * 3600_000;
const FIELD_NAMES_5 = ['minute', 'hour', 'day of month', 'month', 'day of week'];
const FIELD_NAMES_6 = ['second', ...FIELD_NAMES_5];
const CRON_HINT = "use 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, e.g. '30 2 * * *'";

export const systemSchedulerClock: SchedulerClock = {
  now: () => new Date(),
  setTimer(delayMs, callback) {
    const handle = setTimeout(callback, delayMs);
    return { cancel: () => clearTimeout(handle) };
  },
};

export function hostTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

/** Validates an expression and zone; a BulwarkError('usage') names the bad field or the zone. */
export function parseSchedule(cron: string, timeZone: string = hostTimeZone(), now: Date = new Date()): Schedule {
  checkTimeZone(timeZone);
  const expr = cron.trim();
  const compiled = compileCron(expr, timeZone);
  // An expression like '0 0 30 2 *' parses but never fires; a job that silently never runs is worse than an error.
  if (compiled.nextRun(now) === null) {
    throw new BulwarkError('usage', `cron expression '${expr}' never matches a date`, { hint: 'check the day-of-month and month fields (e.g. 30 February)' });
  }
  return {
    cron: expr,
    timeZone,
    next: (after) => compiled.nextRun(after),
  };
}

function checkTimeZone(timeZone: string): void {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone });
  } catch {
    throw new BulwarkError('usage', `unknown time zone '${timeZone}'`, { hint: "use an IANA zone name such as 'Europe/Berlin' or 'UTC'" });
  }
}

function compileCron(expr: string, timeZone: string): Cron {
  const fields = expr.split(/\s+/);
  if (!expr.startsWith('@') && fields.length !== 5 && fields.length !== 6) {
    throw new BulwarkError('usage', `cron expression '${expr}' has ${fields.length} field${fields.length === 1 ? '' : 's'}`, { hint: CRON_HINT });
  }
  try {
    return new Cron(expr, { timezone: timeZone, mode: '5-or-6-parts' });
  } catch (err) {
    const reason = err instanceof Error ? err.message.replace(/^CronPattern: /, '') : String(err);
    // croner's messages number fields after its own padding; trying each field alone names the one people wrote.
    const bad = expr.startsWith('@') ? -1 : fields.findIndex((_, i) => !fieldParses(fields, i, timeZone));
    const names = fields.length === 6 ? FIELD_NAMES_6 : FIELD_NAMES_5;
    const where = bad >= 0 ? `: the ${names[bad]} field '${fields[bad]}' is not valid (${reason})` : `: ${reason}`;
    throw new BulwarkError('usage', `invalid cron expression '${expr}'${where}`, { hint: CRON_HINT, cause: err });
  }
}

function fieldParses(fields: readonly string[], index: number, timeZone: string): boolean {
  const probe = fields.map((f, i) => (i === index ? f : '*')).join(' ');
  try {
    new Cron(probe, { timezone: timeZone, mode: '5-or-6-parts' });
    return true;
  } catch {
    return false;
  }
}

export class Scheduler {
  private readonly clock: SchedulerClock;
  private readonly concurrency: number;
  private readonly maxSleepMs: number;
  private readonly maxBackwardJumpMs: number;
  private readonly onEvent: ((event: SchedulerEvent) => void) | undefined;
  private readonly jobs = new Map<string, JobState>();
  /** Due jobs in the order they fell due; the order is what keeps a job needing two resources from starving. */
  private readonly queue: JobState[] = [];
  private readonly busy = new Set<string>();
  /** Queued jobs whose wait was already reported, so a wait is reported once, not on every pass. */
  private readonly announced = new Set<JobState>();
  private runningCount = 0;
  private timer: Timer | null = null;
  private state: 'new' | 'running' | 'stopping' | 'stopped' = 'new';

  constructor(jobs: readonly JobDefinition[] = [], options: SchedulerOptions = {}) {
    this.clock = options.clock ?? systemSchedulerClock;
    this.concurrency = options.concurrency ?? 1;
    this.maxSleepMs = options.maxSleepMs ?? DEFAULT_MAX_SLEEP_MS;
    this.maxBackwardJumpMs = options.maxBackwardJumpMs ?? DEFAULT_MAX_BACKWARD_JUMP_MS;
    this.onEvent = options.onEvent;
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) throw new RangeError(`concurrency must be a positive integer, not ${this.concurrency}`);
    if (!(this.maxSleepMs >= 1 && this.maxSleepMs <= MAX_TIMER_MS)) throw new RangeError(`maxSleepMs must be 1 … ${MAX_TIMER_MS}`);
    if (!(this.maxBackwardJumpMs >= 0)) throw new RangeError('maxBackwardJumpMs must not be negative');
    for (const job of jobs) this.add(job);
  }

  /** Adds a job; throws BulwarkError('usage') for a bad expression, zone or duplicate id. */
  add(def: JobDefinition): void {
    if (this.state === 'stopping' || this.state === 'stopped') throw new Error('scheduler is stopped');
    if (this.jobs.has(def.id)) throw new BulwarkError('usage', `job '${def.id}' is already scheduled`, { hint: 'give each job its own id' });
    let schedule: Schedule | null = null;
    try {
      if (def.cron !== undefined) schedule = parseSchedule(def.cron, def.timeZone ?? hostTimeZone(), this.clock.now());
    } catch (err) {
      if (err instanceof BulwarkError) throw new BulwarkError(err.code, `job '${def.id}': ${err.message}`, { cause: err, ...(err.hint ? { hint: err.hint } : {}) });
      throw err;
    }
    if (def.lastStartedAt !== undefined && Number.isNaN(def.lastStartedAt.getTime())) {
      throw new BulwarkError('usage', `job '${def.id}': the last start time is not a valid date`);
    }
    const job: JobState = {
      id: def.id,
      schedule,
      resources: [...new Set(def.resources ?? [])],
      run: def.run,
      lastStartedAt: def.lastStartedAt,
      anchor: 0,
      nextDue: null,
      dueSlot: null,
      manual: false,
      running: null,
    };
    this.jobs.set(job.id, job);
    if (this.state === 'running') {
      this.initJob(job, this.clock.now().getTime());
      this.tick();
    }
  }

  /** Removes a job: it will not start again; a run in progress finishes. Returns whether it existed. */
  remove(id: string): boolean {
    const job = this.jobs.get(id);
    if (!job) return false;
    this.jobs.delete(id);
    this.unqueue(job);
    if (this.state === 'running') {
      this.dispatch();
      this.arm();
    }
    return true;
  }

  /**
   * Queues a job to run now, outside its schedule: it still waits for its resources and the limit on
   * runs at once. False when the job is unknown or a run of it is already waiting.
   */
  runNow(id: string): boolean {
    const job = this.jobs.get(id);
    if (!job || job.dueSlot !== null || this.state === 'stopping' || this.state === 'stopped') return false;
    job.dueSlot = this.clock.now().getTime();
    job.manual = true;
    this.queue.push(job);
    if (this.state === 'running') {
      this.dispatch();
      this.arm();
    }
    return true;
  }

  start(): void {
    if (this.state !== 'new') throw new Error(`scheduler cannot start: it is ${this.state}`);
    this.state = 'running';
    const now = this.clock.now().getTime();
    for (const job of this.jobs.values()) this.initJob(job, now);
    this.tick();
  }

  /** Stops scheduling; waits for running jobs unless abandon is set. Leaves no timers either way. */
  async stop(options: StopOptions = {}): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'stopping';
    this.timer?.cancel();
    this.timer = null;
    for (const job of this.queue) job.dueSlot = null;
    this.queue.length = 0;
    const runs = [...this.jobs.values()].map((j) => j.running).filter((r): r is RunningRun => r !== null);
    if (options.abandon) {
      for (const run of runs) {
        run.abandoned = true;
        run.controller.abort(new BulwarkError('failed', 'the scheduler was stopped'));
      }
      this.state = 'stopped';
      return;
    }
    await Promise.all(runs.map((r) => r.done));
    this.state = 'stopped';
  }

  /** Per job: next slot and state, ordered by next run (none last), for a dashboard. */
  status(): JobStatus[] {
    const list = [...this.jobs.values()].map((job): JobStatus => ({
      id: job.id,
      cron: job.schedule?.cron ?? null,
      timeZone: job.schedule?.timeZone ?? hostTimeZone(),
      resources: job.resources,
      nextRunAt: job.nextDue === null ? null : new Date(job.nextDue),
      lastStartedAt: job.lastStartedAt,
      state: job.running ? 'running' : job.dueSlot !== null ? 'waiting' : 'idle',
    }));
    const key = (s: JobStatus) => s.nextRunAt?.getTime() ?? Infinity;
    return list.sort((a, b) => key(a) - key(b) || a.id.localeCompare(b.id));
  }

  /** The next `count` slots of a job from its next run on (fewer if the expression runs out). */
  upcoming(id: string, count: number): Date[] {
    const job = this.jobs.get(id);
    if (!job || job.nextDue === null) return [];
    const out = [new Date(job.nextDue)];
    while (out.length < count) {
      const next = job.schedule?.next(out[out.length - 1]!) ?? null;
      if (next === null) break;
      out.push(next);
    }
    return out.slice(0, Math.max(0, count));
  }

  private initJob(job: JobState, now: number): void {
    const last = job.lastStartedAt?.getTime();
    job.anchor = last !== undefined && last <= now + this.maxBackwardJumpMs ? last : now;
    job.nextDue = job.schedule?.next(new Date(job.anchor))?.getTime() ?? null;
  }

  /** Takes every slot that has come, starts what may start, and sleeps until the next slot. */
  private tick(): void {
    if (this.state !== 'running') return;
    const now = this.clock.now().getTime();
    for (const job of this.jobs.values()) {
      if (job.anchor > now + this.maxBackwardJumpMs) {
        job.anchor = now;
        job.nextDue = job.schedule?.next(new Date(now))?.getTime() ?? null;
      }
      if (job.nextDue === null || job.nextDue > now) continue;
      // Every slot up to now collapses into this one run: a long downtime or a wait for resources
      // must not turn into a burst of back-to-back runs.
      if (job.dueSlot === null) {
        job.dueSlot = job.nextDue;
        this.queue.push(job);
      }
      job.anchor = now;
      job.nextDue = job.schedule?.next(new Date(now))?.getTime() ?? null;
    }
    this.dispatch();
    this.arm();
  }

  private arm(): void {
    this.timer?.cancel();
    this.timer = null;
    if (this.state !== 'running') return;
    let earliest = Infinity;
    for (const job of this.jobs.values()) if (job.nextDue !== null && job.nextDue < earliest) earliest = job.nextDue;
    if (earliest === Infinity) return;
    const delay = Math.min(Math.max(0, earliest - this.clock.now().getTime()), this.maxSleepMs);
    this.timer = this.clock.setTimer(delay, () => this.tick());
  }

  private dispatch(): void {
    if (this.state !== 'running') return;
    // Resources wanted by a job earlier in the queue are held for it, so later jobs cannot keep
    // taking them one at a time while it waits for all of its own.
    const held = new Set<string>();
    const newlyWaiting: Array<[JobState, 'resources' | 'concurrency' | 'running']> = [];
    for (const job of [...this.queue]) {
      const blockedByResource = job.resources.some((r) => this.busy.has(r) || held.has(r));
      const reason = job.running ? 'running' : blockedByResource ? 'resources' : this.runningCount >= this.concurrency ? 'concurrency' : null;
      if (reason === null) {
        const slot = job.dueSlot ?? this.clock.now().getTime();
        const manual = job.manual;
        this.unqueue(job);
        this.launch(job, new Date(slot), manual);
      } else {
        for (const r of job.resources) held.add(r);
        newlyWaiting.push([job, reason]);
      }
    }
    for (const [job, reason] of newlyWaiting) {
      if (!this.announced.has(job) && job.dueSlot !== null) {
        this.announced.add(job);
        this.emit({ type: 'waiting', jobId: job.id, scheduledFor: new Date(job.dueSlot), reason });
      }
    }
  }

  private unqueue(job: JobState): void {
    const i = this.queue.indexOf(job);
    if (i >= 0) this.queue.splice(i, 1);
    job.dueSlot = null;
    job.manual = false;
    this.announced.delete(job);
  }

  private launch(job: JobState, scheduledFor: Date, manual: boolean): void {
    const startedAt = this.clock.now();
    job.lastStartedAt = startedAt;
    for (const r of job.resources) this.busy.add(r);
    this.runningCount++;
    const controller = new AbortController();
    const ctx: JobRunContext = { jobId: job.id, scheduledFor, startedAt, signal: controller.signal, manual };
    const run: RunningRun = { controller, done: Promise.resolve(), abandoned: false };
    job.running = run;
    this.emit({ type: 'started', jobId: job.id, scheduledFor, startedAt });
    // The work is called from a microtask, never inline: a job that throws or returns at once would
    // otherwise finish (and re-enter dispatch) before this launch has returned to the dispatch loop.
    run.done = Promise.resolve()
      .then(() => job.run(ctx))
      .then(
        () => this.finish(job, run, scheduledFor, startedAt, null),
        (error: unknown) => this.finish(job, run, scheduledFor, startedAt, { error }),
      );
  }

  private finish(job: JobState, run: RunningRun, scheduledFor: Date, startedAt: Date, failure: { error: unknown } | null): void {
    for (const r of job.resources) this.busy.delete(r);
    this.runningCount--;
    job.running = null;
    if (run.abandoned) return;
    const finishedAt = this.clock.now();
    this.emit(
      failure
        ? { type: 'failed', jobId: job.id, scheduledFor, startedAt, finishedAt, error: failure.error }
        : { type: 'succeeded', jobId: job.id, scheduledFor, startedAt, finishedAt },
    );
    this.dispatch();
  }

  private emit(event: SchedulerEvent): void {
    if (!this.onEvent) return;
    try {
      this.onEvent(event);
    } catch {
      // See SchedulerOptions.onEvent: the listener is the reporting channel, so there is nowhere left to report to.
    }
  }
}
