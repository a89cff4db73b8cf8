// A real vsftpd from Debian's vsftpd package for the FTP backend tests: its own config file, log,
// certificate and port on 127.0.0.1, run in the foreground (background=NO) as our child. No systemd
// here, and no system FTP server is touched: stop() ends only the daemon this helper started and the
// per-session processes it forked.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { answers, descendantsOf, freePort, testUserPassword, signalTree } from './daemon.js';

export interface FtpdOptions {
  /** Explicit FTPS (AUTH TLS) with a fresh self-signed certificate; logins and data must then use TLS. */
  tls?: boolean;
  /** Bytes per second per transfer (vsftpd's local_max_rate), so a test can catch a transfer midway. */
  maxRate?: number;
}

export interface Ftpd {
  port: number;
  user: string;
  password: string;
  /** The server certificate (PEM), to trust as a CA; present with `tls`. */
  caFile: string | undefined;
  /** SHA-256 of the certificate's DER bytes, lowercase hex; present with `tls`. */
  fingerprint: string | undefined;
  /** The login folder of `user` on this machine (locations are relative to it). */
  root: string;
  /** vsftpd's transfer log: one line per upload or download with the bytes it sent. */
  logFile: string;
  /** Kills the daemon and its sessions at once (SIGKILL), as a crashed server would go; keeps the files. */
  kill(): Promise<void>;
  /** Starts it again on the same port, with the same certificate and files (after kill()). */
  restart(): Promise<void>;
  /** Freezes the daemon and its sessions (SIGSTOP): connections stay open, nothing answers. */
  pause(): Promise<void>;
  /** Lets them run again (SIGCONT) after pause(). */
  resume(): Promise<void>;
  /** Ends the daemon and its sessions and removes the helper's files. */
  stop(): Promise<void>;
}

const run = promisify(execFile);
const VSFTPD = '/usr/sbin/vsftpd';
export const FTP_TEST_USER = 'bulwarkftp';
const READY_TIMEOUT_MS = 15_000;
const PASV_PORTS = 200;

/**
 * The system user vsftpd logs in through PAM (/etc/shadow). Made once, with a shell PAM's pam_shells
 * accepts and a home that outlives every daemon of this process (vsftpd enters it before local_root
 * and gives up if it is gone). The password is random per process, so a known one never lingers, and
 * shared by all daemons of the process, so starting one does not lock out the others.
 */
let testUser: Promise<string> | undefined;

function ensureTestUser(): Promise<string> {
  testUser ??= makeTestUser().catch((err: unknown) => {
    testUser = undefined;
    throw err;
  });
  return testUser;
}

async function makeTestUser(): Promise<string> {
  if (process.getuid?.() !== 0) throw new Error('the FTP tests need root: vsftpd logs in system users, and the test user must be created');
  const home = join(tmpdir(), `${FTP_TEST_USER}-home`);
  await mkdir(home, { recursive: true, mode: 0o755 });
  const current = await run('getent', ['passwd', FTP_TEST_USER]).then(
    (r) => r.stdout.trim(),
    () => undefined,
  );
  if (current === undefined) await run('useradd', ['--system', '--home-dir', home, '--shell', '/bin/sh', FTP_TEST_USER]);
  else if (current.split(':')[5] !== home) await run('usermod', ['--home', home, FTP_TEST_USER]);
  return testUserPassword(FTP_TEST_USER);
}


