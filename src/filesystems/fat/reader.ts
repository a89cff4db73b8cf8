// A read-only FAT12/FAT16/FAT32 reader with VFAT long names (Microsoft's "FAT: General Overview of
// On-Disk Format"). The type follows from the cluster count, as Microsoft's rule says (< 4085 FAT12,
// < 65525 FAT16, else FAT32), never from the label text. The FAT is read sector by sector as chains are
// followed (a bounded cache), a file's chain is walked only as far as a read needs, and a chain longer
// than the volume's cluster count (a loop) or pointing outside the data area is an error.
// Times are local time on disk with no zone: they are taken as UTC.
import { FileSystemError, FsNotFoundError, type FileSystem, type FsEntry, type FsFile, type Volume } from '../types.js';

const MAX_DIR_ENTRIES = 65536;
const FAT_CACHE_SECTORS = 512;

interface Geometry {
  type: 'fat12' | 'fat16' | 'fat32';
  bytesPerSector: number;
  clusterBytes: number;
  fatOffset: number;
  rootOffset: number;
  rootEntries: number;
  rootCluster: number;
  dataOffset: number;
  clusterCount: number;
  label?: string;
}

interface DirEntry extends FsEntry {
  firstCluster: number;
}

const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

function bpb(b: Buffer): { bps: number; spc: number; reserved: number; fats: number; rootEntries: number; total: number; fatSize: number } | undefined {
  if (b.length < 512 || b[510] !== 0x55 || b[511] !== 0xaa) return undefined;
  const oem = b.subarray(3, 11).toString('latin1');
  if (oem === 'NTFS    ' || oem === 'EXFAT   ') return undefined;
  const bps = b.readUInt16LE(11);
  const spc = b[13]!;
  const reserved = b.readUInt16LE(14);
  const fats = b[16]!;
  const rootEntries = b.readUInt16LE(17);
  const total = b.readUInt16LE(19) || b.readUInt32LE(32);
  const fatSize = b.readUInt16LE(22) || b.readUInt32LE(36);
  if (!pow2(bps) || bps < 512 || bps > 4096 || !pow2(spc) || reserved === 0 || fats < 1 || fats > 2 || total === 0 || fatSize === 0) return undefined;
  return { bps, spc, reserved, fats, rootEntries, total, fatSize };
}

/** A FAT boot sector: 0x55AA, a plausible BPB, not NTFS or exFAT. */
export function isFat(first512: Buffer): boolean {
  return bpb(first512) !== undefined;
}

function geometry(b: Buffer, volumeSize: number): Geometry {
  const p = bpb(b);
  if (!p) throw new FileSystemError('FAT', 'no valid boot sector (BIOS parameter block)');
  const rootDirSectors = Math.ceil((p.rootEntries * 32) / p.bps);
  const firstData = p.reserved + p.fats * p.fatSize + rootDirSectors;
  if (firstData >= p.total) throw new FileSystemError('FAT', `its data area starts at sector ${firstData}, past its ${p.total} sectors`);
  if (p.total * p.bps > volumeSize + p.bps) throw new FileSystemError('FAT', `it claims ${p.total * p.bps} bytes in a volume of ${volumeSize}`);
  const clusterCount = Math.floor((p.total - firstData) / p.spc);
  const type = clusterCount < 4085 ? 'fat12' : clusterCount < 65525 ? 'fat16' : 'fat32';
  const entryBits = type === 'fat12' ? 12 : type === 'fat16' ? 16 : 32;
  if (Math.ceil(((clusterCount + 2) * entryBits) / 8) > p.fatSize * p.bps) throw new FileSystemError('FAT', `its FAT of ${p.fatSize} sectors cannot hold ${clusterCount} clusters`);
  const labelAt = type === 'fat32' ? 0x47 : 0x2b;
  const sigAt = type === 'fat32' ? 0x42 : 0x26;
  const label = b[sigAt] === 0x29 ? b.subarray(labelAt, labelAt + 11).toString('latin1').trim() : '';
  const rootCluster = type === 'fat32' ? b.readUInt32LE(44) : 0;
  if (type === 'fat32' && (rootCluster < 2 || rootCluster >= clusterCount + 2)) throw new FileSystemError('FAT', `its root directory cluster ${rootCluster} is outside the data area`);
  return {
    type,
    bytesPerSector: p.bps,
    clusterBytes: p.bps * p.spc,
    fatOffset: p.reserved * p.bps,
    rootOffset: (p.reserved + p.fats * p.fatSize) * p.bps,
    rootEntries: type === 'fat32' ? 0 : p.rootEntries,
    rootCluster,
    dataOffset: firstData * p.bps,
    clusterCount,
    ...(label && label !== 'NO NAME' ? { label } : {}),
  };
}

function lfnChecksum(short: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + short[i]!) & 0xff;
  return sum;
}

