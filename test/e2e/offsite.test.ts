// Off-site repositories through the real CLI against real servers on loopback: Debian's sshd (SFTP),
// vsftpd (FTPS) and OpenStack Swift's S3 API. Each gets init, a file backup, a disk backup, restore,
// check --read-data and forget; copy sends a local repository's snapshots to one. Witnesses: the
// restored files and disk against their sources (describeTree, cmp), and the servers' own folders.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeTree, makeSeededFiles } from '../fixtures/tree.js';
import { jsonResult, runCli, startCli, type RunningCli } from '../helpers/cli.js';
import { startFtpd, type Ftpd } from '../helpers/ftpd.js';
import { tempDir } from '../helpers/repo.js';
import { startS3Server, type S3Server } from '../helpers/s3server.js';
import { startSshd, type Sshd } from '../helpers/sshd.js';

const MiB = 1024 * 1024;
let tmp: { path: string; cleanup(): Promise<void> };
let src: string;
let disk: string;

beforeAll(async () => {
  tmp = await tempDir('bw-offsite-');
  src = `${tmp.path}/src`;
  await mkdir(`${src}/etc/app`, { recursive: true });
  await makeSeededFiles(`${src}/data`, 200, 7);
  await writeFile(`${src}/etc/app/app.conf`, 'listen 443\n');
  await writeFile(`${src}/big.bin`, randomBytes(24 * MiB));
  // A sparse disk image with data in a few places.
  disk = `${tmp.path}/web01.img`;
  execFileSync('truncate', ['-s', '256M', disk]);
  for (const seek of [0, 100, 255]) execFileSync('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=1', `seek=${seek}`, 'conv=notrunc'], { stdio: 'pipe' });
}, 120_000);

afterAll(async () => {
  await tmp?.cleanup();
});

/** The life of a repository on one remote store, through the CLI. */
async function roundTrip(env: Record<string, string>, label: string): Promise<void> {
  const init = await runCli(['init'], { env });
  expect(init.code, init.stderr).toBe(0);
  const t0 = performance.now();
  const b = await runCli(['backup', 'files', src, '--json'], { env, timeoutMs: 300_000 });
  expect(b.code, b.stderr).toBe(0);
  const secs = (performance.now() - t0) / 1000;
  const mb = Number(execFileSync('du', ['-sb', src]).toString().split('\t')[0]) / 1e6;
  console.log(`${label}: first file backup of ${mb.toFixed(0)} MB in ${secs.toFixed(1)} s (${(mb / secs).toFixed(1)} MB/s)`);
  const d = await runCli(['backup', 'disk', disk, '--json'], { env, timeoutMs: 300_000 });
  expect(d.code, d.stderr).toBe(0);

  const out = `${tmp.path}/out-${label}`;
  const r = await runCli(['restore', 'latest', '--source', 'files', '--target', out], { env, timeoutMs: 300_000 });
  expect(r.code, r.stderr).toBe(0);
  expect(await describeTree(`${out}${src}`)).toEqual(await describeTree(src));
  const vm = await runCli(['restore', 'vm', 'latest', '--source', 'disk:web01', '--target', `${out}-disk`], { env, timeoutMs: 300_000 });
  expect(vm.code, vm.stderr).toBe(0);
  execFileSync('cmp', [disk, `${out}-disk/web01.raw`]);

  const check = await runCli(['check', '--read-data'], { env, timeoutMs: 300_000 });
  expect(check.code, check.stdout + check.stderr).toBe(0);
  const again = await runCli(['backup', 'files', src, '--json'], { env, timeoutMs: 300_000 });
  expect(again.code, again.stderr).toBe(0);
  const f = await runCli(['forget', '--keep-last', '1', '--source', 'files'], { env });
  expect(f.code, f.stderr).toBe(0);
  const list = jsonResult<{ id: string; source: string }[]>(await runCli(['snapshots', '--json'], { env }));
  expect(list.map((s) => s.source).sort()).toEqual(['disk:web01', 'files']);

  // prune on the remote store: the disk snapshot forgotten, its packs are condemned by one run and
  // removed by the next; the files snapshot still restores and check stays clean.
  const diskSnap = list.find((s) => s.source === 'disk:web01')!.id;
  expect((await runCli(['forget', diskSnap], { env })).code).toBe(0);
  const prune = async (): Promise<{ marked: { packs: number }; removed: { packs: number } }> => {
    const p = await runCli(['prune', '--json'], { env, timeoutMs: 300_000 });
    expect(p.code, p.stderr).toBe(0);
    return jsonResult(p);
  };
  const first = await prune();
  expect(first.marked.packs).toBeGreaterThan(0);
  const second = await prune();
  expect(second.removed.packs).toBe(first.marked.packs);
  const afterPrune = await runCli(['check', '--read-data'], { env, timeoutMs: 300_000 });
  expect(afterPrune.code, afterPrune.stdout + afterPrune.stderr).toBe(0);
  const r2 = await runCli(['restore', 'latest', '--source', 'files', '--target', `${out}-after-prune`], { env, timeoutMs: 300_000 });
  expect(r2.code, r2.stderr).toBe(0);
  expect(await describeTree(`${out}-after-prune${src}`)).toEqual(await describeTree(src));
}

