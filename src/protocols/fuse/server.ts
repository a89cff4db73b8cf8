// Read-only FUSE server speaking the kernel protocol over /dev/fuse directly, without libfuse or a
// native addon.
//
// Why it is shaped this way:
// - Mounting: fusermount3 hands the /dev/fuse descriptor back over a UNIX socket (SCM_RIGHTS),
//   which Node cannot receive. As root we open /dev/fuse ourselves and give it to mount(8) as fd 3
//   (`-o fd=3`); `mount -i` keeps mount(8) from running /sbin/mount.fuse*, which would try to start
//   a program named after the source. So this needs root (CAP_SYS_ADMIN).
// - Reading: every read(2) on /dev/fuse returns exactly one request and blocks until there is one.
//   Node has no non-blocking path for a character device, so reads run in libuv's thread pool. Only
//   a couple are kept outstanding: each one parks a pool thread, and the pool (4 threads by default)
//   is shared with everything else in the process, including the file system being served.
// - Replying: a reply is one write(2) of header plus payload. writev keeps a READ's data from being
//   copied into a joined buffer, and doing it synchronously keeps replies off the thread pool; a
//   write to /dev/fuse only copies into the waiting request and never waits for anything.
// - Requests are served concurrently and answered in any order; FUSE matches replies by `unique`.
// - Inode numbers are the file system's own (root = 1), so there is no per-inode table to keep in
//   step with FORGET: the kernel's lookup counts can be ignored.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

import * as A from './abi.js';

export interface Attr {
  ino: bigint;
  /** Full st_mode, type bits included: S_IFDIR | 0o555, S_IFREG | 0o444, S_IFLNK | 0o777, … */
  mode: number;
  size: bigint;
  mtimeMs: number;
  nlink: number;
  uid?: number;
  gid?: number;
  /** 512-byte blocks allocated; defaults to size rounded up, which is what `du` then shows. */
  blocks?: bigint;
}

export interface ReadOnlyFs {
  /** ino 1n is the root directory. */
  getattr(ino: bigint): Promise<Attr>;
  /** undefined when `name` does not exist in `parent`. */
  lookup(parent: bigint, name: string): Promise<Attr | undefined>;
  /** Every entry except "." and "..", which the server adds. */
  readdir(ino: bigint): Promise<{ name: string; attr: Attr }[]>;
  /** Up to `length` bytes at `offset`; fewer only at the end of the file. */
  read(ino: bigint, offset: bigint, length: number): Promise<Buffer>;
  readlink?(ino: bigint): Promise<string>;
}

export interface MountFuseOptions {
  /** Seconds the kernel may cache names and attributes. A snapshot does not change, so the default is long. Default 60. */
  entryTimeoutSec?: number;
  attrTimeoutSec?: number;
  /** Let users other than root see the tree (the kernel still checks modes: default_permissions). Default true. */
  allowOther?: boolean;
  /** Shown as the source in /proc/mounts. Default 'bulwark'. */
  fsName?: string;
  /** /dev/fuse reads kept outstanding, each holding a libuv pool thread. Default 2. */
  readers?: number;
  /** How long unmount() waits for the kernel to let go before aborting the connection. Default 10 s. */
  unmountTimeoutMs?: number;
  /** Where unexpected file system errors and protocol trouble are reported. Default console.warn. */
  log?: (message: string) => void;
}

export interface FuseMount {
  readonly mountpoint: string;
  /** Lazily unmounts and resolves once the server has stopped. Safe to call more than once. */
  unmount(): Promise<void>;
  /** Settles when the kernel ends the session (unmount, abort) and the device is closed. */
  readonly closed: Promise<void>;
}

interface Request {
  header: A.InHeader;
  body: Buffer;
}

interface DirHandle {
  entries: A.Dirent[];
}

/** A request answered with an errno instead of data. */
class Errno extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}

const E = os.constants.errno;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const O_ACCMODE = 3;
const O_TRUNC = 0o1000;
const W_OK = 2;

