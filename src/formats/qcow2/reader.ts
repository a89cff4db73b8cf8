// A read-only qcow2 reader (QEMU's docs/interop/qcow2.txt): versions 2 and 3, backing chains (qcow2
// or raw), compressed clusters (deflate, zstd), zero clusters, extended L2 entries (sub-clusters) and
// external data files. Encrypted images are refused with a clear message. Only the tables needed for
// the clusters asked for are read (an LRU of L2 tables within a byte budget), and only allocated
// clusters are read: a hole costs no I/O.
//
// Everything in the file is distrusted: every table offset and cluster pointer is checked against the
// file's size before it is read, sizes are bounded (L1 ≤ 32 MiB as QEMU allows, virtual size ≤ 2^56),
// a backing chain may not loop and is at most 32 images deep.
import { promises as fsp } from 'node:fs';
import { inflateRawSync } from 'node:zlib';
import { BulwarkError } from '../../util/errors.js';
import { enterChain, resolveNear } from '../chain.js';
import { RawImage, readExactly, readInto, type DiskImage } from '../image.js';
import { decompressZstdCluster } from './zstd.js';

const MAGIC = 0x514649fb;
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_SIZE = 2 ** 56;
const L2_CACHE_BYTES = 8 * 1024 * 1024;
const OFFSET_MASK = 0x00fffffffffffe00n;
const COMPRESSED = 1n << 62n;
const COPIED = 1n << 63n;
const ZERO = 1n;

const INCOMPAT_DIRTY = 1n;
const INCOMPAT_CORRUPT = 2n;
const INCOMPAT_DATA_FILE = 4n;
const INCOMPAT_COMPRESSION = 8n;
const INCOMPAT_EXTL2 = 16n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_DATA_FILE = 0x44415441;

export interface Qcow2Header {
  version: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1Offset: number;
  incompatible: bigint;
  compressionType: number;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
}

/** The header and its extensions, validated against the file's size. */
export function parseHeader(head: Buffer, fileSize: number, file: string): Qcow2Header {
  const bad = (why: string): BulwarkError => new BulwarkError('failed', `'${file}' is not a usable qcow2 image: ${why}`);
  if (head.length < 72 || head.readUInt32BE(0) !== MAGIC) throw bad('no qcow2 magic');
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw bad(`version ${version} (2 and 3 are known)`);
  const backingOffset = Number(head.readBigUInt64BE(8));
  const backingSize = head.readUInt32BE(16);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) throw bad(`cluster size 2^${clusterBits} (QEMU allows 512 B to 2 MiB)`);
  const rawSize = head.readBigUInt64BE(24);
  if (rawSize > BigInt(MAX_SIZE)) throw bad(`virtual size ${rawSize} bytes is absurd`);
  const size = Number(rawSize);
  const cryptMethod = head.readUInt32BE(32);
  const l1Size = head.readUInt32BE(36);
  const l1Offset = Number(head.readBigUInt64BE(40));
  let incompatible = 0n;
  let headerLength = 72;
  let compressionType = 0;
  if (version === 3) {
    if (head.length < 104) throw bad('version 3 header is truncated');
    incompatible = head.readBigUInt64BE(72);
    headerLength = head.readUInt32BE(100);
    if (headerLength < 104 || headerLength > head.length) throw bad(`header length ${headerLength}`);
    if (headerLength > 104) compressionType = head[104]!;
  }
  if (incompatible & ~INCOMPAT_KNOWN) throw bad(`it uses incompatible features unknown here (bits 0x${(incompatible & ~INCOMPAT_KNOWN).toString(16)})`);
  if (incompatible & INCOMPAT_CORRUPT) throw bad('QEMU marked it corrupt; repair it with qemu-img check -r all first');
  if (!(incompatible & INCOMPAT_COMPRESSION)) compressionType = 0;
  if (compressionType > 1) throw bad(`compression type ${compressionType}`);
  const clusterSize = 2 ** clusterBits;
  const entryBytes = incompatible & INCOMPAT_EXTL2 ? 16 : 8;
  const perL2 = clusterSize / entryBytes;
  const needL1 = Math.ceil(size / (clusterSize * perL2));
  if (l1Size < needL1) throw bad(`its L1 table has ${l1Size} entries, ${needL1} are needed for ${size} bytes`);
  if (l1Size * 8 > MAX_L1_BYTES) throw bad(`its L1 table of ${l1Size} entries is larger than QEMU allows`);
  if (l1Size > 0 && (l1Offset % clusterSize !== 0 || l1Offset + l1Size * 8 > fileSize)) throw bad(`its L1 table at offset ${l1Offset} is outside the file`);
  const h: Qcow2Header = { version, clusterBits, size, cryptMethod, l1Size, l1Offset, incompatible, compressionType };
  if (backingOffset !== 0) {
    if (backingSize === 0 || backingSize > 1023 || backingOffset + backingSize > head.length) throw bad('its backing file name is out of bounds');
    h.backingFile = head.subarray(backingOffset, backingOffset + backingSize).toString('utf8');
  }
  // Header extensions: type, length, data padded to 8 bytes; type 0 ends them.
  for (let at = headerLength; at + 8 <= head.length; ) {
    const type = head.readUInt32BE(at);
    const len = head.readUInt32BE(at + 4);
    if (type === 0) break;
    if (at + 8 + len > head.length) throw bad('a header extension runs past the header');
    const data = head.subarray(at + 8, at + 8 + len);
    if (type === EXT_BACKING_FORMAT) h.backingFormat = data.toString('utf8');
    if (type === EXT_DATA_FILE) h.dataFile = data.toString('utf8');
    at += 8 + Math.ceil(len / 8) * 8;
  }
  return h;
}


