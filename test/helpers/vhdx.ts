// Writes VHDX files by hand ([MS-VHDX]) for the reader's tests: what qemu-img cannot make (differencing
// disks, 4096-byte logical sectors, every payload block state) and hostile variants. Layout: header
// section (identifier, two headers, two region tables), a 1 MiB log at 1 MiB (empty), the metadata
// region at 2 MiB, the BAT at 3 MiB, then payload blocks in the order given, then sector bitmap blocks.
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { crc32c } from '../../src/formats/crc32c.js';
import { guidBytes, VHDX_GUIDS } from '../../src/formats/vhdx.js';

const KiB = 1024;
const MiB = 1024 * 1024;

export const BLOCK = { NOT_PRESENT: 0, UNDEFINED: 1, ZERO: 2, UNMAPPED: 3, FULLY_PRESENT: 6, PARTIALLY_PRESENT: 7 } as const;

export interface VhdxBlock {
  block: number;
  /** The block's bytes (padded with zeros to the block size); present states only. */
  data?: Buffer;
  /** Default: FULLY_PRESENT with data, PARTIALLY_PRESENT with `sectors`, else NOT_PRESENT. */
  state?: number;
  /** Which logical sectors of the block are in this file (the rest from the parent): PARTIALLY_PRESENT. */
  sectors?: (sector: number) => boolean;
}

export interface VhdxSpec {
  size: number;
  blockSize?: number;
  logicalSectorSize?: number;
  physicalSectorSize?: number;
  blocks?: VhdxBlock[];
  /** Makes a differencing disk: parent locator key/values (parent_linkage is required by readers). */
  parent?: Record<string, string>;
  dataWriteGuid?: string;
  logGuid?: string;
  /** Extra region table entries and metadata items. */
  extraRegions?: { guid: string; required: boolean }[];
  extraMetadata?: { guid: string; required: boolean; data?: Buffer }[];
  /** Log entries written into the 1 MiB log (give `logGuid` too, or they are not replayed). */
  log?: LogEntrySpec[];
}

export interface LogEntrySpec {
  sequence: bigint;
  /** 4 KiB sector of the log where the entry starts; default: right after the previous one (wrapping). */
  at?: number;
  /** Byte offset in the log of the sequence's first entry; default: where the first entry of the list starts. */
  tail?: number;
  writes: ({ offset: number; data: Buffer } | { offset: number; zero: number })[];
  flushedFileOffset?: number;
  lastFileOffset?: number;
  /** Spoils the entry's checksum. */
  corrupt?: boolean;
  /** Another log's GUID. */
  logGuid?: string;
}

export const LOG_AT = MiB;
const LOG_SECTORS = 256;

/** Writes log entries into `log` (the log region, 1 MiB), each wrapping at the end as the log is circular. */
function writeLog(log: Buffer, entries: LogEntrySpec[], logGuid: string, fileSize: number): void {
  let next = 0;
  let first: number | undefined;
  for (const e of entries) {
    const at = e.at ?? next;
    first ??= at;
    const descs = e.writes.length;
    const descSectors = Math.ceil((64 + descs * 32) / 4096);
    const dataWrites = e.writes.filter((w): w is { offset: number; data: Buffer } => 'data' in w);
    const sectors = descSectors + dataWrites.length;
    const entry = Buffer.alloc(sectors * 4096);
    entry.write('loge', 0, 'latin1');
    entry.writeUInt32LE(sectors * 4096, 8);
    entry.writeUInt32LE(e.tail ?? first * 4096, 12);
    entry.writeBigUInt64LE(e.sequence, 16);
    entry.writeUInt32LE(descs, 24);
    guidBytes(e.logGuid ?? logGuid).copy(entry, 32);
    entry.writeBigUInt64LE(BigInt(e.flushedFileOffset ?? fileSize), 48);
    entry.writeBigUInt64LE(BigInt(e.lastFileOffset ?? fileSize), 56);
    let data = descSectors;
    e.writes.forEach((w, i) => {
      const d = 64 + i * 32;
      entry.writeBigUInt64LE(BigInt(w.offset), d + 16);
      entry.writeBigUInt64LE(e.sequence, d + 24);
      if ('zero' in w) {
        entry.write('zero', d, 'latin1');
        entry.writeBigUInt64LE(BigInt(w.zero), d + 8);
        return;
      }
      entry.write('desc', d, 'latin1');
      w.data.copy(entry, d + 4, 4092, 4096); // trailing bytes
      w.data.copy(entry, d + 8, 0, 8); // leading bytes
      const s = data * 4096;
      entry.write('data', s, 'latin1');
      entry.writeUInt32LE(Number(e.sequence >> 32n), s + 4);
      w.data.copy(entry, s + 8, 8, 4092);
      entry.writeUInt32LE(Number(e.sequence & 0xffffffffn), s + 4092);
      data++;
    });
    rechecksum(entry, 0, entry.length);
    if (e.corrupt) entry.writeUInt32LE((entry.readUInt32LE(4) ^ 1) >>> 0, 4);
    for (let k = 0; k < sectors; k++) entry.copy(log, ((at + k) % LOG_SECTORS) * 4096, k * 4096, (k + 1) * 4096);
    next = (at + sectors) % LOG_SECTORS;
  }
}

