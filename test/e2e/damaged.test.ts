// Issue "A damaged or hostile repository must never harm the restoring host, and must never take
// healthy restore points down with it": one damaged file (a snapshot, an index file, a key, a parent
// folder, a data pack) costs what depends on it and nothing more; damaged blobs heal on the next
// backup; a failed restore leaves nothing that looks restored.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Repository } from '../../src/repository/repository.js';
import { findSnapshot } from '../../src/repository/snapshot.js';
import { loadTree } from '../../src/repository/walk.js';
import { LocalBackend } from '../../src/storage/local.js';
import { patternBytes } from '../fixtures/tree.js';
import { jsonResult, runCli, type CliResult } from '../helpers/cli.js';
import { flipByte, listObjects, objectPath, overwrite, plantKeyFile, replaceWithFifo } from '../helpers/hostile.js';
import { tempDir, TEST_PASSWORD } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let repoPath: string;
let src: string;

/** A source tree of a few folders, each with its own files. */
async function makeSource(root: string): Promise<void> {
  for (const [i, dir] of ['alpha', 'beta', 'gamma'].entries()) {
    await fsp.mkdir(`${root}/${dir}/inner`, { recursive: true });
    await fsp.writeFile(`${root}/${dir}/big.bin`, patternBytes(3 * 1024 * 1024 + 17, 10 + i));
    await fsp.writeFile(`${root}/${dir}/inner/small.txt`, `small file ${dir}\n`);
  }
}

async function backup(...extra: string[]): Promise<{ r: CliResult; id: string }> {
  const r = await runCli(['backup', 'files', src, '--json', ...extra], { env });
  const id = r.code === 0 || r.code === 3 ? jsonResult<{ snapshot: string }>(r).snapshot : '';
  return { r, id };
}

/** Restores and compares with the source byte for byte (diff -r, an outside witness). */
async function restoresIdentical(snapshot: string): Promise<void> {
  const target = `${tmp.path}/restore-${Math.random().toString(36).slice(2)}`;
  const r = await runCli(['restore', snapshot, '--target', target], { env });
  expect(r.code, r.stdout + r.stderr).toBe(0);
  execFileSync('diff', ['-r', src, `${target}${src}`]);
}

async function openRepo(): Promise<Repository> {
  const repo = await Repository.open(new LocalBackend(repoPath), TEST_PASSWORD);
  await repo.loadIndex();
  return repo;
}

/** Where a blob lives, as path and offset in its pack file. */
async function blobFile(id: string): Promise<{ path: string; offset: number; length: number }> {
  const repo = await openRepo();
  try {
    const e = repo.index.lookup(id)!;
    return { path: objectPath(repoPath, 'data', e.pack), offset: e.offset, length: e.length };
  } finally {
    await repo.close();
  }
}

/** The tree id of a folder ("/alpha") and the first data blob of a file, in a snapshot of src. */
async function idsIn(snapshot: string, dir: string): Promise<{ tree: string; firstBlob: string; root: string }> {
  const repo = await openRepo();
  try {
    const sn = await findSnapshot(repo, snapshot);
    let tree = sn.tree!;
    for (const part of `${src}${dir}`.split('/').filter(Boolean)) tree = (await loadTree(repo, tree)).nodes.find((n) => n.name === part)!.subtree!;
    const big = (await loadTree(repo, tree)).nodes.find((n) => n.name === 'big.bin')!;
    return { tree, firstBlob: big.content![0]!, root: sn.tree! };
  } finally {
    await repo.close();
  }
}

beforeEach(async () => {
  tmp = await tempDir();
  repoPath = `${tmp.path}/repo`;
  src = `${tmp.path}/src`;
  env = { BULWARK_REPOSITORY: repoPath, BULWARK_PASSWORD: TEST_PASSWORD };
  await makeSource(src);
  expect((await runCli(['init'], { env })).code).toBe(0);
});

afterEach(async () => {
  await tmp.cleanup();
});

