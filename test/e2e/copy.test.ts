// copy between repositories with different passwords and keys: pushed (--to) and pulled (--from),
// deduplicated, resumable after SIGKILL at random points. Witnesses: `diff -r` and `cmp` of restores
// from the destination against copies of the sources, and `check --read-data` of the destination.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeSeededFiles, patternBytes } from '../fixtures/tree.js';
import { jsonResult, runCli, runCliKilledAfter, seededInts } from '../helpers/cli.js';
import { makeCliRepository, tempDir } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let srcRepo: string;
let srcEnv: Record<string, string>;
beforeAll(async () => {
  tmp = await tempDir();
  srcRepo = `${tmp.path}/source`;
  srcEnv = await newRepo(srcRepo, 'source-pw');
});
afterAll(async () => {
  await tmp.cleanup();
});

function newRepo(path: string, password: string): Promise<Record<string, string>> {
  return makeCliRepository(path, password, `${tmp.path}/state`, { packSize: 128 * 1024 });
}

interface CopyJson {
  copied: { from: string; to: string }[];
  skipped: string[];
  blobsStored: number;
}

async function copyTo(dst: string, password: string, ...args: string[]): Promise<CopyJson> {
  const r = await runCli(['copy', '--to', dst, '--json', ...args], { env: { ...srcEnv, BULWARK_TO_PASSWORD: password } });
  expect(r.code, r.stderr).toBe(0);
  return jsonResult<CopyJson>(r);
}

