// VMware VMDK images (VMware's "Virtual Disk Format 5.0"; the layouts QEMU's block/vmdk.c reads):
// a text descriptor lists extents, each FLAT (raw bytes), SPARSE (a hosted sparse extent: 'KDMV'
// header, grain directory → grain tables → grains, optionally deflate-compressed grains with markers
// as in streamOptimized) or ZERO. monolithicSparse and streamOptimized embed the descriptor in their
// one sparse extent; monolithicFlat and twoGbMaxExtent* keep it in a small text file beside the
// extents.
//
// A child disk of a snapshot chain (parentCID set) names its parent in parentFileNameHint (a local
// file, relative to the child's folder; of a Windows path only the file name, beside the child) and records the parent's CID: the parent must carry that CID
// still (a parent written since reads differently). A grain the child's sparse extent never wrote
// (grain table entry 0) reads the parent; a zeroed grain reads as zeros; the child's flat and zero
// extents are the child's alone. The chain may not loop and is at most MAX_CHAIN images deep.
import { promises as fsp } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { inflateSync } from 'node:zlib';
import { BulwarkError } from '../util/errors.js';
import { enterChain, resolveNear } from './chain.js';
import { readExactly, readInto, type DiskImage } from './image.js';

const SPARSE_MAGIC = 0x564d444b; // 'KDMV' little-endian
const GD_AT_END = 0xffffffffffffffffn;
const FLAG_ZERO_GRAIN = 1 << 2;
const FLAG_COMPRESSED = 1 << 16;
const FLAG_MARKERS = 1 << 17;
const MAX_SIZE = 2 ** 56;
const MAX_EXTENTS = 1024;

interface Extent {
  /** First guest byte of the extent, and its length. */
  start: number;
  length: number;
  hasData(offset: number, length: number): Promise<boolean>;
  read(buf: Buffer, offset: number): Promise<number>;
  close(): Promise<void>;
}

function bad(file: string, why: string): BulwarkError {
  return new BulwarkError('failed', `'${file}' is not a usable VMDK image: ${why}`);
}

class FlatExtent implements Extent {
  constructor(
    readonly start: number,
    readonly length: number,
    private readonly fh: fsp.FileHandle | undefined,
    private readonly fileOffset: number,
    private readonly fileSize: number,
  ) {}

