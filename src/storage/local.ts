// A repository in a local folder (or any mounted file system: USB disk, NFS, SMB).
import { randomBytes } from 'node:crypto';
import { constants, promises as fsp, type Dirent, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { BulwarkError, errnoCode, unable, type ErrorCode } from '../util/errors.js';
import { FILE_TYPES, OBJECT_WORDS, isFileSource, saveSize, type Backend, type BackendProperties, type FileInfo, type FileSource, type FileType, type Handle, type SaveData } from './backend.js';

interface ReadHandle {
  fh: fsp.FileHandle;
  size: number;
  users: number;
  /** Still in the cache; when false, the last reader closes it. */
  cached: boolean;
}

/** Pack files kept open for ranged reads. */
const READ_HANDLES = 64;
const NAME = /^[0-9a-f]{64}$/;
const TEMP_PREFIX = '.tmp-';
const DIR_MODE = 0o700;
const FILE_MODE = 0o444;
const DATA_SUBDIRS = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const LAYOUT_DIRS: readonly string[] = FILE_TYPES.filter((t) => t !== 'config');

// Retrying cannot fix these. ENOENT is here because a path we built from a validated name is missing
// only when the repository (or one of its folders) is gone.
const PERMANENT_ERRNO = new Set(['EACCES', 'EPERM', 'ENOSPC', 'EROFS', 'EDQUOT', 'ENOENT', 'EISDIR', 'ENOTDIR', 'ENAMETOOLONG', 'EFBIG', 'ELOOP']);
// Our own wrappers with these codes may clear up on a second try (their errno, if any, decides first).
const TRANSIENT_CODES = new Set<ErrorCode>(['io', 'timeout', 'protocol']);
// Some file systems (SMB on macOS, some FUSE mounts) cannot fsync; restic learned to carry on there.
const SYNC_UNSUPPORTED = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EINVAL', 'ENOTTY']);
// File systems without Unix modes (exFAT, some network mounts) refuse chmod; read-only is only a courtesy.
const CHMOD_UNSUPPORTED = new Set(['EPERM', 'EACCES', 'ENOTSUP', 'EOPNOTSUPP', 'EINVAL']);

// A hostile or damaged repository can hold a FIFO (opening it for reading waits for a writer, forever),
// a device, or a symlink to anywhere where an object belongs. O_NONBLOCK makes the open of a FIFO return
// at once so the fstat after it can refuse it; on regular files it changes nothing. O_NOCTTY keeps a tty
// device from becoming our controlling terminal in the moment before it is refused.
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;
// What open() says about some non-regular files before we get to fstat them: ELOOP for a symlink under
// O_NOFOLLOW, ENXIO for a Unix socket (and a device without a driver), ENODEV for some devices.
const OPEN_REFUSES_KIND = new Set(['ELOOP', 'ENXIO', 'ENODEV', 'EOPNOTSUPP']);
const NOT_REGULAR_HINT = "remove it or run 'bulwark check'";


/** The errno codes along an error's cause chain, outermost first. */
function errnoChain(err: unknown): string[] {
  const codes: string[] = [];
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    // BulwarkError codes and Node's ERR_* codes share the `code` field; only E-names are errnos.
    const code = e instanceof BulwarkError ? undefined : errnoCode(e);
    if (code !== undefined && /^E[A-Z0-9]+$/.test(code)) codes.push(code);
    e = e instanceof Error ? e.cause : undefined;
  }
  return codes;
}

function ioCode(errno: string | undefined): ErrorCode {
  if (errno === 'ENOSPC' || errno === 'EDQUOT') return 'no-space';
  if (errno === 'ENOENT') return 'not-found';
  return 'io';
}

