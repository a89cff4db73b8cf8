// A read-only NTFS reader (docs/file-level-restore.md), after the Linux-NTFS / ntfs-3g description of
// the layout: the boot sector gives the cluster size and where $MFT lies; $MFT's own unnamed $DATA
// (a runlist, the MFT may be fragmented) locates every other record; a record's attributes give its
// names ($FILE_NAME), times ($STANDARD_INFORMATION), contents ($DATA, resident or a runlist, sparse
// or LZNT1-compressed) and, for a directory, a B+tree of $FILE_NAME keys ($INDEX_ROOT in the record,
// 'INDX' blocks in $INDEX_ALLOCATION). Attributes that do not fit lie in extension records named by
// $ATTRIBUTE_LIST. Every multi-sector structure has its update sequence fix-ups verified, runlists and
// trees are bounded, and files are read lazily: a position maps to a run, and a compressed file is
// decompressed one compression unit at a time. Names compare case-insensitively through $UpCase.
import { FileSystemError, FsNotFoundError, splitFsPath, type EntryType, type FileSystem, type FsEntry, type FsFile, type Volume } from '../types.js';

const AT_STANDARD_INFORMATION = 0x10;
const AT_ATTRIBUTE_LIST = 0x20;
const AT_VOLUME_NAME = 0x60;
const AT_DATA = 0x80;
const AT_INDEX_ROOT = 0x90;
const AT_INDEX_ALLOCATION = 0xa0;
const AT_REPARSE_POINT = 0xc0;
const AT_END = 0xffffffff;

const MFT_RECORD_IN_USE = 1;
const MFT_RECORD_IS_DIRECTORY = 2;
const ATTR_COMPRESSED = 0x0001;
const ATTR_ENCRYPTED = 0x4000;
const FILE_ATTR_SYSTEM = 0x4;
const FILE_ATTR_REPARSE_POINT = 0x400;
const INDEX_ENTRY_NODE = 1;
const INDEX_ENTRY_END = 2;
const FILE_NAME_DOS = 2;
const IO_REPARSE_TAG_MOUNT_POINT = 0xa0000003;
const IO_REPARSE_TAG_SYMLINK = 0xa000000c;

const ROOT_RECORD = 5;
const UPCASE_RECORD = 10;
const VOLUME_RECORD = 3;
const FIRST_USER_RECORD = 24;

const MAX_RUNS = 1_000_000;
const MAX_ATTRIBUTE_LIST = 1 << 20;
const MAX_EXTENSION_RECORDS = 4096;
const MAX_INDEX_DEPTH = 32;
const MAX_INDEX_BLOCKS = 1 << 20;
const MAX_SYMLINK = 64 * 1024;
const RECORD_CACHE = 2048;
const FILETIME_EPOCH_DIFF_MS = 11644473600000;
const INTERIX_SYMLINK = Buffer.from('IntxLNK\x01', 'latin1');

interface Boot {
  sectorSize: number;
  clusterSize: number;
  totalClusters: number;
  mftLcn: number;
  recordSize: number;
  indexBlockSize: number;
}

/** One attribute of a record (or of its extension records). */
interface Attr {
  type: number;
  name: string;
  flags: number;
  resident: boolean;
  /** Resident: the value. */
  value?: Buffer;
  /** Non-resident: the raw header fields. */
  lowestVcn: number;
  highestVcn: number;
  compressionUnit: number;
  allocatedSize: number;
  dataSize: number;
  initializedSize: number;
  mappingPairs?: Buffer;
  /** The record it lies in. */
  record: number;
}

interface MftRecord {
  number: number;
  flags: number;
  baseRef: number;
  attrs: Attr[];
}

/** A run of clusters: lcn -1 is a hole. */
interface Run {
  vcn: number;
  length: number;
  lcn: number;
}

/** A non-resident stream: its runs, sorted by vcn, covering [0, totalVcns). */
interface Stream {
  runs: Run[];
  dataSize: number;
  initializedSize: number;
  /** Clusters per compression unit, 0 when not compressed. */
  cuClusters: number;
}

function fsErr(what: string, why: string): FileSystemError {
  return new FileSystemError(what, why);
}

function toSafe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw fsErr(what, `${v} is too large`);
  return Number(v);
}

function mftRef(v: bigint): number {
  return Number(v & 0xffffffffffffn);
}

function filetimeMs(v: bigint): number | undefined {
  if (v === 0n) return undefined;
  return Number(v / 10000n) - FILETIME_EPOCH_DIFF_MS;
}


/** Applies and verifies the update sequence array fix-ups of a 'FILE' or 'INDX' record in place. */
function applyFixups(buf: Buffer, magic: string, what: string): void {
  if (buf.toString('latin1', 0, 4) !== magic) throw fsErr(what, `bad magic '${buf.toString('latin1', 0, 4).replace(/[^\x20-\x7e]/g, '?')}' (expected '${magic}')`);
  const usaOfs = buf.readUInt16LE(4);
  const usaCount = buf.readUInt16LE(6);
  const sectors = buf.length / 512;
  if (usaCount !== sectors + 1 || usaOfs < 8 || usaOfs + usaCount * 2 > buf.length || usaOfs % 2 !== 0) throw fsErr(what, `bad update sequence array (offset ${usaOfs}, count ${usaCount}, ${sectors} sectors)`);
  const usn = buf.readUInt16LE(usaOfs);
  for (let i = 0; i < sectors; i++) {
    const end = (i + 1) * 512 - 2;
    if (buf.readUInt16LE(end) !== usn) throw fsErr(what, `update sequence mismatch in sector ${i} (a torn or damaged write)`);
    buf.writeUInt16LE(buf.readUInt16LE(usaOfs + 2 + i * 2), end);
  }
}

