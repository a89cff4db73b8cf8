import { execFileSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { fileNode, flipByte, hostileSnapshot, node, objectPath, writeSnapshot, writeTree } from '../../test/helpers/hostile.js';
import { createTestRepository, TEST_PASSWORD, type TestRepository } from '../../test/helpers/repo.js';
import { LocalBackend } from '../storage/local.js';
import type { Backend, FileType } from '../storage/backend.js';
import { checkRepository } from './check.js';
import { listLocks } from './lock.js';
import { Repository } from './repository.js';

let t: TestRepository | undefined;
afterEach(async () => {
  await t?.cleanup();
  t = undefined;
});

/** A folder tree of `folders` folders, two levels deep, each with a small file. */
async function folderTree(repo: Repository, folders: number): Promise<string> {
  const groups = [];
  for (let g = 0; g < Math.ceil(folders / 50); g++) {
    const leaves = [];
    for (let i = 0; i < 50; i++) {
      const name = `f${String(i).padStart(3, '0')}`;
      leaves.push(node(name, 'dir', { subtree: await writeTree(repo, [await fileNode(repo, 'x', Buffer.from(`${g}/${i}`))]) }));
    }
    groups.push(node(`g${String(g).padStart(3, '0')}`, 'dir', { subtree: await writeTree(repo, leaves) }));
  }
  return writeTree(repo, groups);
}

/** Counts tree blob loads. */
function countTreeLoads(repo: Repository): { loads: number } {
  const counter = { loads: 0 };
  const load = repo.loadBlob.bind(repo);
  repo.loadBlob = async (type, id) => {
    if (type === 'tree') counter.loads++;
    return load(type, id);
  };
  return counter;
}

describe('check', () => {
  it('loads each distinct tree once, however many snapshots share it', async () => {
    t = await createTestRepository();
    const root = await folderTree(t.repo, 500);
    for (let i = 0; i < 40; i++) await writeSnapshot(t.repo, { tree: root, time: new Date(Date.UTC(2026, 0, 1 + i)).toISOString() });
    const repo = await t.reopen();
    const counter = countTreeLoads(repo);
    const r = await checkRepository(repo);
    expect(r.problems).toEqual([]);
    expect(r.snapshots).toBe(40);
    // 500 leaf folders + 10 groups + the root
    expect(counter.loads).toBe(511);
  });

  it('names every damaged snapshot and path, and counts them in the summary', async () => {
    t = await createTestRepository();
    const good = await fileNode(t.repo, 'good', Buffer.from('good'));
    const bad = await fileNode(t.repo, 'bad', Buffer.from('will be lost'));
    const a = await hostileSnapshot(t.repo, [bad, good]);
    const b = await hostileSnapshot(t.repo, [node('sub', 'dir', { subtree: await writeTree(t.repo, [bad]) })]);
    const c = await hostileSnapshot(t.repo, [good]);
    const repo = await t.reopen();
    await repo.loadIndex();
    const e = repo.index.lookup(bad.content![0]!)!;
    await flipByte(objectPath(t.path, 'data', e.pack), e.offset + 5);
    const fresh = await t.reopen();
    const r = await checkRepository(fresh, { readData: true });
    expect(r.damagedSnapshots.sort()).toEqual([a.snapshot, b.snapshot].sort());
    expect(r.affected).toEqual(expect.arrayContaining([{ snapshot: a.snapshot, path: '/bad' }, { snapshot: b.snapshot, path: '/sub/bad' }]));
    expect(r.damagedSnapshots).not.toContain(c.snapshot);
  });

  it('reports a tree with a name twice or names out of order, and the snapshots that hold it', async () => {
    t = await createTestRepository();
    const twice = await hostileSnapshot(t.repo, [node('d', 'dir', { subtree: await writeTree(t.repo, [node('x', 'file'), node('x', 'symlink', { linkTarget: '/etc/shadow' })]) })]);
    const unordered = await hostileSnapshot(t.repo, [node('b', 'file'), node('a', 'file')]);
    const fine = await hostileSnapshot(t.repo, [node('a', 'file')]);
    const r = await checkRepository(await t.reopen(), { readData: true });
    expect(r.problems.filter((p) => p.kind === 'tree').map((p) => p.message).join('\n')).toMatch(/appears twice[\s\S]*not in order|not in order[\s\S]*appears twice/);
    expect(r.damagedSnapshots.sort()).toEqual([twice.snapshot, unordered.snapshot].sort());
    expect(r.affected).toEqual(expect.arrayContaining([{ snapshot: twice.snapshot, path: '/d' }, { snapshot: unordered.snapshot, path: '/' }]));
    expect(r.damagedSnapshots).not.toContain(fine.snapshot);
  });

  it('reads every copy of a blob stored twice, and reports the damaged one', async () => {
    t = await createTestRepository();
    const data = Buffer.from('stored twice');
    await hostileSnapshot(t.repo, [await fileNode(t.repo, 'f', data)]);
    const second = await t.reopen(); // has not loaded the index: stores the blob again
    const id = (await second.saveBlob('data', data)).id;
    await second.flush();
    const reader = await t.reopen();
    await reader.loadIndex();
    const copies = reader.index.locations(id);
    expect(copies.length).toBe(2);
    await flipByte(objectPath(t.path, 'data', copies[1]!.pack), copies[1]!.offset + 3);
    const r = await checkRepository(await t.reopen(), { readData: true });
    expect(r.problems.map((p) => p.kind)).toContain('blob-damaged');
    expect(r.problems.find((p) => p.kind === 'blob-damaged')!.message).toContain(copies[1]!.pack);
    // The intact copy keeps the snapshot whole.
    expect(r.damagedSnapshots).toEqual([]);
  });

  it('lists snapshots before loading the index: a backup saved meanwhile is no false alarm', async () => {
    t = await createTestRepository();
    await hostileSnapshot(t.repo, [await fileNode(t.repo, 'first', Buffer.from('first'))]);
    const writer = await t.reopen();
    const checker = await t.reopen();
    // A backup that lands between check's two listings: its index and then its snapshot.
    const backend = checker.backend;
    const list = backend.list.bind(backend);
    let injected = false;
    const listed = new Set<FileType>();
    (backend as { list: Backend['list'] }).list = (type: FileType) => {
      if (type === 'index' || type === 'snapshots') listed.add(type);
      // Between the first of the two listings and the second, whichever order a reader uses.
      if (listed.size === 2 && !injected) {
        injected = true;
        return (async function* () {
          await hostileSnapshot(writer, [await fileNode(writer, 'second', Buffer.from('second'))]);
          yield* list(type);
        })();
      }
      return list(type);
    };
    const r = await checkRepository(checker);
    expect(injected).toBe(true);
    expect(r.problems).toEqual([]);
  });

  it('runs on a read-only repository with no lock and writes nothing', async () => {
    t = await createTestRepository();
    await hostileSnapshot(t.repo, [await fileNode(t.repo, 'f', Buffer.from('ro'))]);
    const ro = `${t.dir}/ro`;
    await mkdir(ro);
    execFileSync('mount', ['--bind', t.path, ro]);
    try {
      execFileSync('mount', ['-o', 'remount,ro,bind', ro]);
      const repo = await Repository.open(new LocalBackend(ro), TEST_PASSWORD);
      try {
        const r = await checkRepository(repo, { readData: true, recordDamage: false });
        expect(r.problems).toEqual([]);
        expect(await listLocks(repo)).toEqual([]);
      } finally {
        await repo.close();
      }
    } finally {
      execFileSync('umount', [ro]);
    }
  });

  it('a damaged lock file blocks nobody', async () => {
    t = await createTestRepository();
    const id = await t.repo.saveDocument('locks', { time: new Date().toISOString(), exclusive: true, hostname: 'x', username: 'y', pid: 1, purpose: 'prune' });
    await flipByte(objectPath(t.path, 'locks', id), 20);
    const locks = await listLocks(t.repo);
    expect(locks).toMatchObject([{ id, stale: true, purpose: 'damaged lock file' }]);
  });
});
