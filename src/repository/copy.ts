// copy: restore points from one repository into another (an off-site copy), deduplicated against what
// the destination holds. Blob ids are keyed per repository (each has its own id key), so a blob's id
// differs between the two: every blob is read from the source, hashed with the destination's key and
// stored when the destination lacks it; trees and fixed index pages are rewritten with the new ids,
// bottom up, and the snapshot record last (after flush), as a backup does. So a copy killed at any
// point leaves the destination valid (packs no snapshot uses yet), and running it again stores only
// what is missing: snapshots already copied (their `original` matches) are skipped.
//
// Chunk boundaries are the source's: the copy deduplicates with other copies from the same source,
// less well with the destination's own file backups (which cut with the destination's secret chunker).
import { BulwarkError } from '../util/errors.js';
import { decodePage, encodePage } from './fixed-index.js';
import { Lock } from './lock.js';
import type { Repository } from './repository.js';
import { matchesFilter, readSnapshots, type Snapshot, type SnapshotFilter, type SnapshotWithId } from './snapshot.js';
import { decodeTree, encodeTree, type Tree, type TreeNode } from './tree.js';

export interface CopyOptions {
  /** Snapshot ids or prefixes; all matching `filter` when empty. */
  ids?: string[];
  filter?: SnapshotFilter;
  onSnapshot?: (source: SnapshotWithId, done: number, total: number) => void;
}

export interface CopyResult {
  copied: { from: string; to: string }[];
  /** Already in the destination (copied before). */
  skipped: string[];
  blobsStored: number;
  bytesStored: number;
}

/** The id that names a restore point across copies: its own, or the one it was copied from. */
function originalOf(s: SnapshotWithId): string {
  return s.original ?? s.id;
}

export async function copySnapshots(from: Repository, to: Repository, opts: CopyOptions = {}): Promise<CopyResult> {
  if (from.config.id === to.config.id) throw new BulwarkError('usage', 'source and destination are the same repository');
  return Lock.run(from, false, 'copy (source)', () =>
    Lock.run(to, false, 'copy', async () => {
      await Promise.all([from.loadIndex(), to.loadIndex()]);
      await to.resumeUploads();
      const source = (await readSnapshots(from)).snapshots.filter((s) => matches(s, opts));
      if (opts.ids?.length) {
        for (const ref of opts.ids) if (!source.some((s) => s.id.startsWith(ref))) throw new BulwarkError('not-found', `no snapshot '${ref}' in the source repository`);
      }
      const present = new Set((await readSnapshots(to)).snapshots.map(originalOf));
      const result: CopyResult = { copied: [], skipped: [], blobsStored: 0, bytesStored: 0 };
      const translator = new Translator(from, to, result);
      for (const [i, s] of source.entries()) {
        opts.onSnapshot?.(s, i, source.length);
        if (present.has(originalOf(s))) {
          result.skipped.push(s.id);
          continue;
        }
        const { id: _id, parent: _parent, ...record } = s;
        const copy: Snapshot = { ...record, original: originalOf(s) };
        if (s.tree) copy.tree = await translator.tree(s.tree);
        if (s.disks) copy.disks = await Promise.all(s.disks.map(async (d) => ({ ...d, pages: await translator.pages(d.pages) })));
        // Every blob the record names is durable and indexed before the record: as for a backup.
        await to.flush();
        const id = await to.saveDocument('snapshots', copy);
        present.add(originalOf(s));
        result.copied.push({ from: s.id, to: id });
      }
      return result;
    }),
  );
}

function matches(s: SnapshotWithId, opts: CopyOptions): boolean {
  if (opts.ids?.length && !opts.ids.some((ref) => s.id.startsWith(ref))) return false;
  return matchesFilter(s, opts.filter ?? {});
}

/** Source blob id → destination blob id, storing what the destination lacks. */
class Translator {
  private readonly done = new Map<string, string>();

  constructor(
    private readonly from: Repository,
    private readonly to: Repository,
    private readonly result: CopyResult,
  ) {}

  private async store(type: 'data' | 'tree', plain: Buffer): Promise<string> {
    const r = await this.to.saveBlob(type, plain);
    if (r.stored) {
      this.result.blobsStored++;
      this.result.bytesStored += plain.length;
    }
    return r.id;
  }

  async data(id: string): Promise<string> {
    let out = this.done.get(id);
    if (out === undefined) {
      out = await this.store('data', await this.from.loadBlob('data', id));
      this.done.set(id, out);
    }
    return out;
  }

  /** A tree and everything under it; iterative over folders (deep trees must not overflow the stack). */
  async tree(root: string): Promise<string> {
    // Post-order: a folder is written once all its children have their destination ids.
    const stack: { id: string; tree?: Tree }[] = [{ id: root }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (this.done.has(top.id)) {
        stack.pop();
        continue;
      }
      if (!top.tree) {
        top.tree = decodeTree(await this.from.loadBlob('tree', top.id), top.id);
        for (const n of top.tree.nodes) if (n.subtree && !this.done.has(n.subtree)) stack.push({ id: n.subtree });
        continue;
      }
      const tree = top.tree;
      const nodes: TreeNode[] = [];
      for (const n of tree.nodes) {
        const copy: TreeNode = { ...n };
        if (n.subtree) copy.subtree = this.done.get(n.subtree)!;
        if (n.content) {
          const content: string[] = [];
          for (const c of n.content) content.push(await this.data(c));
          copy.content = content;
        }
        nodes.push(copy);
      }
      this.done.set(top.id, await this.store('tree', encodeTree({ ...tree, nodes })));
      stack.pop();
    }
    return this.done.get(root)!;
  }

  /** Fixed index pages of a disk: each block translated, each page stored again. */
  async pages(pages: string[]): Promise<string[]> {
    const out: string[] = [];
    for (const page of pages) {
      let id = this.done.get(page);
      if (id === undefined) {
        const ids = decodePage(await this.from.loadBlob('tree', page), page);
        const translated: (string | null)[] = [];
        for (const b of ids) translated.push(b === null ? null : await this.data(b));
        id = await this.store('tree', encodePage(translated));
        this.done.set(page, id);
      }
      out.push(id);
    }
    return out;
  }
}
