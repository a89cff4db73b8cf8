// Index files: the sealed documents in which writers list the packs they added (format in
// docs/repository-format.md), and the checks they pass before any of it is believed.
import { BulwarkError } from '../util/errors.js';
import type { BlobType } from './format.js';

/** Where one copy of a blob is: what an index file says of it. */
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
      // Offsets fit 32 bits: packs are at most 1 GiB plus one blob (the index cache stores them so).
      const ok = typeof b === 'object' && b !== null && typeof b.id === 'string' && HEX_ID.test(b.id) && [b.offset, b.length, b.ulen].every((v) => Number.isInteger(v) && v >= 0 && v <= MAX_BLOB_BYTES);
      if (!ok || b.offset + b.length > MAX_BLOB_BYTES) throw bad(`pack ${p.id} lists an invalid blob`);
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
