// Issue "Repository engine, file backup and restore": a tree holding every kind of item is backed up and
// restored through the real CLI, then compared item by item (content and metadata).
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { describeTree, makeEveryKindTree, type ItemRecord } from '../fixtures/tree.js';

let tmp: { path: string; cleanup(): Promise<void> };
let src: string;
let env: Record<string, string>;

beforeAll(async () => {
  tmp = await tempDir();
  src = `${tmp.path}/src`;
  await makeEveryKindTree(src);
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'test password' };
  const init = await runCli(['init'], { env });
  expect(init.code, init.stderr).toBe(0);
});

afterAll(async () => {
  await tmp.cleanup();
});

function comparable(items: ItemRecord[]): Omit<ItemRecord, 'blocks'>[] {
  return items.map(({ blocks: _b, ...rest }) => rest);
}

describe('file backup and restore of every kind of item', () => {
  let firstId = '';

  it('backs up and restores the tree identically, item by item', async () => {
    const backup = await runCli(['backup', 'files', src, '--json', '--tag', 'first'], { env });
    expect(backup.code, backup.stderr).toBe(0);
    const summary = jsonResult<{ snapshot: string; summary: { filesNew: number; bytesNew: number }; errors: unknown[] }>(backup);
    expect(summary.errors).toEqual([]);
    expect(summary.summary.filesNew).toBeGreaterThan(15);
    firstId = summary.snapshot;

    const out = `${tmp.path}/out`;
    const restore = await runCli(['restore', 'latest', '--target', out, '--verify'], { env });
    expect(restore.code, restore.stderr).toBe(0);
    expect(restore.stdout).toMatch(/verified \d+ files: all match/);

    const before = await describeTree(src);
    const after = await describeTree(`${out}${src}`);
    expect(after.length).toBe(before.length);
    expect(comparable(after)).toEqual(comparable(before));

    // Each kind is really there (guards against a fixture that silently lost one).
    const kinds = new Set(before.map((i) => i.type));
    for (const k of ['file', 'dir', 'symlink', 'fifo', 'chardev', 'blockdev']) expect(kinds).toContain(k);
    expect(before.some((i) => i.linkGroup !== undefined && i.linkGroup !== i.path)).toBe(true);
    expect(before.some((i) => i.xattrs !== undefined)).toBe(true);
    expect(Math.max(...before.map((i) => Buffer.byteLength(i.path)))).toBeGreaterThan(4096);

    // Holes come back as holes: the 64 MiB sparse file occupies about what the source does.
    const sparseBefore = before.find((i) => i.path === '/sparse.img')!;
    const sparseAfter = after.find((i) => i.path === '/sparse.img')!;
    expect(sparseAfter.size).toBe(64 * 1024 * 1024);
    expect(sparseAfter.blocks * 512).toBeLessThan(8 * 1024 * 1024);
    expect(sparseAfter.blocks).toBeLessThanOrEqual(sparseBefore.blocks + 8192);
  });

  it('skips unchanged files by metadata and notices a changed one', async () => {
    const again = await runCli(['backup', 'files', src, '--json'], { env });
    expect(again.code, again.stderr).toBe(0);
    const s = jsonResult<{ snapshot: string; parent: string; summary: { filesNew: number; filesChanged: number; filesUnmodified: number; bytesRead: number; bytesNew: number } }>(again);
    expect(s.parent).toBe(firstId);
    expect(s.summary.bytesRead).toBe(0);
    expect(s.summary.filesNew + s.summary.filesChanged).toBe(0);
    expect(s.summary.filesUnmodified).toBeGreaterThan(15);

    await fsp.appendFile(`${src}/dir/sub/text.log`, 'one more line\n');
    const third = await runCli(['backup', 'files', src, '--json'], { env });
    const t = jsonResult<{ snapshot: string; summary: { filesChanged: number; bytesRead: number } }>(third);
    expect(t.summary.filesChanged).toBe(1);
    expect(t.summary.bytesRead).toBe((await fsp.stat(`${src}/dir/sub/text.log`)).size);

    const diff = await runCli(['diff', s.snapshot, t.snapshot, '--json'], { env });
    expect(diff.code, diff.stderr).toBe(0);
    const d = jsonResult<{ modified: string[]; added: string[]; removed: string[] }>(diff);
    expect(d.modified).toEqual([`${src}/dir/sub/text.log`]);
    expect(d.added).toEqual([]);
    expect(d.removed).toEqual([]);
  });

  it('lists snapshots and contents, and restores a single file', async () => {
    const list = await runCli(['snapshots', '--json'], { env });
    const snaps = JSON.parse(list.stdout) as { id: string; tags: string[]; source: string }[];
    expect(snaps.length).toBe(3);
    expect(snaps[0]!.tags).toEqual(['first']);
    expect(snaps.every((x) => x.source === 'files')).toBe(true);

    const ls = await runCli(['ls', `${firstId.slice(0, 8)}:${src}/dir`, '--json'], { env });
    expect(ls.code, ls.stderr).toBe(0);
    const paths = (JSON.parse(ls.stdout) as { entries: { path: string }[] }).entries.map((e) => e.path);
    expect(paths).toContain(`${src}/dir/big.bin`);
    expect(paths).toContain(`${src}/dir/sub/hard-3`);

    const one = `${tmp.path}/one`;
    const r = await runCli(['restore', `${firstId.slice(0, 8)}:${src}/small.txt`, '--target', one], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(await fsp.readFile(`${one}/small.txt`, 'utf8')).toBe('hello, bulwark\n');
    expect(await fsp.readdir(one)).toEqual(['small.txt']);

    const inc = `${tmp.path}/inc`;
    const ri = await runCli(['restore', 'latest', '--target', inc, '--include', '*.log', '--verify'], { env });
    expect(ri.code, ri.stderr).toBe(0);
    expect(await fsp.readFile(`${inc}${src}/dir/sub/text.log`, 'utf8')).toMatch(/one more line/);
    await expect(fsp.access(`${inc}${src}/small.txt`)).rejects.toThrow();
  });

  it('reports stats with a deduplication ratio', async () => {
    const r = await runCli(['stats', '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as { snapshots: number; storedBytes: number; logicalBytes: number; dedupRatio: number };
    expect(s.snapshots).toBe(3);
    // Three snapshots of the same ~90 MB tree (64 MiB of it sparse) stored once.
    expect(s.dedupRatio).toBeGreaterThan(3);
  });
});

describe('sparse files', () => {
  it('a 4 GiB file of holes and unaligned data islands comes back byte for byte, as holes, with its holes stored once', async () => {
    const dir = await tempDir();
    try {
      const data = `${dir.path}/src`;
      await fsp.mkdir(data);
      const file = `${data}/disk.img`;
      const fh = await fsp.open(file, 'w');
      const size = 4 * 1024 ** 3;
      await fh.truncate(size);
      // Islands at odd offsets: chunk boundaries fall inside data, inside holes and between them.
      const islands = [0, 12_345_678, 1_000_000_007, 2_147_483_000, size - 777];
      for (const [i, at] of islands.entries()) {
        const bytes = Buffer.alloc(Math.min(300_000 + i * 1000, size - at), i + 1);
        for (let j = 0; j < bytes.length; j += 97) bytes[j] = j & 0xff;
        await fh.write(bytes, 0, bytes.length, at);
      }
      await fh.close();
      const e = { BULWARK_REPOSITORY: `${dir.path}/repo`, BULWARK_PASSWORD: 'test password' };
      expect((await runCli(['init'], { env: e })).code).toBe(0);
      const backup = await runCli(['backup', 'files', data, '--json'], { env: e });
      expect(backup.code, backup.stderr).toBe(0);
      const stats = jsonResult<{ summary: { bytesNew: number } }>(backup);
      // The holes are one chunk, stored once; new chunks are the islands with the zeros around them
      // up to the next cut (at most two of maxSize each).
      expect(stats.summary.bytesNew).toBeLessThan((1 + 2 * islands.length) * 8 * 1024 * 1024);
      const repo = JSON.parse((await runCli(['stats', '--json'], { env: e })).stdout) as { storedBytes: number };
      expect(repo.storedBytes).toBeLessThan(4 * 1024 * 1024);

      const out = `${dir.path}/out`;
      const restore = await runCli(['restore', 'latest', '--target', out], { env: e });
      expect(restore.code, restore.stderr).toBe(0);
      const restored = `${out}${file}`;
      const st = await fsp.stat(restored);
      expect(st.size).toBe(size);
      expect(st.blocks * 512).toBeLessThan(16 * 1024 * 1024);
      // cmp, an outside witness, reads both whole.
      execFileSync('cmp', [file, restored]);
    } finally {
      await dir.cleanup();
    }
  });
});