describe('copy', () => {
  it('copies file and disk snapshots to a repository with another password; again copies nothing; then only what is new', async () => {
    const files = `${tmp.path}/files`;
    await makeSeededFiles(files, 200, 51);
    const filesCopy = `${tmp.path}/files-copy-1`;
    execFileSync('cp', ['-a', files, filesCopy]);
    const disk = `${tmp.path}/disk.img`;
    await fsp.writeFile(disk, Buffer.concat([patternBytes(2 * 1024 * 1024, 3), Buffer.alloc(1024 * 1024), patternBytes(512 * 1024, 4)]));
    expect((await runCli(['backup', 'files', files], { env: srcEnv })).code).toBe(0);
    expect((await runCli(['backup', 'disk', disk], { env: srcEnv })).code).toBe(0);

    const dst = `${tmp.path}/offsite`;
    const dstEnv = await newRepo(dst, 'offsite-pw');
    const first = await copyTo(dst, 'offsite-pw');
    expect(first.copied).toHaveLength(2);
    expect((await runCli(['check', '--read-data'], { env: dstEnv })).code).toBe(0);

    const snaps = JSON.parse((await runCli(['snapshots', '--json'], { env: dstEnv })).stdout) as { id: string; source: string; original: string }[];
    expect(snaps.map((s) => s.original).sort()).toEqual(first.copied.map((c) => c.from).sort());
    const out = `${tmp.path}/from-offsite`;
    const f = snaps.find((s) => s.source === 'files')!;
    expect((await runCli(['restore', f.id, '--target', out], { env: dstEnv })).code).toBe(0);
    execFileSync('diff', ['-r', filesCopy, `${out}${files}`]);
    const d = snaps.find((s) => s.source.startsWith('disk:'))!;
    expect((await runCli(['restore', 'vm', d.id, '--target', `${tmp.path}/disk-out`], { env: dstEnv })).code).toBe(0);
    const restoredDisk = (await fsp.readdir(`${tmp.path}/disk-out`)).find((n) => n.endsWith('.raw') || n.endsWith('.img'))!;
    execFileSync('cmp', [disk, `${tmp.path}/disk-out/${restoredDisk}`]);

    const again = await copyTo(dst, 'offsite-pw');
    expect(again).toMatchObject({ copied: [], blobsStored: 0 });
    expect(again.skipped).toHaveLength(2);

    await fsp.writeFile(`${files}/new.bin`, patternBytes(100_000, 9));
    expect((await runCli(['backup', 'files', files], { env: srcEnv })).code).toBe(0);
    const third = await copyTo(dst, 'offsite-pw');
    expect(third.copied).toHaveLength(1);
    // The new file and the folders above it, not the whole tree again.
    expect(third.blobsStored).toBeLessThan(10);

    // Pulled the other way round: the destination is the repository in use.
    const pull = `${tmp.path}/pulled`;
    const pullEnv = await newRepo(pull, 'pull-pw');
    const r = await runCli(['copy', '--from', srcRepo, '--source', 'files', '--json'], { env: { ...pullEnv, BULWARK_FROM_PASSWORD: 'source-pw' } });
    expect(r.code, r.stderr).toBe(0);
    expect(jsonResult<CopyJson>(r).copied).toHaveLength(2);
    expect((await runCli(['check', '--read-data'], { env: pullEnv })).code).toBe(0);

    const wrong = await runCli(['copy', '--to', dst], { env: { ...srcEnv, BULWARK_TO_PASSWORD: 'not it' } });
    expect(wrong.code).toBe(11);
  }, 300_000);

  it('survives SIGKILL at 30 seeded random points: the destination stays valid, and the next run completes it', async () => {
    const files = `${tmp.path}/kill-files`;
    await makeSeededFiles(files, 300, 52);
    const dst = `${tmp.path}/kill-offsite`;
    const dstEnv = await newRepo(dst, 'kill-pw');
    const rand = seededInts(99);
    const copies = new Map<string, string>();
    let killed = 0;
    let fullRun = 0;
    for (let i = 0; i < 30; i++) {
      await fsp.writeFile(`${files}/round-${i}.bin`, patternBytes(400_000, 1000 + i));
      const copy = `${tmp.path}/kill-copy-${i}`;
      execFileSync('cp', ['-a', files, copy]);
      const b = await runCli(['backup', 'files', files, '--json'], { env: srcEnv });
      copies.set(jsonResult<{ snapshot: string }>(b).snapshot, copy);
      // The first run is timed, not killed: later ones are killed at 10-130 % of its time, so that
      // most are cut short and some finish, however fast this machine is under the load of the moment.
      const started = Date.now();
      const r = i === 0 ? await runCli(['copy', '--to', dst], { env: { ...srcEnv, BULWARK_TO_PASSWORD: 'kill-pw' } }) : await runCliKilledAfter(['copy', '--to', dst], Math.round(fullRun * (0.1 + rand(1200) / 1000)), { env: { ...srcEnv, BULWARK_TO_PASSWORD: 'kill-pw' } });
      if (i === 0) fullRun = Date.now() - started;
      if ('killed' in r && r.killed) killed++;
      else expect(r.code, r.stderr).toBe(0);
      const check = await runCli(['check', '--read-data'], { env: dstEnv });
      expect(check.code, `after copy ${i}: ${check.stdout}`).toBe(0);
    }
    expect(killed).toBeGreaterThanOrEqual(8);
    expect(killed, 'some runs must finish, so that runs after kills are seen to complete the work').toBeLessThanOrEqual(26);
    await copyTo(dst, 'kill-pw');
    const snaps = JSON.parse((await runCli(['snapshots', '--json'], { env: dstEnv })).stdout) as { id: string; original: string; source: string }[];
    const fileCopies = snaps.filter((s) => s.source === 'files' && copies.has(s.original));
    expect(fileCopies).toHaveLength(copies.size);
    for (const s of fileCopies) {
      const out = `${tmp.path}/kill-out-${s.id.slice(0, 8)}`;
      const r = await runCli(['restore', s.id, '--target', out], { env: dstEnv });
      expect(r.code, r.stderr).toBe(0);
      execFileSync('diff', ['-r', copies.get(s.original)!, `${out}${files}`]);
      await fsp.rm(out, { recursive: true });
    }
    console.log(`copy: ${killed} of 30 runs killed mid-way; all ${copies.size} restore points restore exactly from the copy`);
  }, 600_000);
});
