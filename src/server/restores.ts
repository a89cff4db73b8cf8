// Restores started from the web UI or the API: the `bulwark restore …` command in a child process, as
// runs are, with its progress sent to the browsers. Kept in memory only: a restore is watched while
// it happens, and what it wrote is on disk; after a server restart the list starts empty.
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';
import { spawnCli } from './cli-child.js';
import type { LiveEvents } from './events.js';

export interface RestoreRequest {
  repository: string;
  snapshot: string;
  /** files: a file snapshot or files out of a VM's disks; vm: whole disks. */
  kind: 'files' | 'vm';
  /** files: a path inside the restore point (default all of it). */
  path?: string;
  target: string;
  /** vm: the disks' format. */
  format?: 'raw' | 'qcow2';
  /** vm: boot at once from the repository while the disks are copied (restore vm --instant). */
  instant?: boolean;
  /** vm: define the VM again (a libvirt domain, or a QEMU command line). */
  define?: boolean;
}

export interface RestoreState {
  id: string;
  request: RestoreRequest;
  status: 'running' | 'success' | 'failure';
  startedAt: Date;
  endedAt: Date | null;
  /** The command's last lines of output (progress excluded). */
  output: string[];
  error: string | null;
  hint: string | null;
}

const KEEP_LINES = 200;
const KEEP_RESTORES = 100;

/** The CLI arguments of a restore; `--` ends the options, so no reference can pass for one. */
export function restoreCommand(r: RestoreRequest): string[] {
  const args = ['--json', '-r', r.repository, 'restore'];
  if (r.kind === 'vm') {
    args.push('vm', '--target', r.target, '--format', r.format ?? 'raw');
    if (r.define) args.push('--define');
    if (r.instant) args.push('--instant');
    args.push('--', r.snapshot);
  } else {
    args.push('--target', r.target, '--', r.path && r.path !== '/' ? `${r.snapshot}:${r.path}` : r.snapshot);
  }
  return args;
}

export class Restores {
  private readonly all = new Map<string, RestoreState>();

  constructor(
    private readonly opts: {
      cli: readonly string[];
      live: LiveEvents;
      passwordFor(repository: string): string | undefined;
      env?: NodeJS.ProcessEnv;
    },
  ) {}

  list(): RestoreState[] {
    return [...this.all.values()].reverse();
  }

  get(id: string): RestoreState | undefined {
    return this.all.get(id);
  }

  start(request: RestoreRequest): RestoreState {
    const state: RestoreState = { id: randomUUID(), request, status: 'running', startedAt: new Date(), endedAt: null, output: [], error: null, hint: null };
    this.all.set(state.id, state);
    for (const old of [...this.all.keys()].slice(0, Math.max(0, this.all.size - KEEP_RESTORES))) this.all.delete(old);
    const child = spawnCli(this.opts.cli, restoreCommand(request), { ...(this.opts.env ? { env: this.opts.env } : {}), password: this.opts.passwordFor(request.repository) });
    const keep = (line: string) => {
      state.output.push(line);
      if (state.output.length > KEEP_LINES) state.output.splice(0, state.output.length - KEEP_LINES);
    };
    createInterface({ input: child.stdout }).on('line', (line) => {
      let msg: Record<string, unknown> | undefined;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        msg = undefined;
      }
      if (msg?.['type'] === 'progress') {
        this.opts.live.publish({ type: 'progress', progress: { runId: state.id, bytesDone: Number(msg['bytesDone'] ?? 0), ...(typeof msg['bytesTotal'] === 'number' ? { bytesTotal: msg['bytesTotal'] } : {}), files: Number(msg['files'] ?? 0), elapsedMs: Number(msg['elapsedMs'] ?? 0) } });
      } else if (msg?.['type'] === 'error') {
        state.error = String(msg['message']);
        state.hint = typeof msg['hint'] === 'string' ? msg['hint'] : null;
      } else if (line.trim()) keep(line);
    });
    createInterface({ input: child.stderr }).on('line', (line) => line.trim() && keep(line.replace(/^bulwark: /, '')));
    child.once('error', (err) => {
      state.status = 'failure';
      state.error = `the restore command could not start: ${err.message}`;
      state.endedAt = new Date();
    });
    child.once('close', (code, signal) => {
      state.endedAt = new Date();
      state.status = code === 0 ? 'success' : 'failure';
      if (code !== 0 && !state.error) state.error = signal ? `the restore command was ended by ${signal}` : `the restore command exited ${code}`;
    });
    return state;
  }
}
