// A read-only ext2/ext3/ext4 reader (the on-disk format of the kernel's
// Documentation/filesystems/ext4/). Little-endian throughout.
//
// Layout: the superblock lies at byte 1024; block groups of s_blocks_per_group blocks follow
// s_first_data_block, each described by a group descriptor (32 bytes, or s_desc_size with
// INCOMPAT_64BIT) in the descriptor table after the superblock (or, with META_BG, in the first group
// of each meta group). An inode lives in its group's inode table; its i_block holds an extent tree
// (header magic 0xF30A, any depth up to MAX_DEPTH), classic direct/indirect/double/triple block
// pointers (ext2/3), inline data (INCOMPAT_INLINE_DATA: i_block plus the system.data xattr in the
// inode's extra space) or a fast symlink's target. Directories are read linearly: an htree (dx_dir)
// directory's leaves are ordinary entry blocks, and its root and node blocks hide their index behind
// entries of inode 0 or a '..' that spans the block, so a linear scan sees only real entries.
//
// Not done: the journal is not replayed — a file system not cleanly unmounted is read as it lies on
// disk; checksums (metadata_csum) are not verified; encrypted and casefolded names are read as bytes;
// EA_INODE values (large xattrs in their own inode) are not followed.
//
// Everything is distrusted: every block number is checked against s_blocks_count and the volume,
// extent trees are at most MAX_DEPTH deep and each level must be one less than its parent, directory
// entries must lie inside their block, metadata blocks go through a bounded LRU cache, and file data
// is mapped to blocks lazily at the position asked (the last extent leaf cached), never read whole.
import { FileSystemError, FsNotFoundError, type EntryType, type FileSystem, type FsEntry, type FsFile, type Volume } from '../types.js';

const SB_OFFSET = 1024;
const SB_SIZE = 1024;
const SB_MAGIC = 0xef53;
const EXTENT_MAGIC = 0xf30a;
const XATTR_MAGIC = 0xea020000;

const COMPAT_HAS_JOURNAL = 0x4;
const INCOMPAT_FILETYPE = 0x2;
const INCOMPAT_JOURNAL_DEV = 0x8;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_EXTENTS = 0x40;
const INCOMPAT_64BIT = 0x80;
const INCOMPAT_FLEX_BG = 0x200;
const INCOMPAT_INLINE_DATA = 0x8000;
const RO_COMPAT_SPARSE_SUPER = 0x1;

const FL_EXTENTS = 0x80000;
const FL_INLINE_DATA = 0x10000000;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

const ROOT_INO = 2;
const MAX_DEPTH = 5;
const CACHE_BLOCKS = 256;
const MAX_PATH_PARTS = 4096;
const MAX_SYMLINK = 65536;
const MAX_READ_RUN = 1 << 20;
/** A directory of more blocks than this is refused (4 GiB of 4 KiB blocks; far past any real one). */
const MAX_DIR_BLOCKS = 1 << 20;
const N_BLOCKS_BYTES = 60;

interface Superblock {
  inodesCount: number;
  blocksCount: number;
  firstDataBlock: number;
  blockSize: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
  inodeSize: number;
  descSize: number;
  groupCount: number;
  firstMetaBg: number;
  compat: number;
  incompat: number;
  roCompat: number;
  label: string;
}

interface Inode {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  flags: number;
  mtimeMs: number;
  /** i_block, 60 bytes. */
  iblock: Buffer;
  /** The whole on-disk inode (s_inode_size bytes), for the in-inode xattrs. */
  raw: Buffer;
}

/** A run of a file: `len` blocks from logical block `lblk`; phys 0 is a hole (or an uninitialised extent). */
interface Run {
  phys: number;
  len: number;
}

interface Extent {
  lblk: number;
  len: number;
  phys: number;
  uninit: boolean;
}

/** One leaf of an extent tree with the logical range [lo, hi) its parent index gives it. */
interface Leaf {
  lo: number;
  hi: number;
  extents: Extent[];
}

