// A read-only XFS reader (the on-disk format of "XFS Algorithms & Data Structures", kernel
// Documentation/filesystems/xfs/): v5 (crc=1; ftype, sparse inodes, finobt, reflink, bigtime, nrext64
// change nothing a reader of files needs beyond the fields below) and v4 (crc=0, directory v2).
// Big-endian throughout.
//
// Layout: the volume is divided into agcount allocation groups of agblocks blocks each. A file system
// block number (fsblock) is AG << agblklog | agbno; an inode number is
// AG << (agblklog + inopblog) | agbno << inopblog | index of the inode in its block. An inode's data
// fork is local (the bytes in the inode: short directories, short symlinks), extents (an array of
// 128-bit packed records in the inode) or btree (the root of a bmap btree in the inode, 'BMA3'/'BMAP'
// blocks below). Directories list their entries in data blocks ('XDB3'/'XD2B' for a one-block
// directory, 'XDD3'/'XD2D' in leaf and node directories) at file offsets below 32 GiB; the hash
// leaves and free indexes above that offset are not needed to list or look up by scanning.
//
// Everything is distrusted: every block number is checked against agcount/agblocks/dblocks and the
// volume, btrees are at most MAX_DEPTH deep and walked only forward, metadata blocks go through a
// bounded LRU cache, and file data is read extent by extent at the position asked, never whole.
import { FileSystemError, FsNotFoundError, splitFsPath, type EntryType, type FileSystem, type FsEntry, type FsFile, type Volume } from '../types.js';

const SB_MAGIC = 0x58465342; // 'XFSB'
const INODE_MAGIC = 0x494e; // 'IN'
const BMAP_MAGIC_V4 = 0x424d4150; // 'BMAP'
const BMAP_MAGIC_V5 = 0x424d4133; // 'BMA3'
const DIR_BLOCK_V4 = 0x58443242; // 'XD2B'
const DIR_BLOCK_V5 = 0x58444233; // 'XDB3'
const DIR_DATA_V4 = 0x58443244; // 'XD2D'
const DIR_DATA_V5 = 0x58444433; // 'XDD3'
const SYMLINK_MAGIC = 0x58534c4d; // 'XSLM'

const FMT_LOCAL = 1;
const FMT_EXTENTS = 2;
const FMT_BTREE = 3;

const INCOMPAT_FTYPE = 0x1;
const INCOMPAT_NREXT64 = 0x20;
const V2_FTYPE = 0x200;
const VERSION_MOREBITS = 0x8000;
const DIFLAG_REALTIME = 0x1;
const DIFLAG2_BIGTIME = 0x8;
const DIFLAG2_NREXT64 = 0x10;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

/** Directory data blocks lie below this byte offset of the directory (XFS_DIR2_LEAF_OFFSET). */
const DIR_LEAF_OFFSET = 32 * 2 ** 30;
const MAX_DEPTH = 8;
const CACHE_BLOCKS = 256;
const MAX_SYMLINK = 1024;
const NULL_FSBLOCK = (1n << 64n) - 1n;
const MAX_READ_RUN = 1 << 20;

interface Superblock {
  version: number;
  blockSize: number;
  sectorSize: number;
  dblocks: number;
  agblocks: number;
  agcount: number;
  agblklog: number;
  inodeSize: number;
  inopblog: number;
  rootIno: number;
  dirBlockSize: number;
  ftype: boolean;
  nrext64: boolean;
  label: string;
}

/** One mapping of file blocks to disk: [startoff, startoff + count) at fsblock startBlock. */
interface Extent {
  startoff: number;
  startBlock: number;
  count: number;
  unwritten: boolean;
}

/** What lies at a file block: an extent, or a hole up to `next` (the next extent's startoff, or Infinity). */
type Lookup = { extent: Extent } | { extent?: undefined; next: number };

interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeMs: number;
  format: number;
  flags: number;
  /** The data fork's bytes (a copy, at most an inode's size). */
  fork: Buffer;
  nextents: number;
}

