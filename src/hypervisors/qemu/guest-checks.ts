// verify-boot's checks, run inside a booted restore point through its guest agent: a command that
// must exit 0, a file that must exist, a TCP port something must listen on (read from the guest's
// /proc/net/tcp and tcp6: no network into the guest is needed, and the VM has none).
import { QgaClient } from '../../protocols/qga/client.js';
import { guestExec } from '../guest-agent-ops.js';

export type GuestCheck = { kind: 'command'; command: string } | { kind: 'file'; path: string } | { kind: 'port'; port: number };

export interface CheckResult {
  check: string;
  ok: boolean;
  detail: string;
}

/** Waits until the guest agent answers; resolves with the milliseconds waited, or undefined at the deadline. */
export async function waitForAgent(socket: string, deadline: number, stillRunning: () => boolean): Promise<number | undefined> {
  const t0 = performance.now();
  while (Date.now() < deadline && stillRunning()) {
    try {
      const qga = await QgaClient.connect(socket, { timeoutMs: 2000 });
      try {
        await qga.ping({ timeoutMs: 2000 });
        return performance.now() - t0;
      } finally {
        await qga.close();
      }
    } catch {
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  return undefined;
}

function listens(table: string, port: number): boolean {
  // sl local_address rem_address st …: local port in hex after the colon, state 0A = LISTEN.
  return table.split('\n').slice(1).some((line) => {
    const f = line.trim().split(/\s+/);
    return f[3] === '0A' && parseInt(f[1]?.split(':')[1] ?? '', 16) === port;
  });
}

export async function runGuestChecks(socket: string, checks: GuestCheck[], timeoutMs: number): Promise<CheckResult[]> {
  const qga = await QgaClient.connect(socket, { timeoutMs: 5000 });
  const out: CheckResult[] = [];
  try {
    for (const c of checks) {
      if (c.kind === 'command') {
        const r = await guestExec((command, args) => qga.execute(command, args), '/bin/sh', ['-c', c.command], timeoutMs).catch((err: unknown) => ({ exitcode: -1, stdout: '', stderr: (err as Error).message }));
        out.push({ check: `command: ${c.command}`, ok: r.exitcode === 0, detail: `exit ${r.exitcode}${r.stdout.trim() ? `; ${r.stdout.trim().slice(0, 200)}` : ''}${r.stderr.trim() ? `; ${r.stderr.trim().slice(0, 200)}` : ''}` });
      } else if (c.kind === 'file') {
        const ok = await qga.execute<number>('guest-file-open', { path: c.path, mode: 'r' }).then(
          async (h) => {
            await qga.execute('guest-file-close', { handle: h }).catch(() => undefined);
            return true;
          },
          () => false,
        );
        out.push({ check: `file: ${c.path}`, ok, detail: ok ? 'exists' : 'missing' });
      } else {
        const tables = await Promise.all(['/proc/net/tcp', '/proc/net/tcp6'].map((p) => qga.readFile(p).then((b) => b.toString('latin1'), () => '')));
        const ok = tables.some((t) => listens(t, c.port));
        out.push({ check: `port: ${c.port}`, ok, detail: ok ? 'something listens' : 'nothing listens' });
      }
    }
  } finally {
    await qga.close();
  }
  return out;
}
