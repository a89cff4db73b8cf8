// `bulwark migrate`: a format 1 repository upgraded in place while being killed (SIGKILL) at random
// points. Between kills the repository must always list every snapshot (it is a whole format 1 or a
// whole format 2 repository); at the end `check --read-data` is clean, every snapshot restores exactly
// as it did before (`diff -r`, `cmp`), and nothing of format 1 is left.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/storage/local.js';
import { Repository } from '../../src/repository/repository.js';
import { makeSeededFiles, patternBytes } from '../fixtures/tree.js';
import { jsonResult, runCli, runCliKilledAfter, seededInts } from '../helpers/cli.js';
import { CHEAP_KDF, tempDir } from '../helpers/repo.js';

const PASSWORD = 'upgrade me';

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let repoPath: string;
let snapshots: { id: string; source: string }[];

async function restoreAll(into: string): Promise<void> {
  // Listed again each time: an upgrade seals every snapshot anew, under a new name (same order by time).
  const current = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { id: string; source: string }[];
  expect(current.map((s) => s.source)).toEqual(snapshots.map((s) => s.source));
  for (const [i, s] of current.entries()) {
    const args = s.source.startsWith('disk:') ? ['restore', 'vm', s.id, '--target', `${into}/${i}`] : ['restore', s.id, '--target', `${into}/${i}`];
    const r = await runCli(args, { env });
    expect(r.code, r.stderr).toBe(0);
  }
}

async function listed(): Promise<{ code: number; ids: number; stderr: string }> {
  const r = await runCli(['snapshots', '--json'], { env });
  return { code: r.code, ids: r.code === 0 ? (JSON.parse(r.stdout) as unknown[]).length : -1, stderr: r.stderr };
}

beforeAll(async () => {
  tmp = await tempDir();
  repoPath = `${tmp.path}/repo`;
  env = { BULWARK_REPOSITORY: repoPath, BULWARK_PASSWORD: PASSWORD, BULWARK_STATE_DIR: `${tmp.path}/state` };
  // Small packs: many of them, so kills land between, inside and after the steps of the upgrade.
  const init = await Repository.init(new LocalBackend(repoPath), PASSWORD, { version: 1, kdf: CHEAP_KDF, packSize: 64 * 1024 });
  await init.close();
  const src = `${tmp.path}/src`;
  await makeSeededFiles(`${src}/files`, 1200, 21);
  expect((await runCli(['backup', 'files', `${src}/files`], { env })).code).toBe(0);
  for (let i = 0; i < 1200; i += 97) await fsp.appendFile(`${src}/files/d${String(Math.floor(i / 50)).padStart(3, '0')}/f${i}.${i % 2 === 0 ? 'txt' : 'bin'}`, `changed ${i}\n`);
  expect((await runCli(['backup', 'files', `${src}/files`], { env })).code).toBe(0);
  await fsp.writeFile(`${src}/disk.img`, Buffer.concat([patternBytes(3 * 1024 * 1024, 5), Buffer.alloc(2 * 1024 * 1024), patternBytes(1024 * 1024, 6)]));
  expect((await runCli(['backup', 'disk', `${src}/disk.img`], { env })).code).toBe(0);
  snapshots = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { id: string; source: string }[];
  expect(snapshots).toHaveLength(3);
  await restoreAll(`${tmp.path}/before`);
  // The repository as it was, to play a rollback to before the upgrade later.
  execFileSync('cp', ['-a', repoPath, `${tmp.path}/repo-before-upgrade`]);
}, 300_000);

afterAll(async () => {
  await tmp.cleanup();
});

