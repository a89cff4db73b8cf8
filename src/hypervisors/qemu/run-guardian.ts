// Starts and talks to the run guardian (run-guardian-child.js): while Bulwark has a VM paused or shut
// down, a separate process holding the same QMP connection restarts it if Bulwark dies. docs/architecture.md: a
// VM is never left frozen or paused by Bulwark, whatever fails.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { QmpClient } from '../../protocols/qmp/client.js';
import type { PowerActions } from './power.js';

export type RunPhase = 'none' | 'paused' | 'stopping' | 'down' | 'restarted';

export class RunGuardian {
  private constructor(private readonly child: ChildProcess) {}

  /** `actions`: the VM's own shutdown/reboot actions, to put back after a restart (once the agent at `qgaSocket` answers). */
  static start(qmp: QmpClient, actions: PowerActions, opts: { stopTimeoutMs: number; qgaSocket?: string }): RunGuardian {
    const entry = fileURLToPath(new URL('./run-guardian-child.js', import.meta.url));
    // detached: its own process group and session, so a kill of ours does not reach it. fd 3 is the
    // QMP connection, which it leaves alone until it has to act.
    const child = spawn(process.execPath, [entry, actions.shutdown, actions.reboot, String(opts.stopTimeoutMs), ...(opts.qgaSocket ? [opts.qgaSocket] : [])], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore', qmp.socketForWatchdog()],
    });
    child.unref();
    child.on('error', () => undefined);
    child.stdin!.on('error', () => undefined);
    return new RunGuardian(child);
  }

  /** What the guardian should do if this process dies now. */
  phase(p: RunPhase): void {
    this.child.stdin!.write(`phase ${p}\n`);
  }

  /** The VM is running as before: the guardian exits without acting. */
  async release(): Promise<void> {
    if (this.child.exitCode !== null) return;
    let timer: NodeJS.Timeout | undefined;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.stdin!.end('done\n');
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5000)))]);
    clearTimeout(timer);
  }
}
