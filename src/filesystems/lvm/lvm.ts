// Linux LVM2 on one physical volume: the PV label ('LABELONE', 'LVM2 001') in the first four
// sectors, the metadata area (its header, the raw location of the current text metadata, which may
// wrap around the circular buffer), the LVM text metadata (nested `name { key = value }` sections,
// strings, numbers, lists), and the logical volumes built from their linear segments ("striped" with
// one stripe). Volumes spanning other PVs, and thin, RAID, mirror, snapshot, cache segments are listed
// with an `unsupported` reason instead of a volume. Everything read is distrusted: checksums are
// verified, the metadata is at most 16 MiB, nesting at most 32 deep, every extent lies inside the PV.
import { crc32 } from 'node:zlib';
import { FileSystemError, SliceVolume, type Volume } from '../types.js';

export interface LogicalVolume {
  vg: string;
  name: string;
  /** Bytes. */
  size: number;
  /** The LV's bytes; absent when the LV cannot be read from this PV (see `unsupported`). */
  volume?: Volume;
  /** Why there is no volume: a segment type not supported, or extents on another PV. */
  unsupported?: string;
}

const SECTOR = 512;
const LABEL_SCAN_SECTORS = 4;
const MDA_HEADER_SIZE = 512;
const MDA_MAGIC = ' LVM2 x[5A%r0N*>';
const INITIAL_CRC = 0xf597a6cf;
const MAX_METADATA = 16 * 1024 * 1024;
const MAX_DEPTH = 32;
const MAX_LOCATIONS = 64;
const MAX_SEGMENTS = 65536;

/** LVM's CRC-32: the reflected 0xEDB88320 polynomial from a given start, without the final inversion. */
function lvmCrc(buf: Buffer, initial = INITIAL_CRC): number {
  return ~crc32(buf, ~initial >>> 0) >>> 0;
}

async function readAt(pv: Volume, offset: number, length: number, what: string): Promise<Buffer> {
  if (offset < 0 || length < 0 || offset + length > pv.size) throw new FileSystemError(what, `${length} bytes at ${offset} lie outside the physical volume of ${pv.size} bytes`);
  const buf = Buffer.alloc(length);
  await pv.read(buf, offset);
  return buf;
}

function u64(buf: Buffer, off: number, what: string): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FileSystemError(what, `the value ${v} is out of range`);
  return Number(v);
}

// ---- the text format ----

export type LvmValue = string | number | LvmValue[] | LvmSection;
export interface LvmSection {
  [key: string]: LvmValue;
}

/** Parses LVM text metadata: `key = value` and `name { ... }`, '#' comments, strings, numbers, lists. */
export function parseLvmText(text: string): LvmSection {
  let i = 0;
  const n = text.length;
  const fail = (why: string): never => {
    const line = text.slice(0, i).split('\n').length;
    throw new FileSystemError('LVM metadata', `line ${line}: ${why}`);
  };
  const skip = (): void => {
    while (i < n) {
      const c = text[i]!;
      if (c === '#') {
        while (i < n && text[i] !== '\n') i++;
      } else if (c === ' ' || c === '\t' || c === '\n' || c === '\r') i++;
      else break;
    }
  };
  const ident = (): string => {
    const m = /^[A-Za-z0-9_.+-]+/.exec(text.slice(i, i + 256));
    if (!m) fail(`a name expected, found ${JSON.stringify(text.slice(i, i + 10))}`);
    i += m![0].length;
    return m![0];
  };
  const str = (): string => {
    i++; // opening quote
    let out = '';
    while (true) {
      if (i >= n) fail('a string is not closed');
      const c = text[i++]!;
      if (c === '"') return out;
      if (c === '\\') {
        if (i >= n) fail('a string is not closed');
        out += text[i++];
      } else out += c;
    }
  };
  const value = (depth: number): LvmValue => {
    skip();
    const c = text[i];
    if (c === '"') return str();
    if (c === '[') {
      if (depth >= MAX_DEPTH) fail(`nested deeper than ${MAX_DEPTH}`);
      i++;
      const list: LvmValue[] = [];
      while (true) {
        skip();
        if (text[i] === ']') {
          i++;
          return list;
        }
        if (i >= n) fail('a list is not closed');
        list.push(value(depth + 1));
        skip();
        if (text[i] === ',') i++;
        else if (text[i] !== ']') fail("',' or ']' expected in a list");
      }
    }
    const m = /^-?[0-9]+(\.[0-9]+)?/.exec(text.slice(i, i + 40));
    if (!m) fail(`a value expected, found ${JSON.stringify(text.slice(i, i + 10))}`);
    i += m![0].length;
    return Number(m![0]);
  };
  const section = (depth: number, top: boolean): LvmSection => {
    if (depth > MAX_DEPTH) fail(`sections nested deeper than ${MAX_DEPTH}`);
    const out: LvmSection = Object.create(null) as LvmSection;
    while (true) {
      skip();
      if (i >= n || text[i] === '\0') {
        if (top) return out;
        fail('a section is not closed');
      }
      if (text[i] === '}') {
        if (top) fail("an unmatched '}'");
        i++;
        return out;
      }
      const key = ident();
      skip();
      if (text[i] === '{') {
        i++;
        out[key] = section(depth + 1, false);
      } else if (text[i] === '=') {
        i++;
        out[key] = value(depth + 1);
      } else fail(`'=' or '{' expected after ${key}`);
    }
  };
  return section(0, true);
}

