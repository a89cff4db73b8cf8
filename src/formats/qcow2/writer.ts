// A streaming qcow2 writer (QEMU's docs/interop/qcow2.txt), for restoring a disk as qcow2 without a
// raw intermediate: guest data arrives in ascending order of offset and is appended to the file as it
// comes. All-zero clusters are not stored (they stay unallocated and read as zeros: there is no
// backing file).
//
// Layout: cluster 0 is the header (written last, after everything it points to is on disk); then the
// data clusters and L2 tables in the order they are finished; at close the L1 table, the refcount
// blocks and the refcount table. Every cluster of the file is in use exactly once, so every refcount
// is 1 and the refcounts are generated at close from the file's length alone.
//
// Memory is bounded whatever the disk size: one L2 table, one partial cluster, and the L1 table (8
// bytes per 512 MiB of virtual disk at 64 KiB clusters; QEMU's own limit of 32 MiB is enforced).
//
// Version 3, refcount_order 4 (16-bit), no compression, no encryption, no extended L2 entries, no
// features. L1 and L2 entries carry the COPIED flag (refcount exactly 1).
import { constants, promises as fsp } from 'node:fs';
import { BulwarkError } from '../../util/errors.js';

const MAGIC = 0x514649fb;
const HEADER_LENGTH = 104;
const REFCOUNT_ORDER = 4;
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_SIZE = 2 ** 53 - 2 ** 21; // offsets stay exact JavaScript numbers
/** COPIED (bit 63) as the high 32-bit word of an entry. */
const COPIED_HI = 0x80000000;
const TWO_32 = 2 ** 32;
/** Refcount blocks are written this many bytes at a time at close. */
const REFCOUNT_WRITE_BYTES = 4 * 1024 * 1024;

export interface Qcow2WriterOptions {
  /** A power of two from 512 B to 2 MiB; default 64 KiB (QEMU's default). */
  clusterSize?: number;
}

/** Puts a 64-bit table entry (host offset | COPIED) into `buf` at `at`, without BigInt. */
function putEntry(buf: Buffer, at: number, hostOffset: number): void {
  buf.writeUInt32BE((COPIED_HI | Math.floor(hostOffset / TWO_32)) >>> 0, at);
  buf.writeUInt32BE(hostOffset % TWO_32, at + 4);
}

export class Qcow2Writer {
  /** Guest bytes stored in data clusters (zero clusters are not). */
  dataBytes = 0;
  private readonly clusterSize: number;
  private readonly clusterBits: number;
  /** Clusters one L2 table maps. */
  private readonly perL2: number;
  /** The virtual size in the header: `size` rounded up to 512 bytes, as QEMU counts sizes in sectors. */
  private readonly headerSize: number;
  private readonly l1: Buffer;
  private readonly l2: Buffer;
  /** L1 index of the L2 table held in `l2`; -1 when none. */
  private l2Index = -1;
  private l2Dirty = false;
  /** The cluster being filled by writes that do not cover it whole (zeros where nothing was written). */
  private readonly partial: Buffer;
  private partialIndex = -1;
  /** Where the next cluster goes in the file (cluster 0 is the header). */
  private next: number;
  /** End of the last write: the next must not start before it. */
  private end = 0;
  private readonly zero: Buffer;
  private busy = false;
  private state: 'open' | 'failed' | 'closed' = 'open';

  private constructor(
    private readonly path: string,
    private readonly fh: fsp.FileHandle,
    readonly size: number,
    clusterSize: number,
  ) {
    this.clusterSize = clusterSize;
    this.clusterBits = Math.log2(clusterSize);
    this.perL2 = clusterSize / 8;
    this.headerSize = Math.ceil(size / 512) * 512;
    const l1Size = Math.ceil(this.headerSize / (clusterSize * this.perL2));
    this.l1 = Buffer.alloc(l1Size * 8);
    this.l2 = Buffer.alloc(clusterSize);
    this.partial = Buffer.alloc(clusterSize);
    this.zero = Buffer.alloc(clusterSize);
    this.next = clusterSize;
  }