describe('one damaged file does not take the healthy rest down', () => {
  it('a damaged snapshot file: listed by name, the others list, restore, back up; check names it', async () => {
    const first = (await backup()).id;
    await fsp.appendFile(`${src}/alpha/new.txt`, 'new\n');
    const second = (await backup()).id;
    await overwrite(objectPath(repoPath, 'snapshots', first), 'garbage');
    const list = await runCli(['snapshots', '--json'], { env });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stderr).toMatch(new RegExp(`warning: snapshot ${first.slice(0, 8)} cannot be read`));
    expect((JSON.parse(list.stdout) as { id: string }[]).map((s) => s.id)).toEqual([second]);
    expect((await runCli(['ls', 'latest'], { env })).code).toBe(0);
    await restoresIdentical('latest');
    expect((await backup()).r.code).toBe(0);
    const check = await runCli(['check'], { env });
    expect(check.code).toBe(1);
    expect(check.stdout).toMatch(new RegExp(`checked 3 snapshots`));
    expect(check.stdout).toMatch(new RegExp(`1 snapshot\\(s\\) damaged: ${first.slice(0, 8)}`));
  });

  it("a damaged index file: backups and restores go on (packs read from their own headers); check says so; repair index rebuilds it", async () => {
    const first = (await backup()).id;
    for (const name of await listObjects(repoPath, 'index')) await flipByte(objectPath(repoPath, 'index', name), 40);
    const list = await runCli(['snapshots'], { env });
    expect(list.code, list.stderr).toBe(0);
    await restoresIdentical(first);
    const again = await backup();
    expect(again.r.code, again.r.stderr).toBe(0);
    expect(again.r.stderr).toMatch(/index file .* is damaged and was skipped/);
    // Nothing was stored again: the packs' own headers told where every blob is.
    expect(jsonResult<{ summary: { bytesNew: number } }>(again.r).summary.bytesNew).toBe(0);
    const check = await runCli(['check'], { env });
    expect(check.code).toBe(1);
    expect(check.stdout).toMatch(/were read from their own headers/);
    expect(check.stdout).not.toMatch(/unreferenced/);
    const repair = await runCli(['repair', 'index'], { env });
    expect(repair.code, repair.stdout + repair.stderr).toBe(0);
    const clean = await runCli(['check', '--read-data'], { env });
    expect(clean.code, clean.stdout).toBe(0);
    expect(clean.stdout).toMatch(/no errors were found/);
    await restoresIdentical(again.id);
  });

  it('a FIFO where a pack should be: restore fails at once with a clear message instead of hanging', async () => {
    const id = (await backup()).id;
    const { firstBlob } = await idsIn(id, '/beta');
    await replaceWithFifo((await blobFile(firstBlob)).path);
    const r = await runCli(['restore', id, '--target', `${tmp.path}/t`], { env, timeoutMs: 30_000 });
    expect(r.code).toBe(3);
    expect(r.stdout + r.stderr).toMatch(/not a regular file \(a fifo\)/);
    const check = await runCli(['check'], { env, timeoutMs: 30_000 });
    expect(check.code).toBe(1);
    expect(check.stdout).toMatch(/is in the index but not in storage/);
  });

  it('damaged and hostile key files do not lock out a valid password; a planted costly key is refused without running it', async () => {
    await backup();
    await plantKeyFile(repoPath, 'not json at all');
    await plantKeyFile(repoPath, JSON.stringify({ version: 1, kdf: 'scrypt', N: 2 ** 20, r: 8, p: 1, salt: Buffer.alloc(32).toString('base64'), data: Buffer.alloc(80).toString('base64'), created: '', hostname: '', username: '' }));
    await plantKeyFile(repoPath, JSON.stringify({ version: 1, kdf: 'scrypt', N: 0, r: 8, p: 100000, salt: 'x', data: 'y' }));
    const started = Date.now();
    const r = await runCli(['snapshots'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(r.stderr.match(/warning: key file .* is damaged and was skipped/g)?.length).toBe(3);
    expect(r.stderr).toMatch(/1 GiB/);
    const keys = await runCli(['key', 'list'], { env });
    expect(keys.code, keys.stderr).toBe(0);
    expect(keys.stdout).toMatch(/is damaged/);
  });

  it('damaged key files and a missing config get messages that name the real cause', async () => {
    await backup();
    for (const k of await listObjects(repoPath, 'keys')) await overwrite(objectPath(repoPath, 'keys', k), '{"broken": true}');
    const r = await runCli(['snapshots'], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/every key file in the repository is damaged/);
    await fsp.rm(`${repoPath}/config`);
    const noConfig = await runCli(['snapshots'], { env });
    expect(noConfig.code).toBe(1);
    expect(noConfig.stderr).toMatch(/config .* is missing, but keys, index or snapshots are present/);
  });
});

describe('a damaged parent snapshot', () => {
  it('a damaged folder of the parent: the new backup reads it again, keeps every folder, and heals the blob', async () => {
    const first = (await backup()).id;
    const { tree } = await idsIn(first, '/beta');
    const loc = await blobFile(tree);
    await flipByte(loc.path, loc.offset + 30);
    const r = await backup();
    expect(r.r.code, r.r.stdout + r.r.stderr).toBe(0);
    expect(r.r.stdout + r.r.stderr).toMatch(/a folder of the parent snapshot cannot be read/);
    await restoresIdentical(r.id);
    // The damaged tree was stored again: the first snapshot restores too now.
    await restoresIdentical(first);
  });

  it("a damaged root tree of the parent: the backup works without --force", async () => {
    const first = (await backup()).id;
    const { root } = await idsIn(first, '/alpha');
    const loc = await blobFile(root);
    await flipByte(loc.path, loc.offset + 30);
    const r = await backup();
    expect(r.r.code, r.r.stdout + r.r.stderr).toBe(0);
    await restoresIdentical(r.id);
  });
});

describe('damaged blobs heal, restores fall back to intact copies, failures leave nothing that looks restored', () => {
  it('after check --read-data found a blob damaged, the next backup stores it again; the old snapshots restore again', async () => {
    const first = (await backup()).id;
    const { firstBlob } = await idsIn(first, '/gamma');
    const loc = await blobFile(firstBlob);
    await flipByte(loc.path, loc.offset + 100);
    const check = await runCli(['check', '--read-data'], { env });
    expect(check.code).toBe(1);
    expect(check.stdout).toMatch(/damaged blob copies recorded/);
    expect(check.stdout).toMatch(new RegExp(`damaged: snapshot ${first.slice(0, 8)} ${src}/gamma/big.bin`));
    const failed = await runCli(['restore', first, '--target', `${tmp.path}/partial`], { env });
    expect(failed.code).toBe(3);
    expect(failed.stdout).toMatch(/gamma\/big\.bin: .*partial file was removed/);
    // A failed file is not left behind looking restored; the others are there.
    await expect(fsp.lstat(`${tmp.path}/partial${src}/gamma/big.bin`)).rejects.toThrow(/ENOENT/);
    expect((await fsp.stat(`${tmp.path}/partial${src}/alpha/big.bin`)).size).toBe(3 * 1024 * 1024 + 17);
    const healed = await backup();
    expect(healed.r.code).toBe(0);
    expect(jsonResult<{ summary: { blobsNew: number } }>(healed.r).summary.blobsNew).toBeGreaterThan(0);
    await restoresIdentical(healed.id);
    await restoresIdentical(first);
  });

  it('backup --verify-reused finds and re-stores a damaged blob nobody checked yet', async () => {
    const first = (await backup()).id;
    const { firstBlob } = await idsIn(first, '/alpha');
    const loc = await blobFile(firstBlob);
    await flipByte(loc.path, loc.offset + 100);
    const plain = await backup();
    expect(jsonResult<{ summary: { bytesNew: number } }>(plain.r).summary.bytesNew).toBe(0); // trusted by metadata
    const verified = await backup('--verify-reused');
    expect(verified.r.code, verified.r.stderr).toBe(0);
    expect(jsonResult<{ summary: { bytesNew: number } }>(verified.r).summary.bytesNew).toBeGreaterThan(0);
    await restoresIdentical(first);
    await restoresIdentical(plain.id);
  });

  it('a restore falls back to an intact duplicate copy of a damaged blob', async () => {
    const first = (await backup()).id;
    const { firstBlob } = await idsIn(first, '/beta');
    const reader = await openRepo();
    const plain = await reader.loadBlob('data', firstBlob);
    await reader.close();
    // A second writer that had not seen the first one's index stores the same blob again.
    const writer = await Repository.open(new LocalBackend(repoPath), TEST_PASSWORD);
    try {
      expect((await writer.saveBlob('data', plain)).stored).toBe(true);
      await writer.flush();
    } finally {
      await writer.close();
    }
    const loc = await blobFile(firstBlob);
    await flipByte(loc.path, loc.offset + 100);
    await restoresIdentical(first);
  });

  it('repair snapshots writes a snapshot without the lost file; with --forget the damaged original goes', async () => {
    const first = (await backup()).id;
    const { firstBlob } = await idsIn(first, '/gamma');
    const loc = await blobFile(firstBlob);
    await flipByte(loc.path, loc.offset + 100);
    expect((await runCli(['check', '--read-data'], { env })).code).toBe(1);
    const dry = await runCli(['repair', 'snapshots', '--dry-run'], { env });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(new RegExp(`snapshot ${first.slice(0, 8)} would be repaired, leaving out:\\n  ${src}/gamma/big.bin`));
    const r = await runCli(['repair', 'snapshots', '--forget', '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const to = jsonResult<{ repaired: { from: string; to: string; lost: string[] }[] }>(r).repaired[0]!;
    expect(to.lost).toEqual([`${src}/gamma/big.bin`]);
    const target = `${tmp.path}/repaired`;
    const restored = await runCli(['restore', to.to, '--target', target], { env });
    expect(restored.code, restored.stdout + restored.stderr).toBe(0);
    await fsp.rm(`${src}/gamma/big.bin`);
    execFileSync('diff', ['-r', src, `${target}${src}`]);
    const check = await runCli(['check'], { env });
    expect(check.code, check.stdout).toBe(0);
    const list = await runCli(['snapshots', '--json'], { env });
    expect((JSON.parse(list.stdout) as { id: string; tags: string[] }[]).map((s) => [s.id, s.tags])).toEqual([[to.to, ['repaired']]]);
  });

  it('a failed disk restore leaves the incomplete image under a name that says so', async () => {
    const image = `${tmp.path}/disk.img`;
    await fsp.writeFile(image, patternBytes(4 * 1024 * 1024, 5));
    const b = await runCli(['backup', 'disk', image, '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const id = jsonResult<{ snapshots: { snapshot: string }[] }>(b).snapshots[0]!.snapshot;
    const repo = await openRepo();
    let pack = '';
    try {
      for (const [, e] of repo.index.entries()) if (e.type === 'data') pack = e.pack;
    } finally {
      await repo.close();
    }
    await flipByte(objectPath(repoPath, 'data', pack), 200);
    const target = `${tmp.path}/disks`;
    const r = await runCli(['restore', 'vm', id, '--target', target], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/incomplete image was left as '.*disk\.raw\.partial'/);
    expect(await fsp.readdir(target)).toEqual(['disk.raw.partial']);
  });
});