const MAX_WRITE = 128 * 1024;
const MAX_PAGES = MAX_WRITE / 4096;
/** The kernel refuses reads shorter than max_write plus headers; 1 MiB leaves room for any kernel's extras. */
const READ_BUFFER_SIZE = 1024 * 1024 + 4096;
const BLKSIZE = 4096;

/** Mounts `tree` read-only at `mountpoint` and serves it until unmounted. Needs root. */
export async function mountFuse(mountpoint: string, tree: ReadOnlyFs, opts: MountFuseOptions = {}): Promise<FuseMount> {
  const fsName = opts.fsName ?? 'bulwark';
  if (/[,\s\\]/.test(fsName)) throw new Error(`fsName '${fsName}' cannot go into a mount option list`);
  // Resolved before mounting: afterwards any path lookup through the mountpoint waits for INIT,
  // which nobody would be reading yet.
  const resolved = fs.realpathSync(mountpoint);
  const fd = fs.openSync('/dev/fuse', 'r+');
  try {
    const options = ['fd=3', `rootmode=${S_IFDIR.toString(8)}`, 'user_id=0', 'group_id=0', 'default_permissions', 'ro'];
    if (opts.allowOther ?? true) options.push('allow_other');
    await run('mount', ['-i', '-t', 'fuse.bulwark', '-o', options.join(','), fsName, resolved], fd);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  const server = new FuseServer(fd, resolved, tree, opts);
  server.connectionId = connectionIdOf(resolved);
  server.start();
  return {
    mountpoint,
    unmount: () => server.unmount(),
    closed: server.closed,
  };
}

/** Runs a command to completion; `passFd` becomes the child's fd 3. Rejects with its stderr on failure. */
function run(cmd: string, args: string[], passFd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe', ...(passFd === undefined ? [] : [passFd])] });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim() || 'no output'}`));
    });
  });
}

class FuseServer {
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private fdOpen = true;
  private activeReaders = 0;
  private stopping = false;
  private unmounting: Promise<void> | undefined;
  private nextFh = 1n;
  /** fusectl's name for this session: the minor number of the mount's anonymous device. */
  connectionId: number | undefined;
  private readonly dirs = new Map<bigint, DirHandle>();
  /** Parents of directories seen through LOOKUP, so ".." in a listing names the real parent. */
  private readonly parents = new Map<bigint, bigint>([[A.ROOT_ID, A.ROOT_ID]]);
  private readonly logged = new Set<string>();
  private readonly entryTimeout: number;
  private readonly attrTimeout: number;
  private readonly log: (message: string) => void;

  constructor(
    private readonly fd: number,
    private readonly mountpoint: string,
    private readonly tree: ReadOnlyFs,
    private readonly opts: MountFuseOptions,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.entryTimeout = opts.entryTimeoutSec ?? 60;
    this.attrTimeout = opts.attrTimeoutSec ?? 60;
    this.log = opts.log ?? ((m) => console.warn(m));
  }

  start(): void {
    const n = Math.max(1, this.opts.readers ?? 2);
    for (let i = 0; i < n; i++) this.readLoop(Buffer.allocUnsafe(READ_BUFFER_SIZE));
  }

  unmount(): Promise<void> {
    this.unmounting ??= this.doUnmount().catch((err: unknown) => {
      this.unmounting = undefined; // let a later call try again
      throw err;
    });
    return this.unmounting;
  }