export class Qcow2Image implements DiskImage {
  readonly format = 'qcow2';
  private ownData = 0;
  private readonly clusterSize: number;
  private readonly l2Bits: number;
  private readonly extL2: boolean;
  private readonly l2Cache = new Map<number, BigUint64Array | Buffer>();

  private constructor(
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    readonly header: Qcow2Header,
    private readonly l1: BigUint64Array,
    private readonly data: { fh: fsp.FileHandle; size: number; file: string } | undefined,
    private readonly backing: DiskImage | undefined,
  ) {
    this.clusterSize = 2 ** header.clusterBits;
    this.extL2 = (header.incompatible & INCOMPAT_EXTL2) !== 0n;
    this.l2Bits = header.clusterBits - (this.extL2 ? 4 : 3);
  }

  get size(): number {
    return this.header.size;
  }

  get dataBytesRead(): number {
    return this.ownData + (this.backing?.dataBytesRead ?? 0);
  }

  /** Opens `file` and its backing chain. `seen`: the chain so far, to refuse loops. */
  static async open(file: string, seen: string[] = []): Promise<Qcow2Image> {
    const real = await enterChain(file, seen);
    const fh = await fsp.open(real, 'r');
    const opened: { close(): Promise<void> }[] = [fh];
    try {
      const fileSize = Number((await fh.stat()).size);
      const headLen = Math.min(fileSize, 65536);
      const head = await readExactly(fh, headLen, 0, 'header', file);
      const h = parseHeader(head, fileSize, file);
      if (h.cryptMethod !== 0) {
        throw new BulwarkError('usage', `'${file}' is an encrypted qcow2 image (${h.cryptMethod === 1 ? 'AES' : 'LUKS'}); Bulwark does not read encrypted images`, {
          hint: `decrypt a copy first (qemu-img convert --object secret,… --image-opts … -O qcow2), or back up the running VM with 'bulwark backup vm'`,
        });
      }
      const l1buf = h.l1Size ? await readExactly(fh, h.l1Size * 8, h.l1Offset, 'L1 table', file) : Buffer.alloc(0);
      const l1 = new BigUint64Array(h.l1Size);
      for (let i = 0; i < h.l1Size; i++) l1[i] = l1buf.readBigUInt64BE(i * 8);
      let data: { fh: fsp.FileHandle; size: number; file: string } | undefined;
      if (h.incompatible & INCOMPAT_DATA_FILE) {
        if (!h.dataFile) throw new BulwarkError('failed', `'${file}' keeps its data in an external file but does not name it`);
        const path = resolveNear(real, h.dataFile);
        const dfh = await fsp.open(path, 'r').catch((err: unknown) => {
          throw new BulwarkError('not-found', `the external data file '${path}' of '${file}' cannot be opened: ${(err as Error).message}`, { cause: err });
        });
        opened.push(dfh);
        data = { fh: dfh, size: Number((await dfh.stat()).size), file: path };
      }
      let backing: DiskImage | undefined;
      if (h.backingFile) {
        const path = resolveNear(real, h.backingFile);
        const fmt = h.backingFormat ?? (await sniffQcow2(path)) ?? 'raw';
        if (fmt === 'qcow2') backing = await Qcow2Image.open(path, [...seen, real]);
        else if (fmt === 'raw') backing = await RawImage.open(path);
        else throw new BulwarkError('failed', `the backing file '${path}' of '${file}' is ${fmt}, which cannot be a backing file here (qcow2 or raw)`);
      }
      return new Qcow2Image(file, fh, fileSize, h, l1, data, backing);
    } catch (err) {
      for (const o of opened) await o.close().catch(() => undefined);
      throw err;
    }
  }