export function isExt(superblockAt1024: Buffer): boolean {
  return superblockAt1024.length >= 0x3a && superblockAt1024.readUInt16LE(0x38) === SB_MAGIC;
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

function u64(lo: number, hi: number, what: string): number {
  const v = hi * 2 ** 32 + lo;
  if (!Number.isSafeInteger(v)) throw new FileSystemError(what, `the value ${hi}:${lo} is too large`);
  return v;
}

function hasSuper(group: number, sparse: boolean): boolean {
  if (!sparse || group <= 1) return true;
  for (const p of [3, 5, 7]) {
    let n = p;
    while (n < group) n *= p;
    if (n === group) return true;
  }
  return false;
}

function parseSuperblock(b: Buffer, volumeSize: number): Superblock {
  if (!isExt(b)) throw new FileSystemError('ext superblock', `bad magic 0x${b.readUInt16LE(0x38).toString(16)} (expected 0xef53)`);
  const logBlock = b.readUInt32LE(0x18);
  if (logBlock > 6) throw new FileSystemError('ext superblock', `block size 1024 << ${logBlock} is not 1 KiB to 64 KiB`);
  const blockSize = 1024 << logBlock;
  const rev = b.readUInt32LE(0x4c);
  const compat = b.readUInt32LE(0x5c);
  const incompat = b.readUInt32LE(0x60);
  const roCompat = b.readUInt32LE(0x64);
  const inodeSize = rev >= 1 ? b.readUInt16LE(0x58) : 128;
  if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) throw new FileSystemError('ext superblock', `inode size ${inodeSize} is not a power of two from 128 to the block size`);
  if (incompat & INCOMPAT_JOURNAL_DEV) throw new FileSystemError('ext superblock', 'this is an external journal device, not a file system');
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  let descSize = 32;
  if (is64) {
    descSize = b.readUInt16LE(0xfe);
    if (descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) throw new FileSystemError('ext superblock', `group descriptor size ${descSize} is not a power of two from 64 to 1024`);
  }
  const blocksCount = u64(b.readUInt32LE(0x4), is64 ? b.readUInt32LE(0x150) : 0, 'ext superblock blocks count');
  const firstDataBlock = b.readUInt32LE(0x14);
  const blocksPerGroup = b.readUInt32LE(0x20);
  const inodesPerGroup = b.readUInt32LE(0x28);
  const inodesCount = b.readUInt32LE(0x0);
  if (blocksCount === 0 || blocksCount * blockSize > volumeSize) throw new FileSystemError('ext superblock', `${blocksCount} blocks of ${blockSize} bytes do not fit in a volume of ${volumeSize} bytes`);
  if (firstDataBlock >= blocksCount || firstDataBlock > 1) throw new FileSystemError('ext superblock', `first data block ${firstDataBlock} is not 0 or 1`);
  if (blocksPerGroup === 0 || blocksPerGroup > blockSize * 8) throw new FileSystemError('ext superblock', `${blocksPerGroup} blocks per group is not 1 to ${blockSize * 8}`);
  if (inodesPerGroup === 0 || inodesPerGroup > blockSize * 8) throw new FileSystemError('ext superblock', `${inodesPerGroup} inodes per group is not 1 to ${blockSize * 8}`);
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
  if (inodesCount > groupCount * inodesPerGroup || inodesCount < ROOT_INO) throw new FileSystemError('ext superblock', `${inodesCount} inodes do not fit ${groupCount} groups of ${inodesPerGroup}`);
  const label = b.subarray(0x78, 0x88);
  const nul = label.indexOf(0);
  return {
    inodesCount,
    blocksCount,
    firstDataBlock,
    blockSize,
    blocksPerGroup,
    inodesPerGroup,
    inodeSize,
    descSize,
    groupCount,
    firstMetaBg: b.readUInt32LE(0x104),
    compat,
    incompat,
    roCompat,
    label: label.subarray(0, nul < 0 ? label.length : nul).toString('utf8'),
  };
}

class ExtReader implements FileSystem {
  readonly type: string;
  readonly label?: string;
  private readonly cache = new Map<number, Buffer>();
  private readonly inodeTables = new Map<number, number>();

  constructor(
    readonly volume: Volume,
    readonly sb: Superblock,
  ) {
    const ext4Bits = INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_INLINE_DATA;
    this.type = sb.incompat & ext4Bits || sb.roCompat & ~0x7 ? 'ext4' : sb.compat & COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2';
    if (sb.label) this.label = sb.label;
  }

