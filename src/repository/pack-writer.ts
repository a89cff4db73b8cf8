// A pack being filled, written to a temporary file as its blobs arrive instead of held in memory, so
// the memory of a backup does not grow with the pack size or the number of packs being filled. The
// file is handed to the backend whole (Backend.save with a FileSource) once the pack is complete.
import { createHash, type Hash } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FileSource } from '../storage/backend.js';
import { BulwarkError } from '../util/errors.js';
import { makeProcessTempDir } from '../util/process-temp.js';
import { packTail, type PackBlob, type PackEntry } from './pack.js';
import type { Sealer } from './sealer.js';

export interface FinishedPack extends FileSource {
  id: string;
  entries: PackEntry[];
}

/** Dot-named: inside a local repository, listings never show it. */
const DIR_PREFIX = '.bulwark-packs-';

/**
 * This process's folder for packs being filled: in the backend's spool folder when it has one (a local
 * repository: the pack is then saved by a link, not a copy), else under TMPDIR. Made on first use;
 * folders that killed processes left behind are removed on the way.
 */
export class PackSpool {
  private dir: string | undefined;
  private readonly root: string;
  /** Where the space is, for messages: the repository's disk, or TMPDIR's. */
  private readonly where: string;

  constructor(repositoryFolder?: string) {
    this.root = repositoryFolder ?? tmpdir();
    this.where = repositoryFolder ? 'the repository disk' : `the disk of the temporary folder '${this.root}' (TMPDIR)`;
  }

  private folder(): string {
    this.dir ??= makeProcessTempDir(DIR_PREFIX, this.root);
    return this.dir;
  }

  async open(sealer: Sealer): Promise<PackWriter> {
    try {
      const path = join(this.folder(), `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`);
      return new PackWriter(sealer, path, await fsp.open(path, 'wx', 0o600), this.where);
    } catch (err) {
      throw spoolError(err, this.where);
    }
  }

  close(): void {
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
  }
}

/**
 * Small blobs are gathered into writes of this size: a tree of small files makes tens of thousands of
 * blobs, and a system call (a thread-pool round trip) for each would cost more than the write.
 */
const GATHER_BYTES = 256 * 1024;

export class PackWriter {
  readonly entries: PackEntry[] = [];
  /** Bytes of blobs added so far (in the file, or gathered for it). */
  bytes = 0;
  private readonly gathered = Buffer.allocUnsafe(GATHER_BYTES);
  private gatheredBytes = 0;
  private readonly hash: Hash = createHash('sha256');
  private fh: fsp.FileHandle | undefined;

  constructor(
    private readonly sealer: Sealer,
    readonly path: string,
    fh: fsp.FileHandle,
    private readonly where: string,
  ) {
    this.fh = fh;
  }

  /** Appends a blob. Calls must not overlap (the caller chains them): the file's order is the header's. */
  async add(blob: PackBlob): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new Error('pack writer is closed');
    const n = blob.sealed.length;
    const small = n <= GATHER_BYTES / 4;
    // Gathered bytes go first when full, and before a large blob written straight to its place after them.
    if (!small || this.gatheredBytes + n > GATHER_BYTES) await this.writeGathered(fh);
    if (small) {
      blob.sealed.copy(this.gathered, this.gatheredBytes);
      this.gatheredBytes += n;
    } else {
      await writeAll(fh, blob.sealed, this.bytes).catch((err: unknown) => {
        throw spoolError(err, this.where);
      });
    }
    this.hash.update(blob.sealed);
    this.entries.push({ type: blob.type, id: blob.id.toString('hex'), offset: this.bytes, length: blob.sealed.length, ulen: blob.ulen });
    this.bytes += blob.sealed.length;
  }

  /** The gathered small blobs go to the file, where they belong: just before `bytes`. */
  private async writeGathered(fh: fsp.FileHandle): Promise<void> {
    if (this.gatheredBytes === 0) return;
    await writeAll(fh, this.gathered.subarray(0, this.gatheredBytes), this.bytes - this.gatheredBytes).catch((err: unknown) => {
      throw spoolError(err, this.where);
    });
    this.gatheredBytes = 0;
  }

  /** Writes filler, header and trailer; the file then holds the whole pack, named by its hash. */
  async finish(): Promise<FinishedPack> {
    const fh = this.fh;
    if (!fh) throw new Error('pack writer is closed');
    await this.writeGathered(fh);
    let at = this.bytes;
    for (const part of packTail(this.sealer, this.entries, this.bytes)) {
      await writeAll(fh, part, at).catch((err: unknown) => {
        throw spoolError(err, this.where);
      });
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

/** A failed write of a pack being filled, said in the words of a full or unwritable disk. */
function spoolError(err: unknown, where: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    const what = code === 'ENOSPC' ? `no space left on ${where}` : `disk quota exceeded on ${where}`;
    return new BulwarkError('no-space', `unable to fill a pack: ${what} (${code})`, { cause: err, hint: 'free space on that disk; objects already saved are intact' });
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new BulwarkError('io', `unable to fill a pack on ${where}: ${(err as Error).message}`, { cause: err, hint: 'check that the folder is writable by this user' });
  }
  return err instanceof Error ? err : new Error(String(err));
}
