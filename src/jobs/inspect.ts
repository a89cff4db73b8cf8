// Read-only views of a repository: ls, diff, stats.
import type { Repository } from '../repository/repository.js';
import { decodePage } from '../repository/fixed-index.js';
import { findSnapshot, listSnapshots, type SnapshotWithId } from '../repository/snapshot.js';
import { displayName, nodeName, type TreeNode } from '../repository/tree.js';
import { ExpansionGuard, loadTree, lookupPath, walk } from '../repository/walk.js';
import type { FsEntry } from '../filesystems/types.js';
import { SnapshotDisks } from '../restore/disk-files.js';
import { BulwarkError } from '../util/errors.js';

export interface LsEntry {
  path: string;
  type: TreeNode['type'] | 'disk' | 'part' | 'other';
  /** A part of a disk: the file system on it (ext4, xfs, fat32, ntfs), or why there is none to browse. */
  fs?: string;
  label?: string;
  note?: string;
  size: number;
  mode?: number;
  mtime?: string;
  uid?: number;
  gid?: number;
  linkTarget?: string;
}

export async function ls(repo: Repository, ref: string, path = '/', recursive = true): Promise<{ snapshot: SnapshotWithId; entries: LsEntry[] }> {
  await repo.loadIndex();
  const sn = await findSnapshot(repo, ref);
  const entries: LsEntry[] = [];
  if (!sn.tree) {
    const disks = new SnapshotDisks(repo, sn);
    const loc = await disks.locate(path);
    if (loc.level === 'root') for (const d of sn.disks ?? []) entries.push({ path: `/${d.name}`, type: 'disk', size: d.size });
    else if (loc.level === 'disk') {
      for (const p of loc.parts) entries.push({ path: `/${loc.disk}/${p.name}`, type: 'part', size: p.size, ...(p.fs ? { fs: p.fs.type, ...(p.fs.label ? { label: p.fs.label } : {}) } : { note: p.why ?? 'no file system' }) });
    } else {
      const base = `/${loc.disk}/${loc.part.name}`;
      const toEntry = async (p: string, e: FsEntry): Promise<LsEntry> => ({
        path: `${base}${p === '/' ? '' : p}`,
        type: e.type,
        size: e.size,
        ...(e.mode !== undefined ? { mode: e.mode & 0o7777 } : {}),
        ...(e.mtimeMs !== undefined ? { mtime: new Date(e.mtimeMs).toISOString() } : {}),
        ...(e.uid !== undefined ? { uid: e.uid } : {}),
        ...(e.gid !== undefined ? { gid: e.gid } : {}),
        ...(e.type === 'symlink' ? { linkTarget: await loc.fs.readlink(p).catch(() => '?') } : {}),
      });
      if (loc.entry.type !== 'dir') entries.push(await toEntry(loc.path, loc.entry));
      else for await (const e of disks.walk(loc.fs, loc.path, recursive)) entries.push(await toEntry(e.path, e.entry));
    }
    return { snapshot: sn, entries };
  }
  const found = await lookupPath(repo, sn.tree, path);
  if (!found) throw new BulwarkError('not-found', `'${path}' is not in snapshot ${sn.id.slice(0, 8)}`);
  const prefix = path === '/' ? '' : path.replace(/\/+$/, '');
  const toEntry = (p: string, n: TreeNode): LsEntry => ({
    path: p,
    type: n.type,
    size: n.size,
    mode: n.mode,
    mtime: isoTime(n.mtimeNs),
    uid: n.uid,
    gid: n.gid,
    ...(n.linkTarget !== undefined ? { linkTarget: n.linkTarget } : {}),
  });
  if (found.node && found.node.type !== 'dir') {
    entries.push(toEntry(prefix, found.node));
  } else if (found.tree) {
    if (found.node) entries.push(toEntry(prefix, found.node));
    if (recursive) for await (const e of walk(repo, found.tree, prefix)) entries.push(toEntry(e.path, e.node));
    else for (const n of (await loadTree(repo, found.tree)).nodes) entries.push(toEntry(`${prefix}/${displayName(nodeName(n))}`, n));
  }
  return { snapshot: sn, entries };
}

