// Hyper-V VHDX images, fixed, dynamic and differencing ([MS-VHDX]; QEMU's block/vhdx.c reads the same
// layout). A 1 MiB header section: the file identifier 'vhdxfile', two headers ('head', at 64 and
// 128 KiB, the valid one with the higher sequence number wins) and two copies of the region table
// ('regi', at 192 and 256 KiB) locating the block allocation table (BAT) and the metadata region.
// Metadata items give the block size, the virtual size, the sector sizes and, for a differencing disk,
// the parent locator. The BAT holds one 64-bit entry per payload block (state in the low 3 bits, file
// offset in MiB from bit 20), with one sector bitmap entry after every `chunk ratio` payload entries;
// a differencing disk's partially present blocks say per logical sector (bit set: this file) whether
// a sector is read here or from the parent, and not-present blocks are the parent's; undefined, zero
// and unmapped blocks read as zeros (as QEMU reads them). The parent is found by the locator's
// relative_path, else by the file name of its absolute_win32_path (or volume_path) beside the child,
// and must carry the DataWriteGuid the child names (parent_linkage). Checksums are CRC-32C;
// little-endian throughout.
//
// A file whose header names a log (LogGuid non-zero) was not closed cleanly: its metadata and data are
// only consistent once the log's active sequence is replayed. That is done here in memory (the file
// is never written): the sectors the log writes or zeroes form an overlay consulted before the file.
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
const LOG_SECTOR = 4096;
const MAX_LOG_BYTES = 64 * MiB;
/** At most this many 4 KiB sectors written or zeroed by a log replayed in memory (1 GiB). */
const MAX_OVERLAY_SECTORS = 262144;
const ZERO_SECTOR = Buffer.alloc(LOG_SECTOR);

/** Payload block states (sector bitmap blocks use NOT_PRESENT and PRESENT = 6). */
const NOT_PRESENT = 0;
const UNDEFINED = 1;
const ZERO = 2;
const UNMAPPED = 3;
/** UNMAPPED in the 0.95 draft of the spec; QEMU reads it as zeros too, for images of that time. */
const UNMAPPED_V095 = 5;
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
  logGuidBytes: Buffer;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
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
    logGuidBytes: Buffer.from(b.subarray(48, 64)),
    logVersion: b.readUInt16LE(64),
    version: b.readUInt16LE(66),
    logLength: b.readUInt32LE(68),
    logOffset: Number(b.readBigUInt64LE(72)),
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
    private readonly host: Host,
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
      const host = new Host(fh, file, fileSize, header.logGuid === ZERO_GUID ? undefined : await replayLog(fh, fileSize, header, file));
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

      const geometry = await readMetadata(host, metaRegion, bad);
      const { size, blockSize, logicalSectorSize } = geometry;
      const chunkRatio = (2 ** 23 * logicalSectorSize) / blockSize;
      const blocks = Math.ceil(size / blockSize);
      const chunks = Math.ceil(blocks / chunkRatio);
      const entries = geometry.hasParent ? chunks * (chunkRatio + 1) : blocks === 0 ? 0 : blocks + Math.floor((blocks - 1) / chunkRatio);
      if (entries * 8 > MAX_BAT_BYTES) throw bad(`its block allocation table of ${entries} entries is over ${MAX_BAT_BYTES} bytes`);
      if (entries * 8 > batRegion.length) throw bad(`its block allocation table region of ${batRegion.length} bytes is too small for ${entries} entries`);
      const bat = await host.read(Buffer.alloc(entries * 8), batRegion.offset, 'block allocation table');

      let parent: VhdxImage | undefined;
      if (geometry.hasParent) parent = await openParent(file, real, geometry.parentLocator!, [...seen, real]);
      return new VhdxImage(file, host, header, geometry, bat, parent);
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
      case UNMAPPED_V095:
        return e;
      case FULLY_PRESENT:
      case PARTIALLY_PRESENT: {
        if (e.state === PARTIALLY_PRESENT && !this.parent) throw this.damaged(`block ${b} is partially present in a disk without a parent`);
        const len = Math.min(this.geometry.blockSize, this.size - b * this.geometry.blockSize);
        if (e.at < MiB || e.at + len > this.host.size) throw this.damaged(`block ${b} points past the end of the file (offset ${e.at}, file of ${this.host.size} bytes)`);
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
    if (e.at < MiB || e.at + MiB > this.host.size) throw this.damaged(`the sector bitmap of block ${b} points past the end of the file (offset ${e.at})`);
    const bytes = this.sectorsPerBlock / 8;
    bm = await this.host.read(Buffer.alloc(bytes), e.at + (b % this.chunkRatio) * bytes, `sector bitmap of block ${b}`);
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
        await this.host.read(buf.subarray(pos - offset, upto - offset), at + within, `block ${b}`);
        this.ownData += upto - pos;
      } else if (state === PARTIALLY_PRESENT) {
        for (const r of await this.runs(b, within, upto - b * bs)) {
          const part = buf.subarray(b * bs + r.from - offset, b * bs + r.to - offset);
          if (r.here) {
            await this.host.read(part, at + r.from, `block ${b}`);
            this.ownData += part.length;
          } else await this.parent!.read(part, b * bs + r.from);
        }
      } else if (state === NOT_PRESENT && this.parent) {
        // Runs of blocks the parent holds are read from it in one go.
        let last = b;
        while ((last + 1) * bs < end && this.block(last + 1).state === NOT_PRESENT) last++;
        upto = Math.min(end, (last + 1) * bs);
        await this.parent.read(buf.subarray(pos - offset, upto - offset), pos);
      }
      pos = upto;
    }
  }

  async close(): Promise<void> {
    await this.parent?.close().catch(() => undefined);
    await this.host.fh.close();
  }
}

