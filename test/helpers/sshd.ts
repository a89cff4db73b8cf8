// A real OpenSSH sshd from Debian's openssh-server for the SFTP backend tests: its own config, host key,
// test key pair and port on 127.0.0.1, run in the foreground (-D) as our child. No systemd here, and
// no system sshd is touched: stop() ends only the daemon this helper started and the per-connection
// processes it forked.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { answers, descendantsOf, freePort, testUserPassword, signalTree } from './daemon.js';

export interface Sshd {
  port: number;
  /** `[127.0.0.1]:port ssh-ed25519 AAAA…`, ready for a known_hosts file. */
  hostKeyLine: string;
  /** The test user's private key (authorized for `user`). */
  keyFile: string;
  user: string;
  /** The test user's password, when password login could be set up (a system user was made). */
  password: string | undefined;
  /** A folder of this helper, writable by `user`, for repositories. */
  dir: string;
  /** Kills the daemon and its sessions at once (SIGKILL), as a crashed server would go; keeps the files. */
  kill(): Promise<void>;
  /** Starts it again on the same port with the same host key (after kill()). */
  restart(): Promise<void>;
  /** Freezes the daemon and its sessions (SIGSTOP): connections stay open, nothing answers. */
  pause(): Promise<void>;
  /** Lets them run again (SIGCONT) after pause(). */
  resume(): Promise<void>;
  /** Ends the daemon and its sessions and removes the helper's files. */
  stop(): Promise<void>;
}

const run = promisify(execFile);
const SSHD = '/usr/sbin/sshd';
export const TEST_USER = 'bulwarktest';
const READY_TIMEOUT_MS = 15_000;

/** A key pair made by ssh-keygen; returns the private key path (the public one is `<path>.pub`). */
export async function makeKeyPair(path: string, type: 'ed25519' | 'ecdsa' | 'rsa' = 'ed25519'): Promise<string> {
  await run('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', 'bulwark-test', '-f', path]);
  return path;
}


/**
 * A system user for password login (sshd with UsePAM no checks /etc/shadow). Made once; its password is
 * random per run, so a known one never lingers. Undefined when we may not make users (not root).
 */
async function ensureTestUser(home: string): Promise<{ user: string; password: string } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const exists = await run('id', ['-u', TEST_USER]).then(
    () => true,
    () => false,
  );
  if (!exists) {
    // nologin: the account exists for SFTP (internal-sftp runs no shell), never for a shell.
    await run('useradd', ['--system', '--home-dir', home, '--shell', '/usr/sbin/nologin', TEST_USER]);
  }
  return { user: TEST_USER, password: await testUserPassword(TEST_USER) };
}

async function uidGid(user: string): Promise<{ uid: number; gid: number }> {
  const uid = Number((await run('id', ['-u', user])).stdout.trim());
  const gid = Number((await run('id', ['-g', user])).stdout.trim());
  return { uid, gid };
}


/** Starts an sshd for the tests; `stop()` when done. Throws if openssh-server is missing. */
export async function startSshd(): Promise<Sshd> {
  if (!existsSync(SSHD)) throw new Error(`${SSHD} is missing: install Debian's openssh-server (scripts/test-setup.sh)`);
  const dir = await mkdtemp(join(tmpdir(), 'bulwark-sshd-'));
  // The test user reads authorized_keys and works in repos/ through these folders.
  await chmod(dir, 0o755);
  const repos = join(dir, 'repos');
  await mkdir(repos, { mode: 0o755 });
  const hostKey = await makeKeyPair(join(dir, 'host_ed25519'));
  const keyFile = await makeKeyPair(join(dir, 'client_ed25519'));
  const authorized = join(dir, 'authorized_keys');
  await writeFile(authorized, await readFile(`${keyFile}.pub`), { mode: 0o644 });
  await chmod(authorized, 0o644);

  const made = await ensureTestUser(repos).catch(() => undefined);
  const user = made?.user ?? (await run('id', ['-un'])).stdout.trim();
  if (made) {
    const { uid, gid } = await uidGid(made.user);
    await chown(repos, uid, gid);
  }
  // sshd refuses to start without its privilege separation folder.
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 });

  const port = await freePort();
  const config = join(dir, 'sshd_config');
  await writeFile(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      'UsePAM no',
      'StrictModes no',
      'PubkeyAuthentication yes',
      `AuthorizedKeysFile ${authorized}`,
      `PasswordAuthentication ${made ? 'yes' : 'no'}`,
      'KbdInteractiveAuthentication no',
      'PermitRootLogin prohibit-password',
      `AllowUsers ${user}`,
      'Subsystem sftp internal-sftp',
      'X11Forwarding no',
      'AllowTcpForwarding no',
      'PrintMotd no',
      'LogLevel ERROR',
      // Our test of a dead server kills the daemon; no client should wait on it for long.
      'LoginGraceTime 20',
      'MaxStartups 50',
      '',
    ].join('\n'),
  );
  const hostKeyLine = `[127.0.0.1]:${port} ${(await readFile(`${hostKey}.pub`, 'utf8')).trim().split(/\s+/).slice(0, 2).join(' ')}`;

  let child: ChildProcess | undefined;
  let log = '';
  const start = async (): Promise<void> => {
    log = '';
    const p = spawn(SSHD, ['-D', '-f', config, '-e'], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = p;
    p.stderr?.on('data', (d: Buffer) => {
      if (log.length < 64 * 1024) log += d.toString();
    });
    let exited: string | undefined;
    p.once('exit', (code, signal) => (exited = `exited with ${signal ?? code}`));
    p.once('error', (err) => (exited = err.message));
    const end = Date.now() + READY_TIMEOUT_MS;
    while (!(await answers(port, 'SSH-'))) {
      if (exited !== undefined) throw new Error(`sshd ${exited} before answering: ${log.trim()}`);
      if (Date.now() > end) {
        p.kill('SIGKILL');
        throw new Error(`sshd did not answer on port ${port} within ${READY_TIMEOUT_MS / 1000} s: ${log.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const kill = async (): Promise<void> => {
    const p = child;
    child = undefined;
    if (p?.pid === undefined || p.exitCode !== null || p.signalCode !== null) return;
    // The sessions first (while the daemon is still their parent and so findable), then the daemon.
    for (const pid of await descendantsOf(p.pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    const gone = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill('SIGKILL');
    await gone;
  };

  try {
    await start();
  } catch (err) {
    await kill().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  return {
    port,
    hostKeyLine,
    keyFile,
    user,
    password: made?.password,
    dir: repos,
    kill,
    restart: async () => {
      await kill();
      await start();
    },
    pause: async () => {
      if (child?.pid !== undefined) await signalTree(child.pid, 'SIGSTOP');
    },
    resume: async () => {
      if (child?.pid !== undefined) await signalTree(child.pid, 'SIGCONT');
    },
    stop: async () => {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