  private bad(why: string): BulwarkError {
    return new BulwarkError('failed', `'${this.file}' is damaged: ${why}`);
  }

  /** The L2 table of L1 entry `i`, or undefined when unallocated. */
  private async l2(i: number): Promise<Buffer | undefined> {
    const entry = this.l1[i] ?? 0n;
    const off = Number(entry & OFFSET_MASK);
    if (off === 0) return undefined;
    const hit = this.l2Cache.get(off) as Buffer | undefined;
    if (hit) {
      this.l2Cache.delete(off);
      this.l2Cache.set(off, hit);
      return hit;
    }
    if (off % this.clusterSize !== 0 || off + this.clusterSize > this.fileSize) throw this.bad(`an L2 table pointer (${off}) is outside the file`);
    const t = await readExactly(this.fh, this.clusterSize, off, 'L2 table', this.file);
    this.l2Cache.set(off, t);
    while (this.l2Cache.size * this.clusterSize > L2_CACHE_BYTES && this.l2Cache.size > 1) this.l2Cache.delete(this.l2Cache.keys().next().value!);
    return t;
  }

  /**
   * Whether a (non-compressed) L2 entry points at data. Host offset 0 means unallocated, except in an
   * external data file, where the copied flag marks the cluster at offset 0 as data.
   */
  private allocated(e: bigint): boolean {
    return (e & OFFSET_MASK) !== 0n || (this.data !== undefined && (e & COPIED) !== 0n);
  }

