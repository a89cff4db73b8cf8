// What Bulwark does inside a guest through qemu-guest-agent — run a program, write a file — over any
// route to the agent: its socket (protocols/qga) or libvirt's agent passthrough. Both drivers and
// verify-boot's checks use these, so the agent's protocol details live in one place.
import { BulwarkError } from '../util/errors.js';
import type { GuestFileWriter } from './session.js';

/** One guest agent command and its `return` value. */
export type AgentCall = <T>(command: string, args?: Record<string, unknown>) => Promise<T>;

/** Runs a program in the guest (guest-exec, output captured) and waits for it to end. */
export async function guestExec(call: AgentCall, path: string, args: string[], timeoutMs: number): Promise<{ exitcode: number; stdout: string; stderr: string }> {
  const deadline = Date.now() + timeoutMs;
  const { pid } = await call<{ pid: number }>('guest-exec', { path, arg: args, 'capture-output': true });
  for (;;) {
    const st = await call<{ exited: boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string }>('guest-exec-status', { pid });
    if (st.exited) {
      return { exitcode: st.exitcode ?? 128 + (st.signal ?? 0), stdout: Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8'), stderr: Buffer.from(st['err-data'] ?? '', 'base64').toString('utf8') };
    }
    if (Date.now() > deadline) throw new BulwarkError('timeout', `'${path}' did not finish in the guest in time`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Files written into the guest: folders made with mkdir -p, files in pieces of 256 KiB (an agent request is taken whole). */
export function agentFileWriter(call: AgentCall, close: () => Promise<void>): GuestFileWriter {
  return {
    async mkdir(path) {
      const r = await guestExec(call, '/bin/mkdir', ['-p', path], 60_000);
      if (r.exitcode !== 0) throw new BulwarkError('failed', `cannot make folder '${path}' in the guest: ${r.stderr.trim() || `exit ${r.exitcode}`}`);
    },
    async write(path, data, opts) {
      // qemu-ga has no exclusive create: the file is looked for first (one made in between is replaced).
      if (!opts.overwrite) {
        const existing = await call<number>('guest-file-open', { path, mode: 'r' }).catch(() => undefined);
        if (existing !== undefined) {
          await call('guest-file-close', { handle: existing }).catch(() => undefined);
          throw new BulwarkError('failed', `'${path}' already exists in the guest; restore never overwrites without --overwrite`);
        }
      }
      const handle = await call<number>('guest-file-open', { path, mode: 'wb' }).catch((err: unknown) => {
        throw new BulwarkError('failed', `cannot write '${path}' in the guest: ${(err as Error).message}`, { cause: err });
      });
      try {
        for await (const chunk of data) {
          for (let at = 0; at < chunk.length; at += 256 * 1024) await call('guest-file-write', { handle, 'buf-b64': chunk.subarray(at, at + 256 * 1024).toString('base64') });
        }
        await call('guest-file-flush', { handle });
      } finally {
        await call('guest-file-close', { handle }).catch(() => undefined);
      }
    },
    close,
  };
}
