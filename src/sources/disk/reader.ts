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
import type { DiskImage } from '../../formats/image.js';
import { openDiskImage } from '../../formats/open.js';
import { detectFormat, deviceSize } from './image.js';
import type { RateLimiter } from '../../util/rate-limit.js';

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

/** The disk's fixed index as it is built: one entry per block, a page stored every FIXED_INDEX_PAGE_ENTRIES. */
class PageWriter {
  blobsNew = 0;
  private page: (string | null)[] = [];

  constructor(
    private readonly repo: DiskRepo,
    private readonly record: DiskRecord,
  ) {}

  hole(): Promise<void> {
    return this.push(null);
  }

  /** Stores a block; resolves with the bytes it added to the repository (0 when deduplicated). */
  async data(block: Buffer): Promise<number> {
    const r = await this.repo.saveBlob('data', block);
    if (r.stored) this.blobsNew++;
    await this.push(r.id);
    return r.stored ? block.length : 0;
  }

  private async push(id: string | null): Promise<void> {
    this.page.push(id);
    if (this.page.length === FIXED_INDEX_PAGE_ENTRIES) await this.flush();
  }

  private async flush(): Promise<void> {
    const r = await this.repo.saveBlob('tree', encodePage(this.page));
    if (r.stored) this.blobsNew++;
    this.record.pages.push(r.id);
    this.page = [];
  }

  async finish(): Promise<void> {
    if (this.page.length > 0 || this.record.pages.length === 0) await this.flush();
  }
}

/** The parent's index, when the image file is the same file, untouched since, and its index is whole. */
function reuseParent(repo: DiskRepo, record: DiskRecord, p: DiskRecord | undefined): DiskBackupResult | undefined {
  const id = record.fileIdentity;
  if (!id || !p?.fileIdentity || p.blockSize !== record.blockSize || JSON.stringify(p.fileIdentity) !== JSON.stringify(id) || !p.pages.every((x) => repo.hasBlob(x))) return undefined;
  record.pages = p.pages;
  return { disk: record, reused: true, summary: { bytesRead: 0, bytesNew: 0, blobsNew: 0, totalSize: record.size, warnings: [] } };
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
  const blockSize = repo.config.blockSize;
  const identity = st.isFile()
    ? { size, mtimeNs: st.mtimeNs.toString(), ctimeNs: st.ctimeNs.toString(), ino: Number(st.ino), dev: Number(st.dev) }
    : undefined;
  if (format !== 'raw') return backupImage(repo, await openDiskImage(opts.path, format), name, identity, opts);
  const record: DiskRecord = { name, size, blockSize, pages: [], source: opts.path, format: 'raw', ...(identity ? { fileIdentity: identity } : {}) };

  const reused = reuseParent(repo, record, opts.parent);
  if (reused) return reused;

  const progress = newProgress();
  progress.bytesTotal = size;
  const zero = Buffer.alloc(blockSize);
  const pages = new PageWriter(repo, record);

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
        if (block.equals(block.length === blockSize ? zero : zero.subarray(0, block.length))) await pages.hole();
        else progress.bytesNew += await pages.data(block);
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
    await pages.finish();
  } finally {
    await fh.close();
  }
  opts.onProgress?.(progress);
  return { disk: record, reused: false, summary: { bytesRead: size, bytesNew: progress.bytesNew, blobsNew: pages.blobsNew, totalSize: size, warnings: [] } };
}

/** One disk image read whole into a fixed index (a stopped VM's disk, through the format readers). */
export interface ImageReadResult {
  pages: string[];
  size: number;
  bytesRead: number;
  bytesNew: number;
  blobsNew: number;
}

/**
 * Reads a disk image block by block, in order: a block with no data in the image (or its backing
 * chain) becomes a hole without being read. Closes nothing: the caller owns `img`.
 */
export async function readImage(repo: DiskRepo, img: DiskImage, opts: { onProgress?: ProgressSink; limiter?: RateLimiter } = {}): Promise<ImageReadResult> {
  const blockSize = repo.config.blockSize;
  const size = img.size;
  const record: DiskRecord = { name: '', size, blockSize, pages: [], source: '', format: img.format };
  const progress = newProgress();
  progress.bytesTotal = size;
  const pages = new PageWriter(repo, record);
  const buf = Buffer.allocUnsafe(blockSize);
  const zero = Buffer.alloc(blockSize);
  const readBefore = img.dataBytesRead;
  let lastEmit = 0;
  for (let off = 0; off < size; off += blockSize) {
    const len = Math.min(blockSize, size - off);
    const block = buf.subarray(0, len);
    if (!(await img.hasData(off, len))) await pages.hole();
    else {
      await opts.limiter?.take(len);
      await img.read(block, off);
      if (block.equals(zero.subarray(0, len))) await pages.hole();
      else progress.bytesNew += await pages.data(block);
    }
    progress.bytesDone = off + len;
    const now = Date.now();
    if (opts.onProgress && now - lastEmit > 100) {
      lastEmit = now;
      opts.onProgress(progress);
    }
  }
  await pages.finish();
  opts.onProgress?.(progress);
  return { pages: record.pages, size, bytesRead: img.dataBytesRead - readBefore, bytesNew: progress.bytesNew, blobsNew: pages.blobsNew };
}

/**
 * A container image (qcow2, VMDK, VDI, VHD, VHDX) as a disk backup. The image's own file identity
 * lets an unchanged image reuse its parent's index, as for raw images (a backing file that changed
 * under an unchanged image is not detected: back up chains whose base may change with --force).
 */
async function backupImage(repo: DiskRepo, img: DiskImage, name: string, identity: DiskRecord['fileIdentity'], opts: DiskBackupOptions): Promise<DiskBackupResult> {
  const record: DiskRecord = { name, size: img.size, blockSize: repo.config.blockSize, pages: [], source: opts.path, format: img.format, ...(identity ? { fileIdentity: identity } : {}) };
  try {
    const reused = reuseParent(repo, record, opts.parent);
    if (reused) return reused;
    const r = await readImage(repo, img, opts.onProgress ? { onProgress: opts.onProgress } : {});
    record.pages = r.pages;
    return { disk: record, reused: false, summary: { bytesRead: r.bytesRead, bytesNew: r.bytesNew, blobsNew: r.blobsNew, totalSize: r.size, warnings: [] } };
  } finally {
    await img.close();
  }
}
