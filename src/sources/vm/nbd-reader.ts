// Reads one disk of a point-in-time image exported over NBD into a fixed index.
//
// Block i of the disk is [i·blockSize, (i+1)·blockSize). A block is
// - a hole when block status says it is all hole/zero (nothing read, nothing stored);
// - taken from the parent's index when this is an incremental and the dirty bitmap says no byte of it
//   changed since the parent (nothing read);
// - otherwise read, hashed and stored (deduplicated, so an unchanged block read again costs no space).
// Memory: one page of ids and a bounded window of blocks in flight, whatever the disk size.
import { decodePage, encodePage } from '../../repository/fixed-index.js';
import { FIXED_INDEX_PAGE_ENTRIES } from '../../repository/format.js';
import type { Repository } from '../../repository/repository.js';
import { BASE_ALLOCATION, NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO } from '../../protocols/nbd/constants.js';
import { NbdClient } from '../../protocols/nbd/client.js';
import { BulwarkError } from '../../util/errors.js';
import { orderedMap } from '../../util/ordered.js';
import type { RateLimiter } from '../../util/rate-limit.js';
import { newProgress, type ProgressSink } from '../progress.js';

export type NbdDiskRepo = Pick<Repository, 'saveBlob' | 'loadBlob' | 'hasBlob' | 'config'>;

export interface NbdDiskReadOptions {
  blockSize: number;
  /** Incremental: the dirty-bitmap meta context and the parent's fixed index of the same disk. */
  incremental?: { context: string; parentPages: string[]; parentSize: number };
  onProgress?: ProgressSink;
  /** Blocks read ahead over NBD. */
  readAhead?: number;
  /** Caps the read rate, so the backup leaves the VM's storage room to work. */
  limiter?: RateLimiter;
}

export interface NbdDiskReadResult {
  pages: string[];
  size: number;
  bytesRead: number;
  bytesNew: number;
  blobsNew: number;
  /** Blocks taken from the parent without reading. */
  blocksReused: number;
}

interface Span {
  offset: number;
  length: number;
  flags: number;
}

/** Marks, per block, whether any byte is allocated (per base:allocation) or dirty (per a bitmap). */
async function blockMap(nbd: NbdClient, context: string, blockSize: number, wanted: (flags: number) => boolean): Promise<Uint8Array> {
  const blocks = Math.ceil(nbd.size / blockSize);
  const map = new Uint8Array(blocks);
  for await (const e of nbd.extents(context) as AsyncIterable<Span>) {
    if (!wanted(e.flags) || e.length === 0) continue;
    const first = Math.floor(e.offset / blockSize);
    const last = Math.floor((e.offset + e.length - 1) / blockSize);
    for (let b = first; b <= last && b < blocks; b++) map[b] = 1;
  }
  return map;
}

async function* parentIds(repo: NbdDiskRepo, pages: string[]): AsyncGenerator<string | null> {
  for (const p of pages) yield* decodePage(await repo.loadBlob('tree', p), p);
}