  /** Creates `path` exclusively (it must not exist; not through a symlink), mode 0600. */
  static async create(path: string, virtualSize: number, opts: Qcow2WriterOptions = {}): Promise<Qcow2Writer> {
    const clusterSize = opts.clusterSize ?? 65536;
    if (!Number.isInteger(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
      throw new BulwarkError('usage', `qcow2 cluster size ${clusterSize} is not a power of two from 512 bytes to 2 MiB`);
    }
    if (!Number.isSafeInteger(virtualSize) || virtualSize < 0 || virtualSize > MAX_SIZE) {
      throw new BulwarkError('usage', `qcow2 virtual size ${virtualSize} is out of range`);
    }
    const reach = clusterSize * (clusterSize / 8);
    if (Math.ceil(virtualSize / reach) * 8 > MAX_L1_BYTES) {
      throw new BulwarkError('usage', `a qcow2 image of ${virtualSize} bytes needs a larger L1 table than QEMU allows with ${clusterSize}-byte clusters; use larger clusters`);
    }
    const fh = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    return new Qcow2Writer(path, fh, virtualSize, clusterSize);
  }

  /**
   * Guest data at `offset`. Writes must come in ascending order and not overlap; one at a time (await
   * each). The caller's buffer is not kept once the promise resolves.
   */
  async write(offset: number, data: Buffer): Promise<void> {
    // A refused write changes nothing.
    if (!Number.isSafeInteger(offset) || offset < 0) throw new BulwarkError('failed', `qcow2 write at offset ${offset}: not a valid offset`);
    if (offset < this.end) {
      throw new BulwarkError('failed', `qcow2 writes must come in ascending order: a write at offset ${offset} follows one that ended at ${this.end}`);
    }
    if (offset + data.length > this.size) {
      throw new BulwarkError('failed', `qcow2 write of ${data.length} bytes at offset ${offset} runs past the disk's end (${this.size} bytes)`);
    }
    this.enter();
    try {
      if (data.length === 0) return;
      this.end = offset + data.length;
      const C = this.clusterSize;
      let at = 0; // position in data
      // A write that starts inside a cluster, or ends before the cluster's end, goes through `partial`.
      const first = Math.floor(offset / C);
      if (this.partialIndex >= 0 && this.partialIndex !== first) await this.flushPartial();
      if (offset % C !== 0 || data.length < C) {
        const inCluster = offset % C;
        const n = Math.min(data.length, C - inCluster);
        data.copy(this.partial, inCluster, 0, n);
        this.partialIndex = first;
        at = n;
        // Complete: store it now (also when the disk ends inside this cluster and this write reaches it).
        if (inCluster + n === C || offset + n === this.size) await this.flushPartial();
        if (at === data.length) return;
      }
      // Whole clusters straight from the caller's buffer, runs of non-zero ones in one write each.
      const full = Math.floor((data.length - at) / C);
      let cluster = (offset + at) / C;
      let runStart = -1; // index into data of the current run
      let runCluster = 0;
      for (let i = 0; i < full; i++, cluster++) {
        const slice = data.subarray(at + i * C, at + (i + 1) * C);
        const zero = slice.equals(this.zero);
        // A run ends at a zero cluster, and at an L2 table's end (that table is then finished).
        if (runStart >= 0 && (zero || cluster % this.perL2 === 0)) {
          await this.storeRun(runCluster, data.subarray(runStart, at + i * C));
          runStart = -1;
        }
        if (!zero && runStart < 0) {
          runStart = at + i * C;
          runCluster = cluster;
        }
      }
      if (runStart >= 0) await this.storeRun(runCluster, data.subarray(runStart, at + full * C));
      at += full * C;
      if (at < data.length) {
        // The rest starts a cluster and does not fill it.
        data.copy(this.partial, 0, at);
        this.partialIndex = cluster;
        if (offset + data.length === this.size) await this.flushPartial();
      }
    } catch (err) {
      this.state = 'failed';
      throw err;
    } finally {
      this.busy = false;
    }
  }

  /** Writes the L2 table(s), L1 table, refcounts and header, then syncs and closes the file. */
  async close(): Promise<void> {
    this.enter();
    try {
      if (this.partialIndex >= 0) await this.flushPartial();
      await this.flushL2();
      const C = this.clusterSize;
      // L1 table (none for an empty disk: QEMU counts no cluster for it then).
      const l1Offset = this.l1.length > 0 ? this.next : 0;
      if (this.l1.length > 0) await this.pwrite(this.l1, l1Offset);
      this.next += Math.ceil(this.l1.length / C) * C;
      // Refcounts: every cluster up to the end of the refcount table is used once. The refcount
      // blocks and table count themselves, so their number is found by iterating to a fixed point.
      const used = this.next / C;
      const perBlock = (C * 8) >> REFCOUNT_ORDER;
      let blocks = 0;
      let tableClusters = 0;
      for (;;) {
        const total = used + blocks + tableClusters;
        const b = Math.ceil(total / perBlock);
        const t = Math.ceil((b * 8) / C);
        if (b === blocks && t === tableClusters) break;
        blocks = b;
        tableClusters = t;
      }
      const total = used + blocks + tableClusters;
      const blocksOffset = this.next;
      await this.writeRefcountBlocks(blocksOffset, blocks, total);
      const tableOffset = blocksOffset + blocks * C;
      const table = Buffer.alloc(tableClusters * C);
      for (let i = 0; i < blocks; i++) {
        const off = blocksOffset + i * C;
        table.writeUInt32BE(Math.floor(off / TWO_32), i * 8);
        table.writeUInt32BE(off % TWO_32, i * 8 + 4);
      }
      await this.pwrite(table, tableOffset);
      this.next = tableOffset + tableClusters * C;
      // The header last, once all it points to is on disk.
      await this.fh.sync();
      await this.pwrite(this.header(l1Offset, tableOffset, tableClusters), 0);
      await this.fh.sync();
      this.state = 'closed';
      await this.fh.close();
    } catch (err) {
      this.state = 'failed';
      await this.fh.close().catch(() => undefined);
      throw err;
    } finally {
      this.busy = false;
    }
  }

  /** Closes the file without finishing it (it is not a usable image). */
  async abort(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'closed';
    await this.fh.close().catch(() => undefined);
  }

  /** Bytes the file takes so far (its final size once closed). */
  get fileSize(): number {
    return this.next;
  }

  private enter(): void {
    if (this.state === 'closed') throw new BulwarkError('failed', `qcow2 writer for '${this.path}' is closed`);
    if (this.state === 'failed') throw new BulwarkError('failed', `qcow2 writer for '${this.path}' failed earlier; the image is not usable`);
    if (this.busy) throw new BulwarkError('failed', 'qcow2 writer: one write at a time (await each)');
    this.busy = true;
  }

  private async flushPartial(): Promise<void> {
    const index = this.partialIndex;
    this.partialIndex = -1;
    if (!this.partial.equals(this.zero)) await this.storeRun(index, this.partial);
    this.partial.fill(0);
  }

  /** Appends non-zero clusters `first`… (all under one L2 table) and maps them. */
  private async storeRun(first: number, data: Buffer): Promise<void> {
    const C = this.clusterSize;
    const l1Index = Math.floor(first / this.perL2);
    if (l1Index !== this.l2Index) {
      await this.flushL2();
      this.l2Index = l1Index;
    }
    const host = this.next;
    await this.pwrite(data, host);
    this.next += data.length;
    this.dataBytes += data.length;
    const n = data.length / C;
    for (let i = 0; i < n; i++) putEntry(this.l2, ((first + i) % this.perL2) * 8, host + i * C);
    this.l2Dirty = true;
  }

  /** Appends the L2 table held (if it maps anything) and points the L1 table at it. */
  private async flushL2(): Promise<void> {
    if (this.l2Index >= 0 && this.l2Dirty) {
      const host = this.next;
      await this.pwrite(this.l2, host);
      this.next += this.clusterSize;
      putEntry(this.l1, this.l2Index * 8, host);
      this.l2.fill(0);
    }
    this.l2Index = -1;
    this.l2Dirty = false;
  }

  /** `count` refcount blocks at `offset`, refcount 1 for clusters 0 … total-1 and 0 after. */
  private async writeRefcountBlocks(offset: number, count: number, total: number): Promise<void> {
    const C = this.clusterSize;
    const perBlock = C / 2;
    const perWrite = Math.max(1, Math.floor(REFCOUNT_WRITE_BYTES / C));
    const buf = Buffer.alloc(Math.min(count, perWrite) * C);
    for (let b = 0; b < count; b += perWrite) {
      const n = Math.min(perWrite, count - b);
      const chunk = buf.subarray(0, n * C);
      // 16-bit big-endian 1 for each cluster in use.
      const inUse = Math.min(total - b * perBlock, n * perBlock);
      chunk.fill(0);
      for (let i = 0; i < inUse; i++) chunk[i * 2 + 1] = 1;
      await this.pwrite(chunk, offset + b * C);
    }
  }

  private header(l1Offset: number, tableOffset: number, tableClusters: number): Buffer {
    const h = Buffer.alloc(512); // the rest of cluster 0 is never read
    h.writeUInt32BE(MAGIC, 0);
    h.writeUInt32BE(3, 4); // version
    // 8: backing file offset, 16: its size — none
    h.writeUInt32BE(this.clusterBits, 20);
    h.writeBigUInt64BE(BigInt(this.headerSize), 24);
    // 32: crypt method — none
    h.writeUInt32BE(this.l1.length / 8, 36);
    h.writeBigUInt64BE(BigInt(l1Offset), 40);
    h.writeBigUInt64BE(BigInt(tableOffset), 48);
    h.writeUInt32BE(tableClusters, 56);
    // 60: snapshots — none; 72, 80, 88: incompatible, compatible, autoclear features — none
    h.writeUInt32BE(REFCOUNT_ORDER, 96);
    h.writeUInt32BE(HEADER_LENGTH, 100);
    // 104: the end-of-extensions marker (type 0, length 0) — zeros already
    return h;
  }

  private async pwrite(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) done += (await this.fh.write(buf, done, buf.length - done, position + done)).bytesWritten;
  }
}