function parseBoot(b: Buffer, volumeSize: number): Boot {
  if (!isNtfs(b)) throw fsErr('NTFS boot sector', "no 'NTFS    ' OEM id");
  const sectorSize = b.readUInt16LE(0x0b);
  if (sectorSize < 256 || sectorSize > 4096 || (sectorSize & (sectorSize - 1)) !== 0) throw fsErr('NTFS boot sector', `bad bytes per sector ${sectorSize}`);
  const spcRaw = b[0x0d]!;
  const spc = spcRaw > 0x80 ? 2 ** (256 - spcRaw) : spcRaw;
  if (spc === 0 || (spc & (spc - 1)) !== 0 || spc * sectorSize > 2 * 1024 * 1024) throw fsErr('NTFS boot sector', `bad sectors per cluster ${spcRaw}`);
  const clusterSize = spc * sectorSize;
  const totalSectors = toSafe(b.readBigUInt64LE(0x28), 'NTFS total sectors');
  const totalClusters = Math.floor(Math.min(totalSectors * sectorSize, volumeSize) / clusterSize);
  const mftLcn = toSafe(b.readBigUInt64LE(0x30), 'NTFS $MFT cluster');
  if (mftLcn >= totalClusters) throw fsErr('NTFS boot sector', `$MFT cluster ${mftLcn} lies outside the volume of ${totalClusters} clusters`);
  const size = (v: number, what: string): number => {
    const s = v >= 0x80 ? v - 256 : v;
    let n: number;
    if (s < 0) {
      if (-s > 20 || -s < 9) throw fsErr('NTFS boot sector', `bad ${what} size 2^${-s}`);
      n = 2 ** -s;
    } else {
      if (s === 0 || s > 64) throw fsErr('NTFS boot sector', `bad clusters per ${what} ${s}`);
      n = s * clusterSize;
    }
    if (n < 512 || n > 1024 * 1024 || (n & (n - 1)) !== 0) throw fsErr('NTFS boot sector', `bad ${what} size ${n}`);
    return n;
  };
  const recordSize = size(b[0x40]!, 'MFT record');
  const indexBlockSize = size(b[0x44]!, 'index record');
  return { sectorSize, clusterSize, totalClusters, mftLcn, recordSize, indexBlockSize };
}

/** Decodes a runlist (mapping pairs) starting at `startVcn`, appending to `out`. */
function decodeRuns(mp: Buffer, startVcn: number, highestVcn: number, totalClusters: number, out: Run[], what: string): void {
  let pos = 0;
  let vcn = startVcn;
  let lcn = 0;
  while (pos < mp.length) {
    const h = mp[pos]!;
    if (h === 0) break;
    const lenSize = h & 0xf;
    const ofsSize = h >> 4;
    if (lenSize === 0 || lenSize > 8 || ofsSize > 8 || pos + 1 + lenSize + ofsSize > mp.length) throw fsErr(what, `bad runlist header 0x${h.toString(16)} at ${pos}`);
    const length = Number(readIntLE(mp, pos + 1, lenSize, false));
    if (length <= 0 || !Number.isSafeInteger(length)) throw fsErr(what, `bad run length ${length}`);
    let runLcn = -1;
    if (ofsSize > 0) {
      lcn += Number(readIntLE(mp, pos + 1 + lenSize, ofsSize, true));
      if (lcn < 0 || lcn + length > totalClusters) throw fsErr(what, `a run of ${length} clusters at cluster ${lcn} lies outside the volume of ${totalClusters} clusters`);
      runLcn = lcn;
    }
    out.push({ vcn, length, lcn: runLcn });
    if (out.length > MAX_RUNS) throw fsErr(what, `more than ${MAX_RUNS} runs`);
    vcn += length;
    if (vcn > highestVcn + 1) throw fsErr(what, `runs reach vcn ${vcn - 1}, past the attribute's highest vcn ${highestVcn}`);
    pos += 1 + lenSize + ofsSize;
  }
}

function readIntLE(b: Buffer, off: number, n: number, signed: boolean): bigint {
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[off + i]!);
  if (signed && n > 0 && (b[off + n - 1]! & 0x80) !== 0) v -= 1n << BigInt(8 * n);
  return v;
}