async function readMetadata(host: Host, region: { offset: number; length: number }, bad: (why: string) => BulwarkError): Promise<Geometry> {
  const table = await host.read(Buffer.alloc(64 * KiB), region.offset, 'metadata table');
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
    items.set(guid, await host.read(Buffer.alloc(length), region.offset + offset, `metadata item ${guid}`));
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

/**
 * The file as the reader sees it: its bytes, and over them the sectors a replayed log writes (and
 * zeroes); the log may also extend the file (its LastFileOffset), past the real end reading as zeros.
 */
class Host {
  readonly size: number;

  constructor(
    readonly fh: fsp.FileHandle,
    private readonly file: string,
    private readonly realSize: number,
    private readonly log: { sectors: Map<number, Buffer>; size: number } | undefined,
  ) {
    this.size = Math.max(realSize, log?.size ?? 0);
  }

  /** Fills `out` with the bytes at `at`; returns it. */
  async read(out: Buffer, at: number, what: string): Promise<Buffer> {
    if (!this.log) {
      await readInto(this.fh, out, at, what, this.file);
      return out;
    }
    if (at + out.length > this.size) throw new BulwarkError('failed', `'${this.file}' is damaged: its ${what} at offset ${at} runs past the end of the file`);
    const inFile = Math.max(0, Math.min(out.length, this.realSize - at));
    if (inFile > 0) await readInto(this.fh, out.subarray(0, inFile), at, what, this.file);
    out.fill(0, inFile);
    const end = at + out.length;
    for (let s = Math.floor(at / LOG_SECTOR); s * LOG_SECTOR < end; s++) {
      const o = this.log.sectors.get(s);
      if (!o) continue;
      const from = Math.max(at, s * LOG_SECTOR);
      const to = Math.min(end, (s + 1) * LOG_SECTOR);
      o.copy(out, from - at, from - s * LOG_SECTOR, to - s * LOG_SECTOR);
    }
    return out;
  }
}

interface LogEntry {
  /** Index of its first 4 KiB sector in the log. */
  index: number;
  sectors: number;
  sequence: bigint;
  tail: number;
  flushedFileOffset: number;
  lastFileOffset: number;
  writes: ({ offset: number; data: Buffer } | { offset: number; zero: number })[];
}

/**
 * Replays the log in memory ([MS-VHDX] 2.3.3): finds the active sequence (valid entries with
 * consecutive sequence numbers, from the newest entry's tail to that entry) and returns the sectors it
 * writes, and the file's size after it. No valid sequence: nothing to replay.
 */
async function replayLog(fh: fsp.FileHandle, fileSize: number, header: Header, file: string): Promise<{ sectors: Map<number, Buffer>; size: number }> {
  const refuse = (why: string): BulwarkError =>
    new BulwarkError('failed', `'${file}' has an unreplayed log (Hyper-V did not close it cleanly) that cannot be replayed here (${why}); open it once in Hyper-V or run qemu-img check -r all on a copy`);
  const { logOffset, logLength } = header;
  if (header.logVersion !== 0) throw refuse(`log version ${header.logVersion}`);
  if (logLength === 0 || logLength % MiB !== 0 || logOffset < MiB || logOffset % MiB !== 0 || logOffset + logLength > fileSize) throw refuse(`its log of ${logLength} bytes at offset ${logOffset} is misaligned or outside the file`);
  if (logLength > MAX_LOG_BYTES) throw refuse(`its log of ${logLength} bytes is over ${MAX_LOG_BYTES}`);
  const log = await readExactly(fh, logLength, logOffset, 'log', file);
  const n = logLength / LOG_SECTOR;
  const sector = (i: number): Buffer => log.subarray((i % n) * LOG_SECTOR, ((i % n) + 1) * LOG_SECTOR);
  let budget = 4 * logLength;

  const parse = (i: number): LogEntry | undefined => {
    const h = sector(i);
    if (h.subarray(0, 4).toString('latin1') !== 'loge') return undefined;
    const length = h.readUInt32LE(8);
    if (length === 0 || length % LOG_SECTOR !== 0 || length > logLength) return undefined;
    const sequence = h.readBigUInt64LE(16);
    const count = h.readUInt32LE(24);
    if (sequence === 0n || !h.subarray(32, 48).equals(header.logGuidBytes)) return undefined;
    const sectors = length / LOG_SECTOR;
    const descSectors = Math.ceil((64 + count * 32) / LOG_SECTOR);
    if (descSectors > sectors) return undefined;
    // Entries overlap only in a damaged or hostile log: checksumming is bounded to a few passes over it.
    budget -= length;
    if (budget < 0) throw refuse('its log entries overlap one another over and over');
    let crc = crc32c(ZERO_SECTOR.subarray(0, 4), crc32c(h.subarray(0, 4)));
    crc = crc32c(h.subarray(8), crc);
    for (let k = 1; k < sectors; k++) crc = crc32c(sector(i + k), crc);
    if (crc !== h.readUInt32LE(4)) return undefined;
    const whole = Buffer.alloc(length);
    for (let k = 0; k < sectors; k++) sector(i + k).copy(whole, k * LOG_SECTOR);
    const writes: LogEntry['writes'] = [];
    let data = descSectors;
    for (let d = 0; d < count; d++) {
      const at = 64 + d * 32;
      const sig = whole.subarray(at, at + 4).toString('latin1');
      if (whole.readBigUInt64LE(at + 24) !== sequence) return undefined;
      const offset = Number(whole.readBigUInt64LE(at + 16));
      if (sig === 'zero') {
        writes.push({ offset, zero: Number(whole.readBigUInt64LE(at + 8)) });
      } else if (sig === 'desc') {
        if (data >= sectors) return undefined;
        const ds = whole.subarray(data * LOG_SECTOR, (data + 1) * LOG_SECTOR);
        if (ds.subarray(0, 4).toString('latin1') !== 'data' || BigInt(ds.readUInt32LE(4)) !== sequence >> 32n || BigInt(ds.readUInt32LE(4092)) !== (sequence & 0xffffffffn)) return undefined;
        const out = Buffer.alloc(LOG_SECTOR);
        whole.copy(out, 0, at + 8, at + 16); // leading bytes
        ds.copy(out, 8, 8, 4092);
        whole.copy(out, 4092, at + 4, at + 8); // trailing bytes
        writes.push({ offset, data: out });
        data++;
      } else return undefined;
    }
    return { index: i % n, sectors, sequence, tail: h.readUInt32LE(12), flushedFileOffset: Number(h.readBigUInt64LE(48)), lastFileOffset: Number(h.readBigUInt64LE(56)), writes };
  };

  const valid = new Map<number, LogEntry>();
  for (let i = 0; i < n; i++) {
    const e = parse(i);
    if (e) valid.set(i, e);
  }
  let active: LogEntry[] | undefined;
  for (const head of [...valid.values()].sort((a, b) => (b.sequence > a.sequence ? 1 : b.sequence < a.sequence ? -1 : 0))) {
    if (head.tail % LOG_SECTOR !== 0 || head.tail >= logLength) continue;
    const chain: LogEntry[] = [];
    let i = head.tail / LOG_SECTOR;
    for (let used = 0; used <= n; ) {
      const e = valid.get(i);
      if (!e || (chain.length > 0 && e.sequence !== chain[chain.length - 1]!.sequence + 1n)) break;
      chain.push(e);
      if (e === head) {
        active = chain;
        break;
      }
      used += e.sectors;
      i = (i + e.sectors) % n;
    }
    if (active) break;
  }
  const sectors = new Map<number, Buffer>();
  if (!active) return { sectors, size: fileSize };
  const head = active[active.length - 1]!;
  if (head.flushedFileOffset > fileSize) throw refuse(`the file is ${fileSize} bytes, shorter than the ${head.flushedFileOffset} the log says were flushed: it was cut short`);
  const size = Math.max(fileSize, head.lastFileOffset);
  if (size > MAX_SIZE * 2) throw refuse(`the log makes the file ${size} bytes`);
  for (const e of active) {
    for (const w of e.writes) {
      const length = 'data' in w ? LOG_SECTOR : w.zero;
      if (w.offset % LOG_SECTOR !== 0 || length % LOG_SECTOR !== 0 || w.offset < MiB || w.offset + length > size) throw refuse(`an entry writes ${length} bytes at offset ${w.offset}, outside the file's data`);
      if (sectors.size + length / LOG_SECTOR > MAX_OVERLAY_SECTORS) throw refuse(`it writes more than ${MAX_OVERLAY_SECTORS * LOG_SECTOR} bytes`);
      if ('data' in w) sectors.set(w.offset / LOG_SECTOR, w.data);
      else for (let k = 0; k < length / LOG_SECTOR; k++) sectors.set(w.offset / LOG_SECTOR + k, ZERO_SECTOR);
    }
  }
  return { sectors, size };
}
