// forget: retention by policy, through the real CLI, on snapshots dated a day apart.
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findSnapshot } from '../../src/repository/snapshot.js';
import { writeSnapshot } from '../helpers/hostile.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { createTestRepository, TEST_PASSWORD, tempDir, type TestRepository } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let t: TestRepository;
let env: Record<string, string>;
const dated: string[] = [];

beforeAll(async () => {
  tmp = await tempDir();
  t = await createTestRepository();
  env = { BULWARK_REPOSITORY: t.path, BULWARK_PASSWORD: TEST_PASSWORD, BULWARK_STATE_DIR: `${tmp.path}/state` };
  await fsp.mkdir(`${tmp.path}/src`);
  await fsp.writeFile(`${tmp.path}/src/f`, 'kept data\n');
  const b = await runCli(['backup', 'files', `${tmp.path}/src`, '--json'], { env });
  expect(b.code, b.stderr).toBe(0);
  const real = await findSnapshot(await t.reopen(), jsonResult<{ snapshot: string }>(b).snapshot);
  // 20 more restore points of the same tree, one a day at 03:00 back from 2026-11-20.
  for (let i = 0; i < 20; i++) {
    dated.push(await writeSnapshot(t.repo, { tree: real.tree!, paths: real.paths, hostname: real.hostname, time: new Date(2026, 10, 20 - i, 3).toISOString() }));
  }
});

afterAll(async () => {
  await t.cleanup();
  await tmp.cleanup();
});

const count = async (): Promise<number> => (JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as unknown[]).length;

describe('forget', () => {
  it('refuses to run without a policy, and a policy that would empty a group', async () => {
    const none = await runCli(['forget'], { env });
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/no retention policy given/);
    const zero = await runCli(['forget', '--keep-last', '0'], { env });
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/keeps no snapshot/);
    expect(await count()).toBe(21);
  });

  it('--dry-run shows what is kept and by which rule, and removes nothing', async () => {
    const r = await runCli(['forget', '--keep-daily', '3', '--keep-weekly', '3', '--dry-run'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/keep 4, remove 17/);
    expect(r.stdout).toMatch(/keep {4}[0-9a-f]{8} {2}\S+ \S+ {2}daily, weekly/);
    expect(r.stdout).toMatch(/dry run: 17 snapshot\(s\) would be removed/);
    expect(await count()).toBe(21);
  });

  it('removes what the policy does not keep; what is kept restores; this host sees no rollback', async () => {
    const r = await runCli(['forget', '--keep-daily', '3', '--keep-weekly', '3', '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(jsonResult<{ removed: string[] }>(r).removed.length).toBe(17);
    const list = await runCli(['snapshots', '--json'], { env });
    expect(list.stderr).toBe('');
    expect((JSON.parse(list.stdout) as unknown[]).length).toBe(4);
    const restored = await runCli(['restore', dated[0]!.slice(0, 8), '--target', `${tmp.path}/restore`], { env });
    expect(restored.code, restored.stderr).toBe(0);
    expect(await fsp.readFile(`${tmp.path}/restore${tmp.path}/src/f`, 'utf8')).toBe('kept data\n');
    expect((await runCli(['check'], { env })).code).toBe(0);
  });

  it('removes a snapshot named by id', async () => {
    const r = await runCli(['forget', dated[0]!.slice(0, 10)], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(await count()).toBe(3);
  });
});