describe('bulwark migrate', () => {
  it('survives SIGKILL at random points, resumes, and ends in a clean format 2 repository', async () => {
    const rand = seededInts(7);
    let kills = 0;
    let finished = false;
    let output = '';
    /** The format the repository was in after each kill. */
    const formats: number[] = [];
    for (let attempt = 0; attempt < 60 && !finished; attempt++) {
      // Later attempts get longer before the kill, so the run finishes however slow the machine.
      const wait = attempt < 12 ? 50 + rand(900) : 60_000;
      const r = await runCliKilledAfter(['migrate', '--json'], wait, { env, timeoutMs: 300_000 });
      if (r.code === 0) {
        finished = true;
        output = r.stdout;
        break;
      }
      expect(r.killed, `migrate failed instead of being killed: ${r.stderr}`).toBe(true);
      kills++;
      // Whatever the point of the kill, the repository is whole in one format or the other.
      const l = await listed();
      expect(l.code, l.stderr).toBe(0);
      expect(l.ids).toBe(3);
      const opened = await Repository.open(new LocalBackend(repoPath), PASSWORD);
      formats.push(opened.config.version);
      await opened.close();
    }
    expect(finished).toBe(true);
    expect(kills).toBeGreaterThanOrEqual(3);
    console.log(`migrate: finished after ${kills} kill(s), format after each: ${formats.join(' ')}; last run: ${output.trim()}`);
    expect(formats).toContain(1);

    // A last run has nothing left to do.
    const again = jsonResult<{ from: number; removed: { packs: number } }>(await runCli(['migrate', '--json'], { env }));
    expect(again).toMatchObject({ from: 2, removed: { packs: 0, index: 0, snapshots: 0 } });

    const check = await runCli(['check', '--read-data'], { env });
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).not.toMatch(/unreferenced/);
    expect(check.stderr).toBe('');

    // Nothing of format 1 is left: every pack and document opens as format 2, and the key is format 2.
    const repo = await Repository.open(new LocalBackend(repoPath), PASSWORD);
    try {
      expect(repo.config.version).toBe(2);
      expect(await repo.loadIndex()).toEqual([]);
      for await (const f of repo.backend.list('data')) {
        expect(repo.index.hasPack(f.name), `pack ${f.name} is indexed`).toBe(true);
        await repo.readPackEntries(f.name, f.size);
      }
      for (const type of ['index', 'snapshots'] as const) for await (const f of repo.backend.list(type)) await repo.loadDocument(type, f.name);
      const keys: { version: number }[] = [];
      for await (const f of repo.backend.list('keys')) keys.push(JSON.parse((await repo.backend.load({ type: 'keys', name: f.name })).toString()) as { version: number });
      expect(keys.map((k) => k.version)).toEqual([2]);
    } finally {
      await repo.close();
    }

    // Every snapshot restores as before the upgrade: the same files (diff -r) and the same disk (cmp).
    await restoreAll(`${tmp.path}/after`);
    execFileSync('diff', ['-r', `${tmp.path}/before`, `${tmp.path}/after`]);

    // This host saw the upgrade: no snapshot reported gone. A host that listed it before the upgrade
    // (its own record, made from the copy) sees the format go up, not a rollback.
    expect((await listed()).stderr).toBe('');
    const other = { ...env, BULWARK_STATE_DIR: `${tmp.path}/other-host` };
    const before = await runCli(['snapshots'], { env: { ...other, BULWARK_REPOSITORY: `${tmp.path}/repo-before-upgrade` } });
    expect(before.code).toBe(0);
    const seen = await runCli(['snapshots'], { env: other });
    expect(seen.stderr).toBe('');

    // The storage put back to before the upgrade: this host says so.
    await fsp.rm(repoPath, { recursive: true });
    execFileSync('cp', ['-a', `${tmp.path}/repo-before-upgrade`, repoPath]);
    const rolled = await runCli(['snapshots'], { env });
    expect(rolled.stderr).toMatch(/the repository is in format 1, but this host saw it in format 2: the storage was rolled back/);
  }, 900_000);

  it('upgrades the format 1 reference repository, which then reads back the same', async () => {
    const copy = `${tmp.path}/fixture`;
    execFileSync('cp', ['-a', new URL('../fixtures/repo-v1', import.meta.url).pathname, copy]);
    await fsp.mkdir(`${copy}/locks`); // git keeps no empty folders
    const e = { BULWARK_REPOSITORY: copy, BULWARK_PASSWORD: 'bulwark-format-v1', BULWARK_STATE_DIR: `${tmp.path}/state-fixture` };
    const r = await runCli(['migrate'], { env: e });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/upgraded to format 2: \d+ pack\(s\), \d+ blob\(s\) and 2 snapshot\(s\) sealed again/);
    const check = await runCli(['check', '--read-data'], { env: e });
    expect(check.code, check.stdout).toBe(0);
    const files = (JSON.parse((await runCli(['snapshots', '--json'], { env: e })).stdout) as { id: string; source: string }[]).find((s) => s.source === 'files')!;
    const out = `${tmp.path}/fixture-restored`;
    const restored = await runCli(['restore', files.id, '--target', out], { env: e });
    expect(restored.code, restored.stderr).toBe(0);
    const sha = execFileSync('sha256sum', [`${out}/tmp/bulwark-fixture-v1/etc/app/repeated.txt`]).toString().slice(0, 64);
    expect(sha).toBe('29927e273accc68286005017f7fa6e4f27bddb4db3083ff8b8d4c3667905b7fa');
  }, 120_000);
});
