// One run of a job: the `bulwark backup …` command in a child process, its JSON output turned into the
// catalog's run, items and events, and into live progress for the browsers.
//
// A child process, not a call into jobs/: a run's memory goes when it ends, a crash in one run cannot
// take the server with it, and the command is exactly the one an administrator can run by hand. The
// child ends itself when the server's end of its stdin closes (BULWARK_EXIT_WITH_PARENT), so a killed
// server leaves no backup running that the restarted one does not know of; the VM guardians the
// child started then thaw and resume the guests, as they do for any killed `backup vm`.
import { spawn, type ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { createInterface } from 'node:readline';
import type { Catalog, FinalRunStatus, Job, JsonObject, Run, RunItem } from './catalog/catalog.js';
import { JOB_TAG, RUN_TAG } from './catalog/catalog.js';
import { spawnCli } from './cli-child.js';
import type { LiveEvents } from './events.js';
import { notify, type ItemResult, type NotifyTarget, type RunSummary } from './notify/notify.js';

export interface RunnerOptions {
  catalog: Catalog;
  live: LiveEvents;
  /** How to start the CLI: [node, bin/bulwark.js]. */
  cli: readonly string[];
  /** The repository's password (from the catalog's sealed secrets). */
  passwordFor(repository: string): string | undefined;
  /** Environment for the child; secrets are added per run. */
  env?: NodeJS.ProcessEnv;
  notifyTargets?: () => readonly NotifyTarget[];
  log?: (line: string) => void;
}

/** What the child printed as its summary (`--json`), as far as the runner reads it. */
interface VmResultLine {
  vm: string;
  snapshot?: string;
  error?: string;
  hint?: string;
  consistency?: 'application' | 'filesystem' | 'crash';
  freezeMs?: number;
  warnings?: string[];
  disks?: { name: string; bytesRead?: number; bytesNew?: number }[];
}

interface FilesSummaryLine {
  /** `backup files --json`: the id, with the summary beside it. */
  snapshot?: string;
  summary?: { bytesRead?: number; bytesNew?: number; durationMs?: number };
  errors?: { path: string; message: string }[];
  changed?: string[];
  warnings?: string[];
  results?: VmResultLine[];
  /** `backup disk --json`: one per image, in the order given. */
  snapshots?: { snapshot: string; summary?: { bytesRead?: number; bytesNew?: number; durationMs?: number } }[];
}

const text = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const list = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

const SUBCOMMAND = { vm: 'vm', folder: 'files', disk: 'disk' } as const;

/** Items of a run: one per VM or disk image; a folder job's folders make one restore point, so one item. */
function itemNames(job: Job): string[] {
  return job.definition.kind === 'folder' ? [job.definition.sources.join(', ')] : job.definition.sources;
}

/** The CLI arguments of a job's backup; options come first and `--` ends them, so no source can pass for an option. */
export function commandFor(job: Job, runId: string): string[] {
  const d = job.definition;
  const o = (d.options ?? {}) as Record<string, unknown>;
  const limitUpload = text(o['limitUpload']);
  const args = ['--json', '-r', d.repository, ...(limitUpload ? ['--limit-upload', limitUpload] : []), 'backup', SUBCOMMAND[d.kind]];
  for (const t of [...(d.tags ?? []), `${JOB_TAG}${job.name}`, `${RUN_TAG}${runId}`]) args.push('--tag', t);
  if (d.kind === 'vm') {
    for (const c of list(o['connect'])) args.push('--connect', c);
    if (o['group'] === true) args.push('--group');
    const consistency = text(o['consistency']);
    if (consistency) args.push('--consistency', consistency);
    const mode = text(o['mode']);
    if (mode) args.push('--mode', mode);
    const scratch = text(o['scratchDir']);
    if (scratch) args.push('--scratch-dir', scratch);
  } else if (d.kind === 'folder') {
    for (const e of list(o['exclude'])) args.push('--exclude', e);
    if (o['oneFileSystem'] === true) args.push('--one-file-system');
  }
  const limit = text(o['limitRead']);
  if (limit && d.kind === 'vm') args.push('--limit-read', limit);
  args.push('--', ...d.sources);
  return args;
}

export class JobRunner {
  constructor(private readonly opts: RunnerOptions) {}

  /** Runs `run` (already in the catalog, queued) to its end; never throws for the run's own failure. */
  async execute(job: Job, run: Run, signal: AbortSignal): Promise<Run> {
    const { catalog, live } = this.opts;
    const started = catalog.startRun(run.id);
    live.publish({ type: 'run', run: started });
    const items = new Map<string, RunItem>();
    const names = itemNames(job);
    for (const n of names) items.set(n, catalog.addItem(run.id, n, { status: 'running' }));
    this.event(run.id, 'info', `run started: bulwark backup ${SUBCOMMAND[job.definition.kind]} ${job.definition.sources.join(' ')} (${run.trigger})`);
    const options = (job.definition.options ?? {}) as Record<string, unknown>;
    const preCommand = text(options['preCommand']);
    if (preCommand) {
      const code = await this.hook(run.id, 'pre-command', preCommand, { BULWARK_JOB: job.name, BULWARK_RUN: run.id }, signal);
      if (code !== 0) {
        for (const item of items.values()) catalog.updateItem(item.id, { status: 'failure', error: `the pre-command exited ${code}; nothing was backed up` });
        return this.end(job, run, signal.aborted ? 'interrupted' : 'failure', { error: `pre-command exited ${code}` }, new Map(), { message: `the pre-command exited ${code}; nothing was backed up` });
      }
    }

    const child = spawnCli(this.opts.cli, commandFor(job, run.id), this.childOptions(job));
    const onAbort = () => child.kill('SIGTERM');
    signal.addEventListener('abort', onAbort, { once: true });

    let summary: FilesSummaryLine | undefined;
    let failure: { message: string; hint?: string } | undefined;
    const stdout = createInterface({ input: child.stdout });
    stdout.on('line', (line) => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        if (line.trim()) this.event(run.id, 'info', line);
        return;
      }
      if (msg['type'] === 'progress') {
        live.publish({
          type: 'progress',
          progress: {
            runId: run.id,
            bytesDone: Number(msg['bytesDone'] ?? 0),
            ...(typeof msg['bytesTotal'] === 'number' ? { bytesTotal: msg['bytesTotal'] } : {}),
            files: Number(msg['files'] ?? 0),
            elapsedMs: Number(msg['elapsedMs'] ?? 0),
          },
        });
      } else if (msg['type'] === 'summary') summary = msg as FilesSummaryLine;
      else if (msg['type'] === 'error') failure = { message: String(msg['message']), ...(text(msg['hint']) ? { hint: text(msg['hint'])! } : {}) };
    });
    const stderr = createInterface({ input: child.stderr });
    stderr.on('line', (line) => {
      if (!line.trim()) return;
      this.event(run.id, /warning|error|FAILED/i.test(line) ? 'warning' : 'info', line.replace(/^bulwark: /, ''));
    });

    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
      child.once('error', (error) => resolve({ code: null, signal: null, error }));
      child.once('close', (code, sig) => resolve({ code, signal: sig }));
    });
    signal.removeEventListener('abort', onAbort);

    const results = this.itemResults(job, summary, failure);
    for (const r of results.values()) {
      for (const w of r.warnings ?? []) this.event(run.id, 'warning', `${r.name}: ${w}`);
      if (r.error) this.event(run.id, 'error', `${r.name}: ${r.error}${r.hint ? ` (hint: ${r.hint})` : ''}`);
    }
    for (const [name, item] of items) {
      const r = results.get(name);
      const status: RunItem['status'] = signal.aborted ? 'interrupted' : r ? r.status : exit.code === 0 ? 'success' : 'failure';
      catalog.updateItem(item.id, {
        status,
        ...(r?.consistency ? { consistency: r.consistency } : {}),
        ...(r?.bytesRead !== undefined ? { bytesRead: r.bytesRead } : {}),
        ...(r?.bytesStored !== undefined ? { bytesStored: r.bytesStored } : {}),
        ...(r?.durationMs !== undefined ? { durationMs: r.durationMs } : {}),
        ...(r?.error ? { error: r.error } : !r && status === 'failure' && failure ? { error: failure.message } : {}),
        ...(r?.hint ? { hint: r.hint } : {}),
        ...(r?.snapshotId ? { snapshotId: r.snapshotId } : {}),
      });
    }

    let status: FinalRunStatus;
    if (signal.aborted) status = 'interrupted';
    else if (exit.error) status = 'failure';
    else if (exit.code === 0) status = [...results.values()].some((r) => r.status === 'warning') ? 'warning' : 'success';
    else if (exit.code === 3) status = 'warning';
    else status = [...results.values()].some((r) => r.status !== 'failure') ? 'warning' : 'failure';

    const why = exit.error ? `the backup command could not start: ${exit.error.message}` : exit.signal ? `the backup command was ended by ${exit.signal}` : exit.code !== 0 ? `the backup command exited ${exit.code}` : undefined;
    if (why) this.event(run.id, status === 'failure' ? 'error' : 'warning', why);
    if (failure) this.event(run.id, 'error', failure.message + (failure.hint ? ` (hint: ${failure.hint})` : ''));
    const runSummary: JsonObject = {
      items: names.length,
      succeeded: [...results.values()].filter((r) => r.status !== 'failure').length,
      bytesRead: [...results.values()].reduce((s, r) => s + (r.bytesRead ?? 0), 0),
      bytesStored: [...results.values()].reduce((s, r) => s + (r.bytesStored ?? 0), 0),
      ...(exit.code !== null ? { exitCode: exit.code } : {}),
      ...(failure ? { error: failure.message } : {}),
    };
    if (status === 'success' || status === 'warning') {
      const kept = await this.retention(job, run.id, signal);
      if (!kept && status === 'success') status = 'warning';
    }
    return this.end(job, run, status, runSummary, results, failure);
  }

  /** The job's retention among its own restore points; false when it was asked for and failed. */
  private async retention(job: Job, runId: string, signal: AbortSignal): Promise<boolean> {
    const o = (job.definition.options ?? {}) as Record<string, unknown>;
    const keep = (o['keep'] ?? {}) as Record<string, unknown>;
    const flags = Object.entries(keep).filter((e): e is [string, number] => typeof e[1] === 'number' && e[1] > 0);
    if (flags.length === 0) return true;
    const args = ['-r', job.definition.repository, 'forget', '--tag', `${JOB_TAG}${job.name}`, ...flags.flatMap(([k, n]) => [`--keep-${k}`, String(n)]), ...(o['prune'] === true ? ['--prune'] : [])];
    this.event(runId, 'info', `retention: bulwark ${args.slice(2).join(' ')}`);
    return (await this.watch(runId, 'retention', spawnCli(this.opts.cli, args, this.childOptions(job)), signal)) === 0;
  }

  private childOptions(job: Job): { env?: NodeJS.ProcessEnv; password: string | undefined } {
    return { ...(this.opts.env ? { env: this.opts.env } : {}), password: this.opts.passwordFor(job.definition.repository) };
  }

  /** The post-command, the run's end in the catalog, the browsers told, notifications sent. */
  private async end(job: Job, run: Run, status: FinalRunStatus, runSummary: JsonObject, results: Map<string, ItemResult>, failure: { message: string; hint?: string } | undefined): Promise<Run> {
    const { catalog, live } = this.opts;
    const post = text((job.definition.options as Record<string, unknown> | undefined)?.['postCommand']);
    if (post) {
      const code = await this.hook(run.id, 'post-command', post, { BULWARK_JOB: job.name, BULWARK_RUN: run.id, BULWARK_RUN_STATUS: status }, new AbortController().signal);
      if (code !== 0 && status === 'success') status = 'warning';
    }
    const ended = catalog.finishRun(run.id, status, runSummary);
    this.event(run.id, status === 'failure' ? 'error' : 'info', `run ended: ${status}`);
    live.publish({ type: 'run', run: ended });
    if (status !== 'interrupted') await this.sendNotifications(job, ended, results, failure);
    return ended;
  }

  /** A job's pre- or post-command through /bin/sh, its output in the event log; the exit code (-1: could not run). */
  private async hook(runId: string, what: string, command: string, extraEnv: Record<string, string>, signal: AbortSignal): Promise<number> {
    this.event(runId, 'info', `${what}: ${command}`);
    const env: NodeJS.ProcessEnv = { ...(this.opts.env ?? process.env), ...extraEnv };
    // The repository's password is not the hook's business.
    delete env['BULWARK_PASSWORD'];
    delete env['BULWARK_PASSWORD_FILE'];
    return this.watch(runId, what, spawn('/bin/sh', ['-c', command], { env, stdio: ['ignore', 'pipe', 'pipe'] }), signal);
  }

  /** A command whose output lines go into the run's event log; its exit code (-1: could not run). */
  private async watch(runId: string, what: string, child: ChildProcess, signal: AbortSignal): Promise<number> {
    const onAbort = () => child.kill('SIGTERM');
    signal.addEventListener('abort', onAbort, { once: true });
    for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on('line', (l) => l.trim() && this.event(runId, 'info', `${what}: ${l}`));
    const code = await new Promise<number>((resolve) => {
      child.once('error', (err) => {
        this.event(runId, 'error', `${what} could not start: ${err.message}`);
        resolve(-1);
      });
      child.once('close', (c) => resolve(c ?? -1));
    });
    signal.removeEventListener('abort', onAbort);
    if (code !== 0) this.event(runId, 'warning', `${what} exited ${code}`);
    return code;
  }

  private event(runId: string, level: 'info' | 'warning' | 'error', message: string): void {
    const id = this.opts.catalog.appendEvent({ runId, level, message });
    if (id === undefined) return;
    this.opts.live.publish({ type: 'event', event: { id, runId, time: new Date(), level, message } });
  }

  /** Per item name (a VM, or the folder list): what the child reported. */
  private itemResults(job: Job, summary: FilesSummaryLine | undefined, failure: { message: string; hint?: string } | undefined): Map<string, ItemResult & { snapshotId?: string }> {
    const out = new Map<string, ItemResult & { snapshotId?: string }>();
    if (!summary) return out;
    if (job.definition.kind === 'vm') {
      for (const r of summary.results ?? []) {
        const warnings = list(r.warnings);
        out.set(r.vm, {
          name: r.vm,
          status: r.error ? 'failure' : warnings.length > 0 ? 'warning' : 'success',
          ...(r.consistency ? { consistency: r.consistency } : {}),
          bytesRead: (r.disks ?? []).reduce((s, d) => s + (d.bytesRead ?? 0), 0),
          bytesStored: (r.disks ?? []).reduce((s, d) => s + (d.bytesNew ?? 0), 0),
          ...(r.error ? { error: r.error } : {}),
          ...(r.hint ? { hint: r.hint } : {}),
          ...(r.snapshot ? { snapshotId: r.snapshot } : {}),
          warnings,
        });
      }
      return out;
    }
    if (job.definition.kind === 'disk') {
      job.definition.sources.forEach((name, i) => {
        const d = summary.snapshots?.[i];
        out.set(name, {
          name,
          status: d ? 'success' : 'failure',
          ...(d?.summary?.bytesRead !== undefined ? { bytesRead: d.summary.bytesRead } : {}),
          ...(d?.summary?.bytesNew !== undefined ? { bytesStored: d.summary.bytesNew } : {}),
          ...(d?.summary?.durationMs !== undefined ? { durationMs: d.summary.durationMs } : {}),
          ...(d ? { snapshotId: d.snapshot } : failure ? { error: failure.message } : {}),
        });
      });
      return out;
    }
    const id = typeof summary.snapshot === 'string' ? summary.snapshot : undefined;
    const s = summary.summary;
    const problems = [...(summary.errors ?? []).map((e) => `${e.path}: ${e.message}`), ...list(summary.changed).map((c) => `${c}: changed while being read`), ...list(summary.warnings)];
    const name = job.definition.sources.join(', ');
    out.set(name, {
      name,
      status: !id ? 'failure' : problems.length > 0 ? 'warning' : 'success',
      ...(s?.bytesRead !== undefined ? { bytesRead: s.bytesRead } : {}),
      ...(s?.bytesNew !== undefined ? { bytesStored: s.bytesNew } : {}),
      ...(s?.durationMs !== undefined ? { durationMs: s.durationMs } : {}),
      ...(!id && failure ? { error: failure.message } : {}),
      ...(id ? { snapshotId: id } : {}),
      warnings: problems,
    });
    return out;
  }

  private async sendNotifications(job: Job, run: Run, results: Map<string, ItemResult>, failure: { message: string; hint?: string } | undefined): Promise<void> {
    const targets = this.opts.notifyTargets?.() ?? [];
    if (targets.length === 0 || run.status === 'interrupted' || run.status === 'queued' || run.status === 'running') return;
    const summary: RunSummary = {
      job: job.name,
      runId: run.id,
      status: run.status,
      host: hostname(),
      startedAt: run.startedAt ?? run.queuedAt,
      endedAt: run.endedAt ?? new Date(),
      items: [...results.values()],
      warnings: [],
      ...(failure && results.size === 0 ? { error: failure.message, ...(failure.hint ? { hint: failure.hint } : {}) } : {}),
      ...(job.definition.kind === 'folder' ? { itemNoun: { one: 'folder set', many: 'folder sets' } } : job.definition.kind === 'disk' ? { itemNoun: { one: 'disk image', many: 'disk images' } } : {}),
    };
    const outcomes = await notify(summary, targets, { log: (l) => this.opts.log?.(l) });
    for (const o of outcomes) {
      if (o.status === 'sent') this.event(run.id, 'info', `notification '${o.target}' sent`);
      else if (o.status === 'failed') this.event(run.id, 'warning', `notification '${o.target}' failed: ${o.error.message}`);
    }
  }
}
