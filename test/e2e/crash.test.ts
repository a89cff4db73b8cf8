// What can happen to the machine: a backup SIGKILLed at random points, and a full disk under the
// repository in the middle of a backup and of a prune. Witnesses: `check --read-data`, `diff -r` of
// restores against copies of the sources, and the kernel's own "no space left" on a mounted tmpfs.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeSeededFiles, patternBytes } from '../fixtures/tree.js';
import { jsonResult, runCli, runCliKilledAfter, seededInts } from '../helpers/cli.js';
import { makeCliRepository, tempDir } from '../helpers/repo.js';

const PASSWORD = 'crash';

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

function newRepo(path: string, packSize = 256 * 1024): Promise<Record<string, string>> {
  return makeCliRepository(path, PASSWORD, `${path}-state`, { packSize });
}

async function restoresAs(env: Record<string, string>, snapshot: string, src: string, copy: string, out: string): Promise<void> {
  const r = await runCli(['restore', snapshot, '--target', out], { env });
  expect(r.code, r.stderr).toBe(0);
  execFileSync('diff', ['-r', copy, `${out}${src}`]);
  await fsp.rm(out, { recursive: true });
}

/** Rewrites every seventh file of a seeded tree and adds one: each backup has new data to store. */
async function change(root: string, round: number): Promise<void> {
  for (const e of (await fsp.readdir(root, { withFileTypes: true })).filter((x) => x.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
    const d = e.name;
    const files = (await fsp.readdir(`${root}/${d}`)).sort();
    for (const [j, f] of files.entries()) if ((j + round) % 7 === 0) await fsp.writeFile(`${root}/${d}/${f}`, patternBytes(4000 + j * 13, round * 7919 + j + 1));
  }
  await fsp.writeFile(`${root}/new-${round}.bin`, patternBytes(200_000, round + 1));
}

describe('crash survival', () => {
  it('a backup SIGKILLed at 30 seeded random points: check --read-data clean, the next run succeeds, every snapshot restores exactly', async () => {
    const env = await newRepo(`${tmp.path}/kill-repo`);
    const src = `${tmp.path}/kill-src`;
    await makeSeededFiles(src, 800, 9);
    const rand = seededInts(4242);
    const copies = new Map<string, string>();
    let killed = 0;
    for (let i = 0; i < 30; i++) {
      await change(src, i);
      const copy = `${tmp.path}/kill-copy-${i}`;
      execFileSync('cp', ['-a', src, copy]);
      const r = await runCliKilledAfter(['backup', 'files', src, '--json'], 80 + rand(600), { env });
      if (r.killed) {
        killed++;
        const check = await runCli(['check', '--read-data'], { env });
        expect(check.code, `after kill ${i}: ${check.stdout}${check.stderr}`).toBe(0);
      } else expect(r.code, r.stderr).toBe(0);
      // The next run (not killed) succeeds whatever the last one left, and restores what it read.
      const next = await runCli(['backup', 'files', src, '--json'], { env });
      expect(next.code, next.stderr).toBe(0);
      const id = jsonResult<{ snapshot: string }>(next).snapshot;
      copies.set(id, copy);
      await restoresAs(env, id, src, copy, `${tmp.path}/kill-out`);
    }
    expect(killed).toBeGreaterThanOrEqual(10);
    const check = await runCli(['check', '--read-data'], { env });
    expect(check.code, check.stdout).toBe(0);
    // Every earlier snapshot, at the end, byte for byte.
    for (const [id, copy] of copies) await restoresAs(env, id, src, copy, `${tmp.path}/kill-out`);
    console.log(`crash: ${killed} of 30 backups killed mid-way; ${copies.size} snapshots restore exactly`);
  }, 900_000);

  describe('a full disk under the repository', () => {
    const mnt = (): string => `${tmp.path}/small-fs`;
    beforeAll(async () => {
      await fsp.mkdir(mnt());
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', mnt()]);
    });
    afterAll(() => {
      execFileSync('umount', ['-l', mnt()]);
    });

    it('mid-backup: a clean failure, a valid repository, and after space is freed the next run completes', async () => {
      const env = await newRepo(`${mnt()}/repo`);
      const src = `${tmp.path}/full-src`;
      await makeSeededFiles(`${src}/small`, 300, 12);
      const first = await runCli(['backup', 'files', src, '--json'], { env });
      expect(first.code, first.stderr).toBe(0);
      const copy1 = `${tmp.path}/full-copy-1`;
      execFileSync('cp', ['-a', src, copy1]);
      // 20 MiB of incompressible data into what is left of 12 MiB.
      for (let i = 0; i < 20; i++) await fsp.writeFile(`${src}/big-${i}.bin`, patternBytes(1024 * 1024, 100 + i));
      const full = await runCli(['backup', 'files', src], { env });
      expect(full.code).toBe(1);
      expect(full.stderr).toMatch(/no space left on the repository disk/);
      expect(full.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
      // The repository is valid (the lock is gone too: check takes its own).
      const check = await runCli(['check', '--read-data'], { env });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      await restoresAs(env, jsonResult<{ snapshot: string }>(first).snapshot, src, copy1, `${tmp.path}/full-out`);

      execFileSync('mount', ['-o', 'remount,size=64m', mnt()]);
      const copy2 = `${tmp.path}/full-copy-2`;
      execFileSync('cp', ['-a', src, copy2]);
      const again = await runCli(['backup', 'files', src, '--json'], { env });
      expect(again.code, again.stderr).toBe(0);
      await restoresAs(env, jsonResult<{ snapshot: string }>(again).snapshot, src, copy2, `${tmp.path}/full-out`);
    }, 300_000);

    it('mid-prune: a clean failure, a valid repository, and after space is freed prune completes', async () => {
      const env = await newRepo(`${mnt()}/repo-prune`, 64 * 1024);
      const src = `${tmp.path}/prune-full-src`;
      await makeSeededFiles(src, 300, 13);
      expect((await runCli(['backup', 'files', src], { env })).code).toBe(0);
      await change(src, 1);
      const copy = `${tmp.path}/prune-full-copy`;
      execFileSync('cp', ['-a', src, copy]);
      const kept = jsonResult<{ snapshot: string }>(await runCli(['backup', 'files', src, '--json'], { env })).snapshot;
      expect((await runCli(['forget', '--keep-last', '1'], { env })).code).toBe(0);
      // Fill the file system, then give back two pages: room for prune's lock, not for its new index.
      const filler = `${mnt()}/filler`;
      await fsp.writeFile(filler, Buffer.alloc(0));
      try {
        for (;;) await fsp.appendFile(filler, Buffer.alloc(4096));
      } catch (err) {
        expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
      }
      await fsp.truncate(filler, (await fsp.stat(filler)).size - 8192);
      const failed = await runCli(['prune'], { env });
      expect(failed.code).toBe(1);
      expect(failed.stderr).toMatch(/no space left on the repository disk/);
      await fsp.rm(filler);
      const check = await runCli(['check', '--read-data'], { env });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      await restoresAs(env, kept, src, copy, `${tmp.path}/prune-full-out`);
      // With room again, two runs condemn and remove.
      for (let i = 0; i < 2; i++) {
        const p = await runCli(['prune', '--json'], { env });
        expect(p.code, p.stderr).toBe(0);
      }
      expect((await runCli(['check', '--read-data'], { env })).code).toBe(0);
      await restoresAs(env, kept, src, copy, `${tmp.path}/prune-full-out`);
    }, 300_000);
  });
});
