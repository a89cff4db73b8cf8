// Verification. Structure: every index file opens, every indexed pack exists with the right size,
// every snapshot's trees load and are well formed, and every blob they name is indexed. With readData:
// every pack's bytes hash to its name, its header agrees with the index, and every copy of every blob
// decrypts and hashes to its id. Damage is traced to the snapshots and files that depend on it, so an
// administrator knows exactly what a broken pack costs.
//
// Order matters for a check that runs beside backups: snapshots are listed before the index is
// loaded. A backup writes its index before its snapshot, so every snapshot seen has its index seen too;
// the other order would report a snapshot saved in between as referencing missing data.
//
// Memory and time follow the distinct trees, not the snapshots: each tree is checked once, whatever
// the number of snapshots that share it, and only snapshots with damage are walked again for paths.
import { readNotes } from './notes.js';
import { createHash } from 'node:crypto';
import { BulwarkError } from '../util/errors.js';
import { decodePage } from './fixed-index.js';
import type { IndexEntry, IndexFile } from './index.js';
import { readPackHeader } from './pack.js';
import { maxBlobBytes, type Repository } from './repository.js';
import { readSnapshots, type SnapshotWithId } from './snapshot.js';
import type { TreeNode } from './tree.js';
import { ExpansionGuard, loadTree, walk } from './walk.js';
import { decompressBounded } from './zstd.js';

/** Which packs --read-data-subset reads: a percentage chosen at random, or part n of m (stable). */
export type DataSubset = { percent: number } | { part: number; of: number };

export interface CheckOptions {
  readData?: boolean;
  readDataSubset?: DataSubset;
  /** Write the damaged copies found into the index, so the next backups store those blobs again. */
  recordDamage?: boolean;
  onProgress?: (done: number, total: number, stage: string) => void;
}

export interface CheckProblem {
  kind: 'index' | 'pack-missing' | 'pack-size' | 'pack-damaged' | 'blob-damaged' | 'blob-missing' | 'tree' | 'snapshot' | 'note';
  object: string;
  message: string;
}

export interface AffectedItem {
  snapshot: string;
  /** File path in the snapshot, or "<disk>@<offset>" for disk blocks. */
  path: string;
}

export interface CheckResult {
  snapshots: number;
  packs: number;
  packsRead: number;
  blobsRead: number;
  unreferencedPacks: number;
  /** Packs found through their own headers because the index file that listed them is damaged. */
  recoveredPacks: number;
  problems: CheckProblem[];
  affected: AffectedItem[];
  /** Every snapshot that cannot be restored whole: damaged records and those with damaged data. */
  damagedSnapshots: string[];
  /** Damaged copies written into the index (recordDamage). */
  recordedDamage: number;
}

type CheckRepo = Pick<Repository, 'backend' | 'loadDocument' | 'loadBlob' | 'index' | 'key' | 'sealer' | 'blobId' | 'loadIndexFiles' | 'indexUnlistedPacks' | 'saveDocument'>;

/** Affected paths listed per snapshot; past that a count stands for the rest. */
const MAX_AFFECTED_PER_SNAPSHOT = 200;