/** LZNT1: decompresses one compression unit's data into `out` (zero-filled beforehand). */
function lznt1(src: Buffer, out: Buffer, what: string): void {
  let sp = 0;
  let chunkStart = 0;
  while (sp + 2 <= src.length && chunkStart < out.length) {
    const h = src.readUInt16LE(sp);
    if (h === 0) break;
    const size = (h & 0xfff) + 1;
    const end = sp + 2 + size;
    if (end > src.length) throw fsErr(what, 'a compressed chunk runs past its compression unit');
    const chunkEnd = Math.min(chunkStart + 4096, out.length);
    if ((h & 0x8000) === 0) {
      src.copy(out, chunkStart, sp + 2, Math.min(end, sp + 2 + (chunkEnd - chunkStart)));
    } else {
      let p = sp + 2;
      let d = chunkStart;
      while (p < end && d < chunkEnd) {
        const tag = src[p++]!;
        for (let bit = 0; bit < 8 && p < end && d < chunkEnd; bit++) {
          if ((tag & (1 << bit)) === 0) {
            out[d++] = src[p++]!;
          } else {
            if (p + 2 > end) throw fsErr(what, 'a compressed chunk ends inside a back-reference');
            const t = src.readUInt16LE(p);
            p += 2;
            let lg = 0;
            for (let i = d - chunkStart - 1; i >= 0x10; i >>= 1) lg++;
            const back = (t >> (12 - lg)) + 1;
            let len = (t & (0xfff >> lg)) + 3;
            if (back > d - chunkStart) throw fsErr(what, 'a compressed chunk refers before its start');
            if (d + len > chunkEnd) len = chunkEnd - d;
            for (let i = 0; i < len; i++, d++) out[d] = out[d - back]!;
          }
        }
      }
    }
    sp = end;
    chunkStart += 4096;
  }
}

class Ntfs implements FileSystem {
  readonly type = 'ntfs';
  label?: string;
  private mft!: Stream;
  private readonly cache = new Map<number, MftRecord>();
  private upcase?: Uint16Array;

  constructor(
    private readonly vol: Volume,
    private readonly boot: Boot,
  ) {}

  async init(): Promise<void> {
    const b = this.boot;
    // Record 0 read straight from the boot sector's $MFT cluster, then $MFT's runlist for the rest.
    const raw = Buffer.alloc(b.recordSize);
    await this.readVol(raw, b.mftLcn * b.clusterSize, '$MFT record 0');
    const rec0 = this.parseRecord(raw, 0);
    const first = rec0.attrs.filter((a) => a.type === AT_DATA && a.name === '' && !a.resident);
    if (first.length === 0) throw fsErr('$MFT', 'no non-resident $DATA');
    this.mft = this.buildStream(first, '$MFT $DATA', true);
    const list = rec0.attrs.find((a) => a.type === AT_ATTRIBUTE_LIST);
    if (list) {
      // A fragmented $MFT whose runlist continues in extension records (read through the first runs).
      const full = await this.withExtensions(rec0);
      this.mft = this.buildStream(full.filter((a) => a.type === AT_DATA && a.name === '' && !a.resident), '$MFT $DATA');
    }
    const rootRec = await this.record(ROOT_RECORD);
    if ((rootRec.flags & MFT_RECORD_IS_DIRECTORY) === 0) throw fsErr('NTFS root directory', 'record 5 is not a directory');
    try {
      const up = await this.attrs(UPCASE_RECORD);
      const d = up.filter((a) => a.type === AT_DATA && a.name === '');
      if (d.length > 0) {
        const f = this.fileOf(d, '$UpCase');
        if (f.size === 131072) {
          const buf = Buffer.alloc(f.size);
          if ((await f.read(buf, 0)) === buf.length) {
            const t = new Uint16Array(65536);
            for (let i = 0; i < 65536; i++) t[i] = buf.readUInt16LE(i * 2);
            this.upcase = t;
          }
        }
      }
    } catch (e) {
      if (!(e instanceof FileSystemError)) throw e;
    }
    try {
      const v = (await this.attrs(VOLUME_RECORD)).find((a) => a.type === AT_VOLUME_NAME && a.resident);
      if (v?.value && v.value.length > 0) this.label = v.value.toString('utf16le');
    } catch (e) {
      if (!(e instanceof FileSystemError)) throw e;
    }
  }

  private async readVol(buf: Buffer, offset: number, what: string): Promise<void> {
    if (offset < 0 || offset + buf.length > this.vol.size) throw fsErr(what, `a read of ${buf.length} bytes at ${offset} lies outside the volume of ${this.vol.size} bytes`);
    await this.vol.read(buf, offset);
  }

