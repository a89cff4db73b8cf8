// Starts and talks to a VM's guardian (guardian-main.ts): one process per VM for the length of a
// backup, in its own process group and session so that whatever kills Bulwark does not reach it. It
// holds the guest agent (freeze and thaw go through it) and a way to the VM: for QEMU a copy of the
// QMP connection (fd 3, untouched while Bulwark lives), for libvirt its own libvirt connection. When
// Bulwark goes away without saying "done", it thaws a frozen guest and acts on the last phase:
// resumes paused vCPUs, waits for a shutdown and boots the guest again, ends a libvirt backup job
// left running (docs/architecture.md: a VM is never left frozen, paused or down by Bulwark).
//
// Its log goes to a file in the scratch folder while it runs; a release after a clean run deletes
// it, so a log found there by the next run is what a guardian did on its own, and is reported.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BulwarkError, type ErrorCode } from '../util/errors.js';
import { processAlive } from '../util/process-temp.js';
import type { GuestAgent } from './session.js';
import type { PowerActions } from './qemu/power.js';

/** What the guardian must do if Bulwark dies now. */
export type GuardianPhase = 'none' | 'paused' | 'stopping' | 'down' | 'restarted';

/** How the guardian reaches the VM: QEMU directly, or through libvirt. */
export type GuardedVm =
  | {
      kind: 'qemu';
      /** The guest agent's socket; absent: no freeze, no agent calls. */
      qga?: string;
      /** fd 3 is the VM's QMP connection (needed to resume or restart the VM). */
      qmp: boolean;
      /** The VM's own shutdown/reboot actions, put back after a restart. */
      actions: PowerActions;
    }
  | {
      kind: 'libvirt';
      uri: string;
      uuid: string;
      /** Agent calls go through libvirt (which holds the agent's channel). */
      agent: boolean;
      /** A pull-mode backup job whose NBD socket is under this folder is ours: ended if Bulwark dies. */
      jobDir: string;
    };

export interface GuardianConfig {
  vm: string;
  target: GuardedVm;
  freezeDeadlineMs: number;
  agentTimeoutMs: number;
  stopTimeoutMs: number;
}

type GuardianOp = { op: 'info' } | { op: 'exists'; path: string } | { op: 'freeze' } | { op: 'thaw' } | { op: 'status' };
export type GuardianRequest = { id: number } & GuardianOp;
export type GuardianControl = { op: 'phase'; phase: GuardianPhase } | { op: 'done' };
export type GuardianReply = { id: number; result: unknown } | { id: number; error: string; code: ErrorCode } | { log: string };

const LOG_PREFIX = 'bulwark-guardian-';

function logStem(vm: string): string {
  return `${LOG_PREFIX}${vm.replace(/[^A-Za-z0-9_.]/g, '_')}-`;
}

/** The guardian's entry: compiled next to this module; from a source checkout, the TypeScript through tsx. */
function entry(): string[] {
  const js = fileURLToPath(new URL('./guardian-main.js', import.meta.url));
  if (existsSync(js)) return [js];
  const ts = fileURLToPath(new URL('./guardian-main.ts', import.meta.url));
  if (existsSync(ts)) return ['--import', 'tsx', ts];
  throw new BulwarkError('failed', `the guardian program is missing next to '${js}'`, { hint: 'reinstall Bulwark (npm run build in a source checkout)' });
}

export class Guardian {
  private seq = 0;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  private exited = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly logFile: string,
    onLog: (message: string) => void,
  ) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let msg: GuardianReply;
      try {
        msg = JSON.parse(line) as GuardianReply;
      } catch {
        return;
      }
      if ('log' in msg) {
        onLog(msg.log);
        return;
      }
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if ('error' in msg) p.reject(new BulwarkError(msg.code, msg.error));
      else p.resolve(msg.result);
    });
    child.on('exit', () => {
      this.exited = true;
      for (const p of this.pending.values()) p.reject(new BulwarkError('protocol', 'the guardian process exited'));
      this.pending.clear();
    });
    child.on('error', () => undefined);
    child.stdin!.on('error', () => undefined);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** `qmpFd`: for a QEMU target, the QMP connection's descriptor (QmpClient.socketForWatchdog), for resuming or restarting the VM. */
  static start(config: GuardianConfig, opts: { qmpFd?: number; logDir: string; onLog?: (message: string) => void }): Guardian {
    const logFile = join(opts.logDir, `${logStem(config.vm)}${process.pid}.log`);
    let log: number;
    try {
      log = openSync(logFile, 'a', 0o600);
    } catch (err) {
      throw new BulwarkError('usage', `cannot write the guardian's log in '${opts.logDir}': ${(err as Error).message}`, { hint: 'create the scratch folder or pass another --scratch-dir', cause: err });
    }
    try {
      // detached: its own process group and session, so a kill of ours does not reach it.
      const child = spawn(process.execPath, [...entry(), JSON.stringify(config)], {
        detached: true,
        stdio: ['pipe', 'pipe', log, ...(opts.qmpFd !== undefined ? [opts.qmpFd] : [])],
      });
      child.unref();
      (child.stdout as unknown as { unref?: () => void }).unref?.();
      return new Guardian(child, logFile, opts.onLog ?? (() => undefined));
    } finally {
      closeSync(log);
    }
  }

  private call<T>(req: GuardianOp): Promise<T> {
    if (this.exited) return Promise.reject(new BulwarkError('protocol', 'the guardian process exited'));
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.stdin!.write(JSON.stringify({ ...req, id }) + '\n');
    });
  }

  /** What the guardian should do if this process dies now. */
  phase(phase: GuardianPhase): void {
    if (!this.exited) this.child.stdin!.write(JSON.stringify({ op: 'phase', phase } satisfies GuardianControl) + '\n');
  }

  readonly agent: GuestAgent = {
    info: () => this.call({ op: 'info' }),
    exists: (path) => this.call({ op: 'exists', path }),
    freeze: () => this.call({ op: 'freeze' }),
    thaw: () => this.call({ op: 'thaw' }),
  };

  /** The VM is as it was: the guardian thaws if a freeze is still on, exits, and its log goes. */
  async release(): Promise<void> {
    if (!this.exited) {
      let timer: NodeJS.Timeout | undefined;
      const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
      this.child.stdin!.end(JSON.stringify({ op: 'done' } satisfies GuardianControl) + '\n');
      // A guardian still thawing a slow guest is left to finish on its own after 15 s (its log then
      // stays for the next run to report); the timer must not keep this process alive.
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 15_000)))]);
      clearTimeout(timer);
    }
    if (this.exited) await rm(this.logFile, { force: true });
  }
}

/**
 * What guardians of earlier runs for `vm` did on their own, from the logs they left in `logDir`
 * (a log whose run still goes on is left alone); the logs are removed once read.
 */
export async function guardianLogsLeft(logDir: string, vm: string): Promise<string[]> {
  const stem = logStem(vm);
  const out: string[] = [];
  for (const f of await readdir(logDir).catch(() => [] as string[])) {
    const pid = f.startsWith(stem) ? /^(\d+)\.log$/.exec(f.slice(stem.length))?.[1] : undefined;
    if (!pid || (Number(pid) !== process.pid && processAlive(Number(pid)))) continue;
    const text = await readFile(join(logDir, f), 'utf8').catch(() => '');
    for (const line of text.split('\n')) if (line.trim()) out.push(`an interrupted run's guardian: ${line.trim()}`);
    await rm(join(logDir, f), { force: true });
  }
  return out;
}