export const randomGuid = (): string => randomUUID().toUpperCase();

/** Sets the CRC-32C at `at + 4` of the `length` bytes at `at` (a header or region table). */
export function rechecksum(buf: Buffer, at: number, length: number): void {
  buf.writeUInt32LE(0, at + 4);
  buf.writeUInt32LE(crc32c(buf.subarray(at, at + length)), at + 4);
}

export const HEADER_AT = [64 * KiB, 128 * KiB];
export const REGION_AT = [192 * KiB, 256 * KiB];
export const METADATA_AT = 2 * MiB;
export const BAT_AT = 3 * MiB;

export function buildVhdx(spec: VhdxSpec): Buffer {
  const blockSize = spec.blockSize ?? MiB;
  const lss = spec.logicalSectorSize ?? 512;
  const chunkRatio = (2 ** 23 * lss) / blockSize;
  const blocks = Math.ceil(spec.size / blockSize);
  const chunks = Math.ceil(blocks / chunkRatio);
  const entries = spec.parent ? chunks * (chunkRatio + 1) : blocks === 0 ? 0 : blocks + Math.floor((blocks - 1) / chunkRatio);
  const batBytes = Math.max(MiB, Math.ceil((entries * 8) / MiB) * MiB);
  const dataAt = BAT_AT + batBytes;
  const list = spec.blocks ?? [];
  const partialChunks = [...new Set(list.filter((b) => b.sectors).map((b) => Math.floor(b.block / chunkRatio)))];
  const present = list.filter((b) => (b.state ?? (b.sectors ? BLOCK.PARTIALLY_PRESENT : b.data ? BLOCK.FULLY_PRESENT : BLOCK.NOT_PRESENT)) >= BLOCK.FULLY_PRESENT);
  const total = dataAt + present.length * blockSize + partialChunks.length * MiB;
  const f = Buffer.alloc(total);

  f.write('vhdxfile', 0, 'latin1');
  f.write('Bulwark test builder', 8, 'utf16le');
  const dataWriteGuid = spec.dataWriteGuid ?? randomGuid();
  HEADER_AT.forEach((at, i) => {
    f.write('head', at, 'latin1');
    f.writeBigUInt64LE(BigInt(i + 1), at + 8);
    guidBytes(randomGuid()).copy(f, at + 16);
    guidBytes(dataWriteGuid).copy(f, at + 32);
    guidBytes(spec.logGuid ?? '00000000-0000-0000-0000-000000000000').copy(f, at + 48);
    f.writeUInt16LE(0, at + 64); // log version
    f.writeUInt16LE(1, at + 66); // version
    f.writeUInt32LE(MiB, at + 68); // log length
    f.writeBigUInt64LE(BigInt(MiB), at + 72); // log offset
    rechecksum(f, at, 4 * KiB);
  });
  const regions = [
    { guid: VHDX_GUIDS.batRegion, offset: BAT_AT, length: batBytes, required: true },
    { guid: VHDX_GUIDS.metadataRegion, offset: METADATA_AT, length: MiB, required: true },
    ...(spec.extraRegions ?? []).map((r) => ({ ...r, offset: METADATA_AT, length: MiB })),
  ];
  for (const at of REGION_AT) {
    f.write('regi', at, 'latin1');
    f.writeUInt32LE(regions.length, at + 8);
    regions.forEach((r, i) => {
      const e = at + 16 + i * 32;
      guidBytes(r.guid).copy(f, e);
      f.writeBigUInt64LE(BigInt(r.offset), e + 16);
      f.writeUInt32LE(r.length, e + 24);
      f.writeUInt32LE(r.required ? 1 : 0, e + 28);
    });
    rechecksum(f, at, 64 * KiB);
  }

  // Metadata: table, then items from 64 KiB on, 4 KiB apart.
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  };
  const fp = Buffer.alloc(8);
  fp.writeUInt32LE(blockSize, 0);
  fp.writeUInt32LE(spec.parent ? 2 : 0, 4);
  const vds = Buffer.alloc(8);
  vds.writeBigUInt64LE(BigInt(spec.size));
  const items: { guid: string; flags: number; data: Buffer }[] = [
    { guid: VHDX_GUIDS.fileParameters, flags: 4, data: fp },
    { guid: VHDX_GUIDS.virtualDiskSize, flags: 6, data: vds },
    { guid: VHDX_GUIDS.page83, flags: 6, data: guidBytes(randomGuid()) },
    { guid: VHDX_GUIDS.logicalSectorSize, flags: 6, data: u32(lss) },
    { guid: VHDX_GUIDS.physicalSectorSize, flags: 6, data: u32(spec.physicalSectorSize ?? 4096) },
  ];
  if (spec.parent) items.push({ guid: VHDX_GUIDS.parentLocator, flags: 4, data: parentLocator(spec.parent) });
  for (const m of spec.extraMetadata ?? []) items.push({ guid: m.guid, flags: m.required ? 4 : 0, data: m.data ?? Buffer.alloc(8) });
  f.write('metadata', METADATA_AT, 'latin1');
  f.writeUInt16LE(items.length, METADATA_AT + 10);
  let itemAt = 64 * KiB;
  items.forEach((it, i) => {
    const e = METADATA_AT + 32 + i * 32;
    guidBytes(it.guid).copy(f, e);
    f.writeUInt32LE(itemAt, e + 16);
    f.writeUInt32LE(it.data.length, e + 20);
    f.writeUInt32LE(it.flags, e + 24);
    it.data.copy(f, METADATA_AT + itemAt);
    itemAt += Math.ceil(it.data.length / (4 * KiB)) * 4 * KiB;
  });

  // BAT, payload blocks and sector bitmaps.
  const setEntry = (i: number, state: number, at: number): void => {
    f.writeBigUInt64LE(BigInt(state) | (BigInt(at / MiB) << 20n), BAT_AT + i * 8);
  };
  let next = dataAt;
  const bitmapAt = new Map<number, number>();
  for (const c of partialChunks) {
    bitmapAt.set(c, dataAt + present.length * blockSize + bitmapAt.size * MiB);
    setEntry(c * (chunkRatio + 1) + chunkRatio, BLOCK.FULLY_PRESENT, bitmapAt.get(c)!);
  }
  for (const b of list) {
    const state = b.state ?? (b.sectors ? BLOCK.PARTIALLY_PRESENT : b.data ? BLOCK.FULLY_PRESENT : BLOCK.NOT_PRESENT);
    const idx = b.block + Math.floor(b.block / chunkRatio);
    if (state < BLOCK.FULLY_PRESENT) {
      setEntry(idx, state, 0);
      continue;
    }
    setEntry(idx, state, next);
    b.data?.copy(f, next, 0, Math.min(b.data.length, blockSize));
    if (b.sectors) {
      const bm = bitmapAt.get(Math.floor(b.block / chunkRatio))! + ((b.block % chunkRatio) * blockSize) / lss / 8;
      for (let s = 0; s < blockSize / lss; s++) if (b.sectors(s)) f[bm + (s >> 3)]! |= 1 << (s & 7);
    }
    next += blockSize;
  }
  if (spec.log) writeLog(f.subarray(LOG_AT, LOG_AT + MiB), spec.log, spec.logGuid ?? '00000000-0000-0000-0000-000000000000', f.length);
  return f;
}

function parentLocator(kv: Record<string, string>): Buffer {
  const pairs = Object.entries(kv).map(([k, v]) => [Buffer.from(k, 'utf16le'), Buffer.from(v, 'utf16le')] as const);
  const head = 20 + pairs.length * 12;
  const out = Buffer.alloc(head + pairs.reduce((n, [k, v]) => n + k.length + v.length, 0));
  guidBytes(VHDX_GUIDS.vhdxParentLocatorType).copy(out, 0);
  out.writeUInt16LE(pairs.length, 18);
  let at = head;
  pairs.forEach(([k, v], i) => {
    const e = 20 + i * 12;
    out.writeUInt32LE(at, e);
    k.copy(out, at);
    at += k.length;
    out.writeUInt32LE(at, e + 4);
    v.copy(out, at);
    at += v.length;
    out.writeUInt16LE(k.length, e + 8);
    out.writeUInt16LE(v.length, e + 10);
  });
  return out;
}

export async function writeVhdx(file: string, spec: VhdxSpec): Promise<Buffer> {
  const buf = buildVhdx(spec);
  await writeFile(file, buf);
  return buf;
}