function toSafe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FileSystemError(what, `${v} is too large`);
  return Number(v);
}

function entryType(mode: number): EntryType {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return 'file';
    case S_IFDIR:
      return 'dir';
    case S_IFLNK:
      return 'symlink';
    default:
      return 'other';
  }
}


function parseSuperblock(sb: Buffer): Superblock {
  if (sb.readUInt32BE(0) !== SB_MAGIC) throw new FileSystemError('XFS superblock', `bad magic 0x${sb.readUInt32BE(0).toString(16)} (expected 'XFSB')`);
  const blockSize = sb.readUInt32BE(4);
  const blocklog = sb[120]!;
  if (blockSize < 512 || blockSize > 65536 || 1 << blocklog !== blockSize) throw new FileSystemError('XFS superblock', `bad block size ${blockSize} (log ${blocklog})`);
  const sectorSize = sb.readUInt16BE(102);
  if (sectorSize < 512 || sectorSize > blockSize || (sectorSize & (sectorSize - 1)) !== 0) throw new FileSystemError('XFS superblock', `bad sector size ${sectorSize}`);
  const dblocks = toSafe(sb.readBigUInt64BE(8), 'XFS superblock data block count');
  const agblocks = sb.readUInt32BE(84);
  const agcount = sb.readUInt32BE(88);
  const agblklog = sb[124]!;
  if (agblocks < 1 || agcount < 1 || agblklog > 31 || 2 ** agblklog < agblocks || 2 ** (agblklog - 1) >= agblocks) {
    throw new FileSystemError('XFS superblock', `bad allocation groups (${agcount} of ${agblocks} blocks, agblklog ${agblklog})`);
  }
  if (dblocks > agcount * agblocks || dblocks <= (agcount - 1) * agblocks) throw new FileSystemError('XFS superblock', `${dblocks} blocks do not fit ${agcount} allocation groups of ${agblocks}`);
  const inodeSize = sb.readUInt16BE(104);
  const inodelog = sb[122]!;
  const inopblog = sb[123]!;
  if (inodeSize < 256 || inodeSize > 2048 || 1 << inodelog !== inodeSize || inodeSize > blockSize || 1 << inopblog !== blockSize / inodeSize) {
    throw new FileSystemError('XFS superblock', `bad inode size ${inodeSize} (${1 << inopblog} per block)`);
  }
  const versionnum = sb.readUInt16BE(100);
  const version = versionnum & 0xf;
  if (version !== 4 && version !== 5) throw new FileSystemError('XFS superblock', `unsupported version ${version}`);
  const features2 = versionnum & VERSION_MOREBITS ? sb.readUInt32BE(200) : 0;
  const incompat = version === 5 ? sb.readUInt32BE(216) : 0;
  const dirblklog = sb[192]!;
  if (dirblklog > 16 || blockSize << dirblklog > 65536) throw new FileSystemError('XFS superblock', `bad directory block log ${dirblklog}`);
  const rootIno = toSafe(sb.readBigUInt64BE(56), 'XFS root inode');
  const label = sb.subarray(108, 120).toString('utf8').replace(/\0.*$/s, '');
  // A volume shorter than dblocks (a truncated image) is still opened: what lies inside it is read,
  // and every block past its end is refused when asked for (diskBlock).
  return {
    version,
    blockSize,
    sectorSize,
    dblocks,
    agblocks,
    agcount,
    agblklog,
    inodeSize,
    inopblog,
    rootIno,
    dirBlockSize: blockSize << dirblklog,
    ftype: version === 5 ? (incompat & INCOMPAT_FTYPE) !== 0 : (features2 & V2_FTYPE) !== 0,
    nrext64: (incompat & INCOMPAT_NREXT64) !== 0,
    label,
  };
}

