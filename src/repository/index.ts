// The index maps blob ids to where they live (pack, offset, length). Each writer adds its own index
// files and never rewrites another's, so many hosts can back up into one repository at once; the
// view is the union of all index files, kept on local disk as sorted runs (index-cache.ts).
//
// A blob may be stored more than once (two hosts saved it at the same time, or a backup stored it again
// because the first copy was found damaged). Every copy is kept, so a read can fall back to an intact
// one. Copies found damaged (by check, or by a read in this process) are marked: a marked blob does not
// count as present, so the next backup that meets it stores it again — the repository heals itself.
import { BlobTable } from './blob-table.js';
import type { IndexFileMeta, Run } from './index-cache.js';
import type { IndexEntry, IndexFile } from './index-file.js';

export { validateIndexFile, type IndexEntry, type IndexFile } from './index-file.js';

/** What a repository tells the locks its process holds when it loads the index (prune.ts). */
export interface IndexWatcher {
  sawIndex(generation: number): Promise<void>;
  /** Throws when the lock may already count as stale to others: no snapshot may then be written. */
  assertFresh(): void;
}

/**
 * The union of all index files: the runs of the on-disk cache (index-cache.ts), which hold what the
 * repository's index files say, plus what this process added (its own packs, packs read from their
 * headers), held in memory.
 */
export class MasterIndex {
  private runs: Run[] = [];
  /** What this process added (its own packs, packs read from their headers): one entry per blob. */
  private readonly blobs = new BlobTable();
  /** Further copies of blobs stored more than once (rare: kept apart so the common case stays one entry). */
  private readonly copies = new Map<string, IndexEntry[]>();
  /** "id/pack" of copies known to be damaged. */
  private readonly bad = new Set<string>();
  private readonly packSizes = new Map<string, number>();
  /** Packs prune condemned, with the generation that condemned them: their copies do not count as present. */
  readonly obsolete = new Map<string, number>();
  /** The highest prune generation among the index files loaded. */
  generation = 0;

  /** Forgets everything loaded (to load a consistent set of index files again). */
  clear(): void {
    for (const r of this.runs) r.close();
    this.runs = [];
    this.blobs.clear();
    this.copies.clear();
    this.bad.clear();
    this.packSizes.clear();
    this.obsolete.clear();
    this.generation = 0;
  }

  /** Forgets what the index files said (their runs, prune marks), keeping what this process added. */
  detachRuns(): void {
    for (const r of this.runs) r.close();
    this.runs = [];
    this.obsolete.clear();
    this.generation = 0;
  }

  /** Takes the cache's runs, and what the index files in them say besides their packs. */
  attach(runs: Run[], meta: Iterable<IndexFileMeta>): void {
    this.runs.push(...runs);
    for (const m of meta) this.addMeta(m);
  }

  /** Blob copies listed (a blob stored twice counts twice). */
  get blobCount(): number {
    return this.runs.reduce((s, r) => s + r.info.entries, 0) + this.blobs.size;
  }

  /** Bytes of memory the on-disk runs hold (their summaries and small runs held whole). */
  get runMemoryBytes(): number {
    return this.runs.reduce((s, r) => s + r.memoryBytes, 0);
  }

  private usable(id: string, c: IndexEntry): boolean {
    return !this.bad.has(`${id}/${c.pack}`) && !this.obsolete.has(c.pack);
  }

  /** Every copy, in the order loaded: what this process added first, then the runs'. */
  private copiesOf(id: string): IndexEntry[] {
    const mine = this.blobs.get(id);
    const out: IndexEntry[] = mine ? [mine, ...(this.copies.get(id) ?? [])] : [];
    if (this.runs.length === 0) return out;
    const key = Buffer.from(id, 'hex');
    for (const r of this.runs) for (const e of r.find(key)) if (!out.some((c) => c.pack === e.pack)) out.push(e);
    return out;
  }

  /** The first copy neither known to be damaged nor in a pack prune condemned. */
  lookup(id: string): IndexEntry | undefined {
    return this.copiesOf(id).find((c) => this.usable(id, c));
  }

