// Linux FUSE kernel ABI (linux/include/uapi/linux/fuse.h), only the part a read-only server needs.
// All integers are little-endian host order: FUSE is spoken to the local kernel only, and every
// machine this runs on (x86-64, arm64) is little-endian.
//
// Decoders check bounds and throw FuseAbiError rather than reading past what the kernel sent: a
// short request means the kernel and this file disagree about the ABI, and guessing would answer
// the wrong question.

export interface InHeader {
  len: number;
  opcode: number;
  unique: bigint;
  nodeid: bigint;
  uid: number;
  gid: number;
  pid: number;
}

export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
}

export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  timeGran: number;
  maxPages: number;
}

export interface ReadIn {
  fh: bigint;
  offset: bigint;
  size: number;
}

export interface FuseAttr {
  ino: bigint;
  size: bigint;
  blocks: bigint;
  mtimeMs: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  blksize: number;
}

export interface Dirent {
  ino: bigint;
  /** Offset of the entry after this one: the kernel hands it back as the next READDIR's offset. */
  nextOffset: bigint;
  /** S_IFMT >> 12, the same numbering as DT_* in dirent.h. */
  type: number;
  name: Buffer;
}

export class FuseAbiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

export const KERNEL_VERSION = 7;
/**
 * The minor version this server speaks. 7.31 has every struct used here in its final size and
 * predates FUSE_INIT_EXT and request extensions, which a read-only server has no use for.
 */
export const KERNEL_MINOR_VERSION = 31;
export const ROOT_ID = 1n;

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  COPY_FILE_RANGE: 47,
  TMPFILE: 51,
} as const;

/** Opcodes that would change the tree; a read-only server answers them all with EROFS. */
export const WRITE_OPS: ReadonlySet<number> = new Set([
  Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.LINK, Op.WRITE,
  Op.SETXATTR, Op.REMOVEXATTR, Op.CREATE, Op.FALLOCATE, Op.RENAME2, Op.COPY_FILE_RANGE, Op.TMPFILE,
]);

// INIT flags (fuse_init_in.flags / fuse_init_out.flags).
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_BIG_WRITES = 1 << 5;
export const FUSE_PARALLEL_DIROPS = 1 << 18;
export const FUSE_MAX_PAGES = 1 << 22;
export const FUSE_CACHE_SYMLINKS = 1 << 23;

// fuse_open_out.open_flags
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
export const ATTR_SIZE = 88;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE;
export const OPEN_OUT_SIZE = 16;
export const STATFS_OUT_SIZE = 80;
export const INIT_OUT_SIZE = 64;
export const GETXATTR_OUT_SIZE = 8;
const DIRENT_HEADER_SIZE = 24;

/** Longest name the kernel accepts in a dirent (FUSE_NAME_MAX); Linux itself stops at 255 bytes. */
export const NAME_MAX = 255;

function need(buf: Buffer, offset: number, size: number, what: string): void {
  if (offset < 0 || offset + size > buf.length) {
    throw new FuseAbiError(`${what}: need ${size} bytes at ${offset}, request has ${buf.length}`);
  }
}

export function decodeInHeader(buf: Buffer): InHeader {
  need(buf, 0, IN_HEADER_SIZE, 'fuse_in_header');
  const h: InHeader = {
    len: buf.readUInt32LE(0),
    opcode: buf.readUInt32LE(4),
    unique: buf.readBigUInt64LE(8),
    nodeid: buf.readBigUInt64LE(16),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
  };
  if (h.len !== buf.length) throw new FuseAbiError(`fuse_in_header.len ${h.len} but read returned ${buf.length} bytes`);
  return h;
}

/** Older kernels send a 16-byte fuse_init_in; newer ones append flags2 and padding, ignored here. */
export function decodeInitIn(body: Buffer): InitIn {
  need(body, 0, 16, 'fuse_init_in');
  return { major: body.readUInt32LE(0), minor: body.readUInt32LE(4), maxReadahead: body.readUInt32LE(8), flags: body.readUInt32LE(12) };
}

