import { randomBytes } from 'node:crypto';
import { readdirSync, truncateSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/repo.js';
import { IndexCache, IndexFileVanishedError } from './index-cache.js';
import { MasterIndex, type IndexFile } from './index.js';

const hex = (): string => randomBytes(32).toString('hex');

/** An index file of `packs` packs of `blobs` random blobs each. */
function indexFile(packs: number, blobs: number, type: 'data' | 'tree' = 'data'): IndexFile {
  return {
    version: 1,
    packs: Array.from({ length: packs }, () => ({ id: hex(), type, blobs: Array.from({ length: blobs }, (_, i) => ({ id: hex(), offset: i * 1000, length: 1000, ulen: i % 2 ? 0 : 3000 })) })),
  };
}

let dir: { path: string; cleanup(): Promise<void> };
let caches: IndexCache[];
let indexes: MasterIndex[];
beforeEach(async () => {
  dir = await tempDir();
  caches = [];
  indexes = [];
});
afterEach(async () => {
  for (const i of indexes) i.close();
  for (const c of caches) c.close();
  await dir.cleanup();
});

/** Opens the cache folder afresh (another process) and loads `files` through it; counts the files read. */
async function load(files: Map<string, IndexFile>, folder: string | undefined = `${dir.path}/cache`): Promise<{ index: MasterIndex; read: string[] }> {
  const cache = new IndexCache(folder);
  caches.push(cache);
  const read: string[] = [];
  const { runs, meta } = await cache.update([...files.keys()], async (name) => {
    read.push(name);
    return files.get(name);
  });
  const index = new MasterIndex();
  indexes.push(index);
  index.attach(runs, meta.values());
  return { index, read };
}

function expectAll(index: MasterIndex, files: Iterable<IndexFile>): void {
  for (const f of files) {
    for (const p of f.packs) {
      expect(index.packSize(p.id)).toBe(p.blobs.length * 1000);
      for (const b of p.blobs) expect(index.lookup(b.id)).toEqual({ pack: p.id, type: p.type, offset: b.offset, length: b.length, ulen: b.ulen });
    }
  }
}

describe('index cache', () => {
  it('answers like the index files, and a second process reads none of them again', async () => {
    const files = new Map(Array.from({ length: 20 }, (_, i) => [`f${i}`, indexFile(8, 16, i % 3 ? 'data' : 'tree')]));
    const first = await load(files);
    expect(first.read.sort()).toEqual([...files.keys()].sort());
    expectAll(first.index, files.values());
    for (let i = 0; i < 200; i++) expect(first.index.has(hex())).toBe(false);
    expect(first.index.blobCount).toBe(20 * 8 * 16);
    expect(first.index.packCount).toBe(20 * 8);

    const second = await load(files);
    expect(second.read).toEqual([]);
    expectAll(second.index, files.values());
    expect([...second.index.allEntries()]).toHaveLength(20 * 8 * 16);
  });

  it('reads only new index files, and keeps the runs few however many updates there are', async () => {
    const files = new Map<string, IndexFile>();
    for (let i = 0; i < 40; i++) {
      files.set(`f${i}`, indexFile(1 + (i % 4), 8));
      const { read } = await load(files);
      expect(read).toEqual([`f${i}`]);
    }
    const { index } = await load(files);
    expectAll(index, files.values());
    const runs = readdirSync(`${dir.path}/cache`).filter((n) => n.endsWith('.entries'));
    expect(runs.length).toBeLessThanOrEqual(6);
  });

  it('drops what a vanished index file said (a prune rewrote the index) and reads the rest again', async () => {
    const files = new Map(Array.from({ length: 6 }, (_, i) => [`f${i}`, indexFile(2, 4)]));
    await load(files);
    const gone = files.get('f2')!;
    files.delete('f2');
    const { index, read } = await load(files);
    expect(read.sort()).toEqual(['f0', 'f1', 'f3', 'f4', 'f5']);
    expectAll(index, files.values());
    for (const p of gone.packs) {
      expect(index.hasPack(p.id)).toBe(false);
      for (const b of p.blobs) expect(index.has(b.id)).toBe(false);
    }
  });

  it('asks again next time for an index file it was told to leave out (damaged), and keeps prune marks', async () => {
    const files = new Map([['a', indexFile(1, 2)], ['b', indexFile(1, 2)]]);
    const pruneMarks: IndexFile = { version: 1, packs: [], generation: 7, obsolete: [{ pack: files.get('a')!.packs[0]!.id, generation: 7 }] };
    files.set('marks', pruneMarks);
    const cache = new IndexCache(`${dir.path}/cache`);
    caches.push(cache);
    await cache.update([...files.keys()], async (name) => (name === 'b' ? undefined : files.get(name)));
    const { index, read } = await load(files);
    expect(read).toEqual(['b']);
    expect(index.generation).toBe(7);
    const a = files.get('a')!.packs[0]!;
    expect(index.has(a.blobs[0]!.id)).toBe(false); // condemned by prune: not reusable
    expect(index.locations(a.blobs[0]!.id)).toHaveLength(1); // but still readable
  });

  it('leaves nothing behind when an index file vanishes while it is read', async () => {
    const files = new Map(Array.from({ length: 5 }, (_, i) => [`f${i}`, indexFile(2, 4)]));
    const cache = new IndexCache(`${dir.path}/cache`);
    caches.push(cache);
    await expect(
      cache.update([...files.keys()], async (name) => {
        if (name === 'f3') throw new IndexFileVanishedError(name);
        return files.get(name);
      }),
    ).rejects.toBeInstanceOf(IndexFileVanishedError);
    expect(readdirSync(`${dir.path}/cache`)).toEqual([]);
  });

  it('finds every copy of a blob stored twice, across runs and what this process added', async () => {
    const files = new Map([['a', indexFile(1, 3)]]);
    await load(files);
    const id = files.get('a')!.packs[0]!.blobs[1]!.id;
    const again = indexFile(1, 1);
    again.packs[0]!.blobs[0]!.id = id;
    files.set('b', again);
    const { index } = await load(files);
    const mine = indexFile(1, 1);
    mine.packs[0]!.blobs[0]!.id = id;
    index.addFile(mine);
    expect(index.locations(id).map((e) => e.pack).sort()).toEqual([files.get('a')!.packs[0]!.id, again.packs[0]!.id, mine.packs[0]!.id].sort());
    index.markDamaged(id, mine.packs[0]!.id);
    expect(index.lookup(id)?.pack).not.toBe(mine.packs[0]!.id);
    expect([...index.entries()].filter(([b]) => b === id)).toHaveLength(1);
  });

  it('starts afresh from a damaged run or manifest: it is only a cache', async () => {
    const files = new Map(Array.from({ length: 4 }, (_, i) => [`f${i}`, indexFile(3, 5)]));
    await load(files);
    const folder = `${dir.path}/cache`;
    const run = readdirSync(folder).find((n) => n.endsWith('.entries'))!;
    truncateSync(`${folder}/${run}`, 100);
    const again = await load(files);
    expect(again.read.sort()).toEqual([...files.keys()].sort());
    expectAll(again.index, files.values());
    writeFileSync(`${folder}/manifest.json`, '{"version":1,"runs":[{"id":"x","files":7}],"meta":{}}');
    const third = await load(files);
    expect(third.read.sort()).toEqual([...files.keys()].sort());
    expectAll(third.index, files.values());
  });

  it('works without a cache folder, in a private one removed at close', async () => {
    const files = new Map([['a', indexFile(3, 3)]]);
    const cache = new IndexCache(undefined);
    const { runs } = await cache.update(['a'], async () => files.get('a'));
    const index = new MasterIndex();
    index.attach(runs, []);
    expectAll(index, files.values());
    index.close();
    const folder = (cache as unknown as { dir: string }).dir;
    expect(readdirSync(folder).length).toBeGreaterThan(0);
    cache.close();
    expect(() => readdirSync(folder)).toThrow(/ENOENT/);
  });
});