  /**
   * Every copy: usable ones first, then those in condemned packs (still there until a later prune
   * removes them), then those marked damaged (a last resort for reads).
   */
  locations(id: string): IndexEntry[] {
    const rank = (c: IndexEntry): number => (this.bad.has(`${id}/${c.pack}`) ? 2 : this.obsolete.has(c.pack) ? 1 : 0);
    return this.copiesOf(id).sort((a, b) => rank(a) - rank(b));
  }

  /** Present with at least one copy not known to be damaged: a backup may reuse it. */
  has(id: string): boolean {
    return this.lookup(id) !== undefined;
  }

  markDamaged(id: string, pack: string): void {
    this.bad.add(`${id}/${pack}`);
  }

  isDamaged(id: string, pack: string): boolean {
    return this.bad.has(`${id}/${pack}`);
  }

  /** Copies marked damaged, for check to record. */
  damagedCopies(): { id: string; pack: string }[] {
    return [...this.bad].map((k) => ({ id: k.slice(0, 64), pack: k.slice(65) }));
  }

  /** The size of a pack (the end of its last blob), if any index lists it. */
  packSize(pack: string): number | undefined {
    let size = this.packSizes.get(pack);
    if (this.runs.length > 0) {
      const key = Buffer.from(pack, 'hex');
      for (const r of this.runs) {
        const s = r.packSize(key);
        if (s !== undefined) size = Math.max(size ?? 0, s);
      }
    }
    return size;
  }

  hasPack(pack: string): boolean {
    return this.packSize(pack) !== undefined;
  }

  /** Every pack listed, once, with its size; in no particular order. */
  *packs(): Generator<[string, number]> {
    for (const [id, size] of this.packSizes) yield [id, this.packSize(id) ?? size];
    for (const [i, r] of this.runs.entries()) {
      let last: string | undefined;
      for (const p of r.packs()) {
        if (p.id === last) continue;
        last = p.id;
        // Listed by this process or an earlier run: already given.
        if (this.packSizes.has(p.id) || this.runs.slice(0, i).some((o) => o.packSize(Buffer.from(p.id, 'hex')) !== undefined)) continue;
        yield [p.id, this.packSize(p.id)!];
      }
    }
  }

  /** How many packs are listed (a full pass over the pack lists). */
  get packCount(): number {
    let n = 0;
    for (const _ of this.packs()) n++;
    return n;
  }

  addFile(file: IndexFile): void {
    for (const p of file.packs) {
      let end = 0;
      for (const b of p.blobs) {
        const entry = { pack: p.id, type: p.type, offset: b.offset, length: b.length, ulen: b.ulen };
        const first = this.blobs.get(b.id);
        if (!first) this.blobs.add(b.id, entry);
        else if (first.pack !== p.id) {
          const more = this.copies.get(b.id) ?? [];
          if (!more.some((c) => c.pack === p.id)) this.copies.set(b.id, [...more, entry]);
        }
        end = Math.max(end, b.offset + b.length);
      }
      this.packSizes.set(p.id, Math.max(this.packSizes.get(p.id) ?? 0, end));
    }
    this.addMeta(file);
  }

  private addMeta(m: IndexFileMeta): void {
    for (const d of m.damaged ?? []) this.markDamaged(d.id, d.pack);
    for (const o of m.obsolete ?? []) this.obsolete.set(o.pack, Math.min(o.generation, this.obsolete.get(o.pack) ?? Infinity));
    this.generation = Math.max(this.generation, m.generation ?? 0);
  }

  /** One entry per blob (its first copy), read from disk as it goes. */
  *entries(): Generator<[string, IndexEntry]> {
    const seen = (id: string, i: number): boolean => this.blobs.has(id) || this.runs.slice(0, i).some((o) => o.find(Buffer.from(id, 'hex')).length > 0);
    yield* this.blobs.entries();
    for (const [i, r] of this.runs.entries()) {
      let last: string | undefined;
      for (const [id, e] of r.allEntries()) {
        if (id === last) continue;
        last = id;
        if (!seen(id, i)) yield [id, e];
      }
    }
  }

  /** Every copy of every blob, read from disk as it goes. */
  *allEntries(): Generator<[string, IndexEntry]> {
    yield* this.blobs.entries();
    for (const [id, more] of this.copies) for (const e of more) yield [id, e];
    for (const r of this.runs) yield* r.allEntries();
  }

  close(): void {
    for (const r of this.runs) r.close();
    this.runs = [];
  }
}