/** "unable to <verb> <object> '<path>': …" with the errno kept as cause, so isNotFound/isPermanent see it. */
function fsError(verb: string, object: string, path: string, err: unknown, notFoundCode: ErrorCode = 'not-found'): BulwarkError {
  if (err instanceof BulwarkError) return unable(verb, object, path, err);
  const errno = errnoCode(err);
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    const what = errno === 'ENOSPC' ? 'no space left on the repository disk' : 'disk quota exceeded on the repository disk';
    return unable(verb, object, path, new BulwarkError('no-space', `${what} (${errno})`, { cause: err, hint: 'free space on that disk or choose another repository location; objects already saved are intact' }));
  }
  if (errno === 'EACCES' || errno === 'EPERM' || errno === 'EROFS') {
    const reason = err instanceof Error ? err.message : String(err);
    return unable(verb, object, path, new BulwarkError('io', reason, { cause: err, hint: 'check that the repository folder is writable (and readable) by this user and not mounted read-only' }));
  }
  const code = ioCode(errno);
  return unable(verb, object, path, err, code === 'not-found' ? notFoundCode : code);
}

function kindOf(st: Stats | Dirent): string {
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a fifo';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'of an unknown kind';
}

/** DT_UNKNOWN: the file system did not say, so only an lstat can. */
function typeUnknown(e: Dirent): boolean {
  return !(e.isFile() || e.isDirectory() || e.isSymbolicLink() || e.isFIFO() || e.isSocket() || e.isCharacterDevice() || e.isBlockDevice());
}

/** Wrapped by fsError like any cause, so the message names the object and its path. */
function notRegular(st: Stats, cause?: unknown): BulwarkError {
  const message = st.isSymbolicLink() ? 'it is a symbolic link; it was not followed' : `it is not a regular file (${kindOf(st)}); it was not read`;
  return new BulwarkError('repository-corrupt', message, { hint: NOT_REGULAR_HINT, ...(cause === undefined ? {} : { cause }) });
}

/**
 * Opens an object for reading, and only if it is a regular file. The check is on the open handle (not
 * a stat before the open), so nothing can swap a FIFO in between.
 */
async function openRegular(path: string): Promise<{ fh: fsp.FileHandle; size: number }> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, READ_FLAGS);
  } catch (err) {
    if (!OPEN_REFUSES_KIND.has(errnoCode(err) ?? '')) throw err;
    // ELOOP also means a symlink loop further up the path; only the object itself gets the clear message.
    const st = await fsp.lstat(path).catch(() => undefined);
    if (st !== undefined && !st.isFile()) throw notRegular(st, err);
    throw err;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw notRegular(st);
    return { fh, size: st.size };
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
}

/** Like lstat, but refusing what openRegular would refuse; stat() needs no open, so it opens nothing. */
async function lstatRegular(path: string): Promise<Stats> {
  const st = await fsp.lstat(path);
  if (!st.isFile()) throw notRegular(st);
  return st;
}

async function syncDir(dir: string): Promise<void> {
  const d = await fsp.open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await d.sync();
  } catch (err) {
    if (!SYNC_UNSUPPORTED.has(errnoCode(err) ?? '')) throw err;
  } finally {
    await d.close();
  }
}

export interface LocalBackendOptions {
  /** Requests in flight at once; local disks gain little beyond a few. */
  connections?: number;
}

export class LocalBackend implements Backend {
  readonly properties: BackendProperties;
  private readonly root: string;
  private readonly readHandles = new Map<string, Promise<ReadHandle>>();

  constructor(path: string, opts: LocalBackendOptions = {}) {
    const connections = opts.connections ?? 4;
    if (!Number.isInteger(connections) || connections < 1) throw new Error(`connections must be a positive integer, not ${connections}`);
    this.root = resolve(path);
    this.properties = { connections, location: this.root, spool: this.root };
  }

  /**
   * The only way a handle becomes a path. Names are hashes we computed or listed, so anything else is a
   * bug; checking strictly here means no name can ever reach outside the repository ('../', '/', NUL).
   */
  private pathOf(h: Handle): { dir: string; path: string } {
    if (!FILE_TYPES.includes(h.type)) throw new Error(`invalid file type '${String(h.type)}'`);
    if (typeof h.name !== 'string') throw new Error(`invalid object name for ${h.type}`);
    if (h.type === 'config') {
      if (h.name !== '') throw new Error(`invalid name '${h.name}' for config (it has none)`);
      return { dir: this.root, path: join(this.root, 'config') };
    }
    if (!NAME.test(h.name)) throw new Error(`invalid ${h.type} name '${h.name}' (want 64 lowercase hex characters)`);
    const dir = h.type === 'data' ? join(this.root, 'data', h.name.slice(0, 2)) : join(this.root, h.type);
    return { dir, path: join(dir, h.name) };
  }