/** A time in nanoseconds as ISO text; one outside what a Date can show is given in seconds. */
function isoTime(ns: string): string {
  const d = new Date(Number(BigInt(ns) / 1000000n));
  return Number.isNaN(d.getTime()) ? `@${BigInt(ns) / 1000000000n}s` : d.toISOString();
}

export interface DiffResult {
  from: string;
  to: string;
  added: string[];
  removed: string[];
  modified: string[];
  metadata: string[];
  /** For disk snapshots: per disk, how many blocks differ. */
  disks?: { name: string; changedBlocks: number; blockSize: number; changedBytes: number }[];
}

export async function diff(repo: Repository, refA: string, refB: string): Promise<DiffResult> {
  await repo.loadIndex();
  const a = await findSnapshot(repo, refA);
  const b = await findSnapshot(repo, refB);
  const out: DiffResult = { from: a.id, to: b.id, added: [], removed: [], modified: [], metadata: [] };
  if (a.tree && b.tree) await diffTrees(repo, a.tree, b.tree, '', out, new ExpansionGuard());
  else if (a.disks && b.disks) {
    out.disks = [];
    for (const db of b.disks) {
      const da = a.disks.find((d) => d.name === db.name);
      const ia = da ? await blockIds(repo, da.pages) : [];
      const ib = await blockIds(repo, db.pages);
      let changed = 0;
      for (let i = 0; i < Math.max(ia.length, ib.length); i++) if (ia[i] !== ib[i]) changed++;
      out.disks.push({ name: db.name, changedBlocks: changed, blockSize: db.blockSize, changedBytes: changed * db.blockSize });
    }
  } else throw new BulwarkError('usage', 'can only compare two file snapshots or two disk snapshots');
  return out;
}

async function blockIds(repo: Repository, pages: string[]): Promise<(string | null)[]> {
  const out: (string | null)[] = [];
  for (const p of pages) out.push(...decodePage(await repo.loadBlob('tree', p), p));
  return out;
}

/** Recursion is fine here: each level awaits a load, so the stack does not grow with depth. */
async function diffTrees(repo: Repository, ta: string, tb: string, prefix: string, out: DiffResult, guard: ExpansionGuard): Promise<void> {
  if (ta === tb) return; // identical subtrees: nothing below differs
  const [treeA, treeB] = [await loadTree(repo, ta), await loadTree(repo, tb)];
  guard.tree(ta, treeA);
  guard.tree(tb, treeB);
  const na = new Map(treeA.nodes.map((n) => [displayName(nodeName(n)), n]));
  const nb = new Map(treeB.nodes.map((n) => [displayName(nodeName(n)), n]));
  const all = [...new Set([...na.keys(), ...nb.keys()])].sort();
  for (const name of all) {
    const x = na.get(name);
    const y = nb.get(name);
    const p = `${prefix}/${name}`;
    guard.entry();
    if (!x && y) {
      out.added.push(p);
      if (y.subtree) for await (const e of walk(repo, y.subtree, p, { guard })) out.added.push(e.path);
    } else if (x && !y) {
      out.removed.push(p);
      if (x.subtree) for await (const e of walk(repo, x.subtree, p, { guard })) out.removed.push(e.path);
    } else if (x && y) {
      if (x.type !== y.type || JSON.stringify(x.content ?? []) !== JSON.stringify(y.content ?? []) || x.linkTarget !== y.linkTarget) out.modified.push(p);
      else if (x.mode !== y.mode || x.uid !== y.uid || x.gid !== y.gid || x.mtimeNs !== y.mtimeNs || JSON.stringify(x.xattrs) !== JSON.stringify(y.xattrs)) out.metadata.push(p);
      if (x.type === 'dir' && y.type === 'dir' && x.subtree && y.subtree) await diffTrees(repo, x.subtree, y.subtree, p, out, guard);
    }
  }
}