  /** A metadata block through the LRU cache (the buffer is shared: do not change it). */
  async block(n: number, what: string): Promise<Buffer> {
    this.checkBlock(n, 1, what);
    const hit = this.cache.get(n);
    if (hit) {
      this.cache.delete(n);
      this.cache.set(n, hit);
      return hit;
    }
    const buf = Buffer.alloc(this.sb.blockSize);
    await this.volume.read(buf, n * this.sb.blockSize);
    this.cache.set(n, buf);
    if (this.cache.size > CACHE_BLOCKS) {
      const oldest = this.cache.keys().next().value;
      if (oldest !== undefined) this.cache.delete(oldest);
    }
    return buf;
  }

  checkBlock(n: number, len: number, what: string): void {
    if (!Number.isSafeInteger(n) || n < 0 || len < 0 || n + len > this.sb.blocksCount || (n + len) * this.sb.blockSize > this.volume.size) {
      throw new FileSystemError(what, `block ${n} (+${len}) lies outside the file system of ${this.sb.blocksCount} blocks`);
    }
  }

  /** The block holding group descriptor `group`, and the descriptor's offset in it. */
  private descLocation(group: number): [number, number] {
    const { blockSize, descSize, firstDataBlock, blocksPerGroup, firstMetaBg, incompat, roCompat } = this.sb;
    const perBlock = blockSize / descSize;
    const descBlock = Math.floor(group / perBlock);
    const offset = (group % perBlock) * descSize;
    if (!(incompat & INCOMPAT_META_BG) || descBlock < firstMetaBg) return [firstDataBlock + 1 + descBlock, offset];
    // META_BG: the descriptors of meta group m lie in the first block group of m, after its superblock copy.
    const first = descBlock * perBlock;
    const sparse = (roCompat & RO_COMPAT_SPARSE_SUPER) !== 0;
    return [first * blocksPerGroup + firstDataBlock + (hasSuper(first, sparse) ? 1 : 0), offset];
  }

  private async inodeTable(group: number): Promise<number> {
    const known = this.inodeTables.get(group);
    if (known !== undefined) return known;
    const [blk, off] = this.descLocation(group);
    const b = await this.block(blk, `ext group descriptor ${group}`);
    const lo = b.readUInt32LE(off + 0x8);
    const hi = this.sb.descSize >= 64 ? b.readUInt32LE(off + 0x28) : 0;
    const table = u64(lo, hi, `ext group descriptor ${group}`);
    const tableBlocks = Math.ceil((this.sb.inodesPerGroup * this.sb.inodeSize) / this.sb.blockSize);
    this.checkBlock(table, tableBlocks, `ext group ${group} inode table`);
    if (this.inodeTables.size < 65536) this.inodeTables.set(group, table);
    return table;
  }

  async inode(ino: number, path: string): Promise<Inode> {
    if (!Number.isSafeInteger(ino) || ino < 1 || ino > this.sb.inodesCount) throw new FileSystemError(`ext inode ${ino} of '${path}'`, `not an inode number from 1 to ${this.sb.inodesCount}`);
    const group = Math.floor((ino - 1) / this.sb.inodesPerGroup);
    const index = (ino - 1) % this.sb.inodesPerGroup;
    const table = await this.inodeTable(group);
    const byte = index * this.sb.inodeSize;
    const blk = table + Math.floor(byte / this.sb.blockSize);
    const b = await this.block(blk, `ext inode ${ino}`);
    const off = byte % this.sb.blockSize;
    const raw = Buffer.from(b.subarray(off, off + this.sb.inodeSize));
    const what = `ext inode ${ino} of '${path}'`;
    const mode = raw.readUInt16LE(0x0);
    const flags = raw.readUInt32LE(0x20);
    const size = u64(raw.readUInt32LE(0x4), raw.readUInt32LE(0x6c), `${what} size`);
    const extra = this.sb.inodeSize > 128 ? raw.readUInt16LE(0x80) : 0;
    if (extra > 0 && (128 + extra > this.sb.inodeSize || extra % 4 !== 0)) throw new FileSystemError(what, `extra inode size ${extra} does not fit an inode of ${this.sb.inodeSize} bytes`);
    let secs = raw.readInt32LE(0x10);
    let ns = 0;
    if (extra >= 0x0c) {
      const mx = raw.readUInt32LE(0x88);
      secs += (mx & 3) * 2 ** 32;
      ns = mx >>> 2;
    }
    return {
      ino,
      mode,
      uid: raw.readUInt16LE(0x2) | (raw.readUInt16LE(0x78) << 16),
      gid: raw.readUInt16LE(0x18) | (raw.readUInt16LE(0x7a) << 16),
      size,
      flags,
      mtimeMs: secs * 1000 + Math.floor(ns / 1e6),
      iblock: raw.subarray(0x28, 0x28 + N_BLOCKS_BYTES),
      raw,
    };
  }