/** Whether the first bytes of a volume are an XFS superblock. */
export function isXfs(first512: Buffer): boolean {
  return first512.length >= 4 && first512.readUInt32BE(0) === SB_MAGIC;
}

class XfsReader implements FileSystem {
  readonly type = 'xfs';
  readonly label: string | undefined;
  private readonly cache = new Map<number, Buffer>();
  private readonly coreSize: number;

  constructor(
    private readonly volume: Volume,
    private readonly sb: Superblock,
  ) {
    this.label = sb.label === '' ? undefined : sb.label;
    this.coreSize = sb.version === 5 ? 176 : 100;
  }

  get blockSize(): number {
    return this.sb.blockSize;
  }

  // ---- blocks ----

  /** File data, read straight from the volume (not cached). */
  readRaw(buf: Buffer, offset: number): Promise<void> {
    return this.volume.read(buf, offset);
  }

  /** The disk block index (in file system blocks) of an fsblock, checked. */
  diskBlock(fsb: number, count: number, what: string): number {
    const { agblklog, agcount, agblocks, dblocks } = this.sb;
    const agno = Math.floor(fsb / 2 ** agblklog);
    const agbno = fsb % 2 ** agblklog;
    if (!Number.isSafeInteger(fsb) || fsb < 0 || agno >= agcount || agbno + count > agblocks) throw new FileSystemError(what, `block ${fsb} (AG ${agno}, block ${agbno}, ${count} long) lies outside the file system`);
    const disk = agno * agblocks + agbno;
    if (disk + count > dblocks || (disk + count) * this.sb.blockSize > this.volume.size) throw new FileSystemError(what, `block ${fsb} (${count} long) lies past the end of the volume`);
    return disk;
  }

  /** One file system block through the LRU cache (metadata). */
  async block(fsb: number, what: string): Promise<Buffer> {
    const disk = this.diskBlock(fsb, 1, what);
    const hit = this.cache.get(disk);
    if (hit) {
      this.cache.delete(disk);
      this.cache.set(disk, hit);
      return hit;
    }
    const buf = Buffer.alloc(this.sb.blockSize);
    await this.volume.read(buf, disk * this.sb.blockSize);
    this.cache.set(disk, buf);
    if (this.cache.size > CACHE_BLOCKS) this.cache.delete(this.cache.keys().next().value!);
    return buf;
  }

  // ---- inodes ----

  async inode(ino: number, path: string): Promise<Inode> {
    const { inopblog, agblklog, inodeSize } = this.sb;
    const what = `XFS inode ${ino} ('${path}')`;
    if (!Number.isSafeInteger(ino) || ino < 0) throw new FileSystemError(what, 'bad inode number');
    const fsb = Math.floor(ino / 2 ** inopblog);
    const index = ino % 2 ** inopblog;
    if (fsb >= 2 ** (agblklog + 32)) throw new FileSystemError(what, 'bad inode number');
    const blk = await this.block(fsb, what);
    const d = blk.subarray(index * inodeSize, (index + 1) * inodeSize);
    if (d.readUInt16BE(0) !== INODE_MAGIC) throw new FileSystemError(what, `bad magic 0x${d.readUInt16BE(0).toString(16)} (expected 'IN')`);
    const version = d[4]!;
    if (version < 1 || version > 3 || (version === 3) !== (this.sb.version === 5)) throw new FileSystemError(what, `bad inode version ${version}`);
    if (version === 3) {
      const self = d.readBigUInt64BE(152);
      if (self !== BigInt(ino)) throw new FileSystemError(what, `the inode records itself as ${self}`);
    }
    const mode = d.readUInt16BE(2);
    const format = d[5]!;
    const flags = d.readUInt16BE(90);
    const flags2 = version === 3 ? d.readBigUInt64BE(120) : 0n;
    const bigtime = (flags2 & BigInt(DIFLAG2_BIGTIME)) !== 0n;
    let mtimeMs: number;
    if (bigtime) {
      const ns = d.readBigUInt64BE(40);
      mtimeMs = Number(ns / 1_000_000n) - 2 ** 31 * 1000;
    } else {
      mtimeMs = d.readInt32BE(40) * 1000 + Math.floor(d.readUInt32BE(44) / 1e6);
    }
    const sizeBig = d.readBigInt64BE(56);
    if (sizeBig < 0n) throw new FileSystemError(what, `negative size ${sizeBig}`);
    const size = toSafe(sizeBig, `${what} size`);
    const nextents =
      this.sb.nrext64 && (flags2 & BigInt(DIFLAG2_NREXT64)) !== 0n ? toSafe(d.readBigUInt64BE(24), `${what} extent count`) : d.readUInt32BE(76);
    const literal = inodeSize - this.coreSize;
    const forkoff = d[82]! * 8;
    if (forkoff > literal) throw new FileSystemError(what, `attribute fork offset ${forkoff} past the inode's end`);
    const forkSize = forkoff === 0 ? literal : forkoff;
    const fork = Buffer.from(d.subarray(this.coreSize, this.coreSize + forkSize));
    return { ino, mode, uid: d.readUInt32BE(8), gid: d.readUInt32BE(12), size, mtimeMs, format, flags, fork, nextents };
  }

