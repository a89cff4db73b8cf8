// Hyper-V VHDX images, fixed, dynamic and differencing ([MS-VHDX]; QEMU's block/vhdx.c reads the same
// layout). A 1 MiB header section: the file identifier 'vhdxfile', two headers ('head', at 64 and
// 128 KiB, the valid one with the higher sequence number wins) and two copies of the region table
// ('regi', at 192 and 256 KiB) locating the block allocation table (BAT) and the metadata region.
// Metadata items give the block size, the virtual size, the sector sizes and, for a differencing disk,
// the parent locator. The BAT holds one 64-bit entry per payload block (state in the low 3 bits, file
// offset in MiB from bit 20), with one sector bitmap entry after every `chunk ratio` payload entries;
// a differencing disk's partially present blocks say per logical sector (bit set: this file) whether
// a sector is read here or from the parent. Checksums are CRC-32C; little-endian throughout.
//
// A file whose header names a log (LogGuid non-zero) was not closed cleanly and is refused: its
// metadata and data are only consistent once the log is replayed, which is not done here.
import { promises as fsp } from 'node:fs';
import { BulwarkError } from '../util/errors.js';
import { enterChain, resolveNear } from './chain.js';
import { crc32c } from './crc32c.js';
import { readExactly, readInto, type DiskImage } from './image.js';

const KiB = 1024;
const MiB = 1024 * 1024;
const MAX_SIZE = 64 * 1024 * MiB * 1024; // 64 TiB, the spec's limit
const MAX_BAT_BYTES = 64 * MiB;
const MAX_METADATA_ITEM = MiB;
const BITMAP_CACHE = 4096;

/** Payload block states (sector bitmap blocks use NOT_PRESENT and PRESENT = 6). */
const NOT_PRESENT = 0;
const UNDEFINED = 1;
const ZERO = 2;
const UNMAPPED = 3;
const FULLY_PRESENT = 6;
const PARTIALLY_PRESENT = 7;

