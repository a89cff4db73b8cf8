// Read-only readers of what lies inside a disk (granular restore, docs/file-level-restore.md): the
// partition tables and volume managers that divide it (filesystems/partitions, filesystems/lvm) and
// the file systems on each part (filesystems/ext4, xfs, fat, ntfs). They read through a Volume — a
// range of bytes read at any offset — so that a disk in the repository, an image file or a partition
// of either are read the same way, and only the blocks a lookup needs are ever read. Everything on
// the disk is distrusted: offsets are checked against the volume, loops and sizes are bounded, and a
// damaged structure gives a FileSystemError naming what is wrong, never a hang or unbounded memory.
import { promises as fsp } from 'node:fs';
import { BulwarkError } from '../util/errors.js';

/** Bytes read at any offset: a whole disk, a partition of one, a logical volume. */
export interface Volume {
  /** Size in bytes. */
  readonly size: number;
  /** Fills `buf` with the bytes at `offset`; reading past the end is an error. */
  read(buf: Buffer, offset: number): Promise<void>;
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface FsEntry {
  /** Name within its directory (UTF-8; for a stat of '/', ''). */
  name: string;
  type: EntryType;
  /** Bytes (a file's length; a symlink's target length; 0 for directories when unknown). */
  size: number;
  /** POSIX permission bits and type bits where the file system has them (ext4, XFS); else undefined. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Modification time, ms since the epoch. */
  mtimeMs?: number;
  /** The file system's own id of the entry (inode number, MFT record number, first cluster). */
  id: number;
}

/** An open file of a file system: read at any position, holes read as zeros. */
export interface FsFile {
  readonly size: number;
  /** Reads up to buf.length bytes at `position`; resolves with the count (0 at the end). */
  read(buf: Buffer, position: number): Promise<number>;
}

export interface FileSystem {
  /** ext4, ext3, ext2, xfs, fat12, fat16, fat32, ntfs. */
  readonly type: string;
  readonly label?: string;
  /** Paths are '/'-separated from the file system's root; '/' is the root. Symlinks are not followed. */
  stat(path: string): Promise<FsEntry>;
  list(path: string): Promise<FsEntry[]>;
  readlink(path: string): Promise<string>;
  open(path: string): Promise<FsFile>;
}

/** A structure inside a disk is damaged or not what it claims to be. */
export class FileSystemError extends BulwarkError {
  constructor(what: string, why: string) {
    super('failed', `${what}: ${why}`);
    this.name = 'FileSystemError';
  }
}

/** A path inside a file system does not exist (or is not of the kind asked for). */
export class FsNotFoundError extends BulwarkError {
  constructor(path: string, why = 'no such file or directory') {
    super('not-found', `'${path}': ${why}`);
    this.name = 'FsNotFoundError';
  }
}

/** A path's components ('.' dropped, '..' taken lexically), at most 4096 deep. */
export function splitFsPath(path: string): string[] {
  const out: string[] = [];
  for (const p of path.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') out.pop();
    else out.push(p);
    if (out.length > 4096) throw new FsNotFoundError(path, 'the path is too deep');
  }
  return out;
}

/** A volume over a range of another: a partition of a disk, a segment of a logical volume. */
export class SliceVolume implements Volume {
  constructor(
    private readonly base: Volume,
    private readonly start: number,
    readonly size: number,
  ) {
    if (start < 0 || size < 0 || start + size > base.size) throw new FileSystemError('volume', `a range of ${size} bytes at ${start} lies outside a volume of ${base.size} bytes`);
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) throw new FileSystemError('volume', `a read of ${buf.length} bytes at ${offset} lies outside the volume of ${this.size} bytes`);
    await this.base.read(buf, this.start + offset);
  }
}

/** An image file or buffer as a Volume (tests; a raw partition image). */
export class BufferVolume implements Volume {
  constructor(private readonly data: Buffer) {}
  get size(): number {
    return this.data.length;
  }
  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.data.length) throw new FileSystemError('volume', `a read of ${buf.length} bytes at ${offset} lies outside the volume of ${this.data.length} bytes`);
    this.data.copy(buf, 0, offset, offset + buf.length);
  }
}

/** An image file as a Volume (a raw disk or partition image; tests). */
export class FileVolume implements Volume {
  private constructor(
    private readonly fh: fsp.FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<FileVolume> {
    const fh = await fsp.open(path, 'r');
    return new FileVolume(fh, Number((await fh.stat()).size));
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) throw new FileSystemError('volume', `a read of ${buf.length} bytes at ${offset} lies outside the volume of ${this.size} bytes`);
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) throw new FileSystemError('volume', `the image ended at ${offset + done} bytes`);
      done += bytesRead;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
