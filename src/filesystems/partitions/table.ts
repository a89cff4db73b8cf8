// Partition tables: MBR (four primaries, extended partitions as chains of EBRs) and GPT (primary
// header at LBA 1 with 512- or 4096-byte sectors, CRC-checked, the backup header at the last LBA when
// the primary is damaged). Everything read is distrusted: every partition must lie inside the disk
// (logical ones inside their extended partition), partitions may not overlap, the EBR chain is
// bounded and loop-checked, and the GPT entry array is bounded in count and size.
import { crc32 } from 'node:zlib';
import { FileSystemError, SliceVolume, type Volume } from '../types.js';

export type PartitionKind = 'linux' | 'lvm' | 'swap' | 'efi' | 'windows' | 'extended' | 'other';

export interface Partition {
  /** 1-based as Linux numbers them: MBR primaries 1–4, logical partitions from 5; GPT entries 1... */
  index: number;
  /** Bytes from the start of the disk. */
  start: number;
  /** Bytes. */
  size: number;
  /** MBR: the type byte as '0x83'; GPT: the type GUID, lowercase. */
  type: string;
  kind?: PartitionKind;
  /** GPT partition name. */
  name?: string;
  /** The partition's bytes (a SliceVolume of the disk). */
  volume: Volume;
}

export interface PartitionTable {
  scheme: 'mbr' | 'gpt';
  /** The sector size the table was found with (MBR: 512). */
  sectorSize: number;
  /** In disk order of the table (by index); the MBR extended container itself is not listed. */
  partitions: Partition[];
  /** Damage that was worked around, e.g. a damaged primary GPT header whose backup was used. */
  warnings: string[];
}

const MAX_LOGICAL = 128;
const MAX_GPT_ENTRIES = 4096;
const MAX_GPT_ARRAY = 4 * 1024 * 1024;
const EXTENDED = new Set([0x05, 0x0f, 0x85]);

const MBR_KINDS: Record<number, PartitionKind> = {
  0x83: 'linux', 0x8e: 'lvm', 0x82: 'swap', 0xef: 'efi',
  0x01: 'windows', 0x04: 'windows', 0x06: 'windows', 0x07: 'windows', 0x0b: 'windows', 0x0c: 'windows', 0x0e: 'windows', 0x27: 'windows',
  0x05: 'extended', 0x0f: 'extended', 0x85: 'extended',
};

const GPT_KINDS: Record<string, PartitionKind> = {
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'linux', // Linux filesystem data
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'linux', // Linux root (x86-64)
  '44479540-f297-41b2-9af7-d131d5f0458a': 'linux', // Linux root (x86)
  'b921b045-1df0-41c3-af44-4c6f280d3fae': 'linux', // Linux root (ARM64)
  '933ac7e1-2eb4-4f13-b844-0e14e2aef915': 'linux', // Linux /home
  'bc13c2ff-59e6-4262-a352-b275fd6f7172': 'linux', // Linux extended boot
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'lvm',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'swap',
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'efi',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'windows', // Microsoft basic data
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'windows', // Microsoft reserved
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'windows', // Windows recovery
};

async function readAt(disk: Volume, offset: number, length: number, what: string): Promise<Buffer> {
  if (offset < 0 || offset + length > disk.size) throw new FileSystemError(what, `${length} bytes at ${offset} lie outside the disk of ${disk.size} bytes`);
  const buf = Buffer.alloc(length);
  await disk.read(buf, offset);
  return buf;
}

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FileSystemError(what, `the value ${v} is out of range`);
  return Number(v);
}