export async function readDiskOverNbd(repo: NbdDiskRepo, nbd: NbdClient, opts: NbdDiskReadOptions): Promise<NbdDiskReadResult> {
  const { blockSize } = opts;
  const size = nbd.size;
  const blocks = Math.ceil(size / blockSize);
  // Any byte that is neither a hole nor reads as zero makes its block worth reading.
  const allocated = await blockMap(nbd, BASE_ALLOCATION, blockSize, (f) => (f & (NBD_STATE_HOLE | NBD_STATE_ZERO)) === 0);
  let dirty: Uint8Array | undefined;
  const inc = opts.incremental;
  if (inc) {
    if (inc.parentSize !== size) throw new BulwarkError('failed', `disk size changed since the parent (${inc.parentSize} → ${size}); a full read is needed`);
    dirty = await blockMap(nbd, inc.context, blockSize, (f) => (f & NBD_STATE_DIRTY) !== 0);
  }
  const parent = inc ? parentIds(repo, inc.parentPages) : undefined;
  const progress = newProgress();
  progress.bytesTotal = size;
  const zero = Buffer.alloc(blockSize);
  const result: NbdDiskReadResult = { pages: [], size, bytesRead: 0, bytesNew: 0, blobsNew: 0, blocksReused: 0 };
  let page: (string | null)[] = [];
  const flushPage = async (): Promise<void> => {
    const r = await repo.saveBlob('tree', encodePage(page));
    if (r.stored) result.blobsNew++;
    result.pages.push(r.id);
    page = [];
  };

  type Plan = { index: number; read: boolean; parentId: string | null };
  async function* plan(): AsyncGenerator<Plan> {
    for (let i = 0; i < blocks; i++) {
      const parentId = parent ? ((await parent.next()).value ?? null) : null;
      if (!allocated[i]) yield { index: i, read: false, parentId: null };
      else if (dirty && !dirty[i] && parentId !== null && repo.hasBlob(parentId)) yield { index: i, read: false, parentId };
      else yield { index: i, read: true, parentId: null };
    }
  }

  let lastEmit = 0;
  const window = opts.readAhead ?? 8;
  // Block buffers are reused: one per block in flight and one being stored (saveBlob copies what it
  // keeps). A fresh buffer per block went through malloc, whose heap then kept about 30 MB of them
  // (docs/performance.md, Memory).
  const free: Buffer[] = [];
  for await (const item of orderedMap(plan(), window, async (p) => {
    if (!p.read) return { p, data: undefined, buf: undefined };
    const len = Math.min(blockSize, size - p.index * blockSize);
    await opts.limiter?.take(len);
    const buf = free.pop() ?? Buffer.allocUnsafeSlow(blockSize);
    const data = buf.subarray(0, len);
    await nbd.readInto(data, p.index * blockSize);
    return { p, data, buf };
  })) {
    const { p, data, buf } = item;
    if (data && buf) {
      result.bytesRead += data.length;
      if (data.equals(data.length === blockSize ? zero : zero.subarray(0, data.length))) page.push(null);
      else {
        const r = await repo.saveBlob('data', data);
        if (r.stored) {
          result.blobsNew++;
          result.bytesNew += data.length;
        }
        page.push(r.id);
      }
      free.push(buf);
    } else {
      if (p.parentId !== null) result.blocksReused++;
      page.push(p.parentId);
    }
    if (page.length === FIXED_INDEX_PAGE_ENTRIES) await flushPage();
    progress.bytesDone = Math.min(size, (p.index + 1) * blockSize);
    progress.bytesNew = result.bytesNew;
    const now = Date.now();
    if (opts.onProgress && now - lastEmit > 100) {
      lastEmit = now;
      opts.onProgress(progress);
    }
  }
  if (page.length > 0 || result.pages.length === 0) await flushPage();
  opts.onProgress?.(progress);
  return result;
}

/**
 * One disk of a point in time as a VM session exports it (hypervisors/session.ts, PointExport):
 * connects to its NBD server, reads, disconnects. `incremental` is used only when the export carries
 * a dirty context.
 */
export async function readDiskFromNbd(
  repo: NbdDiskRepo,
  source: { socket: string; exportName: string; dirtyContext?: string },
  opts: Omit<NbdDiskReadOptions, 'incremental'> & { incremental?: { parentPages: string[]; parentSize: number } },
): Promise<NbdDiskReadResult & { read: 'full' | 'incremental' }> {
  const context = opts.incremental ? source.dirtyContext : undefined;
  const nbd = await NbdClient.connect({ path: source.socket }, { exportName: source.exportName, metaContexts: [BASE_ALLOCATION, ...(context ? [context] : [])] });
  try {
    const { incremental, ...rest } = opts;
    const r = await readDiskOverNbd(repo, nbd, { ...rest, ...(incremental && context ? { incremental: { context, ...incremental } } : {}) });
    return { ...r, read: context ? 'incremental' : 'full' };
  } finally {
    await nbd.disconnect().catch(() => nbd.destroy());
  }
}
