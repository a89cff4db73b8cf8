// A pack being filled, written to a temporary file as its blobs arrive instead of held in memory, so
// the memory of a backup does not grow with the pack size or the number of packs being filled. The
// file is handed to the backend whole (Backend.save with a FileSource) once the pack is complete.
import { createHash, type Hash } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FileSource } from '../storage/backend.js';
import { makeProcessTempDir } from '../util/process-temp.js';
import { packTail, type PackBlob, type PackEntry } from './pack.js';
import type { Sealer } from './sealer.js';

export interface FinishedPack extends FileSource {
  id: string;
  entries: PackEntry[];
}

const DIR_PREFIX = 'bulwark-packs-';

/**
 * This process's folder for packs being filled, under TMPDIR; made on first use. Folders that killed
 * processes left behind are removed on the way.
 */
export class PackSpool {
  private dir: string | undefined;

  constructor(private readonly root = tmpdir()) {}

  private folder(): string {
    this.dir ??= makeProcessTempDir(DIR_PREFIX, this.root);
    return this.dir;
  }

  async open(sealer: Sealer): Promise<PackWriter> {
    const path = join(this.folder(), `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`);
    return new PackWriter(sealer, path, await fsp.open(path, 'wx', 0o600));
  }

  close(): void {
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
  }
}

export class PackWriter {
  readonly entries: PackEntry[] = [];
  /** Bytes of blobs written so far. */
  bytes = 0;
  private readonly hash: Hash = createHash('sha256');
  private fh: fsp.FileHandle | undefined;

  constructor(
    private readonly sealer: Sealer,
    readonly path: string,
    fh: fsp.FileHandle,
  ) {
    this.fh = fh;
  }

  /** Appends a blob. Calls must not overlap (the caller chains them): the file's order is the header's. */
  async add(blob: PackBlob): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new Error('pack writer is closed');
    await writeAll(fh, blob.sealed, this.bytes);
    this.hash.update(blob.sealed);
    this.entries.push({ type: blob.type, id: blob.id.toString('hex'), offset: this.bytes, length: blob.sealed.length, ulen: blob.ulen });
    this.bytes += blob.sealed.length;
  }

  /** Writes filler, header and trailer; the file then holds the whole pack, named by its hash. */
  async finish(): Promise<FinishedPack> {
    const fh = this.fh;
    if (!fh) throw new Error('pack writer is closed');
    let at = this.bytes;
    for (const part of packTail(this.sealer, this.entries, this.bytes)) {
      await writeAll(fh, part, at);
      this.hash.update(part);
      at += part.length;
    }
    await fh.close();
    this.fh = undefined;
    return { id: this.hash.digest('hex'), path: this.path, size: at, entries: this.entries };
  }

  async discard(): Promise<void> {
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
    await fsp.rm(this.path, { force: true });
  }
}

async function writeAll(fh: fsp.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, position + off);
    off += bytesWritten;
  }
}
