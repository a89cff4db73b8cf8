// Bad input and bad days: every one gets a clear message and the documented exit code, and the
// repository stays valid (the exit codes of the README).
import { execFileSync, spawn } from 'node:child_process';
import { chmod, chown, mkdir, readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lock } from '../../src/repository/lock.js';
import { Repository } from '../../src/repository/repository.js';
import { findSnapshot } from '../../src/repository/snapshot.js';
import { lookupPath } from '../../src/repository/walk.js';
import { LocalBackend } from '../../src/storage/local.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { patternBytes } from '../fixtures/tree.js';

const PASSWORD = 'pw for errors';
let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let repoPath: string;

beforeAll(async () => {
  tmp = await tempDir();
  await chmod(tmp.path, 0o755);
  repoPath = `${tmp.path}/repo`;
  env = { BULWARK_REPOSITORY: repoPath, BULWARK_PASSWORD: PASSWORD };
  expect((await runCli(['init'], { env })).code).toBe(0);
  await mkdir(`${tmp.path}/data`);
  await writeFile(`${tmp.path}/data/a.bin`, patternBytes(3 * 1024 * 1024, 1));
});

afterAll(async () => {
  await tmp.cleanup();
});

describe('exit codes', () => {
  it('2 for usage errors, with help pointing the way', async () => {
    const r = await runCli(['backup', 'files'], { env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/missing required argument/);
    const r2 = await runCli(['snapshots', '--no-such-flag'], { env });
    expect(r2.code).toBe(2);
    const r3 = await runCli(['snapshots'], { env: { ...env, BULWARK_REPOSITORY: undefined } });
    expect(r3.code).toBe(2);
    expect(r3.stderr).toMatch(/no repository given/);
  });

  it('10 for a missing repository, 11 for a wrong password', async () => {
    const r = await runCli(['snapshots'], { env: { ...env, BULWARK_REPOSITORY: `${tmp.path}/nope` } });
    expect(r.code).toBe(10);
    expect(r.stderr).toMatch(/no repository at/);
    const w = await runCli(['snapshots'], { env: { ...env, BULWARK_PASSWORD: 'wrong' } });
    expect(w.code).toBe(11);
    expect(w.stderr).toMatch(/password/);
    expect(w.stderr).not.toMatch(/wrong\b.*wrong/); // the password itself is never echoed
  });

  it('12 while another process holds the exclusive lock; stale locks do not block and unlock removes them', async () => {
    const repo = await Repository.open(new LocalBackend(repoPath), PASSWORD);
    try {
      const lock = await Lock.acquire(repo, true, 'prune');
      const r = await runCli(['backup', 'files', `${tmp.path}/data`], { env });
      expect(r.code).toBe(12);
      expect(r.stderr).toMatch(/locked exclusively by prune/);
      expect(r.stderr).toMatch(/unlock/);
      await lock.release();
      // A lock left by a process that died on this host is stale.
      const dead = spawn('true');
      await new Promise((res) => dead.on('close', res));
      await repo.saveDocument('locks', { time: new Date().toISOString(), exclusive: true, hostname: (await import('node:os')).hostname(), username: 'root', pid: dead.pid!, purpose: 'prune' });
      const ok = await runCli(['backup', 'files', `${tmp.path}/data`], { env });
      expect(ok.code, ok.stderr).toBe(0);
      const u = await runCli(['unlock'], { env });
      expect(u.code).toBe(0);
      expect(u.stdout).toMatch(/1 lock\(s\) removed/);
    } finally {
      await repo.close();
    }
  });

  it('3 when a source file cannot be read: the backup goes on and lists it', async () => {
    const dir = `${tmp.path}/mixed`;
    const repo2 = `${tmp.path}/repo-nobody`;
    await mkdir(dir);
    await writeFile(`${dir}/readable.txt`, 'fine\n');
    await writeFile(`${dir}/secret.txt`, 'not for nobody\n');
    await chmod(`${dir}/secret.txt`, 0o600);
    await mkdir(repo2);
    await chown(repo2, 65534, 65534);
    const as = { uid: 65534, gid: 65534 };
    const e = { BULWARK_REPOSITORY: repo2, BULWARK_PASSWORD: PASSWORD };
    expect((await runCli(['init'], { env: e, as })).code).toBe(0);
    const r = await runCli(['backup', 'files', dir, '--json'], { env: e, as });
    expect(r.code, r.stderr).toBe(3);
    const s = jsonResult<{ errors: { path: string; message: string }[] }>(r);
    expect(s.errors).toEqual([{ path: `${dir}/secret.txt`, message: 'permission denied' }]);
    const text = await runCli(['ls', 'latest'], { env: e, as });
    expect(text.stdout).toContain(`${dir}/readable.txt`);
    expect(text.stdout).not.toContain('secret.txt');
  });

  it('1 with a clear message when the restore target is not writable', async () => {
    const r = await runCli(['restore', 'latest', '--target', '/proc/bulwark-cannot-write-here'], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/restore target '\/proc\/bulwark-cannot-write-here' is not a writable directory/);
  });

  it('reports a file that keeps changing while it is read (exit 3), instead of storing it silently torn', async () => {
    const file = `${tmp.path}/data/busy.bin`;
    await writeFile(file, patternBytes(64 * 1024 * 1024, 5));
    const writer = spawn(process.execPath, ['-e', `const fs=require('fs');const fd=fs.openSync(${JSON.stringify(file)},'r+');const b=Buffer.alloc(4096);let i=0;for(;;){b.writeUInt32LE(i++,0);fs.writeSync(fd,b,0,4096,(i*4096)%(60*1024*1024));}`], { stdio: 'ignore' });
    try {
      await new Promise((res) => setTimeout(res, 300));
      const r = await runCli(['backup', 'files', `${tmp.path}/data`, '--json'], { env });
      expect(r.code, r.stderr).toBe(3);
      expect(jsonResult<{ changed: string[] }>(r).changed).toEqual([file]);
    } finally {
      writer.kill('SIGKILL');
    }
  });
});

describe('damage and full disks', () => {
  it('check --read-data finds a flipped byte, names the snapshot and file; independent files still restore', async () => {
    const dir = `${tmp.path}/two`;
    const e = { BULWARK_REPOSITORY: `${tmp.path}/repo-damage`, BULWARK_PASSWORD: PASSWORD };
    expect((await runCli(['init'], { env: e })).code).toBe(0);
    await mkdir(dir);
    await writeFile(`${dir}/keep.bin`, patternBytes(2 * 1024 * 1024, 11));
    const s1 = jsonResult<{ snapshot: string }>(await runCli(['backup', 'files', dir, '--json'], { env: e })).snapshot;
    await writeFile(`${dir}/victim.bin`, patternBytes(2 * 1024 * 1024, 12));
    const s2 = jsonResult<{ snapshot: string }>(await runCli(['backup', 'files', dir, '--json'], { env: e })).snapshot;

    expect((await runCli(['check', '--read-data'], { env: e })).code).toBe(0);

    // Flip one byte inside victim.bin's first data blob.
    const repo = await Repository.open(new LocalBackend(e.BULWARK_REPOSITORY), PASSWORD);
    let packFile: string;
    let offset: number;
    try {
      await repo.loadIndex();
      const sn = await findSnapshot(repo, s2);
      const found = await lookupPath(repo, sn.tree!, `${dir}/victim.bin`);
      const entry = repo.index.lookup(found!.node!.content![0]!)!;
      packFile = `${e.BULWARK_REPOSITORY}/data/${entry.pack.slice(0, 2)}/${entry.pack}`;
      offset = entry.offset + 1000;
    } finally {
      await repo.close();
    }
    const bytes = await readFile(packFile);
    bytes[offset]! ^= 0x20;
    await chmod(packFile, 0o644);
    await writeFile(packFile, bytes);

    const quick = await runCli(['check'], { env: e });
    expect(quick.code).toBe(0); // structure is intact; only reading the data finds it
    const c = await runCli(['check', '--read-data'], { env: e });
    expect(c.code).toBe(1);
    expect(c.stdout).toContain(`damaged: snapshot ${s2.slice(0, 8)} ${dir}/victim.bin`);
    expect(c.stdout).not.toContain(`snapshot ${s1.slice(0, 8)}`);
    const cj = jsonResult<{ damagedSnapshots: string[]; affected: { snapshot: string; path: string }[] }>(await runCli(['check', '--read-data', '--json'], { env: e }));
    expect(cj.damagedSnapshots).toEqual([s2]);

    const out = `${tmp.path}/restore-keep`;
    const r = await runCli(['restore', `${s2}:${dir}/keep.bin`, '--target', out, '--verify'], { env: e });
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(`${out}/keep.bin`)).equals(patternBytes(2 * 1024 * 1024, 11))).toBe(true);
    const bad = await runCli(['restore', `${s2}:${dir}/victim.bin`, '--target', `${tmp.path}/restore-victim`], { env: e });
    expect(bad.code).toBe(3);
    expect(bad.stdout + bad.stderr).toMatch(/victim\.bin.*(authentication|damaged)/);
  });

  it('a full repository disk fails the backup cleanly and leaves the repository valid', async () => {
    const mnt = `${tmp.path}/small`;
    await mkdir(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', mnt]);
    try {
      const e = { BULWARK_REPOSITORY: `${mnt}/repo`, BULWARK_PASSWORD: PASSWORD };
      expect((await runCli(['init'], { env: e })).code).toBe(0);
      const small = `${tmp.path}/fits`;
      await mkdir(small);
      await writeFile(`${small}/f.bin`, patternBytes(1024 * 1024, 21));
      expect((await runCli(['backup', 'files', small], { env: e })).code).toBe(0);
      const big = `${tmp.path}/too-big`;
      await mkdir(big);
      await writeFile(`${big}/random.bin`, patternBytes(40 * 1024 * 1024, 22));
      const r = await runCli(['backup', 'files', big], { env: e });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/no space|ENOSPC/i);
      expect(r.stderr).not.toMatch(/internal error/);
      const c = await runCli(['check', '--read-data'], { env: e });
      expect(c.code, c.stdout + c.stderr).toBe(0);
      const snaps = JSON.parse((await runCli(['snapshots', '--json'], { env: e })).stdout) as unknown[];
      expect(snaps.length).toBe(1);
      const out = `${tmp.path}/after-full`;
      expect((await runCli(['restore', 'latest', '--target', out], { env: e })).code).toBe(0);
      expect((await readFile(`${out}${small}/f.bin`)).length).toBe(1024 * 1024);
    } finally {
      execFileSync('umount', ['-l', mnt]);
    }
  });
});
