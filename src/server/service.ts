// The backup service behind `bulwark serve`: the catalog's jobs on the scheduler, each run through the
// runner, and what a restart owes the runs the last process left behind.
import type { Catalog, Job, Run } from './catalog/catalog.js';
import { LiveEvents } from './events.js';
import type { NotifyTarget } from './notify/notify.js';
import { RepositoryPool } from './repositories.js';
import { Restores } from './restores.js';
import { JobRunner } from './runner.js';
import { Scheduler, type JobRunContext, type SchedulerClock } from './scheduler.js';

export interface ServiceOptions {
  catalog: Catalog;
  /** How to start the CLI for a run: [node, bin/bulwark.js]. */
  cli: readonly string[];
  /** Repository for jobs that name none. */
  defaultRepository?: string;
  clock?: SchedulerClock;
  /** Runs at once; default 1. */
  concurrency?: number;
  notifyTargets?: readonly NotifyTarget[];
  /** After a crash: make the VMs of an interrupted run safe (thawed, running, no leftovers); returns what it did. */
  recoverVms?: (job: Job) => Promise<string[]>;
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
}

export class BackupService {
  readonly live = new LiveEvents();
  readonly pool: RepositoryPool;
  readonly restores: Restores;
  private readonly runner: JobRunner;
  private readonly scheduler: Scheduler;
  /** Manual runs in the catalog (queued) waiting for the scheduler to start them, by job id. */
  private readonly queuedManual = new Map<number, Run>();
  private startedAt = new Date(0);
  private rebuilding: Promise<void> | undefined;

  constructor(private readonly opts: ServiceOptions) {
    const passwordFor = (location: string) => opts.catalog.getRepositoryPassword(location);
    this.pool = new RepositoryPool(passwordFor);
    this.restores = new Restores({ cli: opts.cli, live: this.live, passwordFor, ...(opts.env ? { env: opts.env } : {}) });
    this.runner = new JobRunner({
      catalog: opts.catalog,
      live: this.live,
      cli: opts.cli,
      passwordFor,
      ...(opts.env ? { env: opts.env } : {}),
      notifyTargets: () => opts.notifyTargets ?? [],
      ...(opts.log ? { log: opts.log } : {}),
    });
    this.scheduler = new Scheduler([], {
      ...(opts.clock ? { clock: opts.clock } : {}),
      concurrency: opts.concurrency ?? 1,
      onEvent: (e) => {
        if (e.type === 'failed') opts.log?.(`job ${e.jobId}: ${e.error instanceof Error ? e.error.message : String(e.error)}`);
      },
    });
  }

  get defaultRepository(): string | undefined {
    return this.opts.defaultRepository;
  }

  /** Marks what the last process left running as interrupted, makes its VMs safe, then schedules. */
  async start(): Promise<void> {
    const { catalog } = this.opts;
    this.startedAt = this.opts.clock?.now() ?? new Date();
    for (const { run } of catalog.markInterrupted()) {
      this.opts.log?.(`run ${run.id} of job '${run.jobName}' was cut off when the server stopped; marked interrupted`);
      const job = run.jobId !== null ? catalog.getJob(run.jobId) : undefined;
      if (job?.definition.kind !== 'vm' || !this.opts.recoverVms) continue;
      try {
        for (const m of await this.opts.recoverVms(job)) catalog.appendEvent({ runId: run.id, level: 'info', message: `recovery: ${m}` });
        catalog.appendEvent({ runId: run.id, level: 'info', message: 'recovery: the VMs were checked after the restart' });
      } catch (err) {
        catalog.appendEvent({ runId: run.id, level: 'error', message: `recovery of the VMs failed: ${err instanceof Error ? err.message : String(err)}` });
      }
    }
    // A catalog without history (new, or lost and started afresh) is filled from the restore points:
    // the repositories are the source of truth. In the background, as a remote store may be slow.
    if (this.opts.defaultRepository && catalog.listRuns({ limit: 1 }).length === 0) this.rebuilding = this.rebuild(this.opts.defaultRepository);
    const last = catalog.lastStartTimes();
    for (const job of catalog.listJobs()) if (job.enabled) this.schedule(job, last.get(job.name));
    this.scheduler.start();
  }

  /** The history rebuilt from a repository's restore points; runs already known are not added twice. */
  async rebuild(location: string): Promise<void> {
    try {
      const { snapshots } = await this.pool.get(location);
      const r = this.opts.catalog.rebuildFromSnapshots(snapshots);
      if (r.runsAdded > 0) this.opts.log?.(`catalog: ${r.runsAdded} run(s) rebuilt from the restore points in ${location}`);
    } catch (err) {
      this.opts.log?.(`catalog: could not rebuild the history from ${location}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** Waits for nothing: running children are told to stop, and their runs end as interrupted. */
  async stop(): Promise<void> {
    await this.scheduler.stop({ abandon: true });
    await this.rebuilding;
    await this.pool.closeAll();
  }

  nextRunAt(job: Job): Date | null {
    return this.scheduler.status().find((s) => s.id === String(job.id))?.nextRunAt ?? null;
  }

  /** Queues a run now; undefined when the job is disabled or already waiting to run. */
  runNow(job: Job): Run | undefined {
    const waiting = this.queuedManual.get(job.id);
    if (waiting) return waiting;
    // A disabled job is not on the scheduler; one its schedule already queued starts soon anyway.
    const state = this.scheduler.status().find((s) => s.id === String(job.id))?.state;
    if (state === undefined || state === 'waiting') return undefined;
    const run = this.opts.catalog.createRun(job.id, 'manual', { status: 'queued' });
    this.queuedManual.set(job.id, run);
    this.scheduler.runNow(String(job.id));
    this.live.publish({ type: 'run', run });
    return run;
  }

  /** After a job was created or changed in the catalog. */
  jobChanged(job: Job): void {
    this.scheduler.remove(String(job.id));
    if (job.enabled) this.schedule(job, this.opts.catalog.lastStartTimes().get(job.name));
  }

  jobRemoved(jobId: number): void {
    this.scheduler.remove(String(jobId));
  }

  private schedule(job: Job, lastStartedAt: Date | undefined): void {
    const s = job.definition.schedule;
    const d = job.definition;
    this.scheduler.add({
      id: String(job.id),
      ...(s ? { cron: s.cron, ...(s.timeZone ? { timeZone: s.timeZone } : {}) } : {}),
      resources: d.resources ?? d.sources.map((x) => `${d.kind}:${x}`),
      ...(lastStartedAt ? { lastStartedAt } : {}),
      run: (ctx) => this.execute(job.id, ctx),
    });
  }

  private async execute(jobId: number, ctx: JobRunContext): Promise<void> {
    const { catalog } = this.opts;
    const job = catalog.getJob(jobId);
    if (!job) return;
    let run = ctx.manual ? this.queuedManual.get(jobId) : undefined;
    this.queuedManual.delete(jobId);
    run ??= catalog.createRun(job.id, ctx.scheduledFor < this.startedAt ? 'catch-up' : ctx.manual ? 'manual' : 'scheduled', { status: 'queued' });
    try {
      await this.runner.execute(job, run, ctx.signal);
    } finally {
      await this.pool.invalidate(job.definition.repository);
    }
  }
}
