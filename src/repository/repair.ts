// repair index rebuilds the index from the packs' own headers, for when index files are damaged or
// lost. Crash safe by order: the new index files are durable before any old one is removed, so an
// interruption leaves both (readers take the union) and a second run finishes the job.
import { BulwarkError } from '../util/errors.js';
import { decodePage, encodePage } from './fixed-index.js';
import { validateIndexFile, type IndexFile } from './index.js';
import type { Repository } from './repository.js';
import { listSnapshots } from './snapshot.js';
import { decodeTree, displayName, encodeTree, nodeName, type TreeNode } from './tree.js';

export interface RepairIndexResult {
  packs: number;
  blobs: number;
  /** Packs whose header cannot be read: their blobs are lost to the index. */
  unreadablePacks: { pack: string; reason: string }[];
  indexFilesWritten: number;
  indexFilesRemoved: number;
}

const PACKS_PER_FILE = 64;

type RepairRepo = Pick<Repository, 'backend' | 'loadDocument' | 'saveDocument' | 'readPackEntries'>;

export async function repairIndex(repo: RepairRepo, onProgress?: (done: number, total: number) => void): Promise<RepairIndexResult> {
  const oldFiles: string[] = [];
  for await (const f of repo.backend.list('index')) oldFiles.push(f.name);
  // Damage recorded by check stays recorded (for packs that still exist): the blobs it names must
  // still be stored again by the next backup.
  const damaged = new Map<string, { id: string; pack: string }>();
  for (const name of oldFiles) {
    try {
      const file = await repo.loadDocument<IndexFile>('index', name);
      validateIndexFile(file, name);
      for (const d of file.damaged ?? []) damaged.set(`${d.id}/${d.pack}`, d);
    } catch (err) {
      if (!(err instanceof BulwarkError) && !repo.backend.isNotFound(err)) throw err;
    }
  }
  const packs: { name: string; size: number }[] = [];
  for await (const f of repo.backend.list('data')) packs.push({ name: f.name, size: f.size });
  const result: RepairIndexResult = { packs: 0, blobs: 0, unreadablePacks: [], indexFilesWritten: 0, indexFilesRemoved: 0 };
  const present = new Set<string>();
  let pending: IndexFile['packs'] = [];
  const write = async (extra: Partial<IndexFile> = {}): Promise<void> => {
    if (pending.length === 0 && !extra.damaged?.length) return;
    await repo.saveDocument('index', { version: 1, packs: pending, ...extra } satisfies IndexFile);
    result.indexFilesWritten++;
    pending = [];
  };
  let done = 0;
  for (const p of packs) {
    onProgress?.(done++, packs.length);
    try {
      const entries = await repo.readPackEntries(p.name, p.size);
      if (entries.length === 0) continue;
      const type = entries[0]!.type;
      if (entries.some((e) => e.type !== type)) throw new BulwarkError('repository-corrupt', 'its header mixes blob types');
      pending.push({ id: p.name, type, blobs: entries.map(({ id, offset, length, ulen }) => ({ id, offset, length, ulen })) });
      present.add(p.name);
      result.packs++;
      result.blobs += entries.length;
    } catch (err) {
      if (!(err instanceof BulwarkError) || (err.code !== 'repository-corrupt' && !repo.backend.isNotFound(err))) throw err;
      result.unreadablePacks.push({ pack: p.name, reason: err.message });
    }
    if (pending.length >= PACKS_PER_FILE) await write();
  }
  await write({ damaged: [...damaged.values()].filter((d) => present.has(d.pack)) });
  for (const name of oldFiles) {
    try {
      await repo.backend.remove({ type: 'index', name });
      result.indexFilesRemoved++;
    } catch (err) {
      if (!repo.backend.isNotFound(err)) throw err;
    }
  }
  return result;
}

export interface RepairedSnapshot {
  from: string;
  /** The new snapshot, or undefined on a dry run. */
  to?: string;
  /** Paths (or disk@offset ranges) that are lost and left out. */
  lost: string[];
}

export interface RepairSnapshotsResult {
  repaired: RepairedSnapshot[];
  /** Originals removed (--forget). */
  forgotten: string[];
}

type SnapshotRepairRepo = Pick<Repository, 'backend' | 'loadDocument' | 'saveDocument' | 'loadBlob' | 'saveBlob' | 'flush' | 'index' | 'forgotten' | 'onWarning' | 'freshness'>;

/**
 * repair snapshots: writes, for every snapshot that names data the repository no longer has intact, a
 * new snapshot without it: files with a lost blob and folders whose tree is lost are left out (a lost
 * folder stays as an empty folder), lost disk blocks become holes. The original is kept unless
 * `forget`. What counts as lost is what the index knows: run `check --read-data` first so that damaged
 * (not only missing) blobs are known. Each distinct tree is rewritten once, however often it is shared.
 */