function shortName(e: Buffer): string {
  const base = Buffer.from(e.subarray(0, 8));
  if (base[0] === 0x05) base[0] = 0xe5;
  let name = base.toString('latin1').trimEnd();
  let ext = e.subarray(8, 11).toString('latin1').trimEnd();
  if (e[12]! & 0x08) name = name.toLowerCase();
  if (e[12]! & 0x10) ext = ext.toLowerCase();
  return ext ? `${name}.${ext}` : name;
}

function fatTime(date: number, time: number): number | undefined {
  if (date === 0) return undefined;
  const t = Date.UTC(1980 + (date >> 9), ((date >> 5) & 15) - 1, date & 31, time >> 11, (time >> 5) & 63, (time & 31) * 2);
  return Number.isNaN(t) ? undefined : t;
}

class FatFile implements FsFile {
  private chain: number[];
  /** The clusters of the chain so far: one seen twice is a loop. */
  private readonly seen = new Set<number>();
  private ended = false;

  constructor(
    private readonly fs: FatFileSystem,
    readonly size: number,
    first: number,
    private readonly path: string,
  ) {
    this.chain = first >= 2 ? [first] : [];
    if (first >= 2) this.seen.add(first);
    else this.ended = true;
  }

  /** The cluster holding byte `i * clusterBytes`, walking the chain only as far as needed. */
  private async cluster(i: number): Promise<number | undefined> {
    while (this.chain.length <= i && !this.ended) {
      if (this.chain.length > this.fs.g.clusterCount) throw new FileSystemError(this.path, 'its cluster chain is longer than the volume has clusters (a loop)');
      const next = await this.fs.next(this.chain[this.chain.length - 1]!, this.path);
      if (next === undefined) this.ended = true;
      else {
        if (this.seen.has(next)) throw new FileSystemError(this.path, `its cluster chain comes back to cluster ${next} (a loop)`);
        this.seen.add(next);
        this.chain.push(next);
      }
    }
    return this.chain[i];
  }

  async read(buf: Buffer, position: number): Promise<number> {
    if (position >= this.size) return 0;
    const want = Math.min(buf.length, this.size - position);
    const cb = this.fs.g.clusterBytes;
    let done = 0;
    while (done < want) {
      const at = position + done;
      const idx = Math.floor(at / cb);
      const c = await this.cluster(idx);
      if (c === undefined) throw new FileSystemError(this.path, `its cluster chain ends before its ${this.size} bytes`);
      // Neighbouring clusters in one read.
      let run = 1;
      while (done + run * cb - (at % cb) < want) {
        const n = await this.cluster(idx + run);
        if (n !== c + run) break;
        run++;
      }
      const len = Math.min(want - done, run * cb - (at % cb));
      await this.fs.vol.read(buf.subarray(done, done + len), this.fs.clusterOffset(c) + (at % cb));
      done += len;
    }
    return done;
  }
}

class FatFileSystem implements FileSystem {
  readonly type: string;
  readonly label?: string;
  private readonly fatCache = new Map<number, Buffer>();

  constructor(
    readonly vol: Volume,
    readonly g: Geometry,
  ) {
    this.type = g.type;
    if (g.label) this.label = g.label;
  }

  clusterOffset(c: number): number {
    return this.g.dataOffset + (c - 2) * this.g.clusterBytes;
  }