  async create(): Promise<void> {
    const config = join(this.root, 'config');
    if (await fsp.lstat(config).then(() => true, () => false)) {
      throw new BulwarkError('repository-exists', `a repository already exists at '${this.root}'`, { hint: 'use it as it is, or choose another location' });
    }
    try {
      const firstMade = await fsp.mkdir(this.root, { recursive: true, mode: DIR_MODE });
      await this.assertNoStrangers();
      // recursive: a create() repeated after a partial one (or retried after a lost reply) finishes it.
      for (const t of LAYOUT_DIRS) await fsp.mkdir(join(this.root, t), { recursive: true, mode: DIR_MODE });
      for (const sub of DATA_SUBDIRS) await fsp.mkdir(join(this.root, 'data', sub), { recursive: true, mode: DIR_MODE });
      // save() fsyncs the folder it renames into, which makes the file's entry durable but not the
      // folder's own entry in its parent. So the new folders are made durable here, bottom up, before
      // any object lands in them: otherwise a crash could lose a whole folder of "durable" objects.
      await syncDir(join(this.root, 'data'));
      await syncDir(this.root);
      if (firstMade !== undefined) await syncDir(dirname(firstMade));
    } catch (err) {
      throw fsError('create', 'repository', this.root, err, 'io');
    }
  }

  /**
   * A folder with other things in it is almost certainly the wrong place (a home folder, another
   * tool's data). Layout folders without objects are fine: that is what an interrupted create() leaves.
   * A layout folder holding objects is not: e.g. a key from an init that died before its config would
   * unlock a master key that no config was sealed with.
   */
  private async assertNoStrangers(): Promise<void> {
    const strangers: string[] = [];
    for (const entry of await fsp.readdir(this.root)) {
      if (entry.startsWith('.') || entry === 'lost+found') continue;
      if (!LAYOUT_DIRS.includes(entry) || (await this.holdsObjects(entry))) strangers.push(entry);
    }
    if (strangers.length > 0) {
      throw new BulwarkError('usage', `the folder is not empty and not a repository (it holds ${strangers.slice(0, 3).join(', ')}${strangers.length > 3 ? ', …' : ''})`, {
        hint: 'create a repository in an empty or new folder (if an earlier init was interrupted, remove the folder and run init again)',
      });
    }
  }