/** Starts a vsftpd for the tests; `stop()` when done. Throws if vsftpd is missing or we are not root. */
export async function startFtpd(opts: FtpdOptions = {}): Promise<Ftpd> {
  if (!existsSync(VSFTPD)) throw new Error(`${VSFTPD} is missing: install Debian's vsftpd (scripts/test-setup.sh)`);
  const dir = await mkdtemp(join(tmpdir(), 'bulwark-ftpd-'));
  // The test user reaches its login folder through this one.
  await chmod(dir, 0o755);
  const root = join(dir, 'root');
  await mkdir(root, { mode: 0o755 });
  // vsftpd insists on an empty, root-owned folder to chroot its unprivileged helpers into.
  const empty = join(dir, 'empty');
  await mkdir(empty, { mode: 0o755 });
  const logFile = join(dir, 'vsftpd.log');

  let password: string;
  try {
    password = await ensureTestUser();
    const uid = Number((await run('id', ['-u', FTP_TEST_USER])).stdout.trim());
    const gid = Number((await run('id', ['-g', FTP_TEST_USER])).stdout.trim());
    await chown(root, uid, gid);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  let caFile: string | undefined;
  let fingerprint: string | undefined;
  const tlsLines: string[] = [];
  if (opts.tls) {
    caFile = join(dir, 'cert.pem');
    const keyFile = join(dir, 'key.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '2', '-keyout', keyFile, '-out', caFile]);
    fingerprint = new X509Certificate(await readFile(caFile)).fingerprint256.replace(/:/g, '').toLowerCase();
    tlsLines.push(
      'ssl_enable=YES',
      `rsa_cert_file=${caFile}`,
      `rsa_private_key_file=${keyFile}`,
      'allow_anon_ssl=NO',
      'force_local_logins_ssl=YES',
      'force_local_data_ssl=YES',
      'ssl_tlsv1=YES',
      'ssl_sslv2=NO',
      'ssl_sslv3=NO',
      // vsftpd 3.0.3's default (DES-CBC3-SHA) is gone from OpenSSL 3.
      'ssl_ciphers=HIGH',
      // The default, spelled out: data connections must resume the control connection's TLS session,
      // as on real servers, so the backend is tested against it.
      'require_ssl_reuse=YES',
    );
  }

  const port = await freePort();
  const pasvMin = 20_000 + Math.floor(Math.random() * 10_000);
  const config = join(dir, 'vsftpd.conf');
  await writeFile(
    config,
    [
      'listen=YES',
      'listen_ipv6=NO',
      'listen_address=127.0.0.1',
      `listen_port=${port}`,
      'background=NO',
      'anonymous_enable=NO',
      'local_enable=YES',
      'write_enable=YES',
      'local_umask=077',
      `local_root=${root}`,
      'chroot_local_user=NO',
      'userlist_enable=NO',
      'pam_service_name=vsftpd',
      'connect_from_port_20=NO',
      'pasv_enable=YES',
      'pasv_address=127.0.0.1',
      `pasv_min_port=${pasvMin}`,
      `pasv_max_port=${pasvMin + PASV_PORTS}`,
      'seccomp_sandbox=NO',
      'isolate=NO',
      'isolate_network=NO',
      `secure_chroot_dir=${empty}`,
      'xferlog_enable=YES',
      'xferlog_std_format=NO',
      `vsftpd_log_file=${logFile}`,
      'max_clients=200',
      'max_per_ip=200',
      // A test that kills the server leaves no session waiting on it for long.
      'idle_session_timeout=120',
      'data_connection_timeout=60',
      ...(opts.maxRate === undefined ? [] : [`local_max_rate=${opts.maxRate}`]),
      ...tlsLines,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );

  let child: ChildProcess | undefined;
  let output = '';
  const start = async (): Promise<void> => {
    output = '';
    // Its own process group, which its sessions inherit: kill() can then end them all in one go, as
    // fast as a crash would, before a transfer in progress gets to finish.
    const p = spawn(VSFTPD, [config], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child = p;
    const collect = (d: Buffer) => {
      if (output.length < 64 * 1024) output += d.toString();
    };
    p.stdout?.on('data', collect);
    p.stderr?.on('data', collect);
    let exited: string | undefined;
    p.once('exit', (code, signal) => (exited = `exited with ${signal ?? code}`));
    p.once('error', (err) => (exited = err.message));
    const end = Date.now() + READY_TIMEOUT_MS;
    while (!(await answers(port, '220'))) {
      if (exited !== undefined) throw new Error(`vsftpd ${exited} before answering: ${output.trim()}`);
      if (Date.now() > end) {
        p.kill('SIGKILL');
        throw new Error(`vsftpd did not answer on port ${port} within ${READY_TIMEOUT_MS / 1000} s: ${output.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  const kill = async (): Promise<void> => {
    const p = child;
    child = undefined;
    if (p?.pid === undefined || p.exitCode !== null || p.signalCode !== null) return;
    // The sessions are found first, while the daemon is still their parent (vsftpd may move a session
    // to a new process group), then all go at once.
    const sessions = await descendantsOf(p.pid);
    const gone = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    for (const pid of [-p.pid, ...sessions]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
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
    user: FTP_TEST_USER,
    password,
    caFile,
    fingerprint,
    root,
    logFile,
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
