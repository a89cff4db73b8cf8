// Whole-disk restore from a fixed index: the output file is created at full size first (sparse), then
// only non-hole blocks are written, so holes in the backup stay holes on disk.
import { execFile } from 'node:child_process';
import { constants, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decodePage } from '../repository/fixed-index.js';
import type { Repository } from '../repository/repository.js';
import type { DiskRecord } from '../repository/snapshot.js';
import { newProgress, type ProgressSink } from '../sources/progress.js';
import { BulwarkError, unable } from '../util/errors.js';
import { orderedMap } from '../util/ordered.js';
import { writeSparse } from '../util/sparse.js';

const run = promisify(execFile);

export interface DiskRestoreOptions {
  targetDir: string;
  format: RestoreFormat;
  onProgress?: ProgressSink;
  prefetch?: number;
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

/** Formats a disk can be restored as: raw written directly, the others converted from it by qemu-img. */
export const RESTORE_FORMATS = ['raw', 'qcow2', 'vmdk', 'vhdx', 'vdi', 'vhd'] as const;
export type RestoreFormat = (typeof RESTORE_FORMATS)[number];
const QEMU_IMG_FORMAT: Record<Exclude<RestoreFormat, 'raw'>, string[]> = {
  qcow2: ['qcow2'],
  // streamOptimized would do for archiving; monolithicSparse is what VMware Workstation opens and writes.
  vmdk: ['vmdk', '-o', 'subformat=monolithicSparse'],
  vhdx: ['vhdx', '-o', 'subformat=dynamic'],
  vdi: ['vdi'],
  // force_size: the VHD keeps the disk's exact size instead of rounding it to a CHS geometry.
  vhd: ['vpc', '-o', 'subformat=dynamic,force_size=on'],
};

export async function restoreDisk(repo: Pick<Repository, 'loadBlob'>, disk: DiskRecord, opts: DiskRestoreOptions): Promise<DiskRestoreResult> {
  const name = safeDiskName(disk.name);
  const rawPath = join(opts.targetDir, `${name}.raw`);
  const finalPath = join(opts.targetDir, `${name}.${opts.format}`);
  for (const p of new Set([rawPath, finalPath])) {
    if (await fsp.lstat(p).then(() => true, () => false)) {
      throw new BulwarkError('failed', `'${p}' already exists; restore never overwrites a disk`, { hint: 'move it away or choose another --target' });
    }
  }
  const progress = newProgress();
  progress.bytesTotal = disk.size;
  let bytesWritten = 0;
  // Written under a temporary name and renamed when complete: a failed restore must not leave a file
  // that looks like a restored disk. The partial file stays (a disk may be worth salvaging) and is named.
  const partialPath = `${rawPath}.partial`;
  await fsp.unlink(partialPath).catch(() => undefined);
  const fh = await fsp.open(partialPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600).catch((err: unknown) => {
    throw unable('create', 'disk file', partialPath, err);
  });
  try {
    await fh.truncate(disk.size);
    // The block list is read page by page as the writer advances; blobs are prefetched ahead of it.
    for await (const { index, data } of orderedMap(dataBlocks(repo, disk), opts.prefetch ?? 8, async (b) => ({ index: b.index, data: await repo.loadBlob('data', b.id) }))) {
      bytesWritten += await writeSparse(fh, data, index * disk.blockSize);
      progress.bytesDone = index * disk.blockSize + data.length;
      opts.onProgress?.(progress);
    }
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    const reason = err instanceof Error ? err.message : String(err);
    throw new BulwarkError(err instanceof BulwarkError ? err.code : 'failed', `restore of disk '${name}' failed: ${reason}; the incomplete image was left as '${partialPath}'`, {
      hint: err instanceof BulwarkError && err.hint ? err.hint : 'it is not a usable disk; remove it once you no longer need it',
      cause: err,
    });
  }
  await fh.close();
  await fsp.rename(partialPath, rawPath);
  if (opts.format !== 'raw') {
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
