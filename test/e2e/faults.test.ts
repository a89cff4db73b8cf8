// Storage that fails: a seeded fraction of saves and loads fail (some after storing: a lost reply) or
// come back one byte short, under the retry wrapper every remote backend gets. Backups retry and succeed,
// or fail with a clear error; either way no broken snapshot is left: `check --read-data` through the
// real CLI on the plain folder is clean and every snapshot restores exactly (`diff -r`).
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFiles } from '../../src/jobs/backup.js';
import { Repository } from '../../src/repository/repository.js';
import { LocalBackend } from '../../src/storage/local.js';
import { RetryBackend } from '../../src/storage/retry.js';
import { FaultyBackend, InjectedFault } from '../../src/storage/testing/faulty.js';
import { BulwarkError } from '../../src/util/errors.js';
import { makeSeededFiles, patternBytes } from '../fixtures/tree.js';
import { runCli } from '../helpers/cli.js';
import { CHEAP_KDF, tempDir } from '../helpers/repo.js';

const PASSWORD = 'faults';

let tmp: { path: string; cleanup(): Promise<void> };
let repoPath: string;
let env: Record<string, string>;
beforeAll(async () => {
  tmp = await tempDir();
  repoPath = `${tmp.path}/repo`;
  const repo = await Repository.init(new LocalBackend(repoPath), PASSWORD, { kdf: CHEAP_KDF, packSize: 128 * 1024 });
  await repo.close();
  env = { BULWARK_REPOSITORY: repoPath, BULWARK_PASSWORD: PASSWORD, BULWARK_STATE_DIR: `${tmp.path}/state` };
});
afterAll(async () => {
  await tmp.cleanup();
});

async function faultyBackup(src: string, fraction: number, seed: number, maxAttempts: number): Promise<{ snapshot?: string; error?: Error; faults: number }> {
  const faulty = new FaultyBackend(new LocalBackend(repoPath)).failRandomly({ fraction, shortReads: fraction / 2, seed });
  const backend = new RetryBackend(faulty, { maxAttempts, initialDelayMs: 1, maxDelayMs: 4 });
  let repo: Repository | undefined;
  try {
    repo = await Repository.open(backend, PASSWORD);
    const r = await backupFiles(repo, { paths: [src] });
    return { snapshot: r.snapshot.id, faults: faulty.injected.length };
  } catch (err) {
    // A typed error, or the storage's own error passed through: either names what failed.
    if (!(err instanceof BulwarkError) && !(err instanceof InjectedFault)) throw err;
    return { error: err, faults: faulty.injected.length };
  } finally {
    await repo?.close().catch(() => undefined);
  }
}

describe('storage faults', () => {
  it('backups retry through 5 % failing and short operations, or fail clearly, and never leave a broken snapshot', async () => {
    const src = `${tmp.path}/src`;
    await makeSeededFiles(src, 300, 31);
    const copies = new Map<string, string>();
    let failed = 0;
    let faults = 0;
    for (let seed = 1; seed <= 12; seed++) {
      await fsp.writeFile(`${src}/round-${seed}.bin`, patternBytes(300_000, seed));
      const copy = `${tmp.path}/copy-${seed}`;
      execFileSync('cp', ['-a', src, copy]);
      // Rounds 1-8: a flaky store that retries clear; 9-12: one too flaky for three attempts.
      const r = await faultyBackup(src, seed <= 8 ? 0.05 : 0.4, seed, seed <= 8 ? 8 : 3);
      faults += r.faults;
      if (seed <= 8) expect(r.error, r.error?.message).toBeUndefined();
      if (r.snapshot) copies.set(r.snapshot, copy);
      else {
        failed++;
        // A clear message naming the operation, not a stack trace or a half-written snapshot.
        expect(r.error!.message).toMatch(/unable to|injected|short read/);
      }
      const check = await runCli(['check', '--read-data'], { env });
      expect(check.code, `after round ${seed}: ${check.stdout}${check.stderr}`).toBe(0);
    }
    expect(failed).toBeGreaterThan(0);
    const listed = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { id: string }[];
    expect(listed.map((s) => s.id).sort()).toEqual([...copies.keys()].sort());
    for (const [id, copy] of copies) {
      const out = `${tmp.path}/restored-${id.slice(0, 8)}`;
      const r = await runCli(['restore', id, '--target', out], { env });
      expect(r.code, r.stderr).toBe(0);
      execFileSync('diff', ['-r', copy, `${out}${src}`]);
    }
    console.log(`faults: ${faults} injected over 12 backups; ${copies.size} succeeded, ${failed} failed clearly; check clean after each`);
  }, 300_000);
});