export async function checkRepository(repo: CheckRepo, opts: CheckOptions = {}): Promise<CheckResult> {
  const problems: CheckProblem[] = [];
  const listing = await readSnapshots(repo);
  for (const d of listing.damaged) problems.push({ kind: 'snapshot', object: d.id, message: d.reason });
  // Notes hold no data, but one that cannot be read is damage all the same.
  for (const d of (await readNotes(repo)).damaged) problems.push({ kind: 'note', object: d.id, message: d.reason });

  // Index: each file on its own, so one bad file is reported, not fatal.
  const damagedIndex = await repo.loadIndexFiles();
  for (const d of damagedIndex) problems.push({ kind: 'index', object: d.name, message: d.reason });
  const alreadyMarked = new Set(repo.index.damagedCopies().map((d) => `${d.id}/${d.pack}`));
  // A damaged index file may have listed packs that are now in no index: their own headers say what
  // they hold. Without damaged index files, such packs are leftovers of interrupted backups.
  const recoveredPacks =
    damagedIndex.length === 0
      ? 0
      : await repo.indexUnlistedPacks((pack, reason) => problems.push({ kind: 'pack-damaged', object: pack, message: `pack ${pack} is in no index and its header cannot be read: ${reason}` }));

  const stored = new Map<string, number>();
  for await (const f of repo.backend.list('data')) stored.set(f.name, f.size);
  let unreferencedPacks = 0;
  for (const name of stored.keys()) if (!repo.index.hasPack(name) && damagedIndex.length === 0) unreferencedPacks++;
  const brokenPacks = new Set<string>();
  for (const [pack, end] of repo.index.packs()) {
    const size = stored.get(pack);
    if (size === undefined) {
      problems.push({ kind: 'pack-missing', object: pack, message: `pack ${pack} is in the index but not in storage` });
      brokenPacks.add(pack);
    } else if (size < end) {
      problems.push({ kind: 'pack-size', object: pack, message: `pack ${pack} is ${size} bytes, the index needs ${end}` });
      brokenPacks.add(pack);
    }
  }

  const byPack = new Map<string, [string, IndexEntry][]>();
  for (const [id, e] of repo.index.allEntries()) {
    let l = byPack.get(e.pack);
    if (!l) byPack.set(e.pack, (l = []));
    l.push([id, e]);
  }
  for (const pack of brokenPacks) for (const [id] of byPack.get(pack) ?? []) repo.index.markDamaged(id, pack);

  let packsRead = 0;
  let blobsRead = 0;
  if (opts.readData || opts.readDataSubset !== undefined) {
    const packs = selectPacks([...byPack.keys()].filter((p) => !brokenPacks.has(p)).sort(), opts.readData ? undefined : opts.readDataSubset);
    for (const pack of packs) {
      opts.onProgress?.(packsRead, packs.length, 'read data');
      const r = await readPack(repo, pack, byPack.get(pack)!, problems);
      packsRead++;
      blobsRead += r;
    }
  }
  // Blobs whose copies are all damaged or missing.
  const bad = (id: string): boolean => !repo.index.has(id);
  const missingReported = new Set<string>();
  const noteMissing = (id: string): void => {
    if (repo.index.locations(id).length > 0 || missingReported.has(id)) return;
    missingReported.add(id);
    problems.push({ kind: 'blob-missing', object: id, message: `blob ${id} is referenced but not in the index` });
  };

  // Structure: each distinct tree once.
  const trees = new TreeStates(repo, problems, bad, noteMissing);
  // Each distinct disk index page once: whether it is damaged, and how many blocks it covers.
  const pages = new Map<string, { damaged: boolean; blocks: number }>();
  const pageState = async (pageId: string): Promise<{ damaged: boolean; blocks: number }> => {
    let st = pages.get(pageId);
    if (st) return st;
    st = { damaged: false, blocks: 0 };
    if (bad(pageId)) {
      noteMissing(pageId);
      st.damaged = true;
    } else {
      try {
        const ids = decodePage(await repo.loadBlob('tree', pageId), pageId);
        st.blocks = ids.length;
        for (const id of ids) {
          if (id !== null && bad(id)) {
            noteMissing(id);
            st.damaged = true;
          }
        }
      } catch (err) {
        if (!(err instanceof BulwarkError)) throw err;
        problems.push({ kind: 'tree', object: pageId, message: `disk index page ${pageId}: ${err.message}` });
        st.damaged = true;
      }
    }
    pages.set(pageId, st);
    return st;
  };

  const affected: AffectedItem[] = [];
  const damagedSnapshots = new Set(listing.damaged.map((d) => d.id));
  let done = 0;
  for (const sn of listing.snapshots) {
    opts.onProgress?.(done++, listing.snapshots.length, 'snapshots');
    const items: string[] = [];
    let more = 0;
    const hit = (path: string): void => {
      if (items.length < MAX_AFFECTED_PER_SNAPSHOT) items.push(path);
      else more++;
    };
    try {
      if (sn.tree && (await trees.damaged(sn.tree))) await traceTree(repo, sn, trees, bad, hit);
      for (const disk of sn.disks ?? []) {
        let block = 0;
        for (const pageId of disk.pages) {
          const st = await pageState(pageId);
          if (!st.damaged) {
            block += st.blocks;
            continue;
          }
          let ids: (string | null)[];
          try {
            ids = bad(pageId) ? [] : decodePage(await repo.loadBlob('tree', pageId), pageId);
          } catch {
            ids = [];
          }
          if (ids.length === 0) hit(`${disk.name}@index-page:${pageId.slice(0, 12)}`);
          for (const id of ids) {
            if (id !== null && bad(id)) hit(`${disk.name}@${block * disk.blockSize}`);
            block++;
          }
        }
      }
    } catch (err) {
      if (!(err instanceof BulwarkError)) throw err;
      problems.push({ kind: 'tree', object: sn.id, message: `snapshot ${sn.id.slice(0, 8)}: ${err.message}` });
      hit('/');
    }
    for (const path of items) affected.push({ snapshot: sn.id, path });
    if (more > 0) affected.push({ snapshot: sn.id, path: `(and ${more} more)` });
    if (items.length > 0) damagedSnapshots.add(sn.id);
  }

  let recordedDamage = 0;
  if (opts.recordDamage) {
    const fresh = repo.index.damagedCopies().filter((d) => !alreadyMarked.has(`${d.id}/${d.pack}`));
    if (fresh.length > 0) {
      await repo.saveDocument('index', { version: 1, packs: [], damaged: fresh } satisfies IndexFile);
      recordedDamage = fresh.length;
    }
  }
  return {
    snapshots: listing.snapshots.length + listing.damaged.length,
    packs: repo.index.packCount,
    packsRead,
    blobsRead,
    unreferencedPacks,
    recoveredPacks,
    problems,
    affected,
    damagedSnapshots: [...damagedSnapshots],
    recordedDamage,
  };
}

