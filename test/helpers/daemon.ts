// What the test helpers that start real servers (sshd.ts, ftpd.ts, s3server.ts) share: a free
// loopback port, "is it answering yet", a system user's password, and a daemon's process tree (to
// kill its sessions as a crash would, or freeze them as a hung host would).
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { link, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

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
/**
 * The password of a system user the test servers log in (set with chpasswd). One per user for the
 * whole run, shared by every test process through a file made with link() (atomic, first wins): test
 * files run in parallel, and a password set anew by each would lock the others out mid-test.
 */
export async function testUserPassword(user: string): Promise<string> {
  const dir = join(tmpdir(), 'bulwark-test-passwords');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, user);
  const mine = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
  await writeFile(mine, randomBytes(12).toString('base64url'), { mode: 0o600 });
  try {
    await link(mine, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    await rm(mine, { force: true });
  }
  const password = (await readFile(file, 'utf8')).trim();
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

/**
 * Sends SIGSTOP or SIGCONT to a daemon and every process below it: a server that stops answering but
 * keeps its connections open, as a hung host or a frozen VM does. The daemon is stopped before its
 * tree is read, so no session it forks meanwhile escapes.
 */
export async function signalTree(pid: number, signal: 'SIGSTOP' | 'SIGCONT'): Promise<void> {
  const send = (p: number): void => {
    try {
      process.kill(p, signal);
    } catch {
      // gone already
    }
  };
  send(pid);
  for (const p of await descendantsOf(pid)) send(p);
}