/** A GUID as Windows writes it: the first three fields little-endian. */
export function guidBytes(guid: string): Buffer {
  const hex = guid.replace(/[{}-]/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`not a GUID: ${guid}`);
  const b = Buffer.from(hex, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

/** The text form (upper case, no braces) of the 16 GUID bytes at `b[at]`. */
export function guidString(b: Buffer, at = 0): string {
  const g = Buffer.from(b.subarray(at, at + 16));
  g.subarray(0, 4).reverse();
  g.subarray(4, 6).reverse();
  g.subarray(6, 8).reverse();
  const h = g.toString('hex').toUpperCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const VHDX_GUIDS = {
  batRegion: '2DC27766-F623-4200-9D64-115E9BFD4A08',
  metadataRegion: '8B7CA206-4790-4B9A-B8FE-575F050F886E',
  fileParameters: 'CAA16737-FA36-4D43-B3B6-33F0AA44E76B',
  virtualDiskSize: '2FA54224-CD1B-4876-B211-5DBED83BF4B8',
  page83: 'BECA12AB-B2E6-4523-93EF-C309E000C746',
  logicalSectorSize: '8141BF1D-A96F-4709-BA47-F233A8FAAB5F',
  physicalSectorSize: 'CDA348C7-445D-4471-9CC9-E9885251C556',
  parentLocator: 'A8D35F2D-B30B-454D-ABF7-D3D84834AB0C',
  vhdxParentLocatorType: 'B04AEFB7-D19E-4A81-B789-25B8E9445913',
} as const;

const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

interface Header {
  sequence: bigint;
  fileWriteGuid: string;
  dataWriteGuid: string;
  logGuid: string;
  version: number;
}

interface Geometry {
  size: number;
  blockSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  leaveBlockAllocated: boolean;
  hasParent: boolean;
  page83: string | undefined;
  parentLocator: Map<string, string> | undefined;
}

function parseHeader(b: Buffer): Header | undefined {
  if (b.subarray(0, 4).toString('latin1') !== 'head') return undefined;
  const sum = b.readUInt32LE(4);
  const copy = Buffer.from(b);
  copy.writeUInt32LE(0, 4);
  if (crc32c(copy) !== sum) return undefined;
  return {
    sequence: b.readBigUInt64LE(8),
    fileWriteGuid: guidString(b, 16),
    dataWriteGuid: guidString(b, 32),
    logGuid: guidString(b, 48),
    version: b.readUInt16LE(66),
  };
}

/** The region table's entries by GUID, or a reason it is unusable. */
function parseRegionTable(b: Buffer): Map<string, { offset: number; length: number; required: boolean }> | string {
  if (b.subarray(0, 4).toString('latin1') !== 'regi') return "no 'regi' signature";
  const sum = b.readUInt32LE(4);
  const copy = Buffer.from(b);
  copy.writeUInt32LE(0, 4);
  if (crc32c(copy) !== sum) return 'bad checksum';
  const count = b.readUInt32LE(8);
  if (count > 2047) return `${count} entries (at most 2047)`;
  const out = new Map<string, { offset: number; length: number; required: boolean }>();
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    const guid = guidString(b, at);
    if (out.has(guid)) return `region ${guid} twice`;
    out.set(guid, { offset: Number(b.readBigUInt64LE(at + 16)), length: b.readUInt32LE(at + 24), required: (b.readUInt32LE(at + 28) & 1) !== 0 });
  }
  return out;
}

export class VhdxImage implements DiskImage {
  readonly format = 'vhdx';
  private ownData = 0;
  private readonly chunkRatio: number;
  private readonly sectorsPerBlock: number;
  /** Per payload block: its slice of the sector bitmap (bit set, least significant first: sector here). */
  private readonly bitmaps = new Map<number, Buffer>();

  private constructor(
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    readonly header: Header,
    readonly geometry: Geometry,
    private readonly bat: Buffer,
    private readonly parent: VhdxImage | undefined,
  ) {
    this.chunkRatio = (2 ** 23 * geometry.logicalSectorSize) / geometry.blockSize;
    this.sectorsPerBlock = geometry.blockSize / geometry.logicalSectorSize;
  }

  get size(): number {
    return this.geometry.size;
  }

  get dataBytesRead(): number {
    return this.ownData + (this.parent?.dataBytesRead ?? 0);
  }

  /** Opens `file` and, for a differencing disk, its parents. `seen`: the chain so far, to refuse loops. */
  static async open(file: string, seen: string[] = []): Promise<VhdxImage> {
    const real = await enterChain(file, seen);
    const fh = await fsp.open(real, 'r');
    try {
      const fileSize = Number((await fh.stat()).size);
      const bad = (why: string): BulwarkError => new BulwarkError('failed', `'${file}' is not a usable VHDX image: ${why}`);
      if (fileSize < MiB) throw bad(`${fileSize} bytes is shorter than its 1 MiB header section`);
      const head = await readExactly(fh, 320 * KiB, 0, 'header section', file);
      if (head.subarray(0, 8).toString('latin1') !== 'vhdxfile') throw bad("no 'vhdxfile' identifier");
      const headers = [parseHeader(head.subarray(64 * KiB, 68 * KiB)), parseHeader(head.subarray(128 * KiB, 132 * KiB))].filter((h): h is Header => h !== undefined);
      if (headers.length === 0) throw bad("neither of its two headers is valid (no 'head' signature or a bad checksum)");
      const header = headers.reduce((a, b) => (b.sequence > a.sequence ? b : a));
      if (header.version !== 1) throw bad(`header version ${header.version} (1 is known)`);
      if (header.logGuid !== ZERO_GUID) {
        throw new BulwarkError('failed', `'${file}' has an unreplayed log (Hyper-V did not close it cleanly); open it once in Hyper-V or run qemu-img check -r all on a copy`);
      }
      let regions = parseRegionTable(head.subarray(192 * KiB, 256 * KiB));
      if (typeof regions === 'string') {
        const second = parseRegionTable(head.subarray(256 * KiB, 320 * KiB));
        if (typeof second === 'string') throw bad(`neither copy of its region table is valid (${regions}; ${second})`);
        regions = second;
      }
      for (const [guid, r] of regions) {
        if (guid !== VHDX_GUIDS.batRegion && guid !== VHDX_GUIDS.metadataRegion && r.required) throw bad(`it requires region ${guid}, which is not known here`);
        if (r.offset < MiB || r.offset % MiB !== 0 || r.length === 0 || r.length % MiB !== 0 || r.offset + r.length > fileSize) {
          throw bad(`its region ${guid} (${r.length} bytes at offset ${r.offset}) is misaligned or outside the file of ${fileSize} bytes`);
        }
      }
      const batRegion = regions.get(VHDX_GUIDS.batRegion);
      const metaRegion = regions.get(VHDX_GUIDS.metadataRegion);
      if (!batRegion || !metaRegion) throw bad(`its region table has no ${batRegion ? 'metadata region' : 'block allocation table'}`);

      const geometry = await readMetadata(fh, metaRegion, file, bad);
      const { size, blockSize, logicalSectorSize } = geometry;
      const chunkRatio = (2 ** 23 * logicalSectorSize) / blockSize;
      const blocks = Math.ceil(size / blockSize);
      const chunks = Math.ceil(blocks / chunkRatio);
      const entries = geometry.hasParent ? chunks * (chunkRatio + 1) : blocks === 0 ? 0 : blocks + Math.floor((blocks - 1) / chunkRatio);
      if (entries * 8 > MAX_BAT_BYTES) throw bad(`its block allocation table of ${entries} entries is over ${MAX_BAT_BYTES} bytes`);
      if (entries * 8 > batRegion.length) throw bad(`its block allocation table region of ${batRegion.length} bytes is too small for ${entries} entries`);
      const bat = await readExactly(fh, entries * 8, batRegion.offset, 'block allocation table', file);

      let parent: VhdxImage | undefined;
      if (geometry.hasParent) parent = await openParent(file, real, geometry.parentLocator!, [...seen, real]);
      return new VhdxImage(file, fh, fileSize, header, geometry, bat, parent);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  private damaged(why: string): BulwarkError {
    return new BulwarkError('failed', `'${this.file}' is damaged: ${why}`);
  }

  /** BAT entry `i`: state and file offset in bytes. */
  private entryAt(i: number): { state: number; at: number } {
    const lo = this.bat.readUInt32LE(i * 8);
    const hi = this.bat.readUInt32LE(i * 8 + 4);
    return { state: lo & 7, at: ((lo >>> 20) + hi * 4096) * MiB };
  }

  /** Payload block `b`'s state and (for present blocks) its file offset, checked against the file. */
  private block(b: number): { state: number; at: number } {
    const e = this.entryAt(b + Math.floor(b / this.chunkRatio));
    switch (e.state) {
      case NOT_PRESENT:
      case UNDEFINED:
      case ZERO:
      case UNMAPPED:
        return e;
      case FULLY_PRESENT:
      case PARTIALLY_PRESENT: {
        if (e.state === PARTIALLY_PRESENT && !this.parent) throw this.damaged(`block ${b} is partially present in a disk without a parent`);
        const len = Math.min(this.geometry.blockSize, this.size - b * this.geometry.blockSize);
        if (e.at < MiB || e.at + len > this.fileSize) throw this.damaged(`block ${b} points past the end of the file (offset ${e.at}, file of ${this.fileSize} bytes)`);
        return e;
      }
      default:
        throw this.damaged(`block ${b} has state ${e.state}, which is not a payload block state`);
    }
  }

  /** The sector bitmap bits of payload block `b` (one bit per logical sector). */
  private async bitmap(b: number): Promise<Buffer> {
    let bm = this.bitmaps.get(b);
    if (bm) return bm;
    const chunk = Math.floor(b / this.chunkRatio);
    const e = this.entryAt(chunk * (this.chunkRatio + 1) + this.chunkRatio);
    if (e.state !== FULLY_PRESENT) throw this.damaged(`block ${b} is partially present but its sector bitmap block is not (state ${e.state})`);
    if (e.at < MiB || e.at + MiB > this.fileSize) throw this.damaged(`the sector bitmap of block ${b} points past the end of the file (offset ${e.at})`);
    const bytes = this.sectorsPerBlock / 8;
    bm = await readExactly(this.fh, bytes, e.at + (b % this.chunkRatio) * bytes, `sector bitmap of block ${b}`, this.file);
    this.bitmaps.set(b, bm);
    if (this.bitmaps.size > BITMAP_CACHE) this.bitmaps.delete(this.bitmaps.keys().next().value!);
    return bm;
  }

  /**
   * Runs of sectors within block `b` for the byte range [from, to) of the block: each run either
   * in this file (`here`) or not.
   */
  private async runs(b: number, from: number, to: number): Promise<{ from: number; to: number; here: boolean }[]> {
    const bm = await this.bitmap(b);
    const lss = this.geometry.logicalSectorSize;
    const out: { from: number; to: number; here: boolean }[] = [];
    for (let s = Math.floor(from / lss); s * lss < to; s++) {
      const here = ((bm[s >> 3]! >> (s & 7)) & 1) === 1;
      const a = Math.max(from, s * lss);
      const z = Math.min(to, (s + 1) * lss);
      const last = out[out.length - 1];
      if (last && last.here === here) last.to = z;
      else out.push({ from: a, to: z, here });
    }
    return out;
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    const bs = this.geometry.blockSize;
    const end = Math.min(this.size, offset + length);
    for (let b = Math.floor(offset / bs); b * bs < end; b++) {
      const from = Math.max(offset, b * bs);
      const to = Math.min(end, (b + 1) * bs);
      const { state } = this.block(b);
      if (state === FULLY_PRESENT) return true;
      if (state === NOT_PRESENT && this.parent && (await this.parent.hasData(from, to - from))) return true;
      if (state === PARTIALLY_PRESENT) {
        for (const r of await this.runs(b, from - b * bs, to - b * bs)) {
          if (r.here) return true;
          if (await this.parent!.hasData(b * bs + r.from, r.to - r.from)) return true;
        }
      }
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const bs = this.geometry.blockSize;
    const end = Math.min(this.size, offset + buf.length);
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / bs);
      const within = pos - b * bs;
      let upto = Math.min(end, (b + 1) * bs);
      const { state, at } = this.block(b);
      if (state === FULLY_PRESENT) {
        // Blocks whose data follow each other in the file are read in one go.
        let last = b;
        while ((last + 1) * bs < end) {
          const next = this.block(last + 1);
          if (next.state !== FULLY_PRESENT || next.at !== at + (last + 1 - b) * bs) break;
          last++;
        }
        upto = Math.min(end, (last + 1) * bs);
        await readInto(this.fh, buf.subarray(pos - offset, upto - offset), at + within, `block ${b}`, this.file);
        this.ownData += upto - pos;
      } else if (state === PARTIALLY_PRESENT) {
        for (const r of await this.runs(b, within, upto - b * bs)) {
          const part = buf.subarray(b * bs + r.from - offset, b * bs + r.to - offset);
          if (r.here) {
            await readInto(this.fh, part, at + r.from, `block ${b}`, this.file);
            this.ownData += part.length;
          } else await this.parent!.read(part, b * bs + r.from);
        }
      } else if (state === NOT_PRESENT && this.parent) {
        await this.parent.read(buf.subarray(pos - offset, upto - offset), pos);
      }
      pos = upto;
    }
  }

  async close(): Promise<void> {
    await this.parent?.close().catch(() => undefined);
    await this.fh.close();
  }
}

async function readMetadata(
  fh: fsp.FileHandle,
  region: { offset: number; length: number },
  file: string,
  bad: (why: string) => BulwarkError,
): Promise<Geometry> {
  const table = await readExactly(fh, 64 * KiB, region.offset, 'metadata table', file);
  if (table.subarray(0, 8).toString('latin1') !== 'metadata') throw bad("no 'metadata' table signature");
  const count = table.readUInt16LE(10);
  if (count > 2047) throw bad(`its metadata table has ${count} entries (at most 2047)`);
  const items = new Map<string, Buffer>();
  const known: string[] = [
    VHDX_GUIDS.fileParameters,
    VHDX_GUIDS.virtualDiskSize,
    VHDX_GUIDS.page83,
    VHDX_GUIDS.logicalSectorSize,
    VHDX_GUIDS.physicalSectorSize,
    VHDX_GUIDS.parentLocator,
  ];
  for (let i = 0; i < count; i++) {
    const at = 32 + i * 32;
    const guid = guidString(table, at);
    const offset = table.readUInt32LE(at + 16);
    const length = table.readUInt32LE(at + 20);
    const flags = table.readUInt32LE(at + 24);
    const isUser = (flags & 1) !== 0;
    const required = (flags & 4) !== 0;
    if (!known.includes(guid) || isUser) {
      if (required) throw bad(`it requires metadata item ${guid}, which is not known here`);
      continue;
    }
    if (items.has(guid)) throw bad(`metadata item ${guid} twice`);
    if (length > MAX_METADATA_ITEM || (length > 0 && offset < 64 * KiB) || offset + length > region.length) throw bad(`its metadata item ${guid} (${length} bytes at ${offset}) is outside the metadata region`);
    items.set(guid, await readExactly(fh, length, region.offset + offset, `metadata item ${guid}`, file));
  }
  const item = (guid: string, name: string, min: number): Buffer => {
    const b = items.get(guid);
    if (!b) throw bad(`it has no ${name} metadata item`);
    if (b.length < min) throw bad(`its ${name} metadata item is ${b.length} bytes`);
    return b;
  };
  const fp = item(VHDX_GUIDS.fileParameters, 'file parameters', 8);
  const blockSize = fp.readUInt32LE(0);
  const flags = fp.readUInt32LE(4);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) throw bad(`block size ${blockSize} (a power of two from 1 MiB to 256 MiB)`);
  const logicalSectorSize = item(VHDX_GUIDS.logicalSectorSize, 'logical sector size', 4).readUInt32LE(0);
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) throw bad(`logical sector size ${logicalSectorSize} (512 or 4096)`);
  const pss = items.get(VHDX_GUIDS.physicalSectorSize);
  const physicalSectorSize = pss && pss.length >= 4 ? pss.readUInt32LE(0) : logicalSectorSize;
  if (physicalSectorSize !== 512 && physicalSectorSize !== 4096) throw bad(`physical sector size ${physicalSectorSize} (512 or 4096)`);
  const sizeBig = item(VHDX_GUIDS.virtualDiskSize, 'virtual disk size', 8).readBigUInt64LE(0);
  if (sizeBig > BigInt(MAX_SIZE)) throw bad(`virtual size ${sizeBig} bytes is absurd (at most 64 TiB)`);
  const size = Number(sizeBig);
  if (size % logicalSectorSize !== 0) throw bad(`virtual size ${size} is not a multiple of its ${logicalSectorSize}-byte sectors`);
  const p83 = items.get(VHDX_GUIDS.page83);
  const hasParent = (flags & 2) !== 0;
  let parentLocator: Map<string, string> | undefined;
  if (hasParent) parentLocator = parseParentLocator(item(VHDX_GUIDS.parentLocator, 'parent locator', 20), bad);
  return {
    size,
    blockSize,
    logicalSectorSize,
    physicalSectorSize,
    leaveBlockAllocated: (flags & 1) !== 0,
    hasParent,
    page83: p83 && p83.length >= 16 ? guidString(p83) : undefined,
    parentLocator,
  };
}

function parseParentLocator(b: Buffer, bad: (why: string) => BulwarkError): Map<string, string> {
  const type = guidString(b, 0);
  if (type !== VHDX_GUIDS.vhdxParentLocatorType) throw bad(`its parent locator is of type ${type}, not a VHDX parent`);
  const count = b.readUInt16LE(18);
  if (20 + count * 12 > b.length) throw bad(`its parent locator's ${count} entries run past the item`);
  const out = new Map<string, string>();
  const text = (offset: number, length: number): string => {
    if (offset + length > b.length || length % 2 !== 0) throw bad('a parent locator key or value is outside the item');
    return b.subarray(offset, offset + length).toString('utf16le');
  };
  for (let i = 0; i < count; i++) {
    const at = 20 + i * 12;
    const key = text(b.readUInt32LE(at), b.readUInt16LE(at + 8));
    const value = text(b.readUInt32LE(at + 4), b.readUInt16LE(at + 10));
    if (out.has(key)) throw bad(`its parent locator has '${key}' twice`);
    out.set(key, value);
  }
  return out;
}

/** A GUID's text as a parent locator or a header writes it, for comparison: upper case, no braces. */
function normalGuid(s: string): string {
  return s.trim().replace(/^\{|\}$/g, '').toUpperCase();
}

async function openParent(file: string, real: string, locator: Map<string, string>, seen: string[]): Promise<VhdxImage> {
  const linkage = locator.get('parent_linkage');
  if (!linkage) throw new BulwarkError('failed', `'${file}' is not a usable VHDX image: its parent locator has no parent_linkage`);
  const candidates: string[] = [];
  const rel = locator.get('relative_path');
  if (rel) {
    const plain = rel.replace(/\\/g, '/');
    if (!/^[a-z]:/i.test(plain) && !plain.startsWith('//')) candidates.push(resolveNear(real, plain));
  }
  for (const key of ['absolute_win32_path', 'volume_path']) {
    const abs = locator.get(key);
    const name = abs?.split(/[\\/]/).pop();
    if (name && name !== '.' && name !== '..') candidates.push(resolveNear(real, name));
  }
  if (candidates.length === 0) throw new BulwarkError('failed', `'${file}' is a differencing disk whose parent locator names no parent file`);
  let path: string | undefined;
  for (const c of candidates) {
    if (await fsp.stat(c).then((s) => s.isFile(), () => false)) {
      path = c;
      break;
    }
  }
  if (!path) {
    const named = [rel && `relative_path '${rel}'`, locator.get('absolute_win32_path') && `absolute_win32_path '${locator.get('absolute_win32_path')}'`].filter(Boolean).join(', ');
    throw new BulwarkError('not-found', `the parent of the differencing disk '${file}' (${named}) is not found; looked for ${[...new Set(candidates)].map((c) => `'${c}'`).join(', ')}`, {
      hint: 'put the parent .vhdx beside the child (or where its relative path points)',
    });
  }
  const parent = await VhdxImage.open(path, seen);
  const want = normalGuid(linkage);
  const also = locator.get('parent_linkage2');
  if (parent.header.dataWriteGuid !== want && (!also || parent.header.dataWriteGuid !== normalGuid(also))) {
    await parent.close().catch(() => undefined);
    throw new BulwarkError('failed', `the parent '${path}' of the differencing disk '${file}' is not the image it was made from: parent_linkage is {${want}} but the parent's DataWriteGuid is {${parent.header.dataWriteGuid}} (the parent was changed after the child was made, or it is another file)`);
  }
  return parent;
}