  private async doUnmount(): Promise<void> {
    if (!this.fdOpen) return;
    // Lazy: the mount leaves the namespace now even if something still has a file open in it; the
    // kernel ends the session (ENODEV on our reads) once the last user lets go.
    await run('umount', ['-l', this.mountpoint]).catch((err: unknown) => {
      if (this.fdOpen) throw err;
    });
    const timeoutMs = this.opts.unmountTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.closed.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      await this.abortConnection(timeoutMs);
      await this.closed;
    }
  }

  /**
   * Ends a session still held open after a lazy unmount; whoever holds it gets ENOTCONN from then
   * on. Closing our descriptor would not do it (the blocked pool reads keep the file alive), and
   * `umount -f`, which aborts too, can no longer find a detached mount. fusectl can: it is mounted
   * here if it is not already, as systemd does at boot.
   */
  private async abortConnection(waitedMs: number): Promise<void> {
    const why = `fuse: ${this.mountpoint}: still in use ${waitedMs} ms after unmount`;
    if (this.connectionId === undefined) throw new Error(`${why} and its fusectl connection id is unknown`);
    const root = '/sys/fs/fuse/connections';
    const abort = `${root}/${this.connectionId}/abort`;
    if (!fs.existsSync(abort) && fs.readdirSync(root).length === 0) {
      await run('mount', ['-t', 'fusectl', 'fusectl', root]).catch((err: unknown) => this.log(`${why}; mounting fusectl failed: ${(err as Error).message}`));
    }
    try {
      fs.writeFileSync(abort, '1');
    } catch (err) {
      throw new Error(`${why}; cannot abort it through ${abort}: ${(err as Error).message}`, { cause: err });
    }
    this.log(`${why}; aborted the connection`);
  }

  private readLoop(buf: Buffer): void {
    this.activeReaders++;
    const next = (): void => {
      if (this.stopping || !this.fdOpen) return this.readerDone();
      fs.read(this.fd, buf, 0, buf.length, null, (err, n) => {
        if (err) {
          const code = err.code;
          if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') return next(); // ENOENT: request vanished (interrupted) before we got it
          if (code !== 'ENODEV' && code !== 'ECONNABORTED' && !this.stopping) {
            // Nobody will answer this mount any more; detach it rather than leave a tree whose
            // every access fails with ENOTCONN.
            this.log(`fuse: ${this.mountpoint}: reading /dev/fuse failed, unmounting: ${err.message}`);
            void run('umount', ['-l', this.mountpoint]).catch((e: unknown) => this.log(`fuse: ${this.mountpoint}: ${(e as Error).message}`));
          }
          this.stopping = true;
          return this.readerDone();
        }
        let req: Request;
        try {
          // Copied so the buffer can go straight back to the kernel; requests of a read-only
          // server are headers and names, never bulk data.
          const raw = Buffer.from(buf.subarray(0, n));
          req = { header: A.decodeInHeader(raw), body: raw.subarray(A.IN_HEADER_SIZE) };
        } catch (e) {
          this.logOnce(`fuse: ${this.mountpoint}: unreadable request: ${(e as Error).message}`);
          // If at least `unique` is there, answer EIO so whoever asked is not left waiting forever.
          if (n >= A.OUT_HEADER_SIZE) this.reply(buf.readBigUInt64LE(8), E.EIO, []);
          return next();
        }
        next();
        this.dispatch(req);
      });
    };
    next();
  }

  private readerDone(): void {
    if (--this.activeReaders === 0) this.closeFd();
  }

  private closeFd(): void {
    if (!this.fdOpen) return;
    // Replies still in flight check fdOpen first: writing to a closed, reused descriptor number
    // would put a FUSE reply into some unrelated file.
    this.fdOpen = false;
    this.dirs.clear();
    fs.close(this.fd, () => this.resolveClosed());
  }

  private dispatch(req: Request): void {
    const { opcode, unique } = req.header;
    // No reply at all: the kernel does not wait for these.
    if (opcode === A.Op.FORGET || opcode === A.Op.BATCH_FORGET || opcode === A.Op.INTERRUPT) return;
    this.handle(req).then(
      (payload) => this.reply(unique, 0, payload),
      (err: unknown) => this.reply(unique, this.errnoOf(err, opcode), []),
    );
  }

  private async handle(req: Request): Promise<Buffer[]> {
    const { header: h, body } = req;
    if (A.WRITE_OPS.has(h.opcode)) throw new Errno(E.EROFS);
    switch (h.opcode) {
      case A.Op.INIT:
        return [this.init(A.decodeInitIn(body))];
      case A.Op.DESTROY:
        this.stopping = true;
        return [];
      case A.Op.LOOKUP: {
        const name = A.decodeName(body);
        const attr = await this.tree.lookup(h.nodeid, name);
        if (!attr) throw new Errno(E.ENOENT);
        if ((attr.mode & S_IFMT) === S_IFDIR) this.parents.set(attr.ino, h.nodeid);
        return [A.encodeEntryOut(toFuseAttr(attr), this.entryTimeout, this.attrTimeout)];
      }
      case A.Op.GETATTR:
        return [A.encodeAttrOut(toFuseAttr(await this.tree.getattr(h.nodeid)), this.attrTimeout)];
      case A.Op.OPEN: {
        const flags = A.decodeOpenFlags(body);
        if ((flags & O_ACCMODE) !== 0 || flags & O_TRUNC) throw new Errno(E.EROFS);
        // The tree is immutable while mounted, so pages cached by an earlier open stay valid.
        return [A.encodeOpenOut(0n, A.FOPEN_KEEP_CACHE)];
      }
      case A.Op.READ: {
        const r = A.decodeReadIn(body);
        if (r.size === 0) return [];
        const data = await this.tree.read(h.nodeid, r.offset, r.size);
        return [data.length > r.size ? data.subarray(0, r.size) : data];
      }
      case A.Op.RELEASE:
      case A.Op.FLUSH:
        return [];
      case A.Op.OPENDIR:
        return [A.encodeOpenOut(await this.openDir(h.nodeid), A.FOPEN_KEEP_CACHE | A.FOPEN_CACHE_DIR)];
      case A.Op.READDIR: {
        const r = A.decodeReadIn(body);
        const dir = this.dirs.get(r.fh);
        if (!dir) throw new Errno(E.EBADF);
        const start = r.offset > BigInt(dir.entries.length) ? dir.entries.length : Number(r.offset);
        return [A.encodeDirents(dir.entries.slice(start), r.size).buf];
      }
      case A.Op.RELEASEDIR:
        this.dirs.delete(A.decodeReleaseFh(body));
        return [];
      case A.Op.STATFS:
        return [A.encodeStatfsOut({ blocks: 0n, files: 0n, bsize: BLKSIZE, namelen: A.NAME_MAX })];
      case A.Op.READLINK: {
        if (!this.tree.readlink) throw new Errno(E.EINVAL);
        return [Buffer.from(await this.tree.readlink(h.nodeid), 'utf8')];
      }
      case A.Op.ACCESS:
        if (A.decodeAccessMask(body) & W_OK) throw new Errno(E.EROFS);
        return [];
      case A.Op.GETXATTR:
        throw new Errno(E.ENODATA);
      case A.Op.LISTXATTR:
        // No attributes: size 0 asks for the length needed (0); otherwise an empty list.
        return A.decodeGetxattrSize(body) === 0 ? [A.encodeGetxattrOut(0)] : [];
      default:
        throw new Errno(E.ENOSYS);
    }
  }

  private init(k: A.InitIn): Buffer {
    if (k.major !== A.KERNEL_VERSION) {
      // A kernel with a newer major re-sends INIT with ours if we answer with just our version;
      // an older one cannot be served at all.
      this.log(`fuse: ${this.mountpoint}: kernel speaks FUSE ${k.major}.${k.minor}, this server ${A.KERNEL_VERSION}.${A.KERNEL_MINOR_VERSION}`);
      if (k.major < A.KERNEL_VERSION) throw new Errno(E.EPROTO);
    }
    const wanted = A.FUSE_ASYNC_READ | A.FUSE_BIG_WRITES | A.FUSE_PARALLEL_DIROPS | A.FUSE_MAX_PAGES | A.FUSE_CACHE_SYMLINKS;
    return A.encodeInitOut({
      major: A.KERNEL_VERSION,
      minor: Math.min(k.minor, A.KERNEL_MINOR_VERSION),
      maxReadahead: k.maxReadahead,
      flags: wanted & k.flags,
      maxBackground: 16,
      congestionThreshold: 12,
      maxWrite: MAX_WRITE,
      timeGran: 1,
      maxPages: MAX_PAGES,
    });
  }

  /** Lists the directory once per open, so READDIR offsets stay stable across calls. */
  private async openDir(ino: bigint): Promise<bigint> {
    const listing = await this.tree.readdir(ino);
    const raw: { name: string; ino: bigint; mode: number }[] = [
      { name: '.', ino, mode: S_IFDIR },
      { name: '..', ino: this.parents.get(ino) ?? ino, mode: S_IFDIR },
      ...listing.map((e) => ({ name: e.name, ino: e.attr.ino, mode: e.attr.mode })),
    ];
    const entries: A.Dirent[] = [];
    for (const e of raw) {
      const name = Buffer.from(e.name, 'utf8');
      if (name.length === 0 || name.length > A.NAME_MAX || e.name.includes('/') || e.name.includes('\0')) {
        this.logOnce(`fuse: ${this.mountpoint}: skipping entry ${JSON.stringify(e.name)} of inode ${ino}: not a valid file name`);
        continue;
      }
      entries.push({ ino: e.ino, nextOffset: BigInt(entries.length + 1), type: (e.mode & S_IFMT) >>> 12, name });
    }
    const fh = this.nextFh++;
    this.dirs.set(fh, { entries });
    return fh;
  }

  private reply(unique: bigint, errno: number, payload: Buffer[]): void {
    if (!this.fdOpen) return;
    const len = A.OUT_HEADER_SIZE + payload.reduce((n, b) => n + b.length, 0);
    try {
      fs.writevSync(this.fd, [A.encodeOutHeader(len, errno, unique), ...payload]);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ENOENT: the request was interrupted and is gone; ENODEV: the session ended meanwhile.
      if (code !== 'ENOENT' && code !== 'ENODEV') this.logOnce(`fuse: ${this.mountpoint}: reply to ${unique} rejected: ${(err as Error).message}`);
    }
  }

  private errnoOf(err: unknown, opcode: number): number {
    if (err instanceof Errno) return err.errno;
    const code = typeof err === 'object' && err !== null && 'code' in err ? (err as { code: unknown }).code : undefined;
    if (typeof code === 'string' && Object.hasOwn(E, code)) return E[code as keyof typeof E];
    this.logOnce(`fuse: ${this.mountpoint}: opcode ${opcode} failed, answering EIO: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return E.EIO;
  }

  /** Each distinct message once: a broken file read by `find | xargs cat` would otherwise flood the log. */
  private logOnce(message: string): void {
    if (this.logged.has(message)) return;
    if (this.logged.size < 1000) this.logged.add(message);
    this.log(message);
  }
}

/**
 * Reads the mount's device number from /proc/self/mountinfo rather than stat()ing the mountpoint,
 * which would send a GETATTR before the server is reading.
 */
function connectionIdOf(want: string): number | undefined {
  let id: number | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const point = f[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    const sep = f.indexOf('-');
    if (point !== want || sep < 0 || f[sep + 1] !== 'fuse.bulwark') continue;
    const m = /^(\d+):(\d+)$/.exec(f[2] ?? '');
    // The last match is the newest mount, the one stacked on top.
    if (m) id = Number(m[1]) * 2 ** 20 + Number(m[2]);
  }
  return id;
}

function toFuseAttr(a: Attr): A.FuseAttr {
  const isLink = (a.mode & S_IFMT) === S_IFLNK;
  return {
    ino: a.ino,
    size: a.size,
    blocks: a.blocks ?? (isLink ? 0n : (a.size + 511n) / 512n),
    mtimeMs: a.mtimeMs,
    mode: a.mode,
    nlink: a.nlink,
    uid: a.uid ?? 0,
    gid: a.gid ?? 0,
    blksize: BLKSIZE,
  };
}
