// Network faults in the middle of a backup to a real server on loopback: Debian's sshd (SFTP), vsftpd
// (FTP) and OpenStack Swift's S3 API. A server frozen with SIGSTOP keeps its connections open but
// answers nothing, which only the backends' own timeouts can notice; a killed one refuses at once. In
// every case the backup either rides the fault out or fails in bounded time naming the server, and
// afterwards `check` is clean and a new backup restores byte-identical. Witnesses: the CLI's exit codes
// and messages, wall-clock time, and cmp of the restored files against their sources.
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliResult } from '../helpers/cli.js';
import { countFiles, makeRandomTree, waitUntil } from '../helpers/faults.js';
import { startFtpd, type Ftpd } from '../helpers/ftpd.js';
import { removeTree, tempDir } from '../helpers/repo.js';
import { startS3Server, type S3Server } from '../helpers/s3server.js';
import { startSshd, type Sshd } from '../helpers/sshd.js';

const MiB = 1024 * 1024;
/** BULWARK_NET_TIMEOUT for these tests: silence long enough to be a fault, short enough to wait out. */
const NET_TIMEOUT_S = 5;
/** How long a frozen server stays frozen before it is let go: several timeouts, so requests do time out. */
const OUTAGE_MS = 4 * NET_TIMEOUT_S * 1000;
/** How long a killed server stays down before it is started again. */
const DOWN_MS = 3_000;
/**
 * BULWARK_RETRIES for the frozen-for-good case: three attempts (two short waits) per request, so a
 * server that stays frozen is given up on in well under a minute, not the default three minutes.
 */
const RETRIES = 3;
/**
 * The limit on failing against a server that stays frozen: per request three timeouts and two short
 * waits, and that twice (the failed save, then removing the lock on the way out); the rest is headroom
 * for a loaded two-core machine.
 */
const FAIL_BOUND_S = 240;
/** A backup of this much random data, sent at UPLOAD_RATE, is still sending when the fault comes. */
const FILES = 2;
const FILE_BYTES = 24 * MiB;
const UPLOAD_RATE = '4M';

interface Target {
  label: string;
  env: Record<string, string>;
  /** host:port as the backend's messages name the server. */
  server: string;
  /** Seconds within which a backup against this server frozen for good must have failed. */
  failBoundS: number;
  /** Objects (or parts) the server holds: growing means the backup is sending. */
  stored(): Promise<number>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  kill?(): Promise<void>;
  restart?(): Promise<void>;
}

let tmp: { path: string; cleanup(): Promise<void> };
let serial = 0;

beforeAll(async () => {
  tmp = await tempDir('bw-offsite-faults-');
});

afterAll(async () => {
  await tmp?.cleanup();
});

/** Fresh random files (so the backup has everything to send) and the running backup of them. */
async function startBackup(t: Target, extraEnv: Record<string, string> = {}): Promise<{ src: string; files: string[]; run: Promise<CliResult>; done: () => boolean; before: number }> {
  const src = `${tmp.path}/src-${t.label}-${++serial}`;
  const files = await makeRandomTree(src, FILES, FILE_BYTES);
  const before = await t.stored();
  let finished = false;
  const run = runCli(['--limit-upload', UPLOAD_RATE, 'backup', 'files', src, '-v'], { env: { ...t.env, ...extraEnv }, timeoutMs: 1_200_000 }).finally(() => (finished = true));
  // Two new objects on the server: the backup is well under way, with most of its data still to send.
  await waitUntil(`${t.label}: the backup started sending packs`, 180_000, async () => finished || (await t.stored()) >= before + 2);
  if (finished) {
    const r = await run;
    expect.fail(`the backup ended (exit ${r.code}) before the fault could come:\n${r.stderr}`);
  }
  return { src, files, run, done: () => finished, before };
}

/** After any fault: the repository checks clean, and a new backup succeeds and restores byte-identical. */
async function expectHealthy(t: Target, src: string, files: string[]): Promise<void> {
  const check = await runCli(['check'], { env: t.env, timeoutMs: 600_000 });
  expect(check.code, check.stdout + check.stderr).toBe(0);
  const again = await runCli(['backup', 'files', src], { env: t.env, timeoutMs: 600_000 });
  expect(again.code, again.stderr).toBe(0);
  const out = `${tmp.path}/out-${t.label}-${serial}`;
  const r = await runCli(['restore', 'latest', '--source', 'files', '--target', out], { env: t.env, timeoutMs: 600_000 });
  expect(r.code, r.stderr).toBe(0);
  for (const f of files) execFileSync('cmp', [f, `${out}${f}`]);
  await removeTree(out);
  await removeTree(src);
}