  /** The L2 entry (and sub-cluster bitmap) of guest cluster `c`; 0n when its table is unallocated. */
  private async entry(c: number): Promise<{ e: bigint; bitmap: bigint }> {
    const t = await this.l2(Math.floor(c / 2 ** this.l2Bits));
    if (!t) return { e: 0n, bitmap: 0n };
    const idx = c % 2 ** this.l2Bits;
    if (!this.extL2) return { e: t.readBigUInt64BE(idx * 8), bitmap: 0n };
    return { e: t.readBigUInt64BE(idx * 16), bitmap: t.readBigUInt64BE(idx * 16 + 8) };
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    const end = Math.min(this.size, offset + length);
    for (let c = Math.floor(offset / this.clusterSize); c * this.clusterSize < end; c++) {
      const { e, bitmap } = await this.entry(c);
      if (e & COMPRESSED) return true;
      if (this.extL2) {
        const alloc = bitmap & 0xffffffffn;
        if (alloc !== 0n && this.allocated(e)) return true;
        // Sub-clusters neither allocated nor zero read through to the backing file.
        const zero = bitmap >> 32n;
        if (this.backing && (alloc | zero) !== 0xffffffffn && (await this.backing.hasData(c * this.clusterSize, this.clusterSize))) return true;
        continue;
      }
      if (this.header.version === 3 && e & ZERO) continue;
      if (this.allocated(e)) return true;
      if (this.backing && (await this.backing.hasData(c * this.clusterSize, Math.min(this.clusterSize, end - c * this.clusterSize)))) return true;
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const end = Math.min(this.size, offset + buf.length);
    for (let pos = offset; pos < end; ) {
      const c = Math.floor(pos / this.clusterSize);
      const cStart = c * this.clusterSize;
      let upto = Math.min(end, cStart + this.clusterSize);
      const host = this.extL2 ? undefined : await this.plainHost(c);
      if (host === undefined) {
        await this.readCluster(c, buf.subarray(pos - offset, upto - offset), pos - cStart);
      } else {
        // Clusters whose data follow each other in the file are read in one go.
        let last = c;
        while ((last + 1) * this.clusterSize < end && (await this.plainHost(last + 1)) === host + (last + 1 - c) * this.clusterSize) last++;
        upto = Math.min(end, (last + 1) * this.clusterSize);
        await this.readHost(host + (pos - cStart), buf.subarray(pos - offset, upto - offset));
      }
      pos = upto;
    }
  }

  /** The host offset of cluster `c` when it is plain data (not compressed, zero or unallocated). */
  private async plainHost(c: number): Promise<number | undefined> {
    const { e } = await this.entry(c);
    if (e & COMPRESSED || (this.header.version === 3 && e & ZERO) || !this.allocated(e)) return undefined;
    return Number(e & OFFSET_MASK);
  }

  /** Fills `out` with cluster `c`'s bytes from `within` on. */
  private async readCluster(c: number, out: Buffer, within: number): Promise<void> {
    const { e, bitmap } = await this.entry(c);
    if (e & COMPRESSED) {
      const plain = await this.compressedCluster(e);
      plain.copy(out, 0, within, within + out.length);
      return;
    }
    const host = Number(e & OFFSET_MASK);
    if (!this.extL2) {
      if (this.header.version === 3 && e & ZERO) return;
      if (!this.allocated(e)) {
        await this.backing?.read(out, c * this.clusterSize + within);
        return;
      }
      await this.readHost(host + within, out);
      return;
    }
    // Extended L2: 32 sub-clusters, each allocated (data at host + k * sub), zero, or read through.
    const sub = this.clusterSize / 32;
    for (let k = Math.floor(within / sub); k * sub < within + out.length; k++) {
      const from = Math.max(within, k * sub);
      const to = Math.min(within + out.length, (k + 1) * sub);
      const part = out.subarray(from - within, to - within);
      if ((bitmap >> BigInt(32 + k)) & 1n) continue;
      if ((bitmap >> BigInt(k)) & 1n) {
        if (!this.allocated(e)) throw this.bad(`cluster ${c} has allocated sub-clusters but no host cluster`);
        await this.readHost(host + from, part);
      } else await this.backing?.read(part, c * this.clusterSize + from);
    }
  }

  private async readHost(at: number, out: Buffer): Promise<void> {
    const src = this.data ?? { fh: this.fh, size: this.fileSize, file: this.file };
    if (at + out.length > src.size) {
      // An external raw data file may be shorter than the disk: what is past its end reads as zeros.
      if (this.data && at >= src.size) return;
      if (!this.data) throw this.bad(`a cluster pointer (${at}) is past the end of the file`);
    }
    const n = Math.min(out.length, src.size - at);
    await readInto(src.fh, out.subarray(0, n), at, 'cluster', src.file);
    this.ownData += n;
  }

  private async compressedCluster(e: bigint): Promise<Buffer> {
    // Compressed descriptor: host offset in the low (62 - (cluster_bits - 8)) bits, then the count
    // of additional 512-byte sectors the compressed data spans.
    const x = BigInt(62 - (this.header.clusterBits - 8));
    const host = Number(e & ((1n << x) - 1n));
    const sectors = Number((e >> x) & ((1n << BigInt(this.header.clusterBits - 8)) - 1n)) + 1;
    const len = Math.min(sectors * 512 - (host % 512), this.fileSize - host);
    if (host <= 0 || len <= 0 || host >= this.fileSize) throw this.bad(`a compressed cluster pointer (${host}) is outside the file`);
    const body = await readExactly(this.fh, len, host, 'compressed cluster', this.file);
    this.ownData += len;
    try {
      if (this.header.compressionType === 1) return decompressZstdCluster(body, this.clusterSize);
      // Deflate without a zlib header (QEMU's window of 2^12), stopping at the cluster size.
      const out = inflateRawSync(body, { maxOutputLength: this.clusterSize, finishFlush: 2 /* Z_SYNC_FLUSH: trailing sector padding is allowed */ });
      if (out.length !== this.clusterSize) throw new Error(`inflates to ${out.length} bytes, not ${this.clusterSize}`);
      return out;
    } catch (err) {
      if (err instanceof BulwarkError) throw err;
      throw this.bad(`a compressed cluster does not decompress (${(err as Error).message})`);
    }
  }

  async close(): Promise<void> {
    await this.backing?.close().catch(() => undefined);
    await this.data?.fh.close().catch(() => undefined);
    await this.fh.close();
  }
}

async function sniffQcow2(path: string): Promise<'qcow2' | undefined> {
  const fh = await fsp.open(path, 'r').catch((err: unknown) => {
    throw new BulwarkError('not-found', `backing file '${path}' cannot be opened: ${(err as Error).message}`, { cause: err });
  });
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    return b.readUInt32BE(0) === MAGIC ? 'qcow2' : undefined;
  } finally {
    await fh.close();
  }
}