  private async fatBytes(offset: number, n: number): Promise<Buffer> {
    const bps = this.g.bytesPerSector;
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      const abs = offset + i;
      const sector = Math.floor(abs / bps);
      let s = this.fatCache.get(sector);
      if (!s) {
        s = Buffer.alloc(bps);
        await this.vol.read(s, this.g.fatOffset + sector * bps);
        if (this.fatCache.size >= FAT_CACHE_SECTORS) this.fatCache.delete(this.fatCache.keys().next().value!);
        this.fatCache.set(sector, s);
      }
      out[i] = s[abs % bps]!;
    }
    return out;
  }

  /** The cluster after `c`, or undefined at the end of the chain. */
  async next(c: number, what: string): Promise<number | undefined> {
    let v: number;
    let eoc: number;
    if (this.g.type === 'fat12') {
      const b = await this.fatBytes(c + (c >> 1), 2);
      const w = b.readUInt16LE(0);
      v = c & 1 ? w >> 4 : w & 0xfff;
      eoc = 0xff8;
    } else if (this.g.type === 'fat16') {
      v = (await this.fatBytes(c * 2, 2)).readUInt16LE(0);
      eoc = 0xfff8;
    } else {
      v = (await this.fatBytes(c * 4, 4)).readUInt32LE(0) & 0x0fffffff;
      eoc = 0x0ffffff8;
    }
    if (v >= eoc) return undefined;
    if (v < 2 || v >= this.g.clusterCount + 2) throw new FileSystemError(what, `its cluster chain points at cluster ${v}, ${v < 2 ? 'which is free or reserved' : 'past the end of the volume'}`);
    return v;
  }

  /** A directory's raw entries: the fixed root of FAT12/16, else its cluster chain (bounded). */
  private async dirBytes(first: number, what: string): Promise<Buffer> {
    if (first === 0 && this.g.type !== 'fat32') {
      const b = Buffer.alloc(this.g.rootEntries * 32);
      await this.vol.read(b, this.g.rootOffset);
      return b;
    }
    const start = first === 0 ? this.g.rootCluster : first;
    if (start < 2 || start >= this.g.clusterCount + 2) throw new FileSystemError(what, `its first cluster ${start} is outside the data area`);
    const f = new FatFile(this, MAX_DIR_ENTRIES * 32, start, what);
    const parts: Buffer[] = [];
    let at = 0;
    const cb = this.g.clusterBytes;
    for (;;) {
      const buf = Buffer.alloc(cb);
      let n: number;
      try {
        n = await f.read(buf, at);
      } catch (err) {
        // A directory's chain ends where it ends: only reads past it fail.
        if (err instanceof FileSystemError && /ends before/.test(err.message)) break;
        throw err;
      }
      if (n === 0) break;
      parts.push(buf.subarray(0, n));
      at += n;
      if (buf.subarray(0, n).some((_, i) => i % 32 === 0 && buf[i] === 0)) break;
      if (at >= MAX_DIR_ENTRIES * 32) throw new FileSystemError(what, `a directory of more than ${MAX_DIR_ENTRIES} entries`);
    }
    return Buffer.concat(parts);
  }

  private async entries(first: number, what: string): Promise<DirEntry[]> {
    const b = await this.dirBytes(first, what);
    const out: DirEntry[] = [];
    let lfn: { parts: string[]; checksum: number } | undefined;
    for (let at = 0; at + 32 <= b.length; at += 32) {
      const e = b.subarray(at, at + 32);
      if (e[0] === 0x00) break;
      if (e[0] === 0xe5) {
        lfn = undefined;
        continue;
      }
      const attr = e[11]!;
      if ((attr & 0x3f) === 0x0f) {
        const seq = e[0]! & 0x1f;
        const chars = Buffer.concat([e.subarray(1, 11), e.subarray(14, 26), e.subarray(28, 32)]);
        let text = chars.toString('utf16le');
        const nul = text.indexOf('\0');
        if (nul >= 0) text = text.slice(0, nul);
        if (e[0]! & 0x40 || !lfn) lfn = { parts: [], checksum: e[13]! };
        if (seq >= 1 && seq <= 20) lfn.parts[seq - 1] = text;
        continue;
      }
      if (attr & 0x08) {
        lfn = undefined;
        continue;
      }
      const short = shortName(e);
      const name = lfn && lfn.checksum === lfnChecksum(e.subarray(0, 11)) && lfn.parts.every((p) => p !== undefined) ? lfn.parts.join('') : short;
      lfn = undefined;
      if (name === '.' || name === '..') continue;
      const firstCluster = (this.g.type === 'fat32' ? e.readUInt16LE(20) << 16 : 0) | e.readUInt16LE(26);
      const dir = (attr & 0x10) !== 0;
      const mtimeMs = fatTime(e.readUInt16LE(24), e.readUInt16LE(22));
      out.push({ name, type: dir ? 'dir' : 'file', size: dir ? 0 : e.readUInt32LE(28), id: firstCluster, firstCluster, ...(mtimeMs !== undefined ? { mtimeMs } : {}) });
    }
    return out;
  }

  private async resolve(path: string): Promise<DirEntry> {
    let cur: DirEntry = { name: '', type: 'dir', size: 0, id: 0, firstCluster: 0 };
    const segs = path.split('/').filter((s) => s !== '' && s !== '.');
    for (const [i, seg] of segs.entries()) {
      if (cur.type !== 'dir') throw new FsNotFoundError(path, `'${segs.slice(0, i).join('/')}' is not a directory`);
      const low = seg.toLowerCase();
      const found = (await this.entries(cur.firstCluster, path)).find((e) => e.name.toLowerCase() === low);
      if (!found) throw new FsNotFoundError(path);
      cur = found;
    }
    return cur;
  }

  async stat(path: string): Promise<FsEntry> {
    const { firstCluster: _f, ...e } = await this.resolve(path);
    return e;
  }

  async list(path: string): Promise<FsEntry[]> {
    const d = await this.resolve(path);
    if (d.type !== 'dir') throw new FsNotFoundError(path, 'not a directory');
    return (await this.entries(d.firstCluster, path)).map(({ firstCluster: _f, ...e }) => e);
  }

  async readlink(path: string): Promise<string> {
    throw new FsNotFoundError(path, 'FAT has no symbolic links');
  }

  async open(path: string): Promise<FsFile> {
    const e = await this.resolve(path);
    if (e.type !== 'file') throw new FsNotFoundError(path, 'not a file');
    if (e.size > 0 && e.firstCluster < 2) throw new FileSystemError(path, `it has ${e.size} bytes but no first cluster`);
    return new FatFile(this, e.size, e.firstCluster, path);
  }
}

export async function openFat(volume: Volume): Promise<FileSystem> {
  if (volume.size < 512) throw new FileSystemError('FAT', 'the volume is smaller than a boot sector');
  const b = Buffer.alloc(512);
  await volume.read(b, 0);
  return new FatFileSystem(volume, geometry(b, volume.size));
}
