// Starts and talks to the freeze guardian (guardian-child.js): the one agent client for a VM during a
// backup, in a process that outlives this one so that a frozen guest is always thawed.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BulwarkError } from '../util/errors.js';

export interface GuardianOptions {
  /** A freeze is undone by the guardian after this long, whatever happens (VSS allows writers 10 s). */
  deadlineMs?: number;
  callTimeoutMs?: number;
}

export class Guardian {
  private seq = 0;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();

  private constructor(private readonly child: ChildProcess) {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      const msg = JSON.parse(line) as { id: number; result?: unknown; error?: string };
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error !== undefined) p.reject(new BulwarkError('protocol', msg.error));
      else p.resolve(msg.result);
    });
    child.on('exit', () => {
      for (const p of this.pending.values()) p.reject(new BulwarkError('protocol', 'freeze guardian exited'));
      this.pending.clear();
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  static start(qgaSocket: string, opts: GuardianOptions = {}): Guardian {
    const entry = fileURLToPath(new URL('./guardian-child.js', import.meta.url));
    // detached: its own process group and session, so a kill of ours does not reach it.
    const child = spawn(process.execPath, [entry, qgaSocket, String(opts.deadlineMs ?? 10_000), String(opts.callTimeoutMs ?? 10_000)], { detached: true, stdio: ['pipe', 'pipe', 'ignore'] });
    child.unref();
    return new Guardian(child);
  }

  private call<T>(cmd: string, extra: Record<string, unknown> = {}): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.stdin!.write(JSON.stringify({ id, cmd, ...extra }) + '\n');
    });
  }

  ping(): Promise<unknown> {
    return this.call('ping');
  }
  info(): Promise<{ version: string; supported_commands: { name: string; enabled: boolean }[] }> {
    return this.call('info');
  }
  status(): Promise<'frozen' | 'thawed'> {
    return this.call('status');
  }
  freeze(): Promise<number> {
    return this.call('freeze');
  }
  thaw(): Promise<number> {
    return this.call('thaw');
  }
  exists(path: string): Promise<boolean> {
    return this.call('exists', { path });
  }

  /** Closing its stdin tells the guardian to thaw if needed and exit. */
  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    let timer: NodeJS.Timeout | undefined;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.stdin!.end();
    // A guardian still thawing a slow guest is left to finish on its own after 15 s; the timer must
    // not keep this process alive once the guardian has exited.
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 15_000)))]);
    clearTimeout(timer);
  }
}