export function decodeReadIn(body: Buffer): ReadIn {
  need(body, 0, 24, 'fuse_read_in');
  return { fh: body.readBigUInt64LE(0), offset: body.readBigUInt64LE(8), size: body.readUInt32LE(16) };
}

/** fuse_open_in.flags: the open(2) flags. */
export function decodeOpenFlags(body: Buffer): number {
  need(body, 0, 8, 'fuse_open_in');
  return body.readUInt32LE(0);
}

/** fh is the first field of fuse_release_in. */
export function decodeReleaseFh(body: Buffer): bigint {
  need(body, 0, 24, 'fuse_release_in');
  return body.readBigUInt64LE(0);
}

export function decodeAccessMask(body: Buffer): number {
  need(body, 0, 8, 'fuse_access_in');
  return body.readUInt32LE(0);
}

/** fuse_getxattr_in (also the body of LISTXATTR): the caller's buffer size, 0 meaning "how big?". */
export function decodeGetxattrSize(body: Buffer): number {
  need(body, 0, 8, 'fuse_getxattr_in');
  return body.readUInt32LE(0);
}

/** A NUL-terminated name at `offset`; the kernel always terminates names it sends. */
export function decodeName(body: Buffer, offset = 0): string {
  need(body, offset, 1, 'name');
  const end = body.indexOf(0, offset);
  if (end < 0) throw new FuseAbiError('name is not NUL-terminated');
  return body.toString('utf8', offset, end);
}

function writeAttr(buf: Buffer, o: number, a: FuseAttr): void {
  const sec = Math.floor(a.mtimeMs / 1000);
  const nsec = Math.min(999_999_999, Math.max(0, Math.round((a.mtimeMs - sec * 1000) * 1e6)));
  buf.writeBigUInt64LE(a.ino, o);
  buf.writeBigUInt64LE(a.size, o + 8);
  buf.writeBigUInt64LE(a.blocks, o + 16);
  // A snapshot has one meaningful time; atime and ctime repeat mtime rather than claim 1970.
  for (const at of [24, 32, 40]) buf.writeBigInt64LE(BigInt(sec), o + at);
  for (const at of [48, 52, 56]) buf.writeUInt32LE(nsec, o + at);
  buf.writeUInt32LE(a.mode >>> 0, o + 60);
  buf.writeUInt32LE(a.nlink >>> 0, o + 64);
  buf.writeUInt32LE(a.uid >>> 0, o + 68);
  buf.writeUInt32LE(a.gid >>> 0, o + 72);
  buf.writeUInt32LE(0, o + 76); // rdev
  buf.writeUInt32LE(a.blksize >>> 0, o + 80);
  buf.writeUInt32LE(0, o + 84); // flags
}

/** Splits a timeout in seconds into the (u64 seconds, u32 nanoseconds) pair FUSE uses for cache validity. */
function splitTimeout(sec: number): [bigint, number] {
  const whole = Math.max(0, Math.floor(sec));
  return [BigInt(whole), Math.round((Math.max(0, sec) - whole) * 1e9)];
}

export function encodeEntryOut(attr: FuseAttr, entryTimeoutSec: number, attrTimeoutSec: number): Buffer {
  const b = Buffer.alloc(ENTRY_OUT_SIZE);
  const [es, ens] = splitTimeout(entryTimeoutSec);
  const [as, ans] = splitTimeout(attrTimeoutSec);
  b.writeBigUInt64LE(attr.ino, 0);
  b.writeBigUInt64LE(0n, 8); // generation: inode numbers are never reused within one mount
  b.writeBigUInt64LE(es, 16);
  b.writeBigUInt64LE(as, 24);
  b.writeUInt32LE(ens, 32);
  b.writeUInt32LE(ans, 36);
  writeAttr(b, 40, attr);
  return b;
}