  // ---- data fork mapping ----

  private unpack(rec: Buffer, at: number): Extent {
    const l0 = rec.readBigUInt64BE(at);
    const l1 = rec.readBigUInt64BE(at + 8);
    return {
      unwritten: l0 >> 63n === 1n,
      startoff: Number((l0 & ((1n << 63n) - 1n)) >> 9n),
      startBlock: Number(((l0 & 0x1ffn) << 43n) | (l1 >> 21n)),
      count: Number(l1 & 0x1fffffn),
    };
  }

  /** Where file block `fb` of an inode's data fork lies. */
  async lookup(inode: Inode, fb: number, what: string): Promise<Lookup> {
    if (inode.format === FMT_EXTENTS) {
      const n = inode.nextents;
      if (n * 16 > inode.fork.length) throw new FileSystemError(what, `${n} extents do not fit the inode`);
      // Extents are sorted by startoff; binary search for the last one starting at or before fb.
      let lo = 0;
      let hi = n - 1;
      let found = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (this.unpack(inode.fork, mid * 16).startoff <= fb) {
          found = mid;
          lo = mid + 1;
        } else hi = mid - 1;
      }
      if (found >= 0) {
        const e = this.unpack(inode.fork, found * 16);
        if (fb < e.startoff + e.count) return { extent: e };
      }
      return { next: found + 1 < n ? this.unpack(inode.fork, (found + 1) * 16).startoff : Infinity };
    }
    if (inode.format === FMT_BTREE) return this.lookupBtree(inode, fb, what);
    throw new FileSystemError(what, `data fork format ${inode.format} has no blocks`);
  }

  private async lookupBtree(inode: Inode, fb: number, what: string): Promise<Lookup> {
    const root = inode.fork;
    let level = root.readUInt16BE(0);
    let numrecs = root.readUInt16BE(2);
    const rootMax = Math.floor((root.length - 4) / 16);
    if (level < 1 || level > MAX_DEPTH) throw new FileSystemError(what, `bmap btree root level ${level} (at most ${MAX_DEPTH})`);
    if (numrecs < 1 || numrecs > rootMax) throw new FileSystemError(what, `bmap btree root has ${numrecs} records (at most ${rootMax})`);
    const v5 = this.sb.version === 5;
    const hdr = v5 ? 72 : 24;
    const magic = v5 ? BMAP_MAGIC_V5 : BMAP_MAGIC_V4;
    // A node holds keys (8 bytes) and pointers (8 bytes), a leaf 16-byte records: the same count.
    const nodeMax = Math.floor((this.sb.blockSize - hdr) / 16);
    const leafMax = nodeMax;
    // The node: keys at keyAt, pointers at ptrAt, numrecs of each.
    let node = root;
    let keyAt = 4;
    let ptrAt = 4 + rootMax * 8;
    for (let depth = 0; ; depth++) {
      let i = 0;
      for (let k = 1; k < numrecs; k++) {
        if (toSafe(node.readBigUInt64BE(keyAt + k * 8), `${what} bmap key`) <= fb) i = k;
        else break;
      }
      const ptr = node.readBigUInt64BE(ptrAt + i * 8);
      const child = await this.block(toSafe(ptr, `${what} bmap pointer`), `${what} bmap btree block ${ptr}`);
      if (child.readUInt32BE(0) !== magic) throw new FileSystemError(`${what} bmap btree block ${ptr}`, `bad magic 0x${child.readUInt32BE(0).toString(16)}`);
      const childLevel = child.readUInt16BE(4);
      if (childLevel !== level - 1) throw new FileSystemError(`${what} bmap btree block ${ptr}`, `level ${childLevel} below a node of level ${level}`);
      if (depth + 1 >= MAX_DEPTH && childLevel > 0) throw new FileSystemError(what, `bmap btree deeper than ${MAX_DEPTH}`);
      level = childLevel;
      numrecs = child.readUInt16BE(6);
      if (level === 0) return this.searchLeaf(child, numrecs, leafMax, hdr, magic, fb, what);
      if (numrecs < 1 || numrecs > nodeMax) throw new FileSystemError(`${what} bmap btree block ${ptr}`, `${numrecs} records (at most ${nodeMax})`);
      node = child;
      keyAt = hdr;
      ptrAt = hdr + nodeMax * 8;
    }
  }

  private async searchLeaf(leaf: Buffer, numrecs: number, leafMax: number, hdr: number, magic: number, fb: number, what: string): Promise<Lookup> {
    if (numrecs > leafMax) throw new FileSystemError(`${what} bmap btree leaf`, `${numrecs} records (at most ${leafMax})`);
    let found = -1;
    let lo = 0;
    let hi = numrecs - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.unpack(leaf, hdr + mid * 16).startoff <= fb) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found >= 0) {
      const e = this.unpack(leaf, hdr + found * 16);
      if (fb < e.startoff + e.count) return { extent: e };
    }
    if (found + 1 < numrecs) return { next: this.unpack(leaf, hdr + (found + 1) * 16).startoff };
    // Past this leaf's last record: the next extent, if any, starts the right sibling (one hop only).
    const right = leaf.readBigUInt64BE(16); // bb_rightsib
    if (right === NULL_FSBLOCK) return { next: Infinity };
    const sib = await this.block(toSafe(right, `${what} bmap sibling`), `${what} bmap btree block ${right}`);
    if (sib.readUInt32BE(0) !== magic || sib.readUInt16BE(4) !== 0) throw new FileSystemError(`${what} bmap btree block ${right}`, 'bad magic or level for a leaf sibling');
    const n = sib.readUInt16BE(6);
    if (n === 0) return { next: Infinity };
    if (n > leafMax) throw new FileSystemError(`${what} bmap btree block ${right}`, `${n} records (at most ${leafMax})`);
    const first = this.unpack(sib, hdr);
    if (first.startoff <= fb) throw new FileSystemError(`${what} bmap btree block ${right}`, 'records out of order');
    return { next: first.startoff };
  }

  /** The extent containing file block fb (checked against the volume), or a hole. */
  async mapBlock(inode: Inode, fb: number, what: string): Promise<Lookup> {
    const r = await this.lookup(inode, fb, what);
    if (r.extent) {
      const e = r.extent;
      if (e.count === 0) throw new FileSystemError(what, `an empty extent at file block ${e.startoff}`);
      if (!e.unwritten) this.diskBlock(e.startBlock, e.count, `${what} extent at file block ${e.startoff}`);
    } else if (r.next <= fb) throw new FileSystemError(what, 'extents out of order');
    return r;
  }

  // ---- paths ----

  async resolve(path: string): Promise<{ inode: Inode; name: string }> {
    const parts = splitFsPath(path);
    let inode = await this.inode(this.sb.rootIno, '/');
    let sofar = '';
    for (const part of parts) {
      if (entryType(inode.mode) !== 'dir') throw new FsNotFoundError(path, `'${sofar || '/'}' is not a directory`);
      const ino = await this.findEntry(inode, part, sofar || '/');
      if (ino === undefined) throw new FsNotFoundError(path);
      sofar += '/' + part;
      inode = await this.inode(ino, sofar);
    }
    return { inode, name: parts[parts.length - 1] ?? '' };
  }

  private async findEntry(dir: Inode, name: string, path: string): Promise<number | undefined> {
    const want = Buffer.from(name, 'utf8');
    let hit: number | undefined;
    await this.walkDir(dir, path, (n, ino) => {
      if (hit === undefined && n.equals(want)) hit = ino;
      return hit !== undefined;
    });
    return hit;
  }

  /** Calls `each` with every entry of a directory but '.' and '..'; stops when it returns true. */
  private async walkDir(dir: Inode, path: string, each: (name: Buffer, ino: number) => boolean): Promise<void> {
    const what = `XFS directory '${path}' (inode ${dir.ino})`;
    if (dir.format === FMT_LOCAL) {
      this.walkShortform(dir, what, each);
      return;
    }
    if (dir.format !== FMT_EXTENTS && dir.format !== FMT_BTREE) throw new FileSystemError(what, `bad data fork format ${dir.format}`);
    const bs = this.sb.blockSize;
    const per = this.sb.dirBlockSize / bs;
    // The data blocks lie below both 32 GiB and the directory's size (di_size covers the data space).
    const leafFb = Math.min(DIR_LEAF_OFFSET / bs, Math.ceil(dir.size / bs));
    let fb = 0;
    while (fb < leafFb) {
      const r = await this.mapBlock(dir, fb, what);
      if (!r.extent) {
        if (r.next === Infinity) break;
        fb = Math.ceil(r.next / per) * per;
        continue;
      }
      // Assemble one directory block (per fs blocks, each mapped; usually one extent).
      const dblk = Buffer.alloc(this.sb.dirBlockSize);
      for (let i = 0; i < per; i++) {
        const m = i === 0 ? r : await this.mapBlock(dir, fb + i, what);
        if (!m.extent || m.extent.unwritten) throw new FileSystemError(what, `directory block at file block ${fb} is incomplete`);
        (await this.block(m.extent.startBlock + (fb + i - m.extent.startoff), what)).copy(dblk, i * bs);
      }
      if (this.walkDataBlock(dblk, fb, what, each)) return;
      fb += per;
    }
  }

  private walkShortform(dir: Inode, what: string, each: (name: Buffer, ino: number) => boolean): void {
    const f = dir.fork;
    if (dir.size > f.length || dir.size < 6) throw new FileSystemError(what, `short-form size ${dir.size} does not fit the inode`);
    const end = dir.size;
    const count = f[0]!;
    const i8 = f[1]! > 0;
    const inoLen = i8 ? 8 : 4;
    let at = 2 + inoLen;
    for (let k = 0; k < count; k++) {
      if (at + 3 > end) throw new FileSystemError(what, `short-form entry ${k} runs past the end`);
      const namelen = f[at]!;
      const nameAt = at + 3;
      const inoAt = nameAt + namelen + (this.sb.ftype ? 1 : 0);
      if (namelen === 0 || inoAt + inoLen > end) throw new FileSystemError(what, `short-form entry ${k} runs past the end`);
      const ino = i8 ? toSafe(f.readBigUInt64BE(inoAt), `${what} entry inode`) : f.readUInt32BE(inoAt);
      if (each(f.subarray(nameAt, nameAt + namelen), ino)) return;
      at = inoAt + inoLen;
    }
  }

  /** Walks one directory data block; true when `each` asked to stop. */
  private walkDataBlock(b: Buffer, fb: number, what: string, each: (name: Buffer, ino: number) => boolean): boolean {
    const v5 = this.sb.version === 5;
    const magic = b.readUInt32BE(0);
    const blockMagic = v5 ? DIR_BLOCK_V5 : DIR_BLOCK_V4;
    const dataMagic = v5 ? DIR_DATA_V5 : DIR_DATA_V4;
    const where = `${what} block at file block ${fb}`;
    if (magic !== blockMagic && magic !== dataMagic) throw new FileSystemError(where, `bad magic 0x${magic.toString(16)}`);
    let end = b.length;
    if (magic === blockMagic) {
      const count = b.readUInt32BE(b.length - 8);
      end = b.length - 8 - count * 8;
    }
    let at = v5 ? 64 : 16;
    if (end < at) throw new FileSystemError(where, 'the leaf entries overlap the header');
    const ft = this.sb.ftype ? 1 : 0;
    while (at < end) {
      if (at + 4 > end) throw new FileSystemError(where, `an entry at ${at} runs past the end`);
      if (b.readUInt16BE(at) === 0xffff) {
        const len = b.readUInt16BE(at + 2);
        if (len < 8 || len % 8 !== 0 || at + len > end) throw new FileSystemError(where, `a free entry at ${at} of length ${len}`);
        at += len;
        continue;
      }
      if (at + 12 > end) throw new FileSystemError(where, `an entry at ${at} runs past the end`);
      const namelen = b[at + 8]!;
      const len = Math.ceil((11 + namelen + ft) / 8) * 8;
      if (namelen === 0 || at + len > end) throw new FileSystemError(where, `an entry at ${at} with a name of ${namelen} bytes`);
      const ino = toSafe(b.readBigUInt64BE(at), `${where} entry inode`);
      const name = b.subarray(at + 9, at + 9 + namelen);
      const dot = (namelen === 1 && name[0] === 0x2e) || (namelen === 2 && name[0] === 0x2e && name[1] === 0x2e);
      if (!dot && each(name, ino)) return true;
      at += len;
    }
    return false;
  }

  private toEntry(inode: Inode, name: string): FsEntry {
    return { name, type: entryType(inode.mode), size: inode.size, mode: inode.mode, uid: inode.uid, gid: inode.gid, mtimeMs: inode.mtimeMs, id: inode.ino };
  }

  // ---- FileSystem ----

  async stat(path: string): Promise<FsEntry> {
    const { inode, name } = await this.resolve(path);
    return this.toEntry(inode, name);
  }

  async list(path: string): Promise<FsEntry[]> {
    const { inode } = await this.resolve(path);
    if (entryType(inode.mode) !== 'dir') throw new FsNotFoundError(path, 'not a directory');
    const found: { name: string; ino: number }[] = [];
    await this.walkDir(inode, path, (n, ino) => {
      found.push({ name: n.toString('utf8'), ino });
      return false;
    });
    const base = path.endsWith('/') ? path : path + '/';
    const out: FsEntry[] = [];
    for (const f of found) out.push(this.toEntry(await this.inode(f.ino, base + f.name), f.name));
    return out;
  }

  async readlink(path: string): Promise<string> {
    const { inode } = await this.resolve(path);
    if (entryType(inode.mode) !== 'symlink') throw new FsNotFoundError(path, 'not a symbolic link');
    const what = `XFS symlink '${path}' (inode ${inode.ino})`;
    if (inode.size > MAX_SYMLINK) throw new FileSystemError(what, `target length ${inode.size} exceeds ${MAX_SYMLINK}`);
    if (inode.format === FMT_LOCAL) {
      if (inode.size > inode.fork.length) throw new FileSystemError(what, `target length ${inode.size} does not fit the inode`);
      return inode.fork.subarray(0, inode.size).toString('utf8');
    }
    const v5 = this.sb.version === 5;
    const hdr = v5 ? 56 : 0;
    const per = this.sb.blockSize - hdr;
    const parts: Buffer[] = [];
    let got = 0;
    for (let fb = 0; got < inode.size; fb++) {
      const r = await this.mapBlock(inode, fb, what);
      if (!r.extent || r.extent.unwritten) throw new FileSystemError(what, `target block ${fb} is missing`);
      const b = await this.block(r.extent.startBlock + (fb - r.extent.startoff), what);
      const take = Math.min(per, inode.size - got);
      if (v5) {
        if (b.readUInt32BE(0) !== SYMLINK_MAGIC) throw new FileSystemError(what, `bad magic 0x${b.readUInt32BE(0).toString(16)} in target block ${fb} (expected 'XSLM')`);
        const off = b.readUInt32BE(4);
        const bytes = b.readUInt32BE(8);
        if (off !== got || bytes !== take) throw new FileSystemError(what, `target block ${fb} holds ${bytes} bytes at ${off}, expected ${take} at ${got}`);
      }
      parts.push(b.subarray(hdr, hdr + take));
      got += take;
    }
    return Buffer.concat(parts).toString('utf8');
  }

  async open(path: string): Promise<FsFile> {
    const { inode } = await this.resolve(path);
    if (entryType(inode.mode) !== 'file') throw new FsNotFoundError(path, 'not a regular file');
    const what = `XFS file '${path}' (inode ${inode.ino})`;
    if (inode.flags & DIFLAG_REALTIME) throw new FileSystemError(what, 'the data is on the realtime device, which is not read');
    if (inode.format === FMT_LOCAL) {
      // Not made by Linux XFS for regular files, but harmless to read.
      if (inode.size > inode.fork.length) throw new FileSystemError(what, `local size ${inode.size} does not fit the inode`);
    } else if (inode.format !== FMT_EXTENTS && inode.format !== FMT_BTREE) throw new FileSystemError(what, `bad data fork format ${inode.format}`);
    return new XfsFile(this, inode, what);
  }
}

