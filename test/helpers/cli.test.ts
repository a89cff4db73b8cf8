// The CLI helper's promise to the rest of the suite: a command a test left behind does not outlive it.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './cli.js';
import { tempDir } from './repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let pid: number | undefined;

beforeAll(async () => {
  tmp = await tempDir('bw-cli-helper-');
});
afterAll(async () => {
  await tmp?.cleanup();
});

describe('runCli', () => {
  it('a test leaves a command running (serve never ends by itself)', async () => {
    void runCli(['serve', '--listen', '127.0.0.1:0', '--state-dir', join(tmp.path, 'server')], {
      env: { BULWARK_ADMIN_PASSWORD: 'admin-password-for-the-helper-test' },
      onSpawn: (p) => (pid = p),
    });
    expect(pid).toBeGreaterThan(0);
    expect(existsSync(`/proc/${pid}`)).toBe(true);
  });

  it('the next test finds it killed', async () => {
    const deadline = Date.now() + 10_000;
    while (isAlive(pid!) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(isAlive(pid!)).toBe(false);
  });
});

/** Alive and not a zombie waiting to be reaped. */
function isAlive(p: number): boolean {
  try {
    const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
    return !/\) Z /.test(stat);
  } catch {
    return false;
  }
}