export interface StatsResult {
  snapshots: number;
  packs: number;
  blobs: number;
  storedBytes: number;
  /** Sum of the logical sizes of the snapshots. */
  logicalBytes: number;
  /** logicalBytes / storedBytes */
  dedupRatio: number;
  snapshot?: { id: string; totalSize: number; uniqueBlobs: number; blobBytes: number };
}

export async function stats(repo: Repository, ref?: string): Promise<StatsResult> {
  await repo.loadIndex();
  const sns = await listSnapshots(repo);
  let storedBytes = 0;
  for await (const f of repo.backend.list('data')) storedBytes += f.size;
  const logicalBytes = sns.reduce((s, x) => s + (x.summary.totalSize ?? 0), 0);
  const out: StatsResult = {
    snapshots: sns.length,
    packs: repo.index.packCount,
    blobs: repo.index.blobCount,
    storedBytes,
    logicalBytes,
    dedupRatio: storedBytes > 0 ? logicalBytes / storedBytes : 0,
  };
  if (ref) {
    const sn = await findSnapshot(repo, ref);
    const seen = new Set<string>();
    const add = (id: string): void => {
      seen.add(id);
    };
    if (sn.tree) {
      add(sn.tree);
      // Each distinct subtree once: what it holds is counted the first time it is met.
      const descended = new Set<string>();
      const once = (id: string): boolean => descended.has(id) || (descended.add(id), false);
      for await (const e of walk(repo, sn.tree, '', { skip: once })) {
        if (e.node.subtree) add(e.node.subtree);
        e.node.content?.forEach(add);
      }
    }
    for (const d of sn.disks ?? []) {
      d.pages.forEach(add);
      for (const id of await blockIds(repo, d.pages)) if (id) add(id);
    }
    let blobBytes = 0;
    for (const id of seen) blobBytes += repo.index.lookup(id)?.length ?? 0;
    out.snapshot = { id: sn.id, totalSize: sn.summary.totalSize, uniqueBlobs: seen.size, blobBytes };
  }
  return out;
}

/** A shell-style name pattern (*, ?, [..]) as a regular expression matched against whole names. */
function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (const ch of pattern) re += ch === '*' ? '.*' : ch === '?' ? '.' : /[\\^$.|+(){}[\]]/.test(ch) ? `\\${ch}` : ch;
  return new RegExp(`^${re}$`, 'i');
}

/**
 * Paths whose name matches `pattern` (case-insensitive), in a file snapshot's tree or across every
 * file system of a VM or disk snapshot's disks (/<disk>/<part>/<path>).
 */
export async function find(repo: Repository, ref: string, pattern: string, onMatch: (e: LsEntry) => void): Promise<{ snapshot: SnapshotWithId; matches: number; skipped: string[] }> {
  await repo.loadIndex();
  const sn = await findSnapshot(repo, ref);
  const re = globToRegExp(pattern);
  let matches = 0;
  const skipped: string[] = [];
  if (sn.tree) {
    for await (const e of walk(repo, sn.tree, '')) {
      if (!re.test(displayName(nodeName(e.node)))) continue;
      matches++;
      onMatch({ path: e.path, type: e.node.type, size: e.node.size });
    }
    return { snapshot: sn, matches, skipped };
  }
  const disks = new SnapshotDisks(repo, sn);
  for (const d of disks.diskNames) {
    for (const part of await disks.partsOf(d)) {
      if (!part.fs) {
        skipped.push(`/${d}/${part.name}: ${part.why ?? 'no file system'}`);
        continue;
      }
      for await (const e of disks.walk(part.fs, '/', true)) {
        if (!re.test(e.entry.name)) continue;
        matches++;
        onMatch({ path: `/${d}/${part.name}${e.path}`, type: e.entry.type, size: e.entry.size });
      }
    }
  }
  return { snapshot: sn, matches, skipped };
}