  private async holdsObjects(layoutDir: string): Promise<boolean> {
    // A file where a layout folder belongs counts as "holding something".
    const visible = (dir: string) =>
      fsp.readdir(dir).then(
        (names) => names.filter((n) => !n.startsWith('.')),
        (err: unknown) => {
          if (errnoCode(err) === 'ENOTDIR') return ['(a file)'];
          throw err;
        },
      );
    const dir = join(this.root, layoutDir);
    const entries = await visible(dir);
    if (layoutDir !== 'data') return entries.length > 0;
    for (const e of entries) {
      if (!DATA_SUBDIRS.includes(e) || (await visible(join(dir, e))).length > 0) return true;
    }
    return false;
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    const { dir, path } = this.pathOf(h);
    const size = saveSize(data);
    const object = OBJECT_WORDS[h.type];
    // lstat: a symlink named like this object is no copy of it, since load() would refuse it.
    const existing = await fsp.lstat(path).catch((err: unknown) => {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw fsError('write', object, path, err, 'io');
    });
    // The config is the one object that is replaced (by a format upgrade): the rename below does that atomically.
    if (existing !== undefined && !(h.type === 'config' && existing.isFile())) {
      if (!existing.isFile() || existing.size !== size) {
        throw new BulwarkError('repository-corrupt', `unable to write ${object} '${path}': it exists with ${existing.isFile() ? `${existing.size} bytes, not ${size}` : 'a different kind (not a file)'}`, {
          hint: "run 'bulwark check'",
        });
      }
      // Content-addressed: the same name and size means the same bytes, and they were fsync'd before
      // their rename. But the earlier save may have failed (or still be running, in another process)
      // between rename and folder fsync, so the entry itself is made durable before claiming success.
      try {
        await syncDir(dir);
      } catch (err) {
        throw fsError('write', object, path, err, 'io');
      }
      return;
    }

    // Crash safety. The bytes go to a temp file in the target folder (so rename stays within one file
    // system and is atomic), which is fsync'd before the rename: a rename that reaches the disk before
    // its file's data would otherwise leave a whole-looking object full of zeros after a power cut.
    // The rename publishes the object at once, whole, to every reader; the folder fsync afterwards makes
    // that rename survive a crash, so "save resolved" means durable. A crash at any earlier point leaves
    // only a .tmp- file, which list() and load() never see.
    const tmp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    let fh: fsp.FileHandle | undefined;
    let created = false;
    try {
      if (isFileSource(data) && (await linkInto(data, tmp))) {
        // The caller's finished file, linked under the temp name: no copy. Checked like a copy would be.
        created = true;
        fh = await fsp.open(tmp, constants.O_RDONLY | constants.O_NOFOLLOW);
        const got = (await fh.stat()).size;
        if (got !== data.size) throw new Error(`${data.path} holds ${got} bytes, not ${data.size}`);
      } else if (isFileSource(data)) {
        fh = await this.openTemp(tmp, h.type);
        created = true;
        await copyInto(fh, data.path, data.size);
      } else {
        fh = await this.openTemp(tmp, h.type);
        created = true;
        let off = 0;
        while (off < data.length) {
          const { bytesWritten } = await fh.write(data, off, data.length - off, off);
          off += bytesWritten;
        }
      }
      // Before the sync, so the mode is as durable as the bytes; before the rename, so no reader ever
      // sees the object writable.
      await fh.chmod(FILE_MODE).catch((err: unknown) => {
        if (!CHMOD_UNSUPPORTED.has(errnoCode(err) ?? '')) throw err;
      });
      await fh.sync().catch((err: unknown) => {
        if (!SYNC_UNSUPPORTED.has(errnoCode(err) ?? '')) throw err;
      });
      await fh.close();
      fh = undefined;
      // Two savers of one name (concurrent uploads of the same blob) both get here; the second rename
      // replaces identical bytes with identical bytes, which no reader can tell apart.
      await fsp.rename(tmp, path);
      created = false;
      await syncDir(dir);
    } catch (err) {
      await fh?.close().catch(() => undefined);
      // A failed save must not leave its partial bytes behind: on a full disk they hold the very space
      // the user needs to recover.
      if (created) await fsp.unlink(tmp).catch(() => undefined);
      throw fsError('write', object, path, err, 'io');
    }
  }

  /** 0o600 while writing: some network file systems check the mode on each write, not only at open. */
  private async openTemp(tmp: string, type: FileType): Promise<fsp.FileHandle> {
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
    try {
      return await fsp.open(tmp, flags, 0o600);
    } catch (err) {
      // A data subfolder can go missing (a copy tool that drops empty folders), and repositories made
      // before notes/ existed lack that folder. Recreate just that level: the repository root and the
      // other type folders must exist, or this is not a repository.
      if (errnoCode(err) !== 'ENOENT' || (type !== 'data' && type !== 'notes')) throw err;
      const dir = dirname(tmp);
      try {
        await fsp.mkdir(dir, { mode: DIR_MODE });
      } catch (mkErr) {
        if (errnoCode(mkErr) !== 'EEXIST') throw err;
      }
      await syncDir(dirname(dir));
      return fsp.open(tmp, flags, 0o600);
    }
  }