class XfsFile implements FsFile {
  readonly size: number;
  constructor(
    private readonly fs: XfsReader,
    private readonly inode: Inode,
    private readonly what: string,
  ) {
    this.size = inode.size;
  }

  async read(buf: Buffer, position: number): Promise<number> {
    if (!Number.isSafeInteger(position) || position < 0) throw new RangeError(`bad position ${position}`);
    if (position >= this.size || buf.length === 0) return 0;
    const n = Math.min(buf.length, this.size - position);
    if (this.inode.format === FMT_LOCAL) {
      this.inode.fork.copy(buf, 0, position, position + n);
      return n;
    }
    const bs = this.fs.blockSize;
    let done = 0;
    while (done < n) {
      const pos = position + done;
      const fb = Math.floor(pos / bs);
      const within = pos - fb * bs;
      const r = await this.fs.mapBlock(this.inode, fb, this.what);
      const endFb = r.extent ? r.extent.startoff + r.extent.count : r.next;
      const run = Math.min(n - done, MAX_READ_RUN, endFb === Infinity ? Infinity : (endFb - fb) * bs - within);
      const dst = buf.subarray(done, done + run);
      if (!r.extent || r.extent.unwritten) dst.fill(0);
      else {
        const disk = this.fs.diskBlock(r.extent.startBlock, r.extent.count, this.what) + (fb - r.extent.startoff);
        await this.fs.readRaw(dst, disk * bs + within);
      }
      done += run;
    }
    return n;
  }
}

export async function openXfs(volume: Volume): Promise<FileSystem> {
  if (volume.size < 512) throw new FileSystemError('XFS superblock', `the volume of ${volume.size} bytes is too small`);
  const sb = Buffer.alloc(512);
  await volume.read(sb, 0);
  return new XfsReader(volume, parseSuperblock(sb));
}