  /** The system.data xattr value of an inline-data inode (the bytes after i_block's 60), from the inode's extra space. */
  inlineXattr(inode: Inode, path: string): Buffer {
    const what = `ext inode ${inode.ino} of '${path}' inline data`;
    const raw = inode.raw;
    if (raw.length <= 128) return Buffer.alloc(0);
    const start = 128 + raw.readUInt16LE(0x80);
    if (start + 4 > raw.length || raw.readUInt32LE(start) !== XATTR_MAGIC) return Buffer.alloc(0);
    const base = start + 4;
    let p = base;
    for (let i = 0; i < 256 && p + 16 <= raw.length; i++) {
      if (raw.readUInt32LE(p) === 0) break;
      const nameLen = raw[p] ?? 0;
      const index = raw[p + 1] ?? 0;
      const valueOffs = raw.readUInt16LE(p + 2);
      const valueInum = raw.readUInt32LE(p + 4);
      const valueSize = raw.readUInt32LE(p + 8);
      if (p + 16 + nameLen > raw.length) throw new FileSystemError(what, `xattr entry at ${p} runs past the inode`);
      const name = raw.subarray(p + 16, p + 16 + nameLen).toString('latin1');
      if (index === 7 && name === 'data') {
        if (valueInum !== 0) throw new FileSystemError(what, 'the value lies in an EA inode, which is not read');
        if (base + valueOffs + valueSize > raw.length) throw new FileSystemError(what, `value of ${valueSize} bytes at ${valueOffs} runs past the inode`);
        return raw.subarray(base + valueOffs, base + valueOffs + valueSize);
      }
      p += (16 + nameLen + 3) & ~3;
    }
    return Buffer.alloc(0);
  }

  /** A mapper of logical blocks to runs for this inode (extents or indirect blocks). */
  mapper(inode: Inode, path: string): BlockMapper {
    if (inode.flags & FL_EXTENTS) return new ExtentMapper(this, inode, path);
    return new IndirectMapper(this, inode, path);
  }

  /** Calls `each` with every entry of a directory (raw name bytes, inode, type byte); `each` returns true to stop. */
  async walkDir(inode: Inode, path: string, each: (name: Buffer, ino: number) => boolean): Promise<void> {
    const bs = this.sb.blockSize;
    if (inode.flags & FL_INLINE_DATA) {
      if (!(this.sb.incompat & INCOMPAT_INLINE_DATA)) throw new FileSystemError(`ext directory '${path}'`, 'inline data flag without the inline_data feature');
      const parent = inode.iblock.readUInt32LE(0);
      if (each(Buffer.from('.'), inode.ino) || each(Buffer.from('..'), parent)) return;
      if (this.parseEntries(inode.iblock.subarray(4), path, each)) return;
      this.parseEntries(this.inlineXattr(inode, path), path, each);
      return;
    }
    const blocks = Math.ceil(inode.size / bs);
    if (blocks > MAX_DIR_BLOCKS) throw new FileSystemError(`ext directory '${path}'`, `a size of ${inode.size} bytes is more than ${MAX_DIR_BLOCKS} blocks`);
    const map = this.mapper(inode, path);
    for (let l = 0; l < blocks; ) {
      const run = await map.lookup(l);
      const n = Math.min(run.len, blocks - l);
      if (run.phys !== 0) {
        for (let i = 0; i < n; i++) {
          const b = await this.block(run.phys + i, `ext directory '${path}' block ${l + i}`);
          if (this.parseEntries(b, path, each)) return;
        }
      }
      l += n;
    }
  }