  async load(h: Handle, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    const { path } = this.pathOf(h);
    const object = OBJECT_WORDS[h.type];
    if (offset !== undefined && (!Number.isSafeInteger(offset) || offset < 0)) throw new Error(`invalid offset ${offset}`);
    if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new Error(`invalid length ${length}`);
    if (offset === undefined && length === undefined) {
      let opened: { fh: fsp.FileHandle; size: number } | undefined;
      try {
        opened = await openRegular(path);
        return await opened.fh.readFile();
      } catch (err) {
        throw fsError('read', object, path, err);
      } finally {
        await opened?.fh.close().catch(() => undefined);
      }
    }
    const handle = await this.acquireRead(h, path).catch((err: unknown) => {
      throw fsError('read', object, path, err);
    });
    try {
      const start = offset ?? 0;
      const len = length ?? Math.max(0, handle.size - start);
      // Checked before allocating: a bogus length from a damaged index must not become a huge buffer.
      if (start + len > handle.size) throw beyondEnd(handle.size, start, len);
      // Into the caller's buffer when it offers one: a restore reads hundreds of 8 MiB ranges, and fresh
      // memory for each costs a page fault per 4 KiB.
      const buf = into && into.length >= len ? into.subarray(0, len) : Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await handle.fh.read(buf, got, len - got, start + got);
        if (bytesRead === 0) throw beyondEnd(start + got, start, len);
        got += bytesRead;
      }
      return buf;
    } catch (err) {
      throw fsError('read', object, path, err);
    } finally {
      this.releaseRead(handle);
    }
  }

  /**
   * Ranged reads of packs share one open handle per pack: a restore reads many blobs from each pack,
   * and opening, stat-ing and closing it for every blob would cost more than the read. Objects never
   * change after they are written, so a cached handle never sees stale bytes. Handles are reference
   * counted so an evicted one closes only when its last reader is done.
   */
  private async acquireRead(h: Handle, path: string): Promise<ReadHandle> {
    let p = h.type === 'data' ? this.readHandles.get(path) : undefined;
    if (p) {
      this.readHandles.delete(path); // most recently used goes last
      this.readHandles.set(path, p);
    } else {
      p = openRegular(path).then(({ fh, size }) => ({ fh, size, users: 0, cached: h.type === 'data' }));
      if (h.type === 'data') {
        this.readHandles.set(path, p);
        p.catch(() => this.readHandles.delete(path));
        while (this.readHandles.size > READ_HANDLES) this.evict(this.readHandles.keys().next().value as string);
      }
    }
    const handle = await p;
    handle.users++;
    return handle;
  }

  private releaseRead(handle: ReadHandle): void {
    handle.users--;
    if (handle.users === 0 && !handle.cached) void handle.fh.close().catch(() => undefined);
  }

  private evict(path: string): void {
    const p = this.readHandles.get(path);
    if (!p) return;
    this.readHandles.delete(path);
    void p.then(
      (handle) => {
        handle.cached = false;
        if (handle.users === 0) void handle.fh.close().catch(() => undefined);
      },
      () => undefined,
    );
  }

  async stat(h: Handle): Promise<FileInfo> {
    const { path } = this.pathOf(h);
    try {
      const st = await lstatRegular(path);
      return { name: h.name, size: st.size };
    } catch (err) {
      throw fsError('stat', OBJECT_WORDS[h.type], path, err);
    }
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (!FILE_TYPES.includes(type)) throw new Error(`invalid file type '${String(type)}'`);
    if (type === 'config') {
      const path = join(this.root, 'config');
      const st = await fsp.lstat(path).catch((err: unknown) => {
        if (errnoCode(err) === 'ENOENT') return undefined;
        throw fsError('list', 'config', path, err, 'io');
      });
      if (st?.isFile()) yield { name: '', size: st.size };
      return;
    }
    const dirs = type === 'data' ? DATA_SUBDIRS.map((sub) => ({ dir: join(this.root, 'data', sub), prefix: sub })) : [{ dir: join(this.root, type), prefix: '' }];
    for (const { dir, prefix } of dirs) {
      let entries: Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') continue; // no such folder holds no objects
        throw fsError('list', `${type} folder`, dir, err, 'io');
      }
      // Only names load() would find: temp files, strangers, and objects in the wrong subfolder are not
      // objects of this repository. Nor is anything load() would refuse (a FIFO, a symlink, a folder);
      // the dirent type drops those without a syscall, and the lstat below catches the rest (DT_UNKNOWN
      // from some file systems, and entries swapped since readdir).
      const objects = entries.filter((e) => NAME.test(e.name) && e.name.startsWith(prefix) && (e.isFile() || typeUnknown(e))).map((e) => e.name);
      for (let i = 0; i < objects.length; i += 32) {
        const batch = await Promise.all(
          objects.slice(i, i + 32).map(async (name) => {
            try {
              const st = await fsp.lstat(join(dir, name));
              return st.isFile() ? { name, size: st.size } : undefined;
            } catch (err) {
              // Removed since readdir (a lock released, a pack pruned): not part of this listing.
              if (errnoCode(err) === 'ENOENT') return undefined;
              throw fsError('list', OBJECT_WORDS[type], join(dir, name), err, 'io');
            }
          }),
        );
        for (const f of batch) if (f) yield f;
      }
    }
  }

  async remove(h: Handle): Promise<void> {
    const { dir, path } = this.pathOf(h);
    const object = OBJECT_WORDS[h.type];
    this.evict(path);
    try {
      await fsp.unlink(path);
    } catch (err) {
      throw fsError('remove', object, path, err);
    }
    // Removals are ordered by their callers (prune drops an index before the packs it names). Without
    // this fsync a crash could keep the later removal and lose the earlier one, in another folder.
    try {
      await syncDir(dir);
    } catch (err) {
      throw fsError('remove', object, path, err, 'io');
    }
  }

  isNotFound(err: unknown): boolean {
    return errnoChain(err).includes('ENOENT');
  }

  isPermanent(err: unknown): boolean {
    // A damaged object stays damaged, whatever errno came along (ENXIO from opening a socket, say).
    if (err instanceof BulwarkError && err.code === 'repository-corrupt') return true;
    const errno = errnoChain(err)[0];
    if (errno !== undefined) return PERMANENT_ERRNO.has(errno);
    if (err instanceof BulwarkError) return !TRANSIENT_CODES.has(err.code);
    // No errno and not ours: a programmer error (bad name, bad offset), which no retry fixes.
    return true;
  }

  async close(): Promise<void> {
    for (const path of [...this.readHandles.keys()]) this.evict(path);
  }
}

