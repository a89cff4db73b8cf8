// Virtual PC / Hyper-V VHD images, fixed, dynamic and differencing (Microsoft's "Virtual Hard Disk
// Image Format Specification"; QEMU calls the format vpc). A 512-byte footer ('conectix') ends the
// file (and a copy starts a dynamic one); a dynamic disk has a header ('cxsparse') pointing at its
// block allocation table: one big-endian sector number per block, 0xffffffff for a block never
// written. Each block is a sector bitmap followed by the block's data.
//
// A differencing disk (type 4) is a dynamic disk over a parent VHD (fixed, dynamic or differencing):
// its dynamic header names the parent's unique id and where to find it (parent locators: a relative
// Windows path 'W2ru', an absolute one 'W2ku' of which only the file name beside the child is used,
// a Mac file URL 'MacX', and the parent's own name). A block never written, and a sector of an
// allocated block whose bitmap bit is clear, read the parent. The parent must carry the unique id
// the child was made from; the chain may not loop and is at most MAX_CHAIN images deep.
import { promises as fsp } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BulwarkError } from '../util/errors.js';
import { enterChain, resolveNear } from './chain.js';
import { readExactly, readInto, type DiskImage } from './image.js';

const UNALLOCATED = 0xffffffff;
const MAX_SIZE = 2 ** 56;
const MAX_LOCATOR_BYTES = 64 * 1024;

