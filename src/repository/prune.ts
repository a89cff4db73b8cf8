// prune: removes the data no snapshot needs, while backups keep running (it takes a shared lock, never
// the exclusive one). The danger is a backup that loaded the index before prune decided a pack was
// garbage, reuses a blob in it, and writes a snapshot after prune deleted it. So deletion takes two runs:
//
// Mark (this run). Packs no snapshot needs (and packs no index lists: crash leftovers, or a running
// backup's packs not indexed yet) are condemned: listed, with the generation G+1, in one index file that
// carries every pending mark and the generation. A condemned pack's blobs no longer count as present,
// so a backup that loaded this file stores them again instead of reusing them. Packs mostly garbage
// (over --max-unused) have their needed blobs copied into new packs first, then are condemned too.
//
// Sweep (a later run). A pack condemned at generation g is removed only when
//   (1) every lock held now records an index of generation g or later: every process still running
//       loaded the mark, so none reuses the pack's blobs (a lock records the generation of the index
//       its process loaded; one that has not loaded an index yet counts as generation -1), and
//   (2) no snapshot listed *after* those locks needs a blob whose only copy is in the pack: a backup that
//       finished before the lock listing wrote its snapshot before releasing its lock, so it is seen;
//       one still running is held by (1). A pack that is needed again is revived (its mark dropped).
//       The index is loaded after the snapshots are listed, so it covers every snapshot listed.
// Why one file for the marks: a process that saw generation g has then seen every mark up to g. And a
// process never loads half an index: one that finds a listed index file gone (prune rewrote the index
// meanwhile: new files first, old ones removed after) loads a fresh listing from scratch
// (Repository.loadIndexFiles). Otherwise it could keep an old file's packs but miss the old mark file,
// and reuse a pack this very run removes, though it started after this run listed the locks. Locks stale by the rules of lock.ts (dead
// process on this host, no refresh for 30 minutes) hold nothing, as everywhere in Bulwark.
//
// Crash safety: new index files are durable before the old ones are removed, and packs are removed
// last. Killed at any point, the union of index files is a superset of the truth (a removed pack may
// still be listed until the next run, which notices it missing and drops it), and the next run
// starts over from what it finds.
import { hostname } from 'node:os';
import { BulwarkError } from '../util/errors.js';
import { decodePage } from './fixed-index.js';
import type { IndexEntry, IndexFile } from './index.js';
import { listLocks, Lock, RepositoryLockedError, type LockInfo } from './lock.js';
import { OtherFormatObjectError } from './sealer.js';
import { readSnapshots } from './snapshot.js';
import type { Repository } from './repository.js';
import { loadTree } from './walk.js';

export interface PruneOptions {
  /** Repack a pack when more than this share of its bytes is garbage (0–1). */
  maxUnused?: number;
  dryRun?: boolean;
  onProgress?: (phase: 'snapshots' | 'repack' | 'remove', done: number, total: number) => void;
}

export interface PruneResult {
  snapshots: number;
  packs: number;
  /** Condemned by this run (removed by a later one). */
  marked: { packs: number; bytes: number };
  repacked: { packs: number; blobs: number; bytes: number };
  /** Condemned earlier and removed now. */
  removed: { packs: number; bytes: number };
  /** Condemned earlier, needed again, and kept. */
  revived: number;
  /** Condemned earlier, kept for now because a process that may still reuse them holds a lock. */
  waiting: number;
  generation: number;
  dryRun: boolean;
}

const INDEX_PACKS_PER_FILE = 64;
const DEFAULT_MAX_UNUSED = 0.1;