/** The fault cases every backend gets, and with `crash` the one of a killed server (needs kill and restart). */
function faultCases(target: () => Target, silence: RegExp, crash: boolean): void {
  it('frozen (SIGSTOP) mid-backup and let go after a while: requests time out, are retried, and the backup completes', async () => {
    const t = target();
    const { src, files, run } = await startBackup(t);
    await t.pause();
    try {
      // The outage's length, not a wait for some state: the server is frozen for this long.
      await new Promise((r) => setTimeout(r, OUTAGE_MS));
    } finally {
      await t.resume();
    }
    const r = await run;
    console.log(`${t.label}: frozen for ${OUTAGE_MS / 1000} s; first retry: ${r.stderr.split('\n').find((l) => /retrying/.test(l)) ?? 'none'}`);
    expect(r.code, r.stderr).toBe(0);
    // The retries were for silence, noticed by the timeouts, not for a refused or closed connection.
    expect(r.stderr).toMatch(/retrying/);
    expect(r.stderr).toMatch(silence);
    await expectHealthy(t, src, files);
  }, 900_000);

  it('frozen (SIGSTOP) mid-backup for good: the backup fails in bounded time with a message naming the server', async () => {
    const t = target();
    // The default policy would wait about three minutes per request; the frozen-and-let-go case above
    // shows that policy riding out an outage.
    const { src, files, run } = await startBackup(t, { BULWARK_RETRIES: String(RETRIES) });
    await t.pause();
    const t0 = performance.now();
    let r: CliResult;
    try {
      r = await run;
    } finally {
      await t.resume();
    }
    const secs = (performance.now() - t0) / 1000;
    console.log(`${t.label}: a backup against a frozen server failed after ${secs.toFixed(0)} s (BULWARK_NET_TIMEOUT=${NET_TIMEOUT_S}, BULWARK_RETRIES=${RETRIES}), exit ${r.code}:\n${r.stderr.split('\n').slice(-6).join('\n')}`);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.code, 'not killed by the test runner').not.toBe(128);
    expect(secs).toBeLessThan(t.failBoundS);
    const last = r.stderr.trim().split('\n').filter((l) => !/retrying/.test(l)).join('\n');
    expect(last).toContain(t.server);
    expect(r.stderr).toMatch(silence);
    await expectHealthy(t, src, files);
  }, 900_000);

  it.runIf(crash)('killed mid-backup and started again a few seconds later: the backup retries through it and completes', async () => {
    const t = target();
    const { src, files, run } = await startBackup(t);
    await t.kill!();
    // The outage's length, not a wait for some state.
    await new Promise((r) => setTimeout(r, DOWN_MS));
    await t.restart!();
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    // Whether a request was in flight at the kill is timing: one that was is retried (and says so),
    // a pooled connection found dead before use is opened again without a retry.
    console.log(`${t.label}: killed for ${DOWN_MS / 1000} s mid-backup; ${r.stderr.split('\n').filter((l) => /retrying/.test(l)).length} retries`);
    await expectHealthy(t, src, files);
  }, 900_000);
}

const netEnv = { BULWARK_PASSWORD: 'faults', BULWARK_NET_TIMEOUT: String(NET_TIMEOUT_S) };

async function init(t: Target): Promise<void> {
  const r = await runCli(['init'], { env: t.env, timeoutMs: 120_000 });
  expect(r.code, r.stderr).toBe(0);
}

describe('sftp: faults mid-backup', () => {
  let sshd: Sshd;
  let t: Target;
  beforeAll(async () => {
    sshd = await startSshd();
    const known = `${tmp.path}/known_hosts`;
    await writeFile(known, `${sshd.hostKeyLine}\n`);
    const repo = `${sshd.dir}/repo`;
    t = {
      label: 'sftp',
      env: { ...netEnv, BULWARK_REPOSITORY: `sftp://${sshd.user}@127.0.0.1:${sshd.port}/${repo}`, BULWARK_SFTP_KEY: sshd.keyFile, BULWARK_SFTP_KNOWN_HOSTS: known },
      server: `127.0.0.1:${sshd.port}`,
      failBoundS: FAIL_BOUND_S,
      stored: () => countFiles(`${repo}/data`, (n) => !n.startsWith('.')),
      pause: () => sshd.pause(),
      resume: () => sshd.resume(),
    };
    await init(t);
  }, 300_000);
  afterAll(async () => {
    await sshd?.stop();
  });
  // Killing sshd mid-backup is in offsite.test.ts.
  faultCases(() => t, /was lost|in time|keepalive/i, false);
});

describe('ftp: faults mid-backup', () => {
  let ftpd: Ftpd;
  let t: Target;
  beforeAll(async () => {
    ftpd = await startFtpd();
    t = {
      label: 'ftp',
      env: { ...netEnv, BULWARK_REPOSITORY: `ftp://${ftpd.user}@127.0.0.1:${ftpd.port}/repo`, BULWARK_FTP_PASSWORD: ftpd.password },
      server: `127.0.0.1:${ftpd.port}`,
      failBoundS: FAIL_BOUND_S,
      stored: () => countFiles(`${ftpd.root}/repo/data`, (n) => !n.startsWith('.')),
      pause: () => ftpd.pause(),
      resume: () => ftpd.resume(),
      kill: () => ftpd.kill(),
      restart: () => ftpd.restart(),
    };
    await init(t);
  }, 300_000);
  afterAll(async () => {
    await ftpd?.stop();
  });
  faultCases(() => t, /timeout/i, true);
});

describe('s3: faults mid-backup', () => {
  let s3: S3Server;
  let t: Target;
  beforeAll(async () => {
    s3 = await startS3Server();
    t = {
      label: 's3',
      env: { ...netEnv, BULWARK_REPOSITORY: `s3:${s3.endpoint}/faults/web01`, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey },
      server: s3.endpoint.replace(/^http:\/\//, ''),
      failBoundS: FAIL_BOUND_S,
      stored: () => countFiles(s3.objectsDir, (n) => n.endsWith('.data')),
      pause: async () => s3.pauseProxy(),
      resume: async () => s3.resumeProxy(),
      kill: () => s3.killProxy(),
      restart: () => s3.restartProxy(),
    };
    await init(t);
  }, 300_000);
  afterAll(async () => {
    await s3?.stop();
  });
  faultCases(() => t, /timed out/i, true);
});