/** Where a differencing disk's parent may be, in the order they are tried (each local to the child). */
function parentCandidates(real: string, dh: Buffer, locators: { code: string; data: Buffer }[]): string[] {
  const out: string[] = [];
  const beside = (name: string): void => {
    const base = basename(name.replace(/\\/g, '/'));
    if (base && base !== '.' && base !== '..' && !base.includes('\0')) out.push(resolve(dirname(real), base));
  };
  for (const code of ['W2ru', 'W2ku', 'MacX']) {
    for (const l of locators) {
      if (l.code !== code) continue;
      if (code === 'MacX') {
        const url = l.data.toString('utf8').replace(/\0+$/, '');
        try {
          out.push(url.startsWith('file:') ? fileURLToPath(url) : resolveNear(real, url));
          beside(decodeURIComponent(url.replace(/^.*\//, '')));
        } catch {
          // not a local file URL: the other locators may serve
        }
        continue;
      }
      const path = l.data.toString('utf16le').replace(/\0+$/, '').replace(/\\/g, '/');
      if (!path) continue;
      if (code === 'W2ru') out.push(resolveNear(real, path.replace(/^[a-zA-Z]:/, '')));
      else beside(path);
    }
  }
  // The parent's own name (UTF-16BE), beside the child, last.
  const name = Buffer.from(dh.subarray(64, 64 + 512)).swap16().toString('utf16le').replace(/\0.*$/s, '');
  if (name) beside(name);
  for (const p of out) if (p.includes('\0')) throw new BulwarkError('failed', `'${real}' names a parent with a NUL byte`);
  return [...new Set(out)];
}

async function exists(path: string): Promise<boolean> {
  return fsp.stat(path).then(
    (s) => s.isFile() || s.isBlockDevice(),
    () => false,
  );
}

function uuidText(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class VhdImage implements DiskImage {
  readonly format = 'vhd';
  private ownData = 0;
  private readonly bitmaps = new Map<number, Buffer>();

  private constructor(
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    readonly size: number,
    /** The footer's unique id: what a differencing child records as its parent's. */
    readonly uniqueId: Buffer,
    /** Dynamic: block size, bitmap bytes before each block's data, and the table. Fixed: undefined. */
    private readonly dynamic: { blockSize: number; bitmapBytes: number; bat: Uint32Array } | undefined,
    /** A differencing disk's parent. */
    private readonly parent: VhdImage | undefined,
  ) {}

  get dataBytesRead(): number {
    return this.ownData + (this.parent?.dataBytesRead ?? 0);
  }

  /** Opens `file` and, for a differencing disk, its parents. `seen`: the chain so far, to refuse loops. */
  static async open(file: string, seen: string[] = []): Promise<VhdImage> {
    const real = await enterChain(file, seen);
    const fh = await fsp.open(real, 'r');
    let parent: VhdImage | undefined;
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
      const uniqueId = Buffer.from(footer.subarray(68, 84));
      if (size > MAX_SIZE) throw bad(`virtual size ${size} bytes is absurd`);
      if (type === 2) {
        if (size > fileSize - 512) throw bad(`a fixed disk of ${size} bytes in a file of ${fileSize}`);
        return new VhdImage(file, fh, fileSize, size, uniqueId, undefined, undefined);
      }
      if (type !== 3 && type !== 4) throw bad(`disk type ${type}`);
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
      if (type === 4) parent = await VhdImage.openParent(file, real, fh, fileSize, dh, seen);
      return new VhdImage(file, fh, fileSize, size, uniqueId, { blockSize, bitmapBytes, bat }, parent);
    } catch (err) {
      await parent?.close().catch(() => undefined);
      await fh.close();
      throw err;
    }
  }

  /** A differencing disk's parent: found by its locators, and checked to be the disk the child was made from. */
  private static async openParent(file: string, real: string, fh: fsp.FileHandle, fileSize: number, dh: Buffer, seen: string[]): Promise<VhdImage> {
    const bad = (why: string): BulwarkError => new BulwarkError('failed', `'${file}' is not a usable VHD image: ${why}`);
    const parentId = dh.subarray(40, 56);
    const locators: { code: string; data: Buffer }[] = [];
    for (let i = 0; i < 8; i++) {
      const e = dh.subarray(576 + i * 24, 576 + (i + 1) * 24);
      const code = e.subarray(0, 4).toString('latin1');
      const length = e.readUInt32BE(8);
      const at = Number(e.readBigUInt64BE(16));
      if (e.readUInt32BE(0) === 0 || length === 0) continue;
      if (!['W2ru', 'W2ku', 'MacX'].includes(code)) continue;
      if (length > MAX_LOCATOR_BYTES || at + length > fileSize) throw bad(`its parent locator '${code}' is out of bounds`);
      locators.push({ code, data: await readExactly(fh, length, at, `parent locator '${code}'`, file) });
    }
    const candidates = parentCandidates(real, dh, locators);
    if (candidates.length === 0) throw bad(`it is a differencing disk that names no parent (parent id ${uuidText(parentId)})`);
    let path = candidates[0]!;
    for (const c of candidates) {
      if (await exists(c)) {
        path = c;
        break;
      }
    }
    const parent = await VhdImage.open(path, [...seen, real]);
    if (!parent.uniqueId.equals(parentId)) {
      await parent.close().catch(() => undefined);
      throw new BulwarkError('failed', `the parent '${path}' of '${file}' is not the disk it was made from (its id differs): was it replaced or modified?`);
    }
    return parent;
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

  /** Whether any sector of [from, to) within block `b` (allocated at `at`) was written, and whether any was not. */
  private async written(b: number, at: number, from: number, to: number): Promise<{ some: boolean; all: boolean }> {
    const bm = await this.bitmap(b, at);
    let some = false;
    let all = true;
    for (let s = Math.floor(from / 512); s * 512 < to; s++) {
      if ((bm[s >> 3]! >> (7 - (s & 7))) & 1) some = true;
      else all = false;
    }
    return { some, all };
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    if (!this.dynamic) return offset < this.size;
    const bs = this.dynamic.blockSize;
    const end = Math.min(this.size, offset + length);
    for (let b = Math.floor(offset / bs); b * bs < end; b++) {
      const from = Math.max(offset, b * bs);
      const to = Math.min(end, (b + 1) * bs);
      const at = this.host(b);
      if (at === undefined) {
        if (this.parent && (await this.parent.hasData(from, to - from))) return true;
        continue;
      }
      const w = await this.written(b, at, from - b * bs, to - b * bs);
      if (w.some) return true;
      if (this.parent && !w.all && (await this.parent.hasData(from, to - from))) return true;
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const end = Math.min(this.size, offset + buf.length);
    if (!this.dynamic) {
      if (end > offset) {
        await readInto(this.fh, buf.subarray(0, end - offset), offset, 'data', this.file);
        this.ownData += end - offset;
      }
      return;
    }
    const bs = this.dynamic.blockSize;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const within = pos - b * bs;
      const n = Math.min(end - pos, bs - within);
      const out = buf.subarray(pos - offset, pos - offset + n);
      const at = this.host(b);
      if (at === undefined) {
        await this.parent?.read(out, pos);
      } else if (!this.parent) {
        if ((await this.written(b, at, within, within + n)).some) {
          await readInto(this.fh, out, at + within, `block ${b}`, this.file);
          this.ownData += n;
        }
      } else {
        // Runs of sectors written here are read from this file, the others from the parent.
        const bm = await this.bitmap(b, at);
        const bit = (x: number): number => {
          const s = Math.floor(x / 512);
          return (bm[s >> 3]! >> (7 - (s & 7))) & 1;
        };
        for (let x = within; x < within + n; ) {
          const mine = bit(x);
          let y = Math.min(within + n, (Math.floor(x / 512) + 1) * 512);
          while (y < within + n && bit(y) === mine) y = Math.min(within + n, y + 512);
          const part = out.subarray(x - within, y - within);
          if (mine) {
            await readInto(this.fh, part, at + x, `block ${b}`, this.file);
            this.ownData += part.length;
          } else await this.parent.read(part, b * bs + x);
          x = y;
        }
      }
      pos += n;
    }
  }

  async close(): Promise<void> {
    await this.parent?.close().catch(() => undefined);
    await this.fh.close();
  }
}
