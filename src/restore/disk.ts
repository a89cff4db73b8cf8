// Whole-disk restore from a fixed index: only non-hole blocks are written, so holes in the backup stay
// holes. Raw: the file is created at full size first (sparse) and zero pages are skipped. qcow2: written
// by Bulwark's own streaming writer, zero clusters left unallocated. Other formats: qemu-img converts a
// raw restore.
import { execFile } from 'node:child_process';
import { constants, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Qcow2Writer } from '../formats/qcow2/writer.js';
import { decodePage } from '../repository/fixed-index.js';
import type { Repository } from '../repository/repository.js';
import type { DiskRecord } from '../repository/snapshot.js';
import { blobReaderOf } from '../repository/blob-reader.js';
import { newProgress, type ProgressSink } from '../sources/progress.js';
import { BulwarkError, unable } from '../util/errors.js';
import { writeSparse } from '../util/sparse.js';

const run = promisify(execFile);

export interface DiskRestoreOptions {
  targetDir: string;
  format: RestoreFormat;
  onProgress?: ProgressSink;
}

export interface DiskRestoreResult {
  path: string;
  size: number;
  bytesWritten: number;
}

/** Disk names come from the repository: they must be plain file names. */
export function safeDiskName(name: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$/.test(name) || name.includes('..')) {
    throw new BulwarkError('repository-corrupt', `disk name '${name}' in the snapshot is not a safe file name`);
  }
  return name;
}

/** The disk's non-hole blocks, in order. */
async function* dataBlocks(repo: Pick<Repository, 'loadBlob'>, disk: DiskRecord): AsyncGenerator<{ index: number; id: string }> {
  let index = 0;
  for (const pageId of disk.pages) {
    for (const id of decodePage(await repo.loadBlob('tree', pageId), pageId)) {
      if (id !== null) yield { index, id };
      index++;
    }
  }
}

/** Formats a disk can be restored as: raw and qcow2 written directly, the others converted from raw by qemu-img. */
export const RESTORE_FORMATS = ['raw', 'qcow2', 'vmdk', 'vhdx', 'vdi', 'vhd'] as const;
export type RestoreFormat = (typeof RESTORE_FORMATS)[number];
const QEMU_IMG_FORMAT: Record<Exclude<RestoreFormat, 'raw' | 'qcow2'>, string[]> = {
  // streamOptimized would do for archiving; monolithicSparse is what VMware Workstation opens and writes.
  vmdk: ['vmdk', '-o', 'subformat=monolithicSparse'],
  vhdx: ['vhdx', '-o', 'subformat=dynamic'],
  vdi: ['vdi'],
  // force_size: the VHD keeps the disk's exact size instead of rounding it to a CHS geometry.
  vhd: ['vpc', '-o', 'subformat=dynamic,force_size=on'],
};

/** Where restored blocks go: blocks arrive in ascending order; write returns the bytes actually stored. */
interface DiskSink {
  write(data: Buffer, offset: number): Promise<number>;
  /** Everything on disk (synced) and the file closed. */
  finish(): Promise<void>;
  abort(): Promise<void>;
}

/** Creates `path` exclusively (never through a symlink), mode 0600, as a raw or qcow2 disk of `size` bytes. */
async function openSink(format: 'raw' | 'qcow2', path: string, size: number): Promise<DiskSink> {
  if (format === 'qcow2') {
    const w = await Qcow2Writer.create(path, size);
    return {
      async write(data, offset) {
        const before = w.dataBytes;
        await w.write(offset, data);
        return w.dataBytes - before;
      },
      finish: () => w.close(),
      abort: () => w.abort(),
    };
  }
  const fh = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    await fh.truncate(size);
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
  return {
    write: (data, offset) => writeSparse(fh, data, offset),
    async finish() {
      await fh.sync();
      await fh.close();
    },
    abort: () => fh.close(),
  };
}

export async function restoreDisk(repo: Pick<Repository, 'loadBlob'> & Partial<Pick<Repository, 'blobReader'>>, disk: DiskRecord, opts: DiskRestoreOptions): Promise<DiskRestoreResult> {
  const name = safeDiskName(disk.name);
  const rawPath = join(opts.targetDir, `${name}.raw`);
  const finalPath = join(opts.targetDir, `${name}.${opts.format}`);
  const direct = opts.format === 'raw' || opts.format === 'qcow2';
  // The file the blocks are written to: the restored disk itself, or the raw image qemu-img converts.
  const writtenPath = direct ? finalPath : rawPath;
  for (const p of new Set([writtenPath, finalPath])) {
    if (await fsp.lstat(p).then(() => true, () => false)) {
      throw new BulwarkError('failed', `'${p}' already exists; restore never overwrites a disk`, { hint: 'move it away or choose another --target' });
    }
  }
  const progress = newProgress();
  progress.bytesTotal = disk.size;
  let bytesWritten = 0;
  // Written under a temporary name and renamed when complete: a failed restore must not leave a file
  // that looks like a restored disk. The partial file stays (a disk may be worth salvaging) and is named.
  const partialPath = `${writtenPath}.partial`;
  await fsp.unlink(partialPath).catch(() => undefined);
  const sink = await openSink(opts.format === 'qcow2' ? 'qcow2' : 'raw', partialPath, disk.size).catch((err: unknown) => {
    throw unable('create', 'disk file', partialPath, err);
  });
  try {
    // The block list is read page by page as the writer advances; the reader fetches the blocks ahead
    // of it, neighbours in a pack in one ranged read.
    const indices: number[] = [];
    const ids = (async function* () {
      for await (const b of dataBlocks(repo, disk)) {
        indices.push(b.index);
        yield b.id;
      }
    })();
    for await (const data of blobReaderOf(repo).blobs(ids)) {
      const index = indices.shift()!;
      bytesWritten += await sink.write(data, index * disk.blockSize);
      progress.bytesDone = index * disk.blockSize + data.length;
      opts.onProgress?.(progress);
    }
    await sink.finish();
  } catch (err) {
    await sink.abort().catch(() => undefined);
    const reason = err instanceof Error ? err.message : String(err);
    throw new BulwarkError(err instanceof BulwarkError ? err.code : 'failed', `restore of disk '${name}' failed: ${reason}; the incomplete image was left as '${partialPath}'`, {
      hint: err instanceof BulwarkError && err.hint ? err.hint : 'it is not a usable disk; remove it once you no longer need it',
      cause: err,
    });
  }
  await fsp.rename(partialPath, writtenPath);
  if (opts.format !== 'raw' && opts.format !== 'qcow2') {
    const [fmt, ...o] = QEMU_IMG_FORMAT[opts.format];
    try {
      await run('qemu-img', ['convert', '-f', 'raw', '-O', fmt!, ...o, rawPath, finalPath]);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new BulwarkError('failed', `restoring as ${opts.format} needs qemu-img, which is not installed`, { hint: 'install it (Debian: apt-get install qemu-utils), or restore --format raw', cause: err });
      }
      throw unable('convert', 'disk', rawPath, (err as { stderr?: string }).stderr?.trim() || err);
    } finally {
      await fsp.unlink(rawPath).catch(() => undefined);
    }
  }
  return { path: finalPath, size: disk.size, bytesWritten };
}