  async hasData(): Promise<boolean> {
    return this.fh !== undefined;
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    if (!this.fh) return 0;
    const at = this.fileOffset + offset;
    const n = Math.max(0, Math.min(buf.length, this.fileSize - at));
    let done = 0;
    while (done < n) {
      const { bytesRead } = await this.fh.read(buf, done, n - done, at + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  async close(): Promise<void> {
    await this.fh?.close();
  }
}

class SparseExtent implements Extent {
  private readonly gtCache = new Map<number, Buffer>();
  /** A child disk's parent: grains never written here read from it (at guest offsets). */
  parent: DiskImage | undefined;

  private constructor(
    readonly start: number,
    readonly length: number,
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    private readonly grainBytes: number,
    private readonly gtes: number,
    private readonly gd: Uint32Array,
    private readonly flags: number,
  ) {}

  /** Opens a sparse extent; `embedded` gets the descriptor when the extent carries one. */
  static async open(file: string, fh: fsp.FileHandle, start: number, lengthFromDescriptor: number | undefined): Promise<{ extent: SparseExtent; descriptor?: string }> {
    const fileSize = Number((await fh.stat()).size);
    let h = await readExactly(fh, 512, 0, 'sparse header', file);
    if (h.readUInt32LE(0) !== SPARSE_MAGIC) throw bad(file, "no 'KDMV' sparse extent header");
    let descriptor: string | undefined;
    const descAt = Number(h.readBigUInt64LE(28));
    const descSectors = Number(h.readBigUInt64LE(36));
    if (descAt > 0 && descSectors > 0) {
      if (descSectors > 2048 || (descAt + descSectors) * 512 > fileSize) throw bad(file, 'its embedded descriptor is out of bounds');
      descriptor = (await readExactly(fh, descSectors * 512, descAt * 512, 'descriptor', file)).toString('utf8').replace(/\0+$/, '');
    }
    // streamOptimized writes the grain directory last: the real header is in the footer.
    if (h.readBigUInt64LE(56) === GD_AT_END) {
      if (fileSize < 1536) throw bad(file, 'its footer is missing');
      h = await readExactly(fh, 512, fileSize - 1024, 'footer header', file);
      if (h.readUInt32LE(0) !== SPARSE_MAGIC) throw bad(file, 'its footer holds no header (a stream that was cut short?)');
    }
    const flags = h.readUInt32LE(8);
    const capacity = Number(h.readBigUInt64LE(12));
    const grain = Number(h.readBigUInt64LE(20));
    const gtes = h.readUInt32LE(44);
    const gdAt = Number(h.readBigUInt64LE(56));
    if (capacity * 512 > MAX_SIZE) throw bad(file, `capacity of ${capacity} sectors is absurd`);
    if (grain < 1 || grain > 128 || grain & (grain - 1)) throw bad(file, `grain of ${grain} sectors`);
    if (gtes < 1 || gtes > 4096) throw bad(file, `${gtes} entries per grain table`);
    if ((h.readUInt16LE(77) !== 0 && h.readUInt16LE(77) !== 1) || (flags & FLAG_COMPRESSED && h.readUInt16LE(77) !== 1)) throw bad(file, `compression algorithm ${h.readUInt16LE(77)}`);
    const gdEntries = Math.ceil(capacity / (grain * gtes));
    if (gdEntries * 4 > 64 * 1024 * 1024 || gdAt * 512 + gdEntries * 4 > fileSize) throw bad(file, `its grain directory at sector ${gdAt} is outside the file`);
    const raw = await readExactly(fh, gdEntries * 4, gdAt * 512, 'grain directory', file);
    const gd = new Uint32Array(gdEntries);
    for (let i = 0; i < gdEntries; i++) gd[i] = raw.readUInt32LE(i * 4);
    const length = lengthFromDescriptor ?? capacity * 512;
    return { extent: new SparseExtent(start, length, file, fh, fileSize, grain * 512, gtes, gd, flags), ...(descriptor ? { descriptor } : {}) };
  }

  private damaged(why: string): BulwarkError {
    return new BulwarkError('failed', `'${this.file}' is damaged: ${why}`);
  }

  /** Grain table entry of grain `g`: 0 unallocated, 1 zeroed (with the zero-grain flag), else a sector. */
  private async gte(g: number): Promise<number> {
    const t = Math.floor(g / this.gtes);
    const gtSector = this.gd[t] ?? 0;
    if (gtSector === 0) return 0;
    let table = this.gtCache.get(gtSector);
    if (!table) {
      if (gtSector * 512 + this.gtes * 4 > this.fileSize) throw this.damaged(`a grain table pointer (sector ${gtSector}) is outside the file`);
      table = await readExactly(this.fh, this.gtes * 4, gtSector * 512, 'grain table', this.file);
      this.gtCache.set(gtSector, table);
      if (this.gtCache.size > 256) this.gtCache.delete(this.gtCache.keys().next().value!);
    }
    return table.readUInt32LE((g % this.gtes) * 4);
  }

  private isData(e: number): boolean {
    return e !== 0 && !(e === 1 && this.flags & FLAG_ZERO_GRAIN);
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    const end = Math.min(this.length, offset + length);
    for (let g = Math.floor(offset / this.grainBytes); g * this.grainBytes < end; g++) {
      const e = await this.gte(g);
      if (this.isData(e)) return true;
      if (e === 0 && this.parent) {
        const from = Math.max(offset, g * this.grainBytes);
        if (await this.parent.hasData(this.start + from, Math.min(end, (g + 1) * this.grainBytes) - from)) return true;
      }
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<number> {
    let counted = 0;
    const end = Math.min(this.length, offset + buf.length);
    for (let pos = offset; pos < end; ) {
      const g = Math.floor(pos / this.grainBytes);
      const within = pos - g * this.grainBytes;
      const e = await this.gte(g);
      if (!this.isData(e)) {
        const n = Math.min(end - pos, this.grainBytes - within);
        if (e === 0 && this.parent) {
          // Unallocated grains in a row are read from the parent in one go.
          let last = g;
          while ((last + 1) * this.grainBytes < end && (await this.gte(last + 1)) === 0) last++;
          const upto = Math.min(end, (last + 1) * this.grainBytes);
          await this.parent.read(buf.subarray(pos - offset, upto - offset), this.start + pos);
          pos = upto;
          continue;
        }
        pos += n;
        continue;
      }
      if (this.flags & FLAG_COMPRESSED) {
        const n = Math.min(end - pos, this.grainBytes - within);
        (await this.grain(e)).copy(buf, pos - offset, within, within + n);
        counted += n;
        pos += n;
        continue;
      }
      // Uncompressed grains that follow each other in the file are read in one go.
      let last = g;
      while ((last + 1) * this.grainBytes < end && (await this.gte(last + 1)) === e + ((last + 1 - g) * this.grainBytes) / 512) last++;
      const n = Math.min(end, (last + 1) * this.grainBytes) - pos;
      const at = e * 512 + within;
      if (at + n > this.fileSize) throw this.damaged(`a grain pointer (sector ${e}) is past the end of the file`);
      await readInto(this.fh, buf.subarray(pos - offset, pos - offset + n), at, `grains from sector ${e}`, this.file);
      counted += n;
      pos += n;
    }
    return counted;
  }

  private async grain(sector: number): Promise<Buffer> {
    const at = sector * 512;
    if (!(this.flags & FLAG_COMPRESSED)) {
      if (at + this.grainBytes > this.fileSize) throw this.damaged(`a grain pointer (sector ${sector}) is past the end of the file`);
      return readExactly(this.fh, this.grainBytes, at, 'grain', this.file);
    }
    // Compressed grain: with markers, a 12-byte marker (LBA, size) then zlib data; without, a size word first.
    const headLen = this.flags & FLAG_MARKERS ? 12 : 4;
    if (at + headLen > this.fileSize) throw this.damaged(`a grain pointer (sector ${sector}) is past the end of the file`);
    const head = await readExactly(this.fh, headLen, at, 'grain marker', this.file);
    const size = head.readUInt32LE(headLen - 4);
    if (size === 0 || size > this.grainBytes * 2 + 1024 || at + headLen + size > this.fileSize) throw this.damaged(`a compressed grain at sector ${sector} claims ${size} bytes`);
    const body = await readExactly(this.fh, size, at + headLen, 'compressed grain', this.file);
    let out: Buffer;
    try {
      out = inflateSync(body, { maxOutputLength: this.grainBytes });
    } catch (err) {
      throw this.damaged(`a compressed grain at sector ${sector} does not decompress (${(err as Error).message})`);
    }
    if (out.length > this.grainBytes) throw this.damaged(`a grain decompresses to ${out.length} bytes`);
    // The last grain of a disk may be short; the rest reads as zeros.
    return out.length === this.grainBytes ? out : Buffer.concat([out, Buffer.alloc(this.grainBytes - out.length)]);
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

interface ExtentLine {
  sectors: number;
  type: 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS';
  file?: string;
  offset: number;
}

/** The descriptor's create type, CID, parent CID and parent's name, and extent lines. */
export function parseDescriptor(text: string, file: string): { createType: string; cid: string; parentCid: string; parentHint?: string; extents: ExtentLine[] } {
  const createType = /^\s*createType\s*=\s*"([^"]*)"/m.exec(text)?.[1] ?? '';
  const cid = (/^\s*CID\s*=\s*([0-9a-fA-F]+)/m.exec(text)?.[1] ?? '').toLowerCase();
  const parentCid = (/^\s*parentCID\s*=\s*([0-9a-fA-F]+)/m.exec(text)?.[1] ?? 'ffffffff').toLowerCase();
  const parentHint = /^\s*parentFileNameHint\s*=\s*"([^"]*)"/m.exec(text)?.[1];
  const extents: ExtentLine[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(FLAT|SPARSE|ZERO|VMFS|VMFSSPARSE|SESPARSE|VMFSRDM|VMFSRAW)\b(?:\s+"([^"]+)")?(?:\s+(\d+))?/.exec(line);
    if (!m) continue;
    if (m[3] !== 'FLAT' && m[3] !== 'SPARSE' && m[3] !== 'ZERO' && m[3] !== 'VMFS') throw bad(file, `extents of type ${m[3]} are not read here`);
    if (m[3] !== 'ZERO' && !m[4]) throw bad(file, `an extent line names no file: ${line.trim()}`);
    extents.push({ sectors: Number(m[2]), type: m[3], ...(m[4] ? { file: m[4] } : {}), offset: Number(m[5] ?? 0) });
    if (extents.length > MAX_EXTENTS) throw bad(file, `more than ${MAX_EXTENTS} extents`);
  }
  return { createType, cid, parentCid, ...(parentHint ? { parentHint } : {}), extents };
}

/** Extent files sit beside the descriptor and may only be named as such: no paths of their own. */
function extentPath(descriptorFile: string, name: string): string {
  if (name.includes('\0') || basename(name) !== name) throw bad(descriptorFile, `extent file '${name}' is not a plain file name beside the descriptor`);
  return resolve(dirname(descriptorFile), name);
}

/** CIDs compare as numbers: 0000abcd and abcd are the same. */
function sameCid(a: string, b: string): boolean {
  return a !== '' && b !== '' && parseInt(a, 16) === parseInt(b, 16);
}

export class VmdkImage implements DiskImage {
  readonly format = 'vmdk';
  private ownData = 0;

  private constructor(
    readonly createType: string,
    private readonly extents: Extent[],
    readonly size: number,
    /** The descriptor's CID: what a child records as its parent's (parentCID). */
    readonly cid: string,
    /** A child disk's parent. */
    private readonly parent: VmdkImage | undefined,
  ) {}

  get dataBytesRead(): number {
    return this.ownData + (this.parent?.dataBytesRead ?? 0);
  }

  /** Opens `file` and, for a snapshot child, its parents. `seen`: the chain so far, to refuse loops. */
  static async open(file: string, seen: string[] = []): Promise<VmdkImage> {
    const real = await enterChain(file, seen);
    const opened: Extent[] = [];
    let parent: VmdkImage | undefined;
    const first = await fsp.open(real, 'r');
    // The first file becomes an extent's (closed with it) when it is a sparse extent.
    let firstOwned = false;
    try {
      const magic = await readExactly(first, 4, 0, 'magic', file);
      let descriptor: string;
      let embedded: SparseExtent | undefined;
      if (magic.readUInt32LE(0) === SPARSE_MAGIC) {
        const r = await SparseExtent.open(file, first, 0, undefined);
        opened.push(r.extent);
        firstOwned = true;
        if (!r.descriptor) throw bad(file, 'its sparse extent embeds no descriptor');
        opened.pop();
        descriptor = r.descriptor;
        embedded = r.extent;
      } else {
        const size = Number((await first.stat()).size);
        if (size > 1024 * 1024) throw bad(file, 'neither a sparse extent nor a descriptor file');
        descriptor = (await readExactly(first, size, 0, 'descriptor', file)).toString('utf8');
        if (!/^#\s*Disk DescriptorFile/m.test(descriptor)) throw bad(file, 'neither a sparse extent nor a descriptor file');
      }
      const d = parseDescriptor(descriptor, file);
      const child = d.parentCid !== 'ffffffff';
      if (child && !d.parentHint) throw bad(file, 'it is the child disk of a snapshot chain but does not name its parent (no parentFileNameHint)');
      if (d.extents.length === 0) throw bad(file, 'its descriptor lists no extents');
      let start = 0;
      for (const x of d.extents) {
        const length = x.sectors * 512;
        if (start + length > MAX_SIZE) throw bad(file, 'its extents add up to an absurd size');
        if (x.type === 'ZERO') opened.push(new FlatExtent(start, length, undefined, 0, 0));
        else if (embedded && x.type === 'SPARSE' && opened.length === 0) {
          // An embedded descriptor's first sparse extent is the file itself, whatever it is called now.
          opened.push(Object.assign(embedded, { start, length }));
          embedded = undefined;
        } else {
          const path = extentPath(file, x.file!);
          const fh = await fsp.open(path, 'r').catch((err: unknown) => {
            throw new BulwarkError('not-found', `extent '${path}' of '${file}' cannot be opened: ${(err as Error).message}`, { cause: err });
          });
          try {
            if (x.type === 'SPARSE') opened.push((await SparseExtent.open(path, fh, start, length)).extent);
            else opened.push(new FlatExtent(start, length, fh, x.offset * 512, Number((await fh.stat()).size)));
          } catch (err) {
            await fh.close();
            throw err;
          }
        }
        start += length;
      }
      if (embedded) throw bad(file, 'its descriptor does not list its own sparse extent first');
      if (child) {
        // VMware on Windows may record the parent's absolute path: its file name beside the child serves.
        const hint = d.parentHint!;
        const path = /^[a-zA-Z]:[\\/]|\\/.test(hint) ? resolveNear(real, basename(hint.replace(/\\/g, '/'))) : resolveNear(real, hint);
        parent = await VmdkImage.open(path, [...seen, real]);
        if (!sameCid(parent.cid, d.parentCid)) {
          throw new BulwarkError('failed', `the parent '${path}' of '${file}' is not the disk it was made from (its CID is ${parent.cid || 'missing'}, not ${d.parentCid}): was it written to since?`);
        }
        for (const e of opened) if (e instanceof SparseExtent) e.parent = parent;
      }
      if (!firstOwned) await first.close();
      return new VmdkImage(d.createType, opened, start, d.cid, parent);
    } catch (err) {
      await parent?.close().catch(() => undefined);
      for (const e of opened) await e.close().catch(() => undefined);
      await first.close().catch(() => undefined);
      throw err;
    }
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    const end = offset + length;
    for (const e of this.extents) {
      if (e.start + e.length <= offset || e.start >= end) continue;
      const from = Math.max(offset, e.start);
      if (await e.hasData(from - e.start, Math.min(end, e.start + e.length) - from)) return true;
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const end = Math.min(this.size, offset + buf.length);
    for (const e of this.extents) {
      if (e.start + e.length <= offset || e.start >= end) continue;
      const from = Math.max(offset, e.start);
      const to = Math.min(end, e.start + e.length);
      this.ownData += await e.read(buf.subarray(from - offset, to - offset), from - e.start);
    }
  }

  async close(): Promise<void> {
    await this.parent?.close().catch(() => undefined);
    for (const e of this.extents) await e.close().catch(() => undefined);
  }
}