// ---- the on-disk structures ----

interface PvLabel {
  uuid: string;
  dataAreas: { offset: number; size: number }[];
  metadataAreas: { offset: number; size: number }[];
}

async function readLabel(pv: Volume): Promise<PvLabel | undefined> {
  for (let s = 0; s < LABEL_SCAN_SECTORS; s++) {
    if ((s + 1) * SECTOR > pv.size) return undefined;
    const b = await readAt(pv, s * SECTOR, SECTOR, 'LVM label');
    if (b.toString('latin1', 0, 8) !== 'LABELONE') continue;
    const what = `LVM label in sector ${s}`;
    if (u64(b, 8, what) !== s) throw new FileSystemError(what, `says it lies in sector ${b.readBigUInt64LE(8)}`);
    if (lvmCrc(b.subarray(20)) !== b.readUInt32LE(16)) throw new FileSystemError(what, 'the checksum does not match');
    const type = b.toString('latin1', 24, 32);
    if (type !== 'LVM2 001') throw new FileSystemError(what, `the label type is ${JSON.stringify(type)}, not 'LVM2 001'`);
    const off = b.readUInt32LE(20);
    if (off < 32 || off + 32 + 8 > SECTOR) throw new FileSystemError(what, `the PV header offset ${off} is invalid`);
    const uuid = b.toString('latin1', off, off + 32);
    let p = off + 32 + 8; // uuid, device size
    const list = (): { offset: number; size: number }[] => {
      const out: { offset: number; size: number }[] = [];
      while (true) {
        if (p + 16 > SECTOR) throw new FileSystemError(what, 'the list of areas runs past the label sector');
        const offset = u64(b, p, what);
        const size = u64(b, p + 8, what);
        p += 16;
        if (offset === 0) return out;
        out.push({ offset, size });
      }
    };
    const dataAreas = list();
    const metadataAreas = list();
    return { uuid, dataAreas, metadataAreas };
  }
  return undefined;
}

/** The newest text metadata of one metadata area, or a reason it has none. */
async function readMetadataArea(pv: Volume, area: { offset: number; size: number }): Promise<string | { text: string }> {
  const what = `LVM metadata area at ${area.offset}`;
  if (area.size < MDA_HEADER_SIZE || area.offset + area.size > pv.size) return `${what} lies outside the physical volume`;
  const h = await readAt(pv, area.offset, MDA_HEADER_SIZE, what);
  if (h.toString('latin1', 4, 20) !== MDA_MAGIC) return `${what}: no metadata area header`;
  if (lvmCrc(h.subarray(4)) !== h.readUInt32LE(0)) return `${what}: the header checksum does not match`;
  if (h.readUInt32LE(20) !== 1) return `${what}: version ${h.readUInt32LE(20)} is not supported`;
  if (u64(h, 24, what) !== area.offset) return `${what}: the header says it lies at ${h.readBigUInt64LE(24)}`;
  const size = u64(h, 32, what);
  if (size !== area.size) return `${what}: the header gives a size of ${size}, the label ${area.size}`;
  for (let k = 0, p = 40; k < MAX_LOCATIONS && p + 24 <= MDA_HEADER_SIZE; k++, p += 24) {
    const offset = u64(h, p, what);
    const len = u64(h, p + 8, what);
    const checksum = h.readUInt32LE(p + 16);
    const flags = h.readUInt32LE(p + 20);
    if (offset === 0) break;
    if (flags & 1) continue; // RAW_LOCN_IGNORED
    if (len === 0) continue;
    if (len > MAX_METADATA) throw new FileSystemError(what, `the metadata is ${len} bytes, more than ${MAX_METADATA}`);
    if (offset < MDA_HEADER_SIZE || offset >= size) throw new FileSystemError(what, `the metadata offset ${offset} lies outside the area`);
    // The area past its header is a circular buffer: text running past the end continues after the header.
    const first = Math.min(len, size - offset);
    const wrap = len - first;
    if (wrap > size - MDA_HEADER_SIZE) throw new FileSystemError(what, `the metadata (${len} bytes) does not fit the area`);
    const a = await readAt(pv, area.offset + offset, first, what);
    const b = wrap > 0 ? await readAt(pv, area.offset + MDA_HEADER_SIZE, wrap, what) : Buffer.alloc(0);
    if (lvmCrc(b, lvmCrc(a)) !== checksum) throw new FileSystemError(what, 'the checksum of the metadata text does not match');
    let text = Buffer.concat([a, b]).toString('utf8');
    const z = text.indexOf('\0');
    if (z >= 0) text = text.slice(0, z);
    return { text };
  }
  return `${what}: holds no metadata`;
}