  /** Parses one block (or inline area) of directory entries; true when `each` asked to stop. */
  private parseEntries(b: Buffer, path: string, each: (name: Buffer, ino: number) => boolean): boolean {
    const fileType = (this.sb.incompat & INCOMPAT_FILETYPE) !== 0;
    const bs = this.sb.blockSize;
    let p = 0;
    while (p + 8 <= b.length) {
      const ino = b.readUInt32LE(p);
      let recLen = b.readUInt16LE(p + 4);
      if (bs >= 65536 && (recLen === 65535 || recLen === 0)) recLen = bs;
      else if (bs >= 65536) recLen = (recLen & 65532) | ((recLen & 3) << 16);
      const nameLen = fileType ? (b[p + 6] ?? 0) : b.readUInt16LE(p + 6);
      if (recLen < 8 || recLen % 4 !== 0 || p + recLen > b.length) throw new FileSystemError(`ext directory '${path}'`, `entry at ${p} has record length ${recLen}, outside its block of ${b.length} bytes`);
      if (ino !== 0) {
        if (8 + nameLen > recLen) throw new FileSystemError(`ext directory '${path}'`, `entry at ${p} has a name of ${nameLen} bytes in a record of ${recLen}`);
        if (nameLen > 0 && each(b.subarray(p + 8, p + 8 + nameLen), ino)) return true;
      }
      p += recLen;
    }
    return false;
  }

  async lookup(dir: Inode, name: string, path: string): Promise<number | undefined> {
    const want = Buffer.from(name, 'utf8');
    let found: number | undefined;
    await this.walkDir(dir, path, (n, ino) => {
      if (n.equals(want)) {
        found = ino;
        return true;
      }
      return false;
    });
    return found;
  }

  async resolve(path: string): Promise<{ inode: Inode; name: string }> {
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.length > MAX_PATH_PARTS) throw new FsNotFoundError(path, 'too many path components');
    let inode = await this.inode(ROOT_INO, '/');
    let name = '';
    let sofar = '';
    for (const part of parts) {
      const type = entryType(inode.mode);
      if (type === 'symlink') throw new FsNotFoundError(path, `'${sofar}' is a symlink (not followed)`);
      if (type !== 'dir') throw new FsNotFoundError(path, `'${sofar}' is not a directory`);
      const ino = await this.lookup(inode, part, sofar || '/');
      sofar += '/' + part;
      if (ino === undefined) throw new FsNotFoundError(path);
      inode = await this.inode(ino, sofar);
      name = part;
    }
    return { inode, name };
  }

  toEntry(inode: Inode, name: string): FsEntry {
    return { name, type: entryType(inode.mode), size: inode.size, mode: inode.mode, uid: inode.uid, gid: inode.gid, mtimeMs: inode.mtimeMs, id: inode.ino };
  }

  async stat(path: string): Promise<FsEntry> {
    const { inode, name } = await this.resolve(path);
    return this.toEntry(inode, name);
  }

  async list(path: string): Promise<FsEntry[]> {
    const { inode } = await this.resolve(path);
    if (entryType(inode.mode) !== 'dir') throw new FsNotFoundError(path, 'not a directory');
    const found: { name: string; ino: number }[] = [];
    await this.walkDir(inode, path, (n, ino) => {
      const s = n.toString('utf8');
      if (s !== '.' && s !== '..') found.push({ name: s, ino });
      return false;
    });
    const base = path.endsWith('/') ? path : path + '/';
    const out: FsEntry[] = [];
    for (const f of found) out.push(this.toEntry(await this.inode(f.ino, base + f.name), f.name));
    return out;
  }

  async readlink(path: string): Promise<string> {
    const { inode } = await this.resolve(path);
    if (entryType(inode.mode) !== 'symlink') throw new FsNotFoundError(path, 'not a symlink');
    if (inode.size > MAX_SYMLINK) throw new FileSystemError(`ext symlink '${path}'`, `target of ${inode.size} bytes is too long`);
    const fast = !(inode.flags & (FL_INLINE_DATA | FL_EXTENTS)) || (inode.flags & FL_EXTENTS && inode.iblock.readUInt16LE(0) !== EXTENT_MAGIC);
    if (inode.size < N_BLOCKS_BYTES && fast) return inode.iblock.subarray(0, inode.size).toString('utf8');
    const file = this.file(inode, path);
    const buf = Buffer.alloc(inode.size);
    let done = 0;
    while (done < buf.length) {
      const n = await file.read(buf.subarray(done), done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done).toString('utf8');
  }

  file(inode: Inode, path: string): FsFile {
    if (inode.flags & FL_INLINE_DATA) {
      if (!(this.sb.incompat & INCOMPAT_INLINE_DATA)) throw new FileSystemError(`ext file '${path}'`, 'inline data flag without the inline_data feature');
      const data = Buffer.concat([inode.iblock, this.inlineXattr(inode, path)]);
      if (inode.size > data.length) throw new FileSystemError(`ext file '${path}'`, `inline data of ${data.length} bytes is shorter than the size ${inode.size}`);
      return new InlineFile(data.subarray(0, inode.size));
    }
    return new ExtFile(this, inode, path);
  }

  async open(path: string): Promise<FsFile> {
    const { inode } = await this.resolve(path);
    const type = entryType(inode.mode);
    if (type !== 'file') throw new FsNotFoundError(path, type === 'dir' ? 'is a directory' : `not a regular file (${type})`);
    return this.file(inode, path);
  }
}