export async function prune(repo: Repository, opts: PruneOptions = {}): Promise<PruneResult> {
  const maxUnused = opts.maxUnused ?? DEFAULT_MAX_UNUSED;
  if (!opts.dryRun) repo.assertMayDelete('prune');
  return Lock.run(repo, false, 'prune', async () => {
    // (1) The locks first: see the argument above for why this order.
    const me = (l: LockInfo): boolean => l.pid === process.pid && l.hostname === hostname();
    const locks = (await listLocks(repo)).filter((l) => !l.stale && !me(l));
    const otherPrune = locks.find((l) => l.purpose === 'prune');
    if (otherPrune) throw new RepositoryLockedError(otherPrune, 'prune');

    // (2) The snapshots, listed after the locks; then the index, loaded after the snapshots, so it holds
    // the index files of every snapshot listed (a snapshot is written after its index files).
    const { snapshots, damaged, otherFormat } = await readSnapshots(repo);
    if (otherFormat > 0) throw new BulwarkError('failed', 'an upgrade of the repository format is unfinished', { hint: "run 'bulwark migrate' first" });
    if (damaged.length > 0) {
      throw new BulwarkError('repository-corrupt', `prune needs every snapshot readable, to know what it uses; ${damaged.length} cannot be read (${damaged[0]!.id.slice(0, 8)}: ${damaged[0]!.reason})`, {
        hint: "run 'bulwark check', then 'bulwark repair snapshots --forget' or 'bulwark forget' the damaged ones",
      });
    }
    const oldIndexFiles: string[] = [];
    for await (const f of repo.backend.list('index')) oldIndexFiles.push(f.name);
    const damagedIndex = await repo.loadIndexFiles();
    if (damagedIndex.length > 0) {
      throw new BulwarkError('repository-corrupt', `prune needs every index file readable; ${damagedIndex.length} are damaged (${damagedIndex[0]!.reason})`, { hint: "run 'bulwark repair index' first" });
    }
    // Every blob a snapshot needs.
    const used = await usedBlobs(repo, snapshots, opts);

    const byPack = new Map<string, { id: string; e: IndexEntry }[]>();
    for (const [id, e] of repo.index.allEntries()) {
      const list = byPack.get(e.pack) ?? [];
      list.push({ id, e });
      byPack.set(e.pack, list);
    }
    const stored = new Map<string, number>();
    for await (const f of repo.backend.list('data')) stored.set(f.name, f.size);

    const result: PruneResult = {
      snapshots: snapshots.length,
      packs: stored.size,
      marked: { packs: 0, bytes: 0 },
      repacked: { packs: 0, blobs: 0, bytes: 0 },
      removed: { packs: 0, bytes: 0 },
      revived: 0,
      waiting: 0,
      generation: repo.index.generation,
      dryRun: opts.dryRun ?? false,
    };

    // Sweep: earlier marks.
    const marks = new Map<string, number>();
    const remove: string[] = [];
    const onlyCopyHere = (id: string, pack: string): boolean => repo.index.locations(id).every((c) => c.pack === pack || repo.index.obsolete.has(c.pack) || repo.index.isDamaged(id, c.pack));
    for (const [pack, g] of repo.index.obsolete) {
      if (!stored.has(pack)) continue; // already gone (a run killed after removing it): the mark goes too
      const needed = (byPack.get(pack) ?? []).some(({ id }) => used.has(id) && onlyCopyHere(id, pack));
      if (needed) {
        result.revived++;
      } else if (locks.some((l) => (l.indexGeneration ?? -1) < g)) {
        marks.set(pack, g);
        result.waiting++;
      } else {
        remove.push(pack);
        result.removed.packs++;
        result.removed.bytes += stored.get(pack)!;
      }
    }

    // Mark: packs nothing needs, packs no index lists, and packs mostly garbage once their needed blobs
    // have copies elsewhere.
    const generation = repo.index.generation + 1;
    const condemn: string[] = [];
    const repack: string[] = [];
    for (const [pack, size] of stored) {
      if (repo.index.obsolete.has(pack)) continue;
      const blobs = byPack.get(pack);
      if (!blobs) {
        // In no index: check it is no object of the other format before calling it garbage.
        try {
          await repo.readPackEntries(pack, size);
        } catch (err) {
          if (err instanceof OtherFormatObjectError) throw new BulwarkError('failed', 'an upgrade of the repository format is unfinished', { hint: "run 'bulwark migrate' first" });
          if (!(err instanceof BulwarkError)) throw err;
        }
        condemn.push(pack);
        continue;
      }
      const keep = blobs.filter(({ id }) => used.has(id) && repo.index.lookup(id)?.pack === pack);
      if (keep.length === 0) condemn.push(pack);
      else {
        // Garbage is measured among the blobs only: a pack's header and padding are no garbage (a
        // repacked pack would otherwise count as garbage again, run after run).
        const keptBytes = keep.reduce((n, { e }) => n + e.length, 0);
        const blobBytes = blobs.reduce((n, { e }) => n + e.length, 0);
        if (1 - keptBytes / blobBytes > maxUnused) repack.push(pack);
      }
    }
    if (!result.dryRun) {
      for (const [i, pack] of repack.entries()) {
        opts.onProgress?.('repack', i, repack.length);
        for (const { id, e } of byPack.get(pack)!) {
          if (!used.has(id) || repo.index.lookup(id)?.pack !== pack) continue;
          await repo.saveBlob(e.type, await repo.loadBlob(e.type, id), id, { force: true });
          result.repacked.blobs++;
          result.repacked.bytes += e.length;
        }
      }
      await repo.flush();
    }
    result.repacked.packs = repack.length;
    for (const pack of [...condemn, ...repack]) {
      marks.set(pack, generation);
      result.marked.packs++;
      result.marked.bytes += stored.get(pack)!;
    }
    const changed = remove.length > 0 || result.revived > 0 || condemn.length > 0 || repack.length > 0 || [...repo.index.obsolete.keys()].some((p) => !stored.has(p));
    result.generation = condemn.length + repack.length > 0 ? generation : repo.index.generation;
    if (result.dryRun || !changed) return result;

    // The new index: every pack still stored and not removed now, and one file with the marks.
    const removing = new Set(remove);
    const damagedCopies = repo.index.damagedCopies().filter((d) => !removing.has(d.pack));
    // A listed pack missing from storage stays listed unless it was condemned: that is damage, for check
    // to report, not something prune may hide.
    const keepPacks = [...byPack.keys()].filter((p) => !removing.has(p) && (stored.has(p) || !repo.index.obsolete.has(p))).sort();
    for (let i = 0; i < keepPacks.length; i += INDEX_PACKS_PER_FILE) {
      const packs: IndexFile['packs'] = keepPacks.slice(i, i + INDEX_PACKS_PER_FILE).map((p) => {
        const blobs = byPack.get(p)!;
        return { id: p, type: blobs[0]!.e.type, blobs: blobs.map(({ id, e }) => ({ id, offset: e.offset, length: e.length, ulen: e.ulen })) };
      });
      await repo.saveDocument('index', { version: 1, packs } satisfies IndexFile);
    }
    await repo.saveDocument('index', {
      version: 1,
      packs: [],
      generation: result.generation,
      obsolete: [...marks].map(([pack, g]) => ({ pack, generation: g })),
      ...(damagedCopies.length > 0 ? { damaged: damagedCopies } : {}),
    } satisfies IndexFile);
    // Durable above; only now do the old files go, then the packs nothing lists any more.
    for (const name of oldIndexFiles) await removeIfPresent(repo, 'index', name);
    for (const [i, pack] of remove.entries()) {
      opts.onProgress?.('remove', i, remove.length);
      await removeIfPresent(repo, 'data', pack);
    }
    return result;
  });
}