  private parseRecord(buf: Buffer, n: number): MftRecord {
    const what = `MFT record ${n}`;
    applyFixups(buf, 'FILE', what);
    const flags = buf.readUInt16LE(22);
    const attrOfs = buf.readUInt16LE(20);
    const used = buf.readUInt32LE(24);
    if (used > buf.length || attrOfs >= used) throw fsErr(what, `bad header (attributes at ${attrOfs}, ${used} bytes used)`);
    const baseRef = mftRef(buf.readBigUInt64LE(32));
    const attrs: Attr[] = [];
    let p = attrOfs;
    while (p + 4 <= used) {
      const type = buf.readUInt32LE(p);
      if (type === AT_END) break;
      if (p + 16 > used) throw fsErr(what, `an attribute header at ${p} runs past the record`);
      const len = buf.readUInt32LE(p + 4);
      if (len < 16 || p + len > used || len % 8 !== 0) throw fsErr(what, `bad attribute length ${len} at ${p}`);
      const a = buf.subarray(p, p + len);
      const nonRes = a[8]!;
      const nameLen = a[9]!;
      const nameOfs = a.readUInt16LE(10);
      if (nameLen > 0 && nameOfs + nameLen * 2 > len) throw fsErr(what, `an attribute name runs past its attribute at ${p}`);
      const name = nameLen > 0 ? a.toString('utf16le', nameOfs, nameOfs + nameLen * 2) : '';
      const attr: Attr = { type, name, flags: a.readUInt16LE(12), resident: nonRes === 0, lowestVcn: 0, highestVcn: -1, compressionUnit: 0, allocatedSize: 0, dataSize: 0, initializedSize: 0, record: n };
      if (nonRes === 0) {
        if (len < 24) throw fsErr(what, `a resident attribute at ${p} is too short`);
        const vlen = a.readUInt32LE(16);
        const vofs = a.readUInt16LE(20);
        if (vofs + vlen > len) throw fsErr(what, `a resident value runs past its attribute at ${p}`);
        attr.value = Buffer.from(a.subarray(vofs, vofs + vlen));
        attr.dataSize = attr.initializedSize = attr.allocatedSize = vlen;
      } else {
        if (len < 64) throw fsErr(what, `a non-resident attribute at ${p} is too short`);
        attr.lowestVcn = toSafe(a.readBigUInt64LE(16), what);
        attr.highestVcn = Number(a.readBigInt64LE(24));
        const mpOfs = a.readUInt16LE(32);
        attr.compressionUnit = a[34]!;
        attr.allocatedSize = toSafe(a.readBigUInt64LE(40), what);
        attr.dataSize = toSafe(a.readBigUInt64LE(48), what);
        attr.initializedSize = toSafe(a.readBigUInt64LE(56), what);
        if (mpOfs > len || attr.highestVcn < attr.lowestVcn - 1 || !Number.isSafeInteger(attr.highestVcn)) throw fsErr(what, `bad non-resident attribute header at ${p}`);
        attr.mappingPairs = Buffer.from(a.subarray(mpOfs, len));
      }
      attrs.push(attr);
      p += len;
    }
    return { number: n, flags, baseRef, attrs };
  }

  /** MFT record `n` (fix-ups applied), through a bounded cache. */
  async record(n: number): Promise<MftRecord> {
    const hit = this.cache.get(n);
    if (hit) {
      this.cache.delete(n);
      this.cache.set(n, hit);
      return hit;
    }
    const rs = this.boot.recordSize;
    if (!Number.isSafeInteger(n) || n < 0 || (n + 1) * rs > this.mft.dataSize) throw fsErr(`MFT record ${n}`, `outside $MFT (${Math.floor(this.mft.dataSize / rs)} records)`);
    const buf = Buffer.alloc(rs);
    const got = await this.readStream(this.mft, buf, n * rs, `MFT record ${n}`);
    if (got !== rs) throw fsErr(`MFT record ${n}`, 'short read');
    const rec = this.parseRecord(buf, n);
    this.cache.set(n, rec);
    if (this.cache.size > RECORD_CACHE) this.cache.delete(this.cache.keys().next().value!);
    return rec;
  }

  /** The attributes of base record `n`, gathered from its extension records through $ATTRIBUTE_LIST. */
  async attrs(n: number): Promise<Attr[]> {
    const rec = await this.record(n);
    if ((rec.flags & MFT_RECORD_IN_USE) === 0) throw fsErr(`MFT record ${n}`, 'not in use');
    if (rec.baseRef !== 0) throw fsErr(`MFT record ${n}`, 'is an extension record, not a file');
    if (!rec.attrs.some((a) => a.type === AT_ATTRIBUTE_LIST)) return rec.attrs;
    return this.withExtensions(rec);
  }

  private async withExtensions(rec: MftRecord): Promise<Attr[]> {
    const what = `$ATTRIBUTE_LIST of MFT record ${rec.number}`;
    const la = rec.attrs.find((a) => a.type === AT_ATTRIBUTE_LIST)!;
    let list: Buffer;
    if (la.resident) list = la.value!;
    else {
      if (la.dataSize > MAX_ATTRIBUTE_LIST) throw fsErr(what, `${la.dataSize} bytes is too large`);
      const s = this.buildStream([la], what);
      list = Buffer.alloc(la.dataSize);
      if ((await this.readStream(s, list, 0, what)) !== list.length) throw fsErr(what, 'short read');
    }
    const others = new Set<number>();
    for (let p = 0; p + 26 <= list.length; ) {
      const len = list.readUInt16LE(p + 4);
      if (len < 26 || p + len > list.length) throw fsErr(what, `bad entry length ${len} at ${p}`);
      const ref = mftRef(list.readBigUInt64LE(p + 16));
      if (ref !== rec.number) others.add(ref);
      if (others.size > MAX_EXTENSION_RECORDS) throw fsErr(what, `more than ${MAX_EXTENSION_RECORDS} extension records`);
      p += len;
    }
    const out = rec.attrs.filter((a) => a.type !== AT_ATTRIBUTE_LIST);
    for (const r of others) {
      const ext = await this.record(r);
      if ((ext.flags & MFT_RECORD_IN_USE) === 0 || ext.baseRef !== rec.number) throw fsErr(what, `extension record ${r} does not belong to record ${rec.number}`);
      out.push(...ext.attrs);
    }
    return out;
  }