interface BlockMapper {
  /** The run at logical block `lblk` (a hole has phys 0); len ≥ 1. */
  lookup(lblk: number): Promise<Run>;
}

class ExtentMapper implements BlockMapper {
  private leaf: Leaf | undefined;
  private readonly what: string;

  constructor(
    private readonly fs: ExtReader,
    private readonly inode: Inode,
    path: string,
  ) {
    this.what = `ext extent tree of inode ${inode.ino} ('${path}')`;
  }

  private header(b: Buffer, where: string, depthWanted: number | undefined): { entries: number; depth: number } {
    if (b.readUInt16LE(0) !== EXTENT_MAGIC) throw new FileSystemError(this.what, `${where}: bad extent header magic 0x${b.readUInt16LE(0).toString(16)}`);
    const entries = b.readUInt16LE(2);
    const max = b.readUInt16LE(4);
    const depth = b.readUInt16LE(6);
    if (entries > max || 12 + max * 12 > b.length) throw new FileSystemError(this.what, `${where}: ${entries} of ${max} entries do not fit ${b.length} bytes`);
    if (depth > MAX_DEPTH) throw new FileSystemError(this.what, `${where}: depth ${depth} is more than ${MAX_DEPTH}`);
    if (depthWanted !== undefined && depth !== depthWanted) throw new FileSystemError(this.what, `${where}: depth ${depth} where ${depthWanted} was expected`);
    return { entries, depth };
  }

  private async findLeaf(lblk: number): Promise<Leaf> {
    let node = this.inode.iblock;
    let where = 'in the inode';
    let { entries, depth } = this.header(node, where, undefined);
    let lo = 0;
    let hi = 2 ** 32;
    for (let level = 0; depth > 0; level++) {
      if (level > MAX_DEPTH) throw new FileSystemError(this.what, 'too deep');
      // The last index whose first block is ≤ lblk.
      let pick = -1;
      for (let i = 0; i < entries; i++) {
        const first = node.readUInt32LE(12 + i * 12);
        if (i > 0 && first <= node.readUInt32LE(12 + (i - 1) * 12)) throw new FileSystemError(this.what, `${where}: index entries out of order`);
        if (first <= lblk) pick = i;
        else {
          hi = Math.min(hi, first);
          break;
        }
      }
      if (pick < 0) return { lo, hi, extents: [] };
      const e = 12 + pick * 12;
      lo = Math.max(lo, node.readUInt32LE(e));
      const child = u64(node.readUInt32LE(e + 4), node.readUInt16LE(e + 8), this.what);
      where = `node at block ${child}`;
      node = await this.fs.block(child, this.what);
      ({ entries, depth } = this.header(node, where, depth - 1));
    }
    const extents: Extent[] = [];
    for (let i = 0; i < entries; i++) {
      const e = 12 + i * 12;
      const first = node.readUInt32LE(e);
      let len = node.readUInt16LE(e + 4);
      const uninit = len > 32768;
      if (uninit) len -= 32768;
      const phys = u64(node.readUInt32LE(e + 8), node.readUInt16LE(e + 6), this.what);
      const prev = extents[extents.length - 1];
      if (prev && first < prev.lblk + prev.len) throw new FileSystemError(this.what, `${where}: extents overlap or are out of order`);
      if (len === 0) continue;
      this.fs.checkBlock(phys, len, this.what);
      extents.push({ lblk: first, len, phys, uninit });
    }
    return { lo, hi, extents };
  }

