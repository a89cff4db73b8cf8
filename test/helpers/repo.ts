// One way to make a repository for tests: a real local repository in a temp dir, with a cheap KDF.
import { execFile } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Repository, type InitOptions } from '../../src/repository/repository.js';
import { LocalBackend } from '../../src/storage/local.js';

/** GNU rm removes trees deeper than PATH_MAX, which fs.rm cannot. */
export async function removeTree(path: string): Promise<void> {
  await promisify(execFile)('rm', ['-rf', '--one-file-system', '--', path]);
}

export const TEST_PASSWORD = 'correct horse battery staple';
export const CHEAP_KDF = { N: 1024, r: 8, p: 1 };

export interface TestRepository {
  repo: Repository;
  path: string;
  dir: string;
  /** Opens the same repository again (a second process, as it were). */
  reopen(password?: string): Promise<Repository>;
  cleanup(): Promise<void>;
}

export async function createTestRepository(opts: InitOptions = {}): Promise<TestRepository> {
  const dir = await mkdtemp(join(tmpdir(), 'bulwark-test-'));
  const path = join(dir, 'repo');
  const repo = await Repository.init(new LocalBackend(path), TEST_PASSWORD, { kdf: CHEAP_KDF, ...opts });
  const opened: Repository[] = [repo];
  return {
    repo,
    path,
    dir,
    async reopen(password = TEST_PASSWORD) {
      const r = await Repository.open(new LocalBackend(path), password);
      opened.push(r);
      return r;
    },
    async cleanup() {
      for (const r of opened) await r.close();
      await removeTree(dir);
    },
  };
}

export async function tempDir(prefix = 'bulwark-test-'): Promise<{ path: string; cleanup(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => removeTree(path) };
}

/**
 * A repository at `path` (cheap KDF, the given options) for tests that drive the real CLI; returns
 * the environment that reaches it, with this host's records under `stateDir`.
 */
export async function makeCliRepository(path: string, password: string, stateDir: string, opts: InitOptions = {}): Promise<Record<string, string>> {
  const repo = await Repository.init(new LocalBackend(path), password, { kdf: CHEAP_KDF, ...opts });
  await repo.close();
  return { BULWARK_REPOSITORY: path, BULWARK_PASSWORD: password, BULWARK_STATE_DIR: stateDir };
}
