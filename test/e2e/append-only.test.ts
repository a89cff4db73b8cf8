// Append-only: a key kind and a repository setting under which backups work and nothing can be deleted
// or replaced. Witness: the repository's own folders, listed before and after each refused command.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeSeededFiles } from '../fixtures/tree.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let src: string;
beforeAll(async () => {
  tmp = await tempDir();
  src = `${tmp.path}/src`;
  await makeSeededFiles(src, 60, 41);
});
afterAll(async () => {
  await tmp.cleanup();
});

/** Every file in the repository with its size: what a refused command must leave as it was. */
function inventory(repo: string): string {
  return execFileSync('find', [repo, '-type', 'f', '!', '-path', '*/locks/*', '-printf', '%P %s\\n']).toString().split('\n').sort().join('\n');
}

/** Commands that delete or replace, each of which must be refused with exit 13 and change nothing. */
async function expectAllRefused(repo: string, env: Record<string, string>, snapshot: string, otherKey: string): Promise<void> {
  const before = inventory(repo);
  const refused: [string[], RegExp][] = [
    [['forget', '--keep-last', '1'], /refusing to forget snapshots/],
    [['forget', snapshot], /refusing to forget snapshots/],
    [['prune'], /refusing to prune/],
    [['key', 'remove', otherKey.slice(0, 8)], /refusing to remove a key/],
    [['key', 'passwd'], /refusing to change the password/],
    [['repair', 'index'], /refusing to rebuild the index/],
    [['repair', 'snapshots', '--forget'], /refusing to forget the damaged snapshots/],
    [['migrate'], /refusing to upgrade the repository format/],
  ];
  for (const [args, message] of refused) {
    const r = await runCli(args, { env: { ...env, BULWARK_NEW_PASSWORD: 'another' } });
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(13);
    expect(r.stderr).toMatch(message);
    expect(inventory(repo), args.join(' ')).toBe(before);
  }
}

describe('append-only', () => {
  it('an append-only key backs up and restores, and every deleting command is refused with it', async () => {
    const repo = `${tmp.path}/repo-key`;
    const full = { BULWARK_REPOSITORY: repo, BULWARK_PASSWORD: 'full', BULWARK_STATE_DIR: `${tmp.path}/state` };
    expect((await runCli(['init'], { env: full })).code).toBe(0);
    const added = await runCli(['key', 'add', '--append-only', '--json'], { env: { ...full, BULWARK_NEW_PASSWORD: 'client' } });
    expect(jsonResult<{ appendOnly: boolean }>(added).appendOnly).toBe(true);
    const client = { ...full, BULWARK_PASSWORD: 'client' };

    const b = await runCli(['backup', 'files', src, '--json'], { env: client });
    expect(b.code, b.stderr).toBe(0);
    const snapshot = jsonResult<{ snapshot: string }>(b).snapshot;
    const out = `${tmp.path}/restored-key`;
    expect((await runCli(['restore', snapshot, '--target', out], { env: client })).code).toBe(0);
    execFileSync('diff', ['-r', src, `${out}${src}`]);

    const keys = JSON.parse((await runCli(['key', 'list', '--json'], { env: client })).stdout) as { id: string; appendOnly?: boolean; current: boolean }[];
    expect(keys.find((k) => k.current)?.appendOnly).toBe(true);
    const fullKey = keys.find((k) => !k.current)!;
    expect(fullKey.appendOnly).toBeUndefined();
    await expectAllRefused(repo, client, snapshot, fullKey.id);

    // No way up: a key added with the append-only key is append-only too, and it cannot lift the setting.
    const second = await runCli(['key', 'add', '--json'], { env: { ...client, BULWARK_NEW_PASSWORD: 'client-2' } });
    expect(jsonResult<{ appendOnly: boolean }>(second).appendOnly).toBe(true);
    expect((await runCli(['append-only', 'off'], { env: client })).code).toBe(13);

    // The full key still may.
    expect((await runCli(['forget', snapshot], { env: full })).code).toBe(0);
  });

  it('an append-only repository refuses deletion to every key until a full key turns it off', async () => {
    const repo = `${tmp.path}/repo-setting`;
    const env = { BULWARK_REPOSITORY: repo, BULWARK_PASSWORD: 'pw', BULWARK_STATE_DIR: `${tmp.path}/state` };
    expect((await runCli(['init', '--append-only'], { env })).code).toBe(0);
    expect((await runCli(['key', 'add'], { env: { ...env, BULWARK_NEW_PASSWORD: 'second' } })).code).toBe(0);
    const b = await runCli(['backup', 'files', src, '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const snapshot = jsonResult<{ snapshot: string }>(b).snapshot;
    const keys = JSON.parse((await runCli(['key', 'list', '--json'], { env })).stdout) as { id: string; current: boolean }[];
    await expectAllRefused(repo, env, snapshot, keys.find((k) => !k.current)!.id);
    // Backing up again works: adding is all it does.
    await fsp.writeFile(`${src}/later.txt`, 'later\n');
    expect((await runCli(['backup', 'files', src], { env })).code).toBe(0);

    expect((await runCli(['append-only', 'off'], { env })).code).toBe(0);
    expect((await runCli(['forget', snapshot], { env })).code).toBe(0);
    expect((await runCli(['append-only', 'on'], { env })).code).toBe(0);
    expect((await runCli(['forget', '--keep-last', '1'], { env })).code).toBe(13);
  });
});
