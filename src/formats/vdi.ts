// VirtualBox VDI images, static and dynamic (VirtualBox's VBoxHDD format, version 1.1; the layout
// QEMU's block/vdi.c reads): a pre-header with signature 0xbeda107f, a header with the block map's and
// the data's offsets, and a map of one 32-bit entry per block: a block index, 0xffffffff for a block
// never written (zeros), 0xfffffffe for a block written as zeros. Little-endian throughout.
import { promises as fsp } from 'node:fs';
import { BulwarkError } from '../util/errors.js';
import { readExactly, readInto, type DiskImage } from './image.js';

const SIGNATURE = 0xbeda107f;
const UNALLOCATED = 0xffffffff;
const ZEROED = 0xfffffffe;
const MAX_SIZE = 2 ** 56;

export class VdiImage implements DiskImage {
  readonly format = 'vdi';
  dataBytesRead = 0;

  private constructor(
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    readonly size: number,
    private readonly blockSize: number,
    private readonly dataOffset: number,
    private readonly blockStride: number,
    private readonly extra: number,
    private readonly map: Uint32Array,
  ) {}

  static async open(file: string): Promise<VdiImage> {
    const fh = await fsp.open(file, 'r');
    try {
      const fileSize = Number((await fh.stat()).size);
      const bad = (why: string): BulwarkError => new BulwarkError('failed', `'${file}' is not a usable VDI image: ${why}`);
      const h = await readExactly(fh, 0x190, 0, 'header', file);
      if (h.readUInt32LE(0x40) !== SIGNATURE) throw bad('no VDI signature');
      const version = h.readUInt32LE(0x44);
      if (version >>> 16 !== 1) throw bad(`version ${version >>> 16}.${version & 0xffff} (1.x is known)`);
      const type = h.readUInt32LE(0x4c);
      if (type !== 1 && type !== 2) throw bad(type === 4 ? 'it is a differencing image (its parent is not read here)' : `image type ${type}`);
      const mapOffset = h.readUInt32LE(0x154);
      const dataOffset = h.readUInt32LE(0x158);
      if (h.readUInt32LE(0x168) !== 512) throw bad(`sector size ${h.readUInt32LE(0x168)}`);
      const size = Number(h.readBigUInt64LE(0x170));
      const blockSize = h.readUInt32LE(0x178);
      const extra = h.readUInt32LE(0x17c);
      const blocks = h.readUInt32LE(0x180);
      if (size > MAX_SIZE) throw bad(`virtual size ${size} bytes is absurd`);
      if (blockSize < 512 || blockSize > 64 * 1024 * 1024 || blockSize & (blockSize - 1)) throw bad(`block size ${blockSize}`);
      if (extra > 64 * 1024 * 1024) throw bad(`block extra data of ${extra} bytes`);
      if (blocks < Math.ceil(size / blockSize) || blocks * 4 > 64 * 1024 * 1024) throw bad(`its block map has ${blocks} entries for ${size} bytes`);
      if (mapOffset + blocks * 4 > fileSize) throw bad(`its block map at offset ${mapOffset} runs past the end of the file`);
      const raw = await readExactly(fh, blocks * 4, mapOffset, 'block map', file);
      const map = new Uint32Array(blocks);
      for (let i = 0; i < blocks; i++) map[i] = raw.readUInt32LE(i * 4);
      return new VdiImage(file, fh, fileSize, size, blockSize, dataOffset, blockSize + extra, extra, map);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  private host(block: number): number | undefined {
    const e = this.map[block];
    if (e === undefined || e === UNALLOCATED || e === ZEROED) return undefined;
    const at = this.dataOffset + e * this.blockStride + this.extra;
    if (at + this.blockSize > this.fileSize) throw new BulwarkError('failed', `'${this.file}' is damaged: block ${block} points past the end of the file`);
    return at;
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    const end = Math.min(this.size, offset + length);
    for (let b = Math.floor(offset / this.blockSize); b * this.blockSize < end; b++) if (this.host(b) !== undefined) return true;
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const end = Math.min(this.size, offset + buf.length);
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.blockSize);
      const within = pos - b * this.blockSize;
      const n = Math.min(end - pos, this.blockSize - within);
      const at = this.host(b);
      if (at !== undefined) {
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
