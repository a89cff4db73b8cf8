// The index maps blob ids to where they live (pack, offset, length). Each writer adds its own index
// files and never rewrites another's, so many hosts can back up into one repository at once; the
// in-memory view is the union of all index files.
//
// A blob may be stored more than once (two hosts saved it at the same time, or a backup stored it again
// because the first copy was found damaged). Every copy is kept, so a read can fall back to an intact
// one. Copies found damaged (by check, or by a read in this process) are marked: a marked blob does not
// count as present, so the next backup that meets it stores it again — the repository heals itself.
import { BulwarkError } from '../util/errors.js';
import type { BlobType } from './format.js';

/** What a repository tells the locks its process holds when it loads the index (prune.ts). */
export interface IndexWatcher {
  sawIndex(generation: number): Promise<void>;
  /** Throws when the lock may already count as stale to others: no snapshot may then be written. */
  assertFresh(): void;
}

export interface IndexEntry {
  pack: string;
  type: BlobType;
  offset: number;
  length: number;
  ulen: number;
}

/** Index file document (sealed): the packs one writer added. */
export interface IndexFile {
  version: 1;
  packs: { id: string; type: BlobType; blobs: { id: string; offset: number; length: number; ulen: number }[] }[];
  /** Copies found damaged (by check): readers skip them and backups store those blobs again. */
  damaged?: { id: string; pack: string }[];
  /**
   * Written by prune, in one file with no packs: the packs it condemned, each with the generation that
   * condemned it, and this file's generation (the highest). See prune.ts for why one file.
   */
  generation?: number;
  obsolete?: { pack: string; generation: number }[];
}

const HEX_ID = /^[0-9a-f]{64}$/;
const MAX_BLOB_BYTES = 0xffffffff;

/** Checks an index file's shape before any of it is believed (a hostile one could point anywhere). */
export function validateIndexFile(f: IndexFile, name: string): void {
  const bad = (why: string): BulwarkError => new BulwarkError('repository-corrupt', `index file ${name} is malformed: ${why}`);
  if (typeof f !== 'object' || f === null || !Array.isArray(f.packs)) throw bad('no pack list');
  for (const p of f.packs) {
    if (typeof p !== 'object' || p === null || typeof p.id !== 'string' || !HEX_ID.test(p.id)) throw bad('a pack id is invalid');
    if (p.type !== 'data' && p.type !== 'tree') throw bad(`pack ${p.id} has the unknown type '${String(p.type)}'`);
    if (!Array.isArray(p.blobs)) throw bad(`pack ${p.id} has no blob list`);
    for (const b of p.blobs) {
      const ok = typeof b === 'object' && b !== null && typeof b.id === 'string' && HEX_ID.test(b.id) && [b.offset, b.length, b.ulen].every((v) => Number.isInteger(v) && v >= 0 && v <= MAX_BLOB_BYTES * 16);
      if (!ok || b.length > MAX_BLOB_BYTES || b.ulen > MAX_BLOB_BYTES) throw bad(`pack ${p.id} lists an invalid blob`);
    }
  }
  if (f.damaged !== undefined && (!Array.isArray(f.damaged) || !f.damaged.every((d) => typeof d?.id === 'string' && HEX_ID.test(d.id) && typeof d.pack === 'string' && HEX_ID.test(d.pack)))) {
    throw bad('the damaged list is invalid');
  }
  const gen = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
  if (f.generation !== undefined && !gen(f.generation)) throw bad('the prune generation is invalid');
  if (f.obsolete !== undefined && (!Array.isArray(f.obsolete) || !f.obsolete.every((o) => typeof o?.pack === 'string' && HEX_ID.test(o.pack) && gen(o.generation)))) {
    throw bad('the obsolete list is invalid');
  }
}

export class MasterIndex {
  private readonly blobs = new Map<string, IndexEntry>();
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
    this.blobs.clear();
    this.copies.clear();
    this.bad.clear();
    this.packSizes.clear();
    this.obsolete.clear();
    this.generation = 0;
  }

  get blobCount(): number {
    return this.blobs.size;
  }

  get packs(): ReadonlyMap<string, number> {
    return this.packSizes;
  }

  private usable(id: string, c: IndexEntry): boolean {
    return !this.bad.has(`${id}/${c.pack}`) && !this.obsolete.has(c.pack);
  }

  /** The first copy neither known to be damaged nor in a pack prune condemned. */
  lookup(id: string): IndexEntry | undefined {
    const e = this.blobs.get(id);
    if (!e || this.usable(id, e)) return e;
    return this.copies.get(id)?.find((c) => this.usable(id, c));
  }

  /**
   * Every copy: usable ones first, then those in condemned packs (still there until a later prune
   * removes them), then those marked damaged (a last resort for reads).
   */
  locations(id: string): IndexEntry[] {
    const e = this.blobs.get(id);
    if (!e) return [];
    const all = [e, ...(this.copies.get(id) ?? [])];
    const rank = (c: IndexEntry): number => (this.bad.has(`${id}/${c.pack}`) ? 2 : this.obsolete.has(c.pack) ? 1 : 0);
    return [...all].sort((a, b) => rank(a) - rank(b));
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

  addFile(file: IndexFile): void {
    for (const p of file.packs) {
      let end = 0;
      for (const b of p.blobs) {
        const entry = { pack: p.id, type: p.type, offset: b.offset, length: b.length, ulen: b.ulen };
        const first = this.blobs.get(b.id);
        if (!first) this.blobs.set(b.id, entry);
        else if (first.pack !== p.id) {
          const more = this.copies.get(b.id) ?? [];
          if (!more.some((c) => c.pack === p.id)) this.copies.set(b.id, [...more, entry]);
        }
        end = Math.max(end, b.offset + b.length);
      }
      this.packSizes.set(p.id, Math.max(this.packSizes.get(p.id) ?? 0, end));
    }
    for (const d of file.damaged ?? []) this.markDamaged(d.id, d.pack);
    for (const o of file.obsolete ?? []) this.obsolete.set(o.pack, Math.min(o.generation, this.obsolete.get(o.pack) ?? Infinity));
    this.generation = Math.max(this.generation, file.generation ?? 0);
  }

  /** One entry per blob (its first copy). */
  entries(): IterableIterator<[string, IndexEntry]> {
    return this.blobs.entries();
  }

  /** Every copy of every blob. */
  *allEntries(): Generator<[string, IndexEntry]> {
    yield* this.blobs.entries();
    for (const [id, more] of this.copies) for (const e of more) yield [id, e];
  }
}