function selectPacks(packs: string[], subset: DataSubset | undefined): string[] {
  if (!subset) return packs;
  if ('percent' in subset) {
    if (subset.percent >= 100) return packs;
    const want = Math.max(1, Math.ceil((packs.length * subset.percent) / 100));
    return packs
      .map((p) => [Math.random(), p] as const)
      .sort((a, b) => a[0] - b[0])
      .slice(0, want)
      .map(([, p]) => p)
      .sort();
  }
  return packs.filter((p) => parseInt(p.slice(0, 8), 16) % subset.of === subset.part - 1);
}

/** Reads one whole pack and checks it against the index. Returns the number of blobs checked. */
async function readPack(repo: CheckRepo, pack: string, entries: [string, IndexEntry][], problems: CheckProblem[]): Promise<number> {
  const damage = (id: string, why: string): void => {
    repo.index.markDamaged(id, pack);
    problems.push({ kind: 'blob-damaged', object: id, message: `blob ${id} in pack ${pack}: ${why}` });
  };
  let bytes: Buffer;
  try {
    bytes = await repo.backend.load({ type: 'data', name: pack });
  } catch (err) {
    if (!(err instanceof BulwarkError) || err.code === 'io' || err.code === 'timeout') throw err;
    problems.push({ kind: 'pack-damaged', object: pack, message: `pack ${pack} cannot be read: ${err.message}` });
    for (const [id] of entries) repo.index.markDamaged(id, pack);
    return 0;
  }
  if (createHash('sha256').update(bytes).digest('hex') !== pack) {
    problems.push({ kind: 'pack-damaged', object: pack, message: `pack ${pack} does not hash to its name (its bytes changed)` });
  }
  try {
    const header = new Map(readPackHeader(repo.sealer, bytes, pack).map((h) => [`${h.id}@${h.offset}`, h]));
    for (const [id, e] of entries) {
      const h = header.get(`${id}@${e.offset}`);
      if (!h || h.length !== e.length || h.ulen !== e.ulen || h.type !== e.type) {
        problems.push({ kind: 'pack-damaged', object: pack, message: `pack ${pack}: the index and the pack's header disagree about blob ${id}` });
        break;
      }
    }
  } catch (err) {
    if (!(err instanceof BulwarkError)) throw err;
    problems.push({ kind: 'pack-damaged', object: pack, message: err.message });
  }
  let n = 0;
  for (const [id, e] of entries) {
    n++;
    try {
      if (e.offset + e.length > bytes.length) throw new Error('it lies beyond the end of the pack');
      let plain = repo.sealer.open(e.type, bytes.subarray(e.offset, e.offset + e.length), `blob ${id}`, Buffer.from(id, 'hex'));
      if (e.ulen > 0) plain = decompressBounded(plain, maxBlobBytes(e.type), `blob ${id}`, e.ulen);
      if (repo.blobId(plain) !== id) throw new Error('content does not hash to its id');
    } catch (err) {
      damage(id, (err as Error).message);
    }
  }
  return n;
}