// ---- volumes ----

/** Segments of other volumes laid end to end: a logical volume. */
class ConcatVolume implements Volume {
  readonly size: number;
  constructor(private readonly parts: { start: number; volume: Volume }[]) {
    const last = parts[parts.length - 1];
    this.size = last ? last.start + last.volume.size : 0;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) throw new FileSystemError('volume', `a read of ${buf.length} bytes at ${offset} lies outside the volume of ${this.size} bytes`);
    let done = 0;
    // Binary search for the first part holding `offset`.
    let lo = 0;
    let hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.parts[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    for (let k = lo; done < buf.length; k++) {
      const part = this.parts[k]!;
      const at = offset + done - part.start;
      const len = Math.min(buf.length - done, part.volume.size - at);
      await part.volume.read(buf.subarray(done, done + len), at);
      done += len;
    }
  }
}

function num(v: LvmValue | undefined, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new FileSystemError(what, `a number expected, found ${JSON.stringify(v)}`);
  return v;
}

function isSection(v: LvmValue | undefined): v is LvmSection {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class Unsupported extends Error {}

/**
 * The logical volumes on a physical volume, or undefined when it has no LVM label. LVs that cannot be
 * read from this PV alone carry `unsupported` instead of `volume`. Hidden LVs (a thin pool's data, a
 * RAID image) are not listed.
 */
export async function readLvm(pv: Volume): Promise<LogicalVolume[] | undefined> {
  const label = await readLabel(pv);
  if (!label) return undefined;
  if (label.metadataAreas.length === 0) throw new FileSystemError('LVM physical volume', 'has no metadata area (its metadata is only on other PVs)');
  let best: { seqno: number; vgName: string; vg: LvmSection } | undefined;
  const problems: string[] = [];
  for (const area of label.metadataAreas) {
    const r = await readMetadataArea(pv, area);
    if (typeof r === 'string') {
      problems.push(r);
      continue;
    }
    const top = parseLvmText(r.text);
    const names = Object.keys(top).filter((k) => isSection(top[k]));
    if (names.length !== 1) throw new FileSystemError('LVM metadata', `${names.length} volume groups, one expected`);
    const vgName = names[0]!;
    const vg = top[vgName] as LvmSection;
    const seqno = num(vg.seqno, `volume group ${vgName}: seqno`);
    if (!best || seqno > best.seqno) best = { seqno, vgName, vg };
  }
  if (!best) throw new FileSystemError('LVM physical volume', `no readable metadata (${problems.join('; ')})`);
  return buildVolumes(pv, label, best.vgName, best.vg);
}

function buildVolumes(pv: Volume, label: PvLabel, vgName: string, vg: LvmSection): LogicalVolume[] {
  const what = `volume group ${vgName}`;
  const extentSize = num(vg.extent_size, `${what}: extent_size`) * SECTOR;
  if (extentSize === 0) throw new FileSystemError(what, 'the extent size is 0');
  const pvs = vg.physical_volumes;
  if (!isSection(pvs)) throw new FileSystemError(what, 'no physical_volumes section');
  let ours: string | undefined;
  let peStart = 0;
  let peCount = 0;
  const devices: Record<string, string> = {};
  for (const [key, p] of Object.entries(pvs)) {
    if (!isSection(p)) continue;
    devices[key] = typeof p.device === 'string' ? p.device : key;
    if (typeof p.id === 'string' && p.id.replace(/-/g, '') === label.uuid) {
      ours = key;
      peStart = num(p.pe_start, `${what}: ${key}.pe_start`) * SECTOR;
      peCount = num(p.pe_count, `${what}: ${key}.pe_count`);
    }
  }
  if (!ours) throw new FileSystemError(what, `this physical volume (${label.uuid}) is not among its physical volumes`);
  if (peStart + peCount * extentSize > pv.size) throw new FileSystemError(what, `${peCount} extents from ${peStart} do not fit the physical volume of ${pv.size} bytes`);
  const lvs = vg.logical_volumes;
  if (lvs === undefined) return [];
  if (!isSection(lvs)) throw new FileSystemError(what, 'logical_volumes is not a section');

  // Snapshots: the origin reads as itself, the exception store ("cow") LV is not a file system.
  const cowStores = new Set<string>();
  for (const lv of Object.values(lvs)) {
    if (!isSection(lv)) continue;
    for (const seg of Object.values(lv)) if (isSection(seg) && seg.type === 'snapshot' && typeof seg.cow_store === 'string') cowStores.add(seg.cow_store);
  }

  const out: LogicalVolume[] = [];
  for (const [name, lv] of Object.entries(lvs)) {
    if (!isSection(lv)) continue;
    const status = Array.isArray(lv.status) ? lv.status : [];
    if (!status.includes('VISIBLE')) continue;
    const lwhat = `logical volume ${vgName}/${name}`;
    const segs = Object.entries(lv).filter(([k, v]) => /^segment[0-9]+$/.test(k) && isSection(v)).map(([, v]) => v as LvmSection);
    if (segs.length > MAX_SEGMENTS) throw new FileSystemError(lwhat, `${segs.length} segments`);
    let extents = 0;
    for (const s of segs) extents = Math.max(extents, num(s.start_extent, `${lwhat}: start_extent`) + num(s.extent_count, `${lwhat}: extent_count`));
    const size = extents * extentSize;
    if (!Number.isSafeInteger(size)) throw new FileSystemError(lwhat, 'is too large');
    try {
      if (cowStores.has(name)) throw new Unsupported(`logical volume ${name} is the exception store of a snapshot`);
      const parts: { start: number; volume: Volume }[] = [];
      segs.sort((a, b) => (a.start_extent as number) - (b.start_extent as number));
      let next = 0;
      for (const s of segs) {
        const start = s.start_extent as number;
        const count = s.extent_count as number;
        if (start !== next) throw new FileSystemError(lwhat, `its segments leave a gap or overlap at extent ${Math.min(start, next)}`);
        next = start + count;
        if (s.type !== 'striped') throw new Unsupported(`logical volume ${name} has a segment of type ${JSON.stringify(s.type)} (only linear volumes are supported)`);
        const stripeCount = num(s.stripe_count, `${lwhat}: stripe_count`);
        if (stripeCount !== 1) throw new Unsupported(`logical volume ${name} is striped across ${stripeCount} stripes (only linear volumes are supported)`);
        const stripes = s.stripes;
        if (!Array.isArray(stripes) || stripes.length !== 2 || typeof stripes[0] !== 'string') throw new FileSystemError(lwhat, 'a segment\'s stripes are not ["pvN", extent]');
        const pvKey = stripes[0];
        const pe = num(stripes[1], `${lwhat}: stripe extent`);
        if (!(pvKey in devices)) throw new FileSystemError(lwhat, `a segment lies on ${pvKey}, which is not among the physical volumes`);
        if (pvKey !== ours) throw new Unsupported(`logical volume ${name} needs physical volume ${pvKey} (${devices[pvKey]}), which is on another disk`);
        if (pe + count > peCount) throw new FileSystemError(lwhat, `extents ${pe}–${pe + count - 1} lie past the ${peCount} extents of the physical volume`);
        parts.push({ start: start * extentSize, volume: new SliceVolume(pv, peStart + pe * extentSize, count * extentSize) });
      }
      out.push({ vg: vgName, name, size, volume: new ConcatVolume(parts) });
    } catch (e) {
      if (!(e instanceof Unsupported)) throw e;
      out.push({ vg: vgName, name, size, unsupported: e.message });
    }
  }
  return out;
}
