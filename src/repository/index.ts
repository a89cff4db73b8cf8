// The index maps blob ids to where they live (pack, offset, length). Each writer adds its own index
// files and never rewrites another's, so many hosts can back up into one repository at once; the
// in-memory view is the union of all index files.
import type { BlobType } from './format.js';

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
}

export class MasterIndex {
  private readonly blobs = new Map<string, IndexEntry>();
  private readonly packSizes = new Map<string, number>();

  get blobCount(): number {
    return this.blobs.size;
  }

  get packs(): ReadonlyMap<string, number> {
    return this.packSizes;
  }

  lookup(id: string): IndexEntry | undefined {
    return this.blobs.get(id);
  }

  has(id: string): boolean {
    return this.blobs.has(id);
  }

  addFile(file: IndexFile): void {
    for (const p of file.packs) {
      let end = 0;
      for (const b of p.blobs) {
        // Several writers may have stored the same blob; any copy will do.
        if (!this.blobs.has(b.id)) this.blobs.set(b.id, { pack: p.id, type: p.type, offset: b.offset, length: b.length, ulen: b.ulen });
        end = Math.max(end, b.offset + b.length);
      }
      this.packSizes.set(p.id, Math.max(this.packSizes.get(p.id) ?? 0, end));
    }
  }

  entries(): IterableIterator<[string, IndexEntry]> {
    return this.blobs.entries();
  }
}
