// Disk backup by fixed blocks: the disk is read in order, each block hashed; all-zero blocks become
// holes, others are stored (deduplicated) as data blobs. Block i of the disk is entry i of the fixed
// index, so a dirty bitmap maps straight onto blocks and an incremental can re-use the parent's ids.
import { promises as fsp } from 'node:fs';
import { basename } from 'node:path';
import { encodePage } from '../../repository/fixed-index.js';
import { FIXED_INDEX_PAGE_ENTRIES } from '../../repository/format.js';
import type { Repository } from '../../repository/repository.js';
import type { DiskRecord, SnapshotSummary } from '../../repository/snapshot.js';
import { BulwarkError, unable } from '../../util/errors.js';
import { newProgress, type ProgressSink } from '../progress.js';
import { detectFormat, deviceSize } from './image.js';

export type DiskRepo = Pick<Repository, 'saveBlob' | 'blobId' | 'hasBlob' | 'config'>;

export interface DiskBackupOptions {
  path: string;
  /** Name in the snapshot; defaults to the file's base name without extension. */
  name?: string;
  /** The same disk in the parent snapshot: if the image file is unchanged its index is reused. */
  parent?: DiskRecord;
  onProgress?: ProgressSink;
}

export interface DiskBackupResult {
  disk: DiskRecord;
  summary: Omit<SnapshotSummary, 'durationMs'>;
  reused: boolean;
}

const READ_BATCH_BLOCKS = 4;

export function diskNameFor(path: string): string {
  const b = basename(path);
  const dot = b.lastIndexOf('.');
  return dot > 0 ? b.slice(0, dot) : b;
}

export async function backupDisk(repo: DiskRepo, opts: DiskBackupOptions): Promise<DiskBackupResult> {
  const name = opts.name ?? diskNameFor(opts.path);
  let st;
  try {
    st = await fsp.stat(opts.path, { bigint: true });
  } catch (err) {
    throw unable('read', 'disk', opts.path, err, 'not-found');
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new BulwarkError('usage', `'${opts.path}' is neither a disk image file nor a block device`);
  const size = st.isBlockDevice() ? await deviceSize(Number(st.rdev)) : Number(st.size);
  const format = await detectFormat(opts.path, size);
  if (format !== 'raw') {
    throw new BulwarkError('usage', `'${opts.path}' is a ${format} image; this version backs up raw images and block devices only`, {
      hint: `convert it first: qemu-img convert -O raw '${opts.path}' disk.raw (or back up the running VM with 'bulwark backup vm')`,
    });
  }
  const blockSize = repo.config.blockSize;
  const identity = st.isFile()
    ? { size, mtimeNs: st.mtimeNs.toString(), ctimeNs: st.ctimeNs.toString(), ino: Number(st.ino), dev: Number(st.dev) }
    : undefined;
  const record: DiskRecord = { name, size, blockSize, pages: [], source: opts.path, format: 'raw', ...(identity ? { fileIdentity: identity } : {}) };

  const p = opts.parent;
  if (identity && p?.fileIdentity && p.blockSize === blockSize && JSON.stringify(p.fileIdentity) === JSON.stringify(identity) && p.pages.every((id) => repo.hasBlob(id))) {
    record.pages = p.pages;
    return { disk: record, reused: true, summary: { bytesRead: 0, bytesNew: 0, blobsNew: 0, totalSize: size, warnings: [] } };
  }

  const progress = newProgress();
  progress.bytesTotal = size;
  const zero = Buffer.alloc(blockSize);
  let blobsNew = 0;
  let page: (string | null)[] = [];
  const flushPage = async (): Promise<void> => {
    const r = await repo.saveBlob('tree', encodePage(page));
    if (r.stored) blobsNew++;
    record.pages.push(r.id);
    page = [];
  };

  const fh = await fsp.open(opts.path, 'r');
  try {
    // Two buffers: the next batch is read while the current one is hashed and queued.
    const bufs = [Buffer.allocUnsafe(blockSize * READ_BATCH_BLOCKS), Buffer.allocUnsafe(blockSize * READ_BATCH_BLOCKS)];
    let pos = 0;
    let which = 0;
    const readAt = (b: Buffer, at: number): Promise<number> =>
      at >= size ? Promise.resolve(0) : fh.read(b, 0, Math.min(b.length, size - at), at).then((r) => r.bytesRead);
    let pending = readAt(bufs[0]!, 0);
    let lastEmit = 0;
    while (pos < size) {
      const n = await pending;
      if (n === 0) throw new BulwarkError('io', `disk '${opts.path}' ended at ${pos} bytes, expected ${size}`);
      const cur = bufs[which]!;
      which ^= 1;
      pending = readAt(bufs[which]!, pos + n);
      for (let off = 0; off < n; off += blockSize) {
        const block = cur.subarray(off, Math.min(off + blockSize, n));
        if (block.equals(block.length === blockSize ? zero : zero.subarray(0, block.length))) page.push(null);
        else {
          const r = await repo.saveBlob('data', block);
          if (r.stored) {
            blobsNew++;
            progress.bytesNew += block.length;
          }
          page.push(r.id);
        }
        if (page.length === FIXED_INDEX_PAGE_ENTRIES) await flushPage();
      }
      pos += n;
      progress.bytesDone = pos;
      const now = Date.now();
      if (opts.onProgress && now - lastEmit > 100) {
        lastEmit = now;
        opts.onProgress(progress);
      }
    }
    await pending;
    if (page.length > 0 || record.pages.length === 0) await flushPage();
  } finally {
    await fh.close();
  }
  opts.onProgress?.(progress);
  return { disk: record, reused: false, summary: { bytesRead: size, bytesNew: progress.bytesNew, blobsNew, totalSize: size, warnings: [] } };
}
