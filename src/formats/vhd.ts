// Virtual PC / Hyper-V VHD images, fixed and dynamic (Microsoft's "Virtual Hard Disk Image Format
// Specification"; QEMU calls the format vpc). A 512-byte footer ('conectix') ends the file (and a copy
// starts a dynamic one); a dynamic disk has a header ('cxsparse') pointing at its block allocation
// table: one big-endian sector number per block, 0xffffffff for a block never written. Each block is
// a sector bitmap followed by the block's data. Differencing disks are refused (their parent is not
// read here).
import { promises as fsp } from 'node:fs';
import { BulwarkError } from '../util/errors.js';
import { readExactly, readInto, type DiskImage } from './image.js';

const UNALLOCATED = 0xffffffff;
const MAX_SIZE = 2 ** 56;

export class VhdImage implements DiskImage {
  readonly format = 'vhd';
  dataBytesRead = 0;
  private readonly bitmaps = new Map<number, Buffer>();

  private constructor(
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    readonly size: number,
    /** Dynamic: block size, bitmap bytes before each block's data, and the table. Fixed: undefined. */
    private readonly dynamic: { blockSize: number; bitmapBytes: number; bat: Uint32Array } | undefined,
  ) {}

  static async open(file: string): Promise<VhdImage> {
    const fh = await fsp.open(file, 'r');
    try {
      const fileSize = Number((await fh.stat()).size);
      const bad = (why: string): BulwarkError => new BulwarkError('failed', `'${file}' is not a usable VHD image: ${why}`);
      if (fileSize < 512) throw bad('shorter than its footer');
      let footer = await readExactly(fh, 512, fileSize - 512, 'footer', file);
      // A dynamic disk's copy at the start serves when the end was cut (some tools write 511 bytes).
      if (footer.subarray(0, 8).toString('latin1') !== 'conectix') footer = await readExactly(fh, 512, 0, 'footer copy', file);
      if (footer.subarray(0, 8).toString('latin1') !== 'conectix') throw bad("no 'conectix' footer");
      const size = Number(footer.readBigUInt64BE(48));
      const type = footer.readUInt32BE(60);
      if (size > MAX_SIZE) throw bad(`virtual size ${size} bytes is absurd`);
      if (type === 2) {
        if (size > fileSize - 512) throw bad(`a fixed disk of ${size} bytes in a file of ${fileSize}`);
        return new VhdImage(file, fh, fileSize, size, undefined);
      }
      if (type === 4) throw bad('it is a differencing disk (its parent is not read here); merge it first (qemu-img convert, or Hyper-V\'s Merge)');
      if (type !== 3) throw bad(`disk type ${type}`);
      const headerAt = Number(footer.readBigUInt64BE(16));
      if (headerAt + 1024 > fileSize) throw bad(`its dynamic header at ${headerAt} is outside the file`);
      const dh = await readExactly(fh, 1024, headerAt, 'dynamic header', file);
      if (dh.subarray(0, 8).toString('latin1') !== 'cxsparse') throw bad("no 'cxsparse' dynamic header");
      const batAt = Number(dh.readBigUInt64BE(16));
      const entries = dh.readUInt32BE(28);
      const blockSize = dh.readUInt32BE(32);
      if (blockSize < 512 || blockSize > 256 * 1024 * 1024 || blockSize % 512 !== 0) throw bad(`block size ${blockSize}`);
      if (entries < Math.ceil(size / blockSize) || entries * 4 > 64 * 1024 * 1024) throw bad(`its allocation table has ${entries} entries for ${size} bytes`);
      if (batAt + entries * 4 > fileSize) throw bad(`its allocation table at ${batAt} runs past the end of the file`);
      const raw = await readExactly(fh, entries * 4, batAt, 'block allocation table', file);
      const bat = new Uint32Array(entries);
      for (let i = 0; i < entries; i++) bat[i] = raw.readUInt32BE(i * 4);
      const bitmapBytes = Math.ceil(blockSize / 512 / 8 / 512) * 512;
      return new VhdImage(file, fh, fileSize, size, { blockSize, bitmapBytes, bat });
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  private host(block: number): number | undefined {
    const d = this.dynamic!;
    const e = d.bat[block];
    if (e === undefined || e === UNALLOCATED) return undefined;
    const at = e * 512 + d.bitmapBytes;
    if (at + d.blockSize > this.fileSize) throw new BulwarkError('failed', `'${this.file}' is damaged: block ${block} points past the end of the file`);
    return at;
  }

  /** A block's sector bitmap: bit set (most significant first) for each sector written. */
  private async bitmap(block: number, at: number): Promise<Buffer> {
    let bm = this.bitmaps.get(block);
    if (!bm) {
      bm = await readExactly(this.fh, this.dynamic!.bitmapBytes, at - this.dynamic!.bitmapBytes, `sector bitmap of block ${block}`, this.file);
      this.bitmaps.set(block, bm);
      if (this.bitmaps.size > 1024) this.bitmaps.delete(this.bitmaps.keys().next().value!);
    }
    return bm;
  }

  /** Whether any sector of [from, to) within block `b` (allocated at `at`) was written. */
  private async written(b: number, at: number, from: number, to: number): Promise<boolean> {
    const bm = await this.bitmap(b, at);
    for (let s = Math.floor(from / 512); s * 512 < to; s++) if ((bm[s >> 3]! >> (7 - (s & 7))) & 1) return true;
    return false;
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    if (!this.dynamic) return offset < this.size;
    const bs = this.dynamic.blockSize;
    const end = Math.min(this.size, offset + length);
    for (let b = Math.floor(offset / bs); b * bs < end; b++) {
      const at = this.host(b);
      if (at !== undefined && (await this.written(b, at, Math.max(offset, b * bs) - b * bs, Math.min(end, (b + 1) * bs) - b * bs))) return true;
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const end = Math.min(this.size, offset + buf.length);
    if (!this.dynamic) {
      if (end > offset) {
        await readInto(this.fh, buf.subarray(0, end - offset), offset, 'data', this.file);
        this.dataBytesRead += end - offset;
      }
      return;
    }
    const bs = this.dynamic.blockSize;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const within = pos - b * bs;
      const n = Math.min(end - pos, bs - within);
      const at = this.host(b);
      if (at !== undefined && (await this.written(b, at, within, within + n))) {
        await readInto(this.fh, buf.subarray(pos - offset, pos - offset + n), at + within, `block ${b}`, this.file);
        this.dataBytesRead += n;
      }
      pos += n;
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