function beyondEnd(size: number, offset: number, length: number): BulwarkError {
  return new BulwarkError('repository-corrupt', `it has ${size} bytes, so ${length} bytes at offset ${offset} lie beyond its end`, {
    hint: "the index and the stored object disagree: run 'bulwark check'",
  });
}

const COPY_BUFFER_BYTES = 1024 * 1024;

/** Copies `size` bytes of a local file into an open one, through one small buffer. */
async function copyInto(fh: fsp.FileHandle, source: string, size: number): Promise<void> {
  const src = await fsp.open(source, 'r');
  try {
    const buf = Buffer.allocUnsafe(Math.min(COPY_BUFFER_BYTES, Math.max(1, size)));
    let off = 0;
    while (off < size) {
      const { bytesRead } = await src.read(buf, 0, Math.min(buf.length, size - off), off);
      if (bytesRead === 0) throw new Error(`${source} ended after ${off} of ${size} bytes`);
      let done = 0;
      while (done < bytesRead) done += (await fh.write(buf, done, bytesRead - done, off + done)).bytesWritten;
      off += bytesRead;
    }
  } finally {
    await src.close();
  }
}

/**
 * Links a FileSource under the temp name when both are on one file system; false when they are not
 * (or the file system has no hard links), and the bytes must be copied.
 */
async function linkInto(data: FileSource, tmp: string): Promise<boolean> {
  try {
    await fsp.link(data.path, tmp);
    return true;
  } catch (err) {
    // ENOENT: a missing data subfolder (the copy path recreates it) or source (the copy path says so).
    if (['EXDEV', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EMLINK', 'ENOENT'].includes(errnoCode(err) ?? '')) return false;
    throw err;
  }
}
