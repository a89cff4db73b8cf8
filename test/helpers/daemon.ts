// What the test helpers that start real servers (sshd.ts, ftpd.ts, s3server.ts) share: a free
// loopback port, "is it answering yet", a system user's password, and a daemon's process tree (to
// kill its sessions as a crash would).
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** True once something on the port accepts a connection and, if `banner` is given, greets with it. */
export function answers(port: number, banner?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host: '127.0.0.1', port });
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2_000, () => done(false));
    if (banner === undefined) s.once('connect', () => done(true));
    else s.once('data', (d: Buffer) => done(d.toString('latin1').startsWith(banner)));
    s.once('error', () => done(false));
  });
}

/** Gives a system user a new random password (chpasswd) and returns it. */
export async function setRandomPassword(user: string): Promise<string> {
  const password = randomBytes(12).toString('base64url');
  await new Promise<void>((resolve, reject) => {
    const p = spawn('chpasswd', [], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.once('error', reject);
    p.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`chpasswd failed: ${err}`))));
    p.stdin.end(`${user}:${password}\n`);
  });
  return password;
}

/**
 * All descendants of a process, from one parallel pass over /proc: servers fork per session, and a
 * slow scan would let a transfer finish before the "crash" reaches it.
 */
export async function descendantsOf(pid: number): Promise<number[]> {
  const entries = (await readdir('/proc').catch(() => [] as string[])).filter((e) => /^\d+$/.test(e));
  const parents = new Map<number, number[]>();
  await Promise.all(
    entries.map(async (entry) => {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
      // The command name may hold spaces and parentheses; the fields after its last ')' are fixed.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parents.set(ppid, [...(parents.get(ppid) ?? []), Number(entry)]);
    }),
  );
  const all: number[] = [];
  for (let queue = [pid]; queue.length > 0; ) {
    const kids = parents.get(queue.shift()!) ?? [];
    all.push(...kids);
    queue.push(...kids);
  }
  return all;
}