export function encodeAttrOut(attr: FuseAttr, attrTimeoutSec: number): Buffer {
  const b = Buffer.alloc(ATTR_OUT_SIZE);
  const [as, ans] = splitTimeout(attrTimeoutSec);
  b.writeBigUInt64LE(as, 0);
  b.writeUInt32LE(ans, 8);
  writeAttr(b, 16, attr);
  return b;
}

export function encodeOpenOut(fh: bigint, openFlags: number): Buffer {
  const b = Buffer.alloc(OPEN_OUT_SIZE);
  b.writeBigUInt64LE(fh, 0);
  b.writeUInt32LE(openFlags >>> 0, 8);
  return b;
}

export function encodeInitOut(o: InitOut): Buffer {
  const b = Buffer.alloc(INIT_OUT_SIZE);
  b.writeUInt32LE(o.major, 0);
  b.writeUInt32LE(o.minor, 4);
  b.writeUInt32LE(o.maxReadahead >>> 0, 8);
  b.writeUInt32LE(o.flags >>> 0, 12);
  b.writeUInt16LE(o.maxBackground, 16);
  b.writeUInt16LE(o.congestionThreshold, 18);
  b.writeUInt32LE(o.maxWrite, 20);
  b.writeUInt32LE(o.timeGran, 24);
  b.writeUInt16LE(o.maxPages, 28);
  return b;
}

export interface StatfsOut {
  blocks: bigint;
  files: bigint;
  bsize: number;
  namelen: number;
}

/** A read-only tree has nothing free, so bfree, bavail and ffree stay zero. */
export function encodeStatfsOut(s: StatfsOut): Buffer {
  const b = Buffer.alloc(STATFS_OUT_SIZE);
  b.writeBigUInt64LE(s.blocks, 0);
  b.writeBigUInt64LE(s.files, 24);
  b.writeUInt32LE(s.bsize, 40);
  b.writeUInt32LE(s.namelen, 44);
  b.writeUInt32LE(s.bsize, 48); // frsize
  return b;
}

export function encodeGetxattrOut(size: number): Buffer {
  const b = Buffer.alloc(GETXATTR_OUT_SIZE);
  b.writeUInt32LE(size, 0);
  return b;
}

export function encodeOutHeader(len: number, errno: number, unique: bigint): Buffer {
  const b = Buffer.alloc(OUT_HEADER_SIZE);
  b.writeUInt32LE(len, 0);
  // The kernel expects a negative errno (or 0); callers pass the positive errno from os.constants.
  b.writeInt32LE(errno === 0 ? 0 : -Math.abs(errno), 4);
  b.writeBigUInt64LE(unique, 8);
  return b;
}

export function direntSize(nameLen: number): number {
  return (DIRENT_HEADER_SIZE + nameLen + 7) & ~7;
}

/**
 * Packs as many entries as fit in `maxBytes`, in order; returns the buffer and how many went in.
 * An entry that does not fit whole is left for the next READDIR, whose offset says where to resume.
 */
export function encodeDirents(entries: readonly Dirent[], maxBytes: number): { buf: Buffer; count: number } {
  let total = 0;
  let count = 0;
  for (const e of entries) {
    const sz = direntSize(e.name.length);
    if (total + sz > maxBytes) break;
    total += sz;
    count++;
  }
  const buf = Buffer.alloc(total);
  let o = 0;
  for (let i = 0; i < count; i++) {
    const e = entries[i]!;
    buf.writeBigUInt64LE(e.ino, o);
    buf.writeBigUInt64LE(e.nextOffset, o + 8);
    buf.writeUInt32LE(e.name.length, o + 16);
    buf.writeUInt32LE(e.type, o + 20);
    e.name.copy(buf, o + DIRENT_HEADER_SIZE);
    o += direntSize(e.name.length);
  }
  return { buf, count };
}