  /** The runs of a non-resident attribute from all its extents. */
  private buildStream(extents: Attr[], what: string, partial = false): Stream {
    const ex = extents.filter((a) => !a.resident).sort((x, y) => x.lowestVcn - y.lowestVcn);
    const first = ex[0];
    if (!first || first.lowestVcn !== 0) throw fsErr(what, 'no extent starting at vcn 0');
    const runs: Run[] = [];
    let next = 0;
    for (const a of ex) {
      if (a.lowestVcn !== next) throw fsErr(what, `extents not contiguous (vcn ${a.lowestVcn}, expected ${next})`);
      decodeRuns(a.mappingPairs!, a.lowestVcn, a.highestVcn, this.boot.totalClusters, runs, what);
      next = runs.length > 0 ? runs[runs.length - 1]!.vcn + runs[runs.length - 1]!.length : 0;
    }
    const cs = this.boot.clusterSize;
    if (first.dataSize > next * cs && !partial) throw fsErr(what, `${first.dataSize} bytes but runs cover only ${next} clusters`);
    const compressed = (first.flags & ATTR_COMPRESSED) !== 0;
    let cuClusters = 0;
    if (compressed) {
      if (first.compressionUnit === 0 || first.compressionUnit > 8) throw fsErr(what, `bad compression unit 2^${first.compressionUnit}`);
      cuClusters = 1 << first.compressionUnit;
      if (cuClusters * cs > 4 * 1024 * 1024) throw fsErr(what, 'compression unit too large');
    }
    return { runs, dataSize: first.dataSize, initializedSize: Math.min(first.initializedSize, first.dataSize), cuClusters };
  }