/**
 * Whether each distinct tree has damage at or below it, computed once per tree with an explicit stack
 * (folders thousands of levels deep must not overflow the call stack).
 */
class TreeStates {
  private readonly state = new Map<string, boolean>();
  private readonly failed = new Set<string>();

  constructor(
    private readonly repo: CheckRepo,
    private readonly problems: CheckProblem[],
    private readonly bad: (id: string) => boolean,
    private readonly noteMissing: (id: string) => void,
  ) {}

  /** The tree itself is missing, damaged or malformed. */
  unloadable(id: string): boolean {
    return this.failed.has(id);
  }

  /** Known result for a tree, if computed. */
  known(id: string): boolean | undefined {
    return this.state.get(id);
  }

  async damaged(root: string): Promise<boolean> {
    const cached = this.state.get(root);
    if (cached !== undefined) return cached;
    const stack: { id: string; nodes: TreeNode[]; at: number; damaged: boolean }[] = [];
    const enter = async (id: string): Promise<boolean | undefined> => {
      const s = this.state.get(id);
      if (s !== undefined) return s;
      const nodes = await this.load(id);
      if (nodes === undefined) {
        this.failed.add(id);
        this.state.set(id, true);
        return true;
      }
      stack.push({ id, nodes, at: 0, damaged: false });
      return undefined;
    };
    const first = await enter(root);
    if (first !== undefined) return first;
    let result = false;
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (top.at >= top.nodes.length) {
        stack.pop();
        this.state.set(top.id, top.damaged);
        result = top.damaged;
        if (stack.length > 0 && top.damaged) stack[stack.length - 1]!.damaged = true;
        continue;
      }
      const node = top.nodes[top.at++]!;
      for (const id of node.content ?? []) {
        if (this.bad(id)) {
          this.noteMissing(id);
          top.damaged = true;
        }
      }
      if (node.type === 'dir' && node.subtree) {
        const sub = await enter(node.subtree);
        if (sub === true) top.damaged = true;
      }
    }
    return result;
  }

  private async load(id: string): Promise<TreeNode[] | undefined> {
    if (this.bad(id)) {
      this.noteMissing(id);
      return undefined;
    }
    try {
      return (await loadTree(this.repo, id)).nodes;
    } catch (err) {
      if (!(err instanceof BulwarkError)) throw err;
      this.problems.push({ kind: 'tree', object: id, message: `tree ${id}: ${err.message}` });
      return undefined;
    }
  }
}

/** Walks a damaged snapshot along its damaged subtrees only, naming each damaged entry. */
async function traceTree(repo: CheckRepo, sn: SnapshotWithId, trees: TreeStates, bad: (id: string) => boolean, hit: (path: string) => void): Promise<void> {
  if (trees.unloadable(sn.tree!)) {
    hit('/');
    return;
  }
  const skip = (id: string): boolean => trees.known(id) !== true || trees.unloadable(id);
  for await (const { path, node } of walk(repo, sn.tree!, '', { guard: new ExpansionGuard(), skip })) {
    if (node.content?.some(bad)) hit(path);
    if (node.subtree && trees.unloadable(node.subtree)) hit(path);
  }
}