  async lookup(lblk: number): Promise<Run> {
    if (lblk >= 2 ** 32) return { phys: 0, len: 2 ** 32 };
    if (!this.leaf || lblk < this.leaf.lo || lblk >= this.leaf.hi) this.leaf = await this.findLeaf(lblk);
    const { extents, hi } = this.leaf;
    let a = 0;
    let b = extents.length - 1;
    let pick = -1;
    while (a <= b) {
      const m = (a + b) >> 1;
      if ((extents[m]?.lblk ?? 0) <= lblk) {
        pick = m;
        a = m + 1;
      } else b = m - 1;
    }
    const ext = pick >= 0 ? extents[pick] : undefined;
    if (ext && lblk < ext.lblk + ext.len) {
      const off = lblk - ext.lblk;
      return { phys: ext.uninit ? 0 : ext.phys + off, len: ext.len - off };
    }
    const next = extents[pick + 1];
    const end = next ? next.lblk : hi;
    return { phys: 0, len: Math.max(1, end - lblk) };
  }
}

class IndirectMapper implements BlockMapper {
  private readonly what: string;
  private readonly per: number;

  constructor(
    private readonly fs: ExtReader,
    private readonly inode: Inode,
    path: string,
  ) {
    this.what = `ext block map of inode ${inode.ino} ('${path}')`;
    this.per = fs.sb.blockSize / 4;
  }

  async lookup(lblk: number): Promise<Run> {
    const per = this.per;
    const ib = this.inode.iblock;
    if (lblk < 12) {
      const p = ib.readUInt32LE(lblk * 4);
      if (p !== 0) this.fs.checkBlock(p, 1, this.what);
      return { phys: p, len: 1 };
    }
    let rel = lblk - 12;
    let slot = 12;
    let levels = 1;
    let span = per;
    while (rel >= span) {
      rel -= span;
      slot++;
      levels++;
      span *= per;
      if (slot > 14) return { phys: 0, len: 2 ** 32 };
    }
    let blk = ib.readUInt32LE(slot * 4);
    for (let level = levels; level > 0; level--) {
      span /= per;
      if (blk === 0) return { phys: 0, len: Math.max(1, span * per - (rel % (span * per))) };
      const b = await this.fs.block(blk, this.what);
      const idx = Math.floor(rel / span);
      rel %= span;
      blk = b.readUInt32LE(idx * 4);
    }
    if (blk !== 0) this.fs.checkBlock(blk, 1, this.what);
    return { phys: blk, len: 1 };
  }
}

class InlineFile implements FsFile {
  constructor(private readonly data: Buffer) {}
  get size(): number {
    return this.data.length;
  }
  async read(buf: Buffer, position: number): Promise<number> {
    if (position >= this.data.length || buf.length === 0) return 0;
    return this.data.copy(buf, 0, position, Math.min(this.data.length, position + buf.length));
  }
}

class ExtFile implements FsFile {
  readonly size: number;
  private readonly map: BlockMapper;

  constructor(
    private readonly fs: ExtReader,
    inode: Inode,
    path: string,
  ) {
    this.size = inode.size;
    this.map = fs.mapper(inode, path);
  }

  async read(buf: Buffer, position: number): Promise<number> {
    if (!Number.isSafeInteger(position) || position < 0) throw new RangeError(`bad position ${position}`);
    if (position >= this.size || buf.length === 0) return 0;
    const want = Math.min(buf.length, this.size - position);
    const bs = this.fs.sb.blockSize;
    let done = 0;
    while (done < want) {
      const pos = position + done;
      const lblk = Math.floor(pos / bs);
      const inBlock = pos % bs;
      const run = await this.map.lookup(lblk);
      const n = Math.min(want - done, run.len * bs - inBlock, MAX_READ_RUN);
      const dst = buf.subarray(done, done + n);
      if (run.phys === 0) dst.fill(0);
      else await this.fs.volume.read(dst, run.phys * bs + inBlock);
      done += n;
    }
    return done;
  }
}

/** Opens the ext2/3/4 file system on `volume` (reads the superblock; everything else on demand). */
export async function openExt4(volume: Volume): Promise<FileSystem> {
  if (volume.size < SB_OFFSET + SB_SIZE) throw new FileSystemError('ext superblock', `a volume of ${volume.size} bytes is too small`);
  const b = Buffer.alloc(SB_SIZE);
  await volume.read(b, SB_OFFSET);
  const sb = parseSuperblock(b, volume.size);
  const fs = new ExtReader(volume, sb);
  const root = await fs.inode(ROOT_INO, '/');
  if (entryType(root.mode) !== 'dir') throw new FileSystemError('ext root inode', `mode 0o${root.mode.toString(8)} is not a directory`);
  return fs;
}