async function removeIfPresent(repo: Repository, type: 'index' | 'data', name: string): Promise<void> {
  try {
    await repo.backend.remove({ type, name });
  } catch (err) {
    if (!repo.backend.isNotFound(err)) throw err;
  }
}

/** Ids of every blob the snapshots need: trees, fixed index pages, and the data they list. */
async function usedBlobs(repo: Repository, snapshots: { tree?: string; disks?: { pages: string[] }[] }[], opts: PruneOptions): Promise<Set<string>> {
  const used = new Set<string>();
  const trees: string[] = [];
  for (const [i, s] of snapshots.entries()) {
    opts.onProgress?.('snapshots', i, snapshots.length);
    if (s.tree) trees.push(s.tree);
    for (const d of s.disks ?? []) {
      for (const page of d.pages) {
        if (used.has(page)) continue;
        used.add(page);
        for (const id of decodePage(await repo.loadBlob('tree', page), page)) if (id) used.add(id);
      }
    }
    // Each tree once, iteratively: snapshots share most of their folders.
    for (let id = trees.pop(); id !== undefined; id = trees.pop()) {
      if (used.has(id)) continue;
      used.add(id);
      for (const node of (await loadTree(repo, id)).nodes) {
        if (node.subtree) trees.push(node.subtree);
        for (const c of node.content ?? []) used.add(c);
      }
    }
  }
  return used;
}
