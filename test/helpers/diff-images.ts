// Builders for differencing images qemu-img cannot write (tests of the format readers' backing chains):
// VHD dynamic and differencing disks written from scratch (footer, dynamic header, parent locators,
// allocation table, sector bitmaps), and VDI differencing images made by patching a dynamic VDI
// qemu-img wrote (image type, UUIDs, block map entries).
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { patchFile } from './patch.js';

const MiB = 1024 * 1024;

/** A parent locator: its platform code and the path as that platform writes it. */
export interface VhdLocator {
  code: 'W2ru' | 'W2ku' | 'MacX' | string;
  path: string;
}

export interface VhdSpec {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  blockSize?: number;
  /** The footer's unique id; random when omitted. */
  uniqueId?: Buffer;
  /** Makes a differencing disk (type 4) over the parent with this unique id. */
  parent?: { id: Buffer; name?: string; locators: VhdLocator[] };
  /** Guest writes (sector-aligned): each sector they touch is allocated in this file, bit set. */
  writes?: { offset: number; data: Buffer }[];
}

function vhdChecksum(b: Buffer, field: number): void {
  b.writeUInt32BE(0, field);
  let sum = 0;
  for (const x of b) sum = (sum + x) >>> 0;
  b.writeUInt32BE(~sum >>> 0, field);
}

/** The bytes of a locator's data as the platform stores them. */
function locatorData(l: VhdLocator): Buffer {
  return l.code === 'MacX' ? Buffer.from(l.path, 'utf8') : Buffer.from(l.path, 'utf16le');
}

/** Writes a dynamic (or, with `parent`, differencing) VHD; returns its unique id. */
export function writeVhd(file: string, spec: VhdSpec): Buffer {
  const blockSize = spec.blockSize ?? 2 * MiB;
  const uniqueId = spec.uniqueId ?? randomBytes(16);
  const entries = Math.ceil(spec.size / blockSize);
  const bitmapBytes = Math.ceil(blockSize / 512 / 8 / 512) * 512;
  // Sector contents by guest sector.
  const sectors = new Map<number, Buffer>();
  for (const w of spec.writes ?? []) {
    if (w.offset % 512 || w.data.length % 512) throw new Error('VHD test writes must be sector-aligned');
    for (let i = 0; i < w.data.length; i += 512) sectors.set((w.offset + i) / 512, w.data.subarray(i, i + 512));
  }
  const footer = Buffer.alloc(512);
  footer.write('conectix', 0, 'latin1');
  footer.writeUInt32BE(2, 8);
  footer.writeUInt32BE(0x00010000, 12);
  footer.writeBigUInt64BE(512n, 16);
  footer.write('bwk ', 28, 'latin1');
  footer.write('Wi2k', 36, 'latin1');
  footer.writeBigUInt64BE(BigInt(spec.size), 40);
  footer.writeBigUInt64BE(BigInt(spec.size), 48);
  footer.writeUInt32BE(spec.parent ? 4 : 3, 60);
  uniqueId.copy(footer, 68);
  vhdChecksum(footer, 64);

  const dh = Buffer.alloc(1024);
  dh.write('cxsparse', 0, 'latin1');
  dh.writeBigUInt64BE(0xffffffffffffffffn, 8);
  const batAt = 1536;
  dh.writeBigUInt64BE(BigInt(batAt), 16);
  dh.writeUInt32BE(0x00010000, 24);
  dh.writeUInt32BE(entries, 28);
  dh.writeUInt32BE(blockSize, 32);
  let at = batAt + Math.ceil((entries * 4) / 512) * 512;
  const chunks: { at: number; data: Buffer }[] = [];
  if (spec.parent) {
    spec.parent.id.copy(dh, 40);
    const name = Buffer.from(spec.parent.name ?? '', 'utf16le').swap16();
    name.copy(dh, 64, 0, Math.min(512, name.length));
    spec.parent.locators.slice(0, 8).forEach((l, i) => {
      const data = locatorData(l);
      const e = 576 + i * 24;
      dh.write(l.code, e, 'latin1');
      dh.writeUInt32BE(Math.ceil(data.length / 512) * 512, e + 4);
      dh.writeUInt32BE(data.length, e + 8);
      dh.writeBigUInt64BE(BigInt(at), e + 16);
      chunks.push({ at, data });
      at += Math.ceil(data.length / 512) * 512 || 512;
    });
  }
  vhdChecksum(dh, 36);

  const bat = Buffer.alloc(Math.ceil((entries * 4) / 512) * 512, 0xff);
  for (let b = 0; b < entries; b++) {
    const mine = [...sectors.keys()].filter((s) => Math.floor((s * 512) / blockSize) === b);
    if (mine.length === 0) continue;
    bat.writeUInt32BE(at / 512, b * 4);
    const bitmap = Buffer.alloc(bitmapBytes);
    const data = Buffer.alloc(blockSize);
    for (const s of mine) {
      const k = s - (b * blockSize) / 512;
      bitmap[k >> 3]! |= 0x80 >> (k & 7);
      sectors.get(s)!.copy(data, k * 512);
    }
    chunks.push({ at, data: bitmap }, { at: at + bitmapBytes, data });
    at += bitmapBytes + blockSize;
  }
  const out = Buffer.alloc(at + 512);
  footer.copy(out, 0);
  dh.copy(out, 512);
  bat.copy(out, batAt);
  for (const c of chunks) c.data.copy(out, c.at);
  footer.copy(out, at);
  writeFileSync(file, out);
  return uniqueId;
}

/** A VHD's footer unique id (what a child records as its parent's). */
export function vhdUniqueId(file: string): Buffer {
  const b = readFileSync(file);
  return Buffer.from(b.subarray(b.length - 512 + 68, b.length - 512 + 84));
}

/** A VDI's uuidCreate, as the 16 bytes stored. */
export function vdiCreateBytes(file: string): Buffer {
  return Buffer.from(readFileSync(file).subarray(0x188, 0x198));
}

/**
 * Turns a dynamic VDI qemu-img wrote into a differencing image over the image whose uuidCreate is
 * `parent` (16 bytes as stored): type 4, a new uuidCreate (or `create`), uuidLinkage = parent, and
 * block map entries set as given (0xffffffff never written, 0xfffffffe zero). Returns uuidCreate.
 */
export function makeVdiChild(file: string, parent: Buffer, opts: { create?: Buffer; blocks?: [number, number][] } = {}): Buffer {
  const create = opts.create ?? randomBytes(16);
  const four = Buffer.alloc(4);
  four.writeUInt32LE(4);
  patchFile(file, 0x4c, four);
  patchFile(file, 0x188, create);
  patchFile(file, 0x1a8, parent);
  const mapAt = readFileSync(file).readUInt32LE(0x154);
  for (const [block, value] of opts.blocks ?? []) {
    const e = Buffer.alloc(4);
    e.writeUInt32LE(value);
    patchFile(file, mapAt + block * 4, e);
  }
  return create;
}