  private findRun(s: Stream, vcn: number): Run | undefined {
    const r = s.runs;
    let lo = 0;
    let hi = r.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const m = r[mid]!;
      if (vcn < m.vcn) hi = mid - 1;
      else if (vcn >= m.vcn + m.length) lo = mid + 1;
      else return m;
    }
    return undefined;
  }

  /** Reads raw (uncompressed) clusters of a stream; holes and unmapped parts read as zeros. */
  private async readRaw(s: Stream, buf: Buffer, pos: number, what: string): Promise<void> {
    const cs = this.boot.clusterSize;
    let done = 0;
    while (done < buf.length) {
      const at = pos + done;
      const vcn = Math.floor(at / cs);
      const run = this.findRun(s, vcn);
      const inRun = run ? (run.vcn + run.length) * cs - at : cs - (at % cs);
      const n = Math.min(buf.length - done, inRun);
      if (!run || run.lcn < 0) buf.fill(0, done, done + n);
      else await this.readVol(buf.subarray(done, done + n), (run.lcn + (vcn - run.vcn)) * cs + (at % cs), what);
      done += n;
    }
  }

  /** Reads a stream's data at `pos` (up to its size, zeros past initialized size); returns the count. */
  async readStream(s: Stream, buf: Buffer, pos: number, what: string, cuCache?: { cu: number; data: Buffer }): Promise<number> {
    if (pos >= s.dataSize || buf.length === 0) return 0;
    const len = Math.min(buf.length, s.dataSize - pos);
    const out = buf.subarray(0, len);
    if (s.cuClusters === 0) await this.readRaw(s, out, pos, what);
    else {
      const cuBytes = s.cuClusters * this.boot.clusterSize;
      let done = 0;
      while (done < len) {
        const at = pos + done;
        const cu = Math.floor(at / cuBytes);
        let data: Buffer;
        if (cuCache && cuCache.cu === cu) data = cuCache.data;
        else {
          data = await this.readUnit(s, cu, what);
          if (cuCache) {
            cuCache.cu = cu;
            cuCache.data = data;
          }
        }
        const off = at - cu * cuBytes;
        const n = Math.min(len - done, cuBytes - off);
        data.copy(out, done, off, off + n);
        done += n;
      }
    }
    if (pos + len > s.initializedSize) out.fill(0, Math.max(0, s.initializedSize - pos));
    return len;
  }

  /** One compression unit, decompressed: all holes → zeros, all allocated → stored raw, else LZNT1. */
  private async readUnit(s: Stream, cu: number, what: string): Promise<Buffer> {
    const cs = this.boot.clusterSize;
    const first = cu * s.cuClusters;
    let allocated = 0;
    let sawHole = false;
    for (let v = first; v < first + s.cuClusters; ) {
      const run = this.findRun(s, v);
      const n = run ? Math.min(run.vcn + run.length, first + s.cuClusters) - v : 1;
      if (run && run.lcn >= 0) {
        if (sawHole) throw fsErr(what, `compression unit ${cu} has data after a hole`);
        allocated += n;
      } else sawHole = true;
      v += n;
    }
    const out = Buffer.alloc(s.cuClusters * cs);
    if (allocated === 0) return out;
    if (allocated === s.cuClusters) {
      await this.readRaw(s, out, first * cs, what);
      return out;
    }
    const src = Buffer.alloc(allocated * cs);
    await this.readRaw(s, src, first * cs, what);
    lznt1(src, out, `${what}, compression unit ${cu}`);
    return out;
  }

  /** An FsFile over the unnamed $DATA extents (resident or not). */
  fileOf(extents: Attr[], what: string): FsFile {
    const res = extents.find((a) => a.resident);
    if (res) {
      const v = res.value!;
      return {
        size: v.length,
        read: async (buf, position) => {
          if (position >= v.length) return 0;
          return v.copy(buf, 0, position, Math.min(v.length, position + buf.length));
        },
      };
    }
    if (extents.some((a) => (a.flags & ATTR_ENCRYPTED) !== 0)) throw fsErr(what, 'encrypted (EFS) data cannot be read');
    const s = this.buildStream(extents, what);
    const cuCache = { cu: -1, data: Buffer.alloc(0) };
    return {
      size: s.dataSize,
      read: (buf, position) => {
        if (!Number.isSafeInteger(position) || position < 0) throw fsErr(what, `bad position ${position}`);
        return this.readStream(s, buf, position, what, cuCache);
      },
    };
  }

  private upper(name: string): string {
    const t = this.upcase;
    if (!t) return name.toUpperCase();
    let out = '';
    for (let i = 0; i < name.length; i++) out += String.fromCharCode(t[name.charCodeAt(i)]!);
    return out;
  }

  private compareNames(a: string, b: string): number {
    const ua = this.upper(a);
    const ub = this.upper(b);
    const n = Math.min(ua.length, ub.length);
    for (let i = 0; i < n; i++) {
      const d = ua.charCodeAt(i) - ub.charCodeAt(i);
      if (d !== 0) return d;
    }
    return ua.length - ub.length;
  }

  /** Parses the index entries of a node (an index header at `hdr`); returns them with their subnode VCNs. */
  private parseNode(b: Buffer, hdr: number, what: string): { ref: number; name: string; ns: number; sub?: number }[] {
    if (hdr + 16 > b.length) throw fsErr(what, 'index header runs past its block');
    const first = hdr + b.readUInt32LE(hdr);
    const end = hdr + b.readUInt32LE(hdr + 4);
    if (first < hdr + 16 || end > b.length || first > end) throw fsErr(what, `bad index header (entries ${first}..${end} of ${b.length})`);
    const out: { ref: number; name: string; ns: number; sub?: number }[] = [];
    let p = first;
    for (;;) {
      if (p + 16 > end) throw fsErr(what, 'index entries run past their node without an end entry');
      const len = b.readUInt16LE(p + 8);
      const keyLen = b.readUInt16LE(p + 10);
      const flags = b.readUInt16LE(p + 12);
      if (len < 16 || p + len > end || len % 8 !== 0) throw fsErr(what, `bad index entry length ${len} at ${p}`);
      let sub: number | undefined;
      if (flags & INDEX_ENTRY_NODE) {
        if (len < 24) throw fsErr(what, `an index entry at ${p} is too short for a subnode`);
        sub = toSafe(b.readBigUInt64LE(p + len - 8), what);
      }
      let name = '';
      let ns = 0;
      if ((flags & INDEX_ENTRY_END) === 0) {
        if (keyLen < 66 || 16 + keyLen > len) throw fsErr(what, `bad index key length ${keyLen} at ${p}`);
        const nl = b[p + 16 + 64]!;
        if (66 + nl * 2 > keyLen) throw fsErr(what, `a name runs past its key at ${p}`);
        ns = b[p + 16 + 65]!;
        name = b.toString('utf16le', p + 16 + 66, p + 16 + 66 + nl * 2);
      }
      out.push({ ref: mftRef(b.readBigUInt64LE(p)), name, ns, sub });
      if (flags & INDEX_ENTRY_END) break;
      p += len;
    }
    return out;
  }

  private async dirIndex(n: number, what: string): Promise<{ root: Buffer; alloc?: Stream; blockSize: number; vcnUnit: number }> {
    const attrs = await this.attrs(n);
    const root = attrs.find((a) => a.type === AT_INDEX_ROOT && a.name === '$I30' && a.resident);
    if (!root) throw fsErr(what, 'no $I30 $INDEX_ROOT');
    const v = root.value!;
    if (v.length < 32) throw fsErr(what, '$INDEX_ROOT too short');
    const blockSize = v.readUInt32LE(8);
    if (blockSize < 512 || blockSize > 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0) throw fsErr(what, `bad index block size ${blockSize}`);
    const vcnUnit = blockSize >= this.boot.clusterSize ? this.boot.clusterSize : 512;
    const allocExt = attrs.filter((a) => a.type === AT_INDEX_ALLOCATION && a.name === '$I30');
    const alloc = allocExt.length > 0 ? this.buildStream(allocExt, `${what} $INDEX_ALLOCATION`) : undefined;
    return { root: v, alloc, blockSize, vcnUnit };
  }

  private async indexBlock(ix: { alloc?: Stream; blockSize: number; vcnUnit: number }, vcn: number, what: string): Promise<Buffer> {
    if (!ix.alloc) throw fsErr(what, 'a subnode but no $INDEX_ALLOCATION');
    const pos = vcn * ix.vcnUnit;
    if (pos + ix.blockSize > ix.alloc.dataSize) throw fsErr(what, `index block at vcn ${vcn} lies outside $INDEX_ALLOCATION`);
    const b = Buffer.alloc(ix.blockSize);
    await this.readStream(ix.alloc, b, pos, what);
    applyFixups(b, 'INDX', `${what} index block ${vcn}`);
    if (toSafe(b.readBigUInt64LE(16), what) !== vcn) throw fsErr(what, `index block at vcn ${vcn} says it is at vcn ${b.readBigUInt64LE(16)}`);
    return b;
  }

  /** All entries of directory record `n` (B+tree walked in order; DOS names dropped). */
  private async dirEntries(n: number, what: string): Promise<{ ref: number; name: string }[]> {
    const ix = await this.dirIndex(n, what);
    const out: { ref: number; name: string }[] = [];
    let blocks = 0;
    const seen = new Set<number>();
    const walk = async (b: Buffer, hdr: number, depth: number): Promise<void> => {
      if (depth > MAX_INDEX_DEPTH) throw fsErr(what, `index tree deeper than ${MAX_INDEX_DEPTH}`);
      for (const e of this.parseNode(b, hdr, what)) {
        if (e.sub !== undefined) {
          if (seen.has(e.sub)) throw fsErr(what, `index block ${e.sub} reached twice (a loop)`);
          seen.add(e.sub);
          if (++blocks > MAX_INDEX_BLOCKS) throw fsErr(what, 'too many index blocks');
          await walk(await this.indexBlock(ix, e.sub, what), 24, depth + 1);
        }
        if (e.name !== '' && e.ns !== FILE_NAME_DOS) out.push({ ref: e.ref, name: e.name });
      }
    };
    await walk(ix.root, 16, 0);
    return out;
  }

  /** Looks `name` up in directory record `n` by descending the B+tree; exact case preferred. */
  private async lookup(n: number, name: string, what: string): Promise<{ ref: number; name: string } | undefined> {
    const ix = await this.dirIndex(n, what);
    let node = ix.root;
    let hdr = 16;
    const seen = new Set<number>();
    let found: { ref: number; name: string } | undefined;
    for (let depth = 0; depth <= MAX_INDEX_DEPTH; depth++) {
      let next: number | undefined;
      let descended = false;
      for (const e of this.parseNode(node, hdr, what)) {
        const c = e.name === '' ? -1 : this.compareNames(name, e.name);
        if (c === 0) {
          if (e.name === name) return { ref: e.ref, name: e.name };
          found ??= { ref: e.ref, name: e.name };
          // Names equal but for case: others may follow (or lie in the subnode before this one).
          if (e.sub !== undefined && !seen.has(e.sub)) {
            const sub = await this.subtreeExact(ix, e.sub, name, what, seen, depth + 1);
            if (sub) return sub;
          }
          continue;
        }
        if (c < 0) {
          next = e.sub;
          descended = true;
          break;
        }
      }
      if (!descended || next === undefined) return found;
      if (seen.has(next)) throw fsErr(what, `index block ${next} reached twice (a loop)`);
      seen.add(next);
      node = await this.indexBlock(ix, next, what);
      hdr = 24;
    }
    throw fsErr(what, `index tree deeper than ${MAX_INDEX_DEPTH}`);
  }

  private async subtreeExact(ix: { alloc?: Stream; blockSize: number; vcnUnit: number }, vcn: number, name: string, what: string, seen: Set<number>, depth: number): Promise<{ ref: number; name: string } | undefined> {
    if (depth > MAX_INDEX_DEPTH) throw fsErr(what, `index tree deeper than ${MAX_INDEX_DEPTH}`);
    seen.add(vcn);
    const b = await this.indexBlock(ix, vcn, what);
    for (const e of this.parseNode(b, 24, what)) {
      if (e.name === name) return { ref: e.ref, name: e.name };
      if (e.sub !== undefined && !seen.has(e.sub) && (e.name === '' || this.compareNames(name, e.name) <= 0)) {
        const r = await this.subtreeExact(ix, e.sub, name, what, seen, depth + 1);
        if (r) return r;
      }
    }
    return undefined;
  }

  private async resolve(path: string): Promise<{ ref: number; name: string }> {
    let cur = { ref: ROOT_RECORD, name: '' };
    const parts = splitFsPath(path);
    for (let i = 0; i < parts.length; i++) {
      const rec = await this.record(cur.ref);
      if ((rec.flags & MFT_RECORD_IS_DIRECTORY) === 0) throw new FsNotFoundError(path, 'not a directory');
      if (i > 0 && (await this.info(cur.ref, cur.name)).type === 'symlink') throw new FsNotFoundError(path, 'a symlink on the path');
      const next = await this.lookup(cur.ref, parts[i]!, `directory '/${parts.slice(0, i).join('/')}'`);
      if (!next) throw new FsNotFoundError(path);
      cur = next;
    }
    return cur;
  }

  /** Type, size and mtime of record `n`; plus the symlink target when it is one. */
  private async info(n: number, name: string): Promise<FsEntry & { target?: string }> {
    const attrs = await this.attrs(n);
    const rec = await this.record(n);
    const si = attrs.find((a) => a.type === AT_STANDARD_INFORMATION && a.resident);
    let mtimeMs: number | undefined;
    let fileAttrs = 0;
    if (si?.value && si.value.length >= 36) {
      mtimeMs = filetimeMs(si.value.readBigUInt64LE(8));
      fileAttrs = si.value.readUInt32LE(32);
    }
    const isDir = (rec.flags & MFT_RECORD_IS_DIRECTORY) !== 0;
    const data = attrs.filter((a) => a.type === AT_DATA && a.name === '');
    const dataSize = data.find((a) => a.resident || a.lowestVcn === 0)?.dataSize ?? 0;
    let type: EntryType = isDir ? 'dir' : 'file';
    let target: string | undefined;
    const rp = attrs.find((a) => a.type === AT_REPARSE_POINT);
    if (rp || (fileAttrs & FILE_ATTR_REPARSE_POINT) !== 0) {
      target = rp ? await this.reparseTarget(rp, `reparse point of MFT record ${n}`) : undefined;
      type = target !== undefined ? 'symlink' : 'other';
    } else if (!isDir && (fileAttrs & FILE_ATTR_SYSTEM) !== 0 && dataSize >= 10 && dataSize <= MAX_SYMLINK && data.length > 0) {
      // An Interix symlink (what ntfs-3g makes): "IntxLNK\1" and the UTF-16 target as the data.
      const f = this.fileOf(data, `MFT record ${n}`);
      const b = Buffer.alloc(f.size);
      await f.read(b, 0);
      if (b.subarray(0, 8).equals(INTERIX_SYMLINK)) {
        type = 'symlink';
        target = b.toString('utf16le', 8, 8 + ((b.length - 8) & ~1));
      }
    }
    const size = type === 'symlink' ? Buffer.byteLength(target ?? '') : type === 'dir' ? 0 : dataSize;
    return { name, type, size, mtimeMs, id: n, ...(target !== undefined ? { target } : {}) };
  }

  private async reparseTarget(rp: Attr, what: string): Promise<string | undefined> {
    let v: Buffer;
    if (rp.resident) v = rp.value!;
    else {
      if (rp.dataSize > MAX_SYMLINK) return undefined;
      v = Buffer.alloc(rp.dataSize);
      await this.readStream(this.buildStream([rp], what), v, 0, what);
    }
    if (v.length < 8) return undefined;
    const tag = v.readUInt32LE(0);
    let base: number;
    if (tag === IO_REPARSE_TAG_SYMLINK) base = 20;
    else if (tag === IO_REPARSE_TAG_MOUNT_POINT) base = 16;
    else return undefined;
    if (v.length < base) throw fsErr(what, 'reparse data too short');
    const str = (ofs: number, len: number): string => {
      if (base + ofs + len > v.length) throw fsErr(what, 'a reparse path runs past its data');
      return v.toString('utf16le', base + ofs, base + ofs + len);
    };
    const print = str(v.readUInt16LE(12), v.readUInt16LE(14));
    const subst = str(v.readUInt16LE(8), v.readUInt16LE(10));
    const t = print !== '' ? print : subst.replace(/^\\\?\?\\/, '');
    const relative = tag === IO_REPARSE_TAG_SYMLINK && (v.readUInt32LE(16) & 1) !== 0;
    return relative ? t.replace(/\\/g, '/') : t;
  }

  async stat(path: string): Promise<FsEntry> {
    const r = await this.resolve(path);
    const { target: _t, ...e } = await this.info(r.ref, r.name);
    return e;
  }

  async list(path: string): Promise<FsEntry[]> {
    const r = await this.resolve(path);
    const e = await this.info(r.ref, r.name);
    if (e.type !== 'dir') throw new FsNotFoundError(path, 'not a directory');
    const out: FsEntry[] = [];
    for (const d of await this.dirEntries(r.ref, `directory '${path}'`)) {
      if (r.ref === ROOT_RECORD && (d.ref === ROOT_RECORD || (d.ref < FIRST_USER_RECORD && d.name.startsWith('$')))) continue;
      const { target: _t, ...x } = await this.info(d.ref, d.name);
      out.push(x);
    }
    return out;
  }

  async readlink(path: string): Promise<string> {
    const r = await this.resolve(path);
    const e = await this.info(r.ref, r.name);
    if (e.type !== 'symlink' || e.target === undefined) throw new FsNotFoundError(path, 'not a symlink');
    return e.target;
  }

  async open(path: string): Promise<FsFile> {
    const r = await this.resolve(path);
    const e = await this.info(r.ref, r.name);
    if (e.type !== 'file') throw new FsNotFoundError(path, 'not a regular file');
    const data = (await this.attrs(r.ref)).filter((a) => a.type === AT_DATA && a.name === '');
    if (data.length === 0) return { size: 0, read: async () => 0 };
    return this.fileOf(data, `'${path}'`);
  }
}

/** The 'NTFS    ' OEM id at offset 3 of the boot sector. */
export function isNtfs(first512: Buffer): boolean {
  return first512.length >= 11 && first512.toString('latin1', 3, 11) === 'NTFS    ';
}

export async function openNtfs(volume: Volume): Promise<FileSystem> {
  if (volume.size < 512) throw fsErr('NTFS boot sector', 'the volume is smaller than a sector');
  const b = Buffer.alloc(512);
  await volume.read(b, 0);
  const fs = new Ntfs(volume, parseBoot(b, volume.size));
  await fs.init();
  return fs;
}