describe('sftp: repositories', () => {
  let sshd: Sshd;
  let env: Record<string, string>;
  beforeAll(async () => {
    sshd = await startSshd();
    const known = `${tmp.path}/known_hosts`;
    await writeFile(known, `${sshd.hostKeyLine}\n`);
    env = { BULWARK_REPOSITORY: `sftp://${sshd.user}@127.0.0.1:${sshd.port}/${sshd.dir}/repo`, BULWARK_PASSWORD: 'offsite', BULWARK_SFTP_KEY: sshd.keyFile, BULWARK_SFTP_KNOWN_HOSTS: known };
  }, 120_000);
  afterAll(async () => {
    await sshd?.stop();
  });

  it('init, backup, restore, check --read-data and forget over SFTP; the files land in the server\'s folder', async () => {
    await roundTrip(env, 'sftp');
    expect((await readdir(`${sshd.dir}/repo`)).sort()).toEqual(['config', 'data', 'index', 'keys', 'locks', 'notes', 'snapshots']);
  });

  it('an unknown host key is refused with its fingerprint, and nothing is written', async () => {
    const empty = `${tmp.path}/known_hosts-empty`;
    await writeFile(empty, '');
    const r = await runCli(['init'], { env: { ...env, BULWARK_REPOSITORY: `sftp://${sshd.user}@127.0.0.1:${sshd.port}/${sshd.dir}/other`, BULWARK_SFTP_KNOWN_HOSTS: empty } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/SHA256:[A-Za-z0-9+/]{43}/);
    expect(r.stderr).toMatch(/ssh-keyscan/);
    expect(await readdir(sshd.dir)).not.toContain('other');
  });

  it('the server killed mid-backup and back a few seconds later: the backup retries through it and completes; check is clean', async () => {
    const faults = `${tmp.path}/faults-src`;
    await mkdir(faults);
    await writeFile(`${faults}/big.bin`, randomBytes(160 * MiB));
    const packs = async (): Promise<number> => {
      let n = 0;
      for (const sub of await readdir(`${sshd.dir}/repo/data`).catch(() => [])) n += (await readdir(`${sshd.dir}/repo/data/${sub}`)).filter((f) => !f.startsWith('.')).length;
      return n;
    };
    const before = await packs();
    let pid = 0;
    const run = runCli(['backup', 'files', faults, '-v', '--json'], { env, timeoutMs: 300_000, onSpawn: (p) => (pid = p) });
    const end = Date.now() + 120_000;
    while ((await packs()) < before + 2) {
      expect(Date.now(), 'the backup started sending packs').toBeLessThan(end);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(pid).toBeGreaterThan(0);
    await sshd.kill();
    await new Promise((r) => setTimeout(r, 3000));
    await sshd.restart();
    const r = await run;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/retrying/);
    const check = await runCli(['check', '--read-data'], { env, timeoutMs: 300_000 });
    expect(check.code, check.stdout + check.stderr).toBe(0);
    const out = `${tmp.path}/out-faults`;
    expect((await runCli(['restore', 'latest', '--source', 'files', '--target', out], { env, timeoutMs: 300_000 })).code).toBe(0);
    execFileSync('cmp', [`${faults}/big.bin`, `${out}${faults}/big.bin`]);
  });

  it('copy sends a local repository\'s snapshots to the SFTP one', async () => {
    const local = { BULWARK_REPOSITORY: `${tmp.path}/local-repo`, BULWARK_PASSWORD: 'local' };
    expect((await runCli(['init'], { env: local })).code).toBe(0);
    expect((await runCli(['backup', 'files', `${src}/etc`, '--tag', 'from-local'], { env: local })).code).toBe(0);
    const c = await runCli(['copy', '--to', env.BULWARK_REPOSITORY!, '--json'], { env: { ...local, BULWARK_TO_PASSWORD: 'offsite', BULWARK_SFTP_KEY: env.BULWARK_SFTP_KEY!, BULWARK_SFTP_KNOWN_HOSTS: env.BULWARK_SFTP_KNOWN_HOSTS! }, timeoutMs: 300_000 });
    expect(c.code, c.stderr).toBe(0);
    const there = jsonResult<{ tags: string[] }[]>(await runCli(['snapshots', '--json', '--tag', 'from-local'], { env }));
    expect(there).toHaveLength(1);
  });
});

describe('ftps:// repositories', () => {
  let ftpd: Ftpd;
  let env: Record<string, string>;
  beforeAll(async () => {
    ftpd = await startFtpd({ tls: true });
    env = { BULWARK_REPOSITORY: `ftps://${ftpd.user}@127.0.0.1:${ftpd.port}/repo`, BULWARK_PASSWORD: 'offsite', BULWARK_FTP_PASSWORD: ftpd.password, BULWARK_FTP_CA: ftpd.caFile! };
  }, 120_000);
  afterAll(async () => {
    await ftpd?.stop();
  });

  it('init, backup, restore, check --read-data and forget over explicit FTPS', async () => {
    await roundTrip(env, 'ftps');
  });

  it('a wrong password fails clearly, at once', async () => {
    const r = await runCli(['snapshots'], { env: { ...env, BULWARK_FTP_PASSWORD: 'wrong' }, timeoutMs: 60_000 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/530|login|password/i);
  });
});

describe('s3: repositories', () => {
  let s3: S3Server;
  let env: Record<string, string>;
  beforeAll(async () => {
    s3 = await startS3Server();
    env = { BULWARK_REPOSITORY: `s3:${s3.endpoint}/bulwark/hosts/web01`, BULWARK_PASSWORD: 'offsite', AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };
  }, 180_000);
  afterAll(async () => {
    await s3?.stop();
  });

  it('init, backup, restore, check --read-data and forget on an S3 API (Swift)', async () => {
    await roundTrip(env, 's3');
  });

  it('with --limit-upload the backup keeps to the rate', async () => {
    const limited = { ...env, BULWARK_REPOSITORY: `s3:${s3.endpoint}/bulwark/limited` };
    expect((await runCli(['init'], { env: limited })).code).toBe(0);
    const img = `${tmp.path}/small.img`;
    await writeFile(img, randomBytes(8 * MiB));
    const t0 = performance.now();
    const b = await runCli(['--limit-upload', '2M', 'backup', 'disk', img], { env: limited, timeoutMs: 120_000 });
    expect(b.code, b.stderr).toBe(0);
    // 8 MiB of incompressible data at 2 MiB/s: at least about three seconds (the first pack goes free).
    expect(performance.now() - t0).toBeGreaterThan(2500);
  });
});

describe('rest: repositories on bulwark serve-repo', () => {
  let server: RunningCli<{ url: string; fingerprint: string }> | undefined;
  let base: Record<string, string>;
  beforeAll(async () => {
    const data = `${tmp.path}/serve-repo`;
    await mkdir(data);
    for (const [user, extra] of [['web01', []], ['locked', ['--user-append-only']]] as const) {
      await writeFile(`${tmp.path}/${user}.pw`, `${user}-secret\n`);
      const add = await runCli(['serve-repo', '--data', data, '--add-user', user, '--password-file', `${tmp.path}/${user}.pw`, ...extra]);
      expect(add.code, add.stderr).toBe(0);
    }
    server = await startCli(['serve-repo', '--data', data, '--listen', '127.0.0.1:0']);
    base = { BULWARK_PASSWORD: 'offsite', BULWARK_REST_FINGERPRINT: server.ready.fingerprint };
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
  });

  const at = (user: string, repo: string): Record<string, string> => ({ ...base, BULWARK_REPOSITORY: `rest:${server!.ready.url.replace(/^https:\/\//, `https://${user}@`).replace(/\/$/, '')}/${repo}`, BULWARK_REST_PASSWORD: `${user}-secret` });

  it('init, backup, restore, check --read-data and forget through the server, TLS pinned', async () => {
    await roundTrip(at('web01', 'web01'), 'rest');
  });

  it('an append-only login backs up, but forget is refused and nothing is deleted', async () => {
    const env = at('locked', 'db01');
    expect((await runCli(['init'], { env })).code).toBe(0);
    expect((await runCli(['backup', 'files', `${src}/etc`], { env })).code).toBe(0);
    expect((await runCli(['backup', 'files', `${src}/etc`], { env })).code).toBe(0);
    const f = await runCli(['forget', '--keep-last', '1'], { env });
    expect(f.code).not.toBe(0);
    expect(f.stdout + f.stderr).toMatch(/append-only/);
    expect(jsonResult<unknown[]>(await runCli(['snapshots', '--json'], { env }))).toHaveLength(2);
    expect((await runCli(['check'], { env })).code).toBe(0);
  });

  it('a wrong password and a wrong pin are refused', async () => {
    const bad = await runCli(['snapshots'], { env: { ...at('web01', 'web01'), BULWARK_REST_PASSWORD: 'nope' } });
    expect(bad.code).not.toBe(0);
    const pin = await runCli(['snapshots'], { env: { ...at('web01', 'web01'), BULWARK_REST_FINGERPRINT: '00'.repeat(32) } });
    expect(pin.code).not.toBe(0);
    expect(pin.stderr).toContain(server!.ready.fingerprint.slice(0, 16));
  });
});