function guid(buf: Buffer, off: number): string {
  const h = (s: number, e: number): string => buf.subarray(off + s, off + e).toString('hex');
  const le = (s: number, e: number): string => Buffer.from(buf.subarray(off + s, off + e)).reverse().toString('hex');
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${h(8, 10)}-${h(10, 16)}`;
}

function slice(disk: Volume, start: number, size: number, what: string): Volume {
  if (start < 0 || size <= 0 || start + size > disk.size) throw new FileSystemError(what, `${size} bytes at ${start} lie outside the disk of ${disk.size} bytes`);
  return new SliceVolume(disk, start, size);
}

function checkOverlaps(parts: Partition[]): void {
  const sorted = [...parts].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.start < a.start + a.size) throw new FileSystemError('partition table', `partition ${b.index} (at ${b.start}) overlaps partition ${a.index} (${a.start}–${a.start + a.size})`);
  }
}

/** Partitions of the disk, or undefined when it has no partition table (a bare file system, say). */
export async function readPartitions(disk: Volume): Promise<Partition[] | undefined> {
  return (await readPartitionTable(disk))?.partitions;
}

/** The partition table of the disk with the damage worked around, or undefined when it has none. */
export async function readPartitionTable(disk: Volume): Promise<PartitionTable | undefined> {
  if (disk.size < 512) return undefined;
  const mbr = await readAt(disk, 0, 512, 'MBR');
  if (mbr.readUInt16LE(510) !== 0xaa55) {
    // No MBR: a GPT whose protective MBR was wiped is still read, with a warning.
    if (await hasGptSignature(disk)) {
      const t = await readGpt(disk);
      t.warnings.unshift('the disk has no MBR boot signature (no protective MBR); the GPT was read anyway');
      return t;
    }
    return undefined;
  }
  const entries = [0, 1, 2, 3].map((i) => {
    const o = 446 + i * 16;
    return { index: i + 1, status: mbr[o]!, type: mbr[o + 4]!, lba: mbr.readUInt32LE(o + 8), count: mbr.readUInt32LE(o + 12) };
  });
  // A boot sector of a bare file system (FAT, NTFS) has the same signature but no valid entries.
  if (entries.some((e) => e.status !== 0 && e.status !== 0x80)) return undefined;
  if (entries.every((e) => e.type === 0)) return undefined;
  if (entries.some((e) => e.type === 0xee)) return readGpt(disk);
  return readMbr(disk, entries);
}

async function readMbr(disk: Volume, entries: { index: number; type: number; lba: number; count: number }[]): Promise<PartitionTable> {
  const partitions: Partition[] = [];
  const containers: Partition[] = [];
  const warnings: string[] = [];
  for (const e of entries) {
    if (e.type === 0 || e.count === 0) continue;
    const what = `MBR partition ${e.index}`;
    const p: Partition = { index: e.index, start: e.lba * 512, size: e.count * 512, type: hexType(e.type), kind: MBR_KINDS[e.type] ?? 'other', volume: slice(disk, e.lba * 512, e.count * 512, what) };
    if (EXTENDED.has(e.type)) containers.push(p);
    else partitions.push(p);
  }
  if (containers.length > 1) throw new FileSystemError('MBR', `${containers.length} extended partitions (at most one is allowed)`);
  checkOverlaps([...partitions, ...containers]);
  const ext = containers[0];
  if (ext) partitions.push(...(await readLogical(disk, ext)));
  checkOverlaps(partitions);
  return { scheme: 'mbr', sectorSize: 512, partitions, warnings };
}

function hexType(t: number): string {
  return '0x' + t.toString(16).padStart(2, '0');
}

async function readLogical(disk: Volume, ext: Partition): Promise<Partition[]> {
  const extLba = ext.start / 512;
  const extEnd = ext.start + ext.size;
  const out: Partition[] = [];
  const seen = new Set<number>();
  let ebrLba = extLba;
  let index = 5;
  for (let n = 0; ; n++) {
    if (seen.has(ebrLba)) throw new FileSystemError('extended partition', `the chain of EBRs loops back to sector ${ebrLba}`);
    if (n >= MAX_LOGICAL) throw new FileSystemError('extended partition', `more than ${MAX_LOGICAL} logical partitions`);
    seen.add(ebrLba);
    const what = `EBR at sector ${ebrLba}`;
    if (ebrLba * 512 + 512 > extEnd) throw new FileSystemError(what, `lies outside the extended partition (${ext.start}–${extEnd})`);
    const ebr = await readAt(disk, ebrLba * 512, 512, what);
    if (ebr.readUInt16LE(510) !== 0xaa55) {
      // An empty extended partition has a zeroed first EBR; a later one without signature is damage.
      if (n === 0 && ebr.every((b) => b === 0)) return out;
      throw new FileSystemError(what, 'no boot signature 0x55AA');
    }
    const type = ebr[446 + 4]!;
    const rel = ebr.readUInt32LE(446 + 8);
    const count = ebr.readUInt32LE(446 + 12);
    if (type !== 0 && count !== 0) {
      const start = (ebrLba + rel) * 512;
      const size = count * 512;
      const pwhat = `logical partition ${index}`;
      if (rel === 0 || start < ext.start || start + size > extEnd) throw new FileSystemError(pwhat, `${size} bytes at ${start} lie outside the extended partition (${ext.start}–${extEnd}) or on its EBR`);
      if (EXTENDED.has(type)) throw new FileSystemError(pwhat, 'is itself an extended partition');
      out.push({ index, start, size, type: hexType(type), kind: MBR_KINDS[type] ?? 'other', volume: slice(disk, start, size, pwhat) });
      index++;
    }
    const linkType = ebr[462 + 4]!;
    const linkRel = ebr.readUInt32LE(462 + 8);
    if (linkType === 0 || linkRel === 0) return out;
    if (!EXTENDED.has(linkType)) throw new FileSystemError(what, `the link to the next EBR has type ${hexType(linkType)}, not an extended type`);
    ebrLba = extLba + linkRel;
  }
}

async function hasGptSignature(disk: Volume): Promise<boolean> {
  for (const ss of [512, 4096]) {
    if (disk.size >= ss * 2) {
      const b = await readAt(disk, ss, 8, 'GPT header');
      if (b.toString('latin1') === 'EFI PART') return true;
    }
  }
  return false;
}

interface GptHeader {
  lba: number;
  alternate: number;
  firstUsable: number;
  lastUsable: number;
  entriesLba: number;
  count: number;
  entrySize: number;
  entries: Buffer;
}

/** The header at `lba` with its entry array, both CRC-checked; a string says why it is not valid. */
async function readGptHeader(disk: Volume, ss: number, lba: number): Promise<GptHeader | string> {
  if ((lba + 1) * ss > disk.size) return `sector ${lba} lies outside the disk`;
  const h = await readAt(disk, lba * ss, ss, 'GPT header');
  if (h.toString('latin1', 0, 8) !== 'EFI PART') return `no 'EFI PART' signature at sector ${lba}`;
  const hsize = h.readUInt32LE(12);
  if (hsize < 92 || hsize > ss) return `header size ${hsize} is invalid`;
  const copy = Buffer.from(h.subarray(0, hsize));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== h.readUInt32LE(16)) return `the header CRC32 at sector ${lba} does not match`;
  try {
    const what = `GPT header at sector ${lba}`;
    const my = u64(h, 24, what);
    if (my !== lba) return `the header at sector ${lba} says it lies at sector ${my}`;
    const hdr = { lba, alternate: u64(h, 32, what), firstUsable: u64(h, 40, what), lastUsable: u64(h, 48, what), entriesLba: u64(h, 72, what), count: h.readUInt32LE(80), entrySize: h.readUInt32LE(84) };
    if (hdr.entrySize < 128 || hdr.entrySize % 8 !== 0 || hdr.entrySize > 4096) return `the entry size ${hdr.entrySize} is invalid`;
    if (hdr.count > MAX_GPT_ENTRIES || hdr.count * hdr.entrySize > MAX_GPT_ARRAY) return `${hdr.count} entries of ${hdr.entrySize} bytes is too many`;
    const arrayBytes = hdr.count * hdr.entrySize;
    if (hdr.entriesLba * ss + arrayBytes > disk.size) return `the entry array at sector ${hdr.entriesLba} lies outside the disk`;
    const entries = await readAt(disk, hdr.entriesLba * ss, arrayBytes, 'GPT entry array');
    if (crc32(entries) !== h.readUInt32LE(88)) return `the CRC32 of the entry array at sector ${hdr.entriesLba} does not match`;
    return { ...hdr, entries };
  } catch (e) {
    if (e instanceof FileSystemError) return e.message;
    throw e;
  }
}

async function readGpt(disk: Volume): Promise<PartitionTable> {
  const warnings: string[] = [];
  const problems: string[] = [];
  for (const ss of [512, 4096]) {
    if (disk.size < ss * 3) continue;
    const lastLba = Math.floor(disk.size / ss) - 1;
    const primary = await readGptHeader(disk, ss, 1);
    let hdr: GptHeader;
    if (typeof primary !== 'string') {
      hdr = primary;
      const backupLba = primary.alternate <= lastLba ? primary.alternate : lastLba;
      const backup = await readGptHeader(disk, ss, backupLba);
      if (typeof backup === 'string') warnings.push(`the backup GPT header is damaged (${backup}); the primary was used`);
    } else {
      const backup = await readGptHeader(disk, ss, lastLba);
      if (typeof backup === 'string') {
        if (ss === 512 || problems.length === 0) problems.push(`${ss}-byte sectors: primary: ${primary}; backup: ${backup}`);
        continue;
      }
      // With 512-byte sectors a 4096-byte-sector GPT has no signature at LBA 1: only report a
      // damaged primary when the backup is found with the same sector size.
      warnings.push(`the primary GPT header is damaged (${primary}); the backup header at sector ${lastLba} was used`);
      hdr = backup;
    }
    return { scheme: 'gpt', sectorSize: ss, partitions: gptPartitions(disk, ss, hdr), warnings };
  }
  throw new FileSystemError('GPT', `no valid GPT header (${problems.join('; ') || 'the disk is too small'})`);
}

function gptPartitions(disk: Volume, ss: number, hdr: GptHeader): Partition[] {
  const out: Partition[] = [];
  for (let i = 0; i < hdr.count; i++) {
    const o = i * hdr.entrySize;
    const e = hdr.entries.subarray(o, o + hdr.entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue;
    const what = `GPT partition ${i + 1}`;
    const first = u64(e, 32, what);
    const last = u64(e, 40, what);
    if (last < first) throw new FileSystemError(what, `ends (sector ${last}) before it starts (sector ${first})`);
    const start = first * ss;
    const size = (last - first + 1) * ss;
    const type = guid(e, 0);
    const nameRaw = e.subarray(56, 128).toString('utf16le');
    const z = nameRaw.indexOf('\0');
    const name = z < 0 ? nameRaw : nameRaw.slice(0, z);
    out.push({ index: i + 1, start, size, type, kind: GPT_KINDS[type] ?? 'other', name, volume: slice(disk, start, size, what) });
  }
  checkOverlaps(out);
  return out;
}