export async function repairSnapshots(repo: SnapshotRepairRepo, opts: { dryRun?: boolean; forget?: boolean } = {}): Promise<RepairSnapshotsResult> {
  const lostBlob = (id: string): boolean => !repo.index.has(id);
  // tree id → rewritten tree id (same id when intact), and the lost paths below it, relative.
  const memo = new Map<string, { id: string; lost: string[] }>();
  const rewrite = async (treeId: string): Promise<{ id: string; lost: string[] } | undefined> => {
    const known = memo.get(treeId);
    if (known) return known;
    let tree;
    try {
      tree = decodeTree(await repo.loadBlob('tree', treeId), treeId);
    } catch (err) {
      if (!(err instanceof BulwarkError)) throw err;
      return undefined;
    }
    const nodes: TreeNode[] = [];
    const lost: string[] = [];
    let changed = false;
    for (const n of tree.nodes) {
      const name = displayName(nodeName(n));
      if (n.type === 'file' && n.content?.some(lostBlob)) {
        lost.push(`/${name}`);
        changed = true;
        continue;
      }
      if (n.type === 'dir' && n.subtree) {
        const sub = await rewrite(n.subtree);
        if (!sub) {
          lost.push(`/${name}/ (the folder's contents)`);
          nodes.push({ ...n, subtree: opts.dryRun ? n.subtree : (await repo.saveBlob('tree', encodeTree({ nodes: [] }))).id });
          changed = true;
          continue;
        }
        lost.push(...sub.lost.map((p) => `/${name}${p}`));
        if (sub.id !== n.subtree) {
          nodes.push({ ...n, subtree: sub.id });
          changed = true;
          continue;
        }
      }
      nodes.push(n);
    }
    const id = changed && !opts.dryRun ? (await repo.saveBlob('tree', encodeTree({ nodes }))).id : changed ? `${treeId}-changed` : treeId;
    const r = { id, lost };
    memo.set(treeId, r);
    return r;
  };

  const result: RepairSnapshotsResult = { repaired: [], forgotten: [] };
  for (const sn of await listSnapshots(repo)) {
    const lost: string[] = [];
    let tree = sn.tree;
    if (sn.tree) {
      const r = await rewrite(sn.tree);
      if (!r) {
        lost.push('/ (the whole file tree)');
        tree = opts.dryRun ? sn.tree : (await repo.saveBlob('tree', encodeTree({ nodes: [] }))).id;
      } else {
        lost.push(...r.lost);
        tree = r.id;
      }
    }
    const disks = [];
    for (const d of sn.disks ?? []) {
      const pages: string[] = [];
      let block = 0;
      for (const pageId of d.pages) {
        let ids: (string | null)[] | undefined;
        try {
          ids = decodePage(await repo.loadBlob('tree', pageId), pageId);
        } catch (err) {
          if (!(err instanceof BulwarkError)) throw err;
        }
        const entries = ids ?? new Array<string | null>(Math.min(4096, Math.ceil(d.size / d.blockSize) - block)).fill(null);
        const fixed = entries.map((id, i) => {
          if (id !== null && !lostBlob(id)) return id;
          if (id !== null || ids === undefined) lost.push(`${d.name}@${(block + i) * d.blockSize}`);
          return null;
        });
        const same = ids !== undefined && fixed.every((x, i) => x === ids![i]);
        pages.push(same || opts.dryRun ? pageId : (await repo.saveBlob('tree', encodePage(fixed))).id);
        block += entries.length;
      }
      disks.push({ ...d, pages });
    }
    if (lost.length === 0) continue;
    const entry: RepairedSnapshot = { from: sn.id, lost };
    if (!opts.dryRun) {
      await repo.flush();
      const { id: _id, ...record } = sn;
      const doc = {
        ...record,
        ...(tree ? { tree } : {}),
        ...(sn.disks ? { disks } : {}),
        tags: [...new Set([...sn.tags, 'repaired'])],
        repairedFrom: sn.id,
        summary: { ...sn.summary, warnings: [...sn.summary.warnings, ...lost.map((p) => `lost in repair: ${p}`)] },
      };
      entry.to = await repo.saveDocument('snapshots', doc);
      if (opts.forget) {
        await repo.backend.remove({ type: 'snapshots', name: sn.id });
        repo.forgotten.add(sn.id);
        result.forgotten.push(sn.id);
      }
    }
    result.repaired.push(entry);
  }
  return result;
}
