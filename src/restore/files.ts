// File restore: recreates entries from tree blobs under a target folder, with their metadata.
//
// Safety: a damaged or hostile snapshot must not change anything outside the target, even restored as
// root. Every tree is validated (each name one path component, names unique and in order), nothing
// under the target that is a symlink is ever followed (directories are created, not trusted, and
// entered through O_NOFOLLOW handles; files are unlinked and created exclusively), and owner, mode,
// times and xattrs are set through a handle on the very inode just created — never by path, which a
// sibling restored at the same time could have turned into a symlink. Hard links only join regular
// files this restore wrote.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  ftruncateSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  promises as fsp,
  symlinkSync,
  unlinkSync,
  utimesSync,
} from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { promisify } from 'node:util';
import { setAttribute } from 'fs-xattr';
import type { Repository } from '../repository/repository.js';
import { decodeTree, displayName, linkTarget, nodeName, validateName, type Tree, type TreeNode } from '../repository/tree.js';
import { ExpansionGuard, walk } from '../repository/walk.js';
import { newProgress, type Progress, type ProgressSink } from '../sources/progress.js';
import { BulwarkError, errnoCode, unable } from '../util/errors.js';
import { Budget } from '../util/budget.js';
import { blobReaderOf, type BlobReader } from '../repository/blob-reader.js';
import { DirHandle, O_PATH } from '../util/dirhandle.js';
import { compileGlobs, type Matcher } from '../util/glob.js';
import { writeSparseSync } from '../util/sparse.js';

const run = promisify(execFile);

/**
 * Entries restored at the same time. Their blob lists are what the blob reader sees ahead of the
 * writer: with tens of thousands of small files, 64 gave it too little to merge into long ranges.
 * Waiting files hold no descriptor (see file()); the folders they are in do.
 */
const FILES_IN_FLIGHT = 256;

export type RestoreRepo = Pick<Repository, 'loadBlob' | 'index' | 'zeroChunk'> & Partial<Pick<Repository, 'blobReader'>>;

export interface FilesRestoreOptions {
  target: string;
  /** Only entries matching one of these globs (and the folders leading to them) are restored. */
  includes?: string[];
  onProgress?: ProgressSink;
}

export interface FilesRestoreResult {
  files: number;
  dirs: number;
  bytes: number;
  errors: { path: string; message: string }[];
}

function join(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, Buffer.from('/'), name]);
}

/** mkdir -p, one level at a time: Node's recursive mkdir never returns for some paths (e.g. under /proc). */
async function makeDirs(path: string): Promise<void> {
  const abs = resolvePath(path);
  let at = '';
  for (const part of abs.split('/').filter(Boolean)) {
    at += `/${part}`;
    try {
      await fsp.mkdir(at);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

/**
 * Makes the target folder and returns its real path. The target is the administrator's choice, so a
 * symlink given as the target is followed (once, here); nothing below it ever is.
 */
export async function prepareTarget(target: string): Promise<string> {
  try {
    await makeDirs(target);
    await fsp.access(target, constants.W_OK);
    const st = await fsp.stat(target);
    if (!st.isDirectory()) throw new Error('not a directory');
    return await fsp.realpath(target);
  } catch (err) {
    throw new BulwarkError('failed', `restore target '${target}' is not a writable directory: ${(err as Error).message}`, {
      hint: 'choose a target folder you can write to (--target)',
    });
  }
}

export class FilesRestorer {
  private readonly progress: Progress = newProgress();
  private readonly errors: { path: string; message: string }[] = [];
  /** The first copy of each hard-linked file, by its original device and inode: its path once written. */
  private readonly links = new Map<string, Promise<Buffer>>();
  private readonly includes: Matcher | undefined;
  private lastEmit = 0;
  /** A crafted snapshot that names one subtree over and over must not expand without end. */
  private readonly guard = new ExpansionGuard();
  /**
   * One reader for every file: files started one after the other hold blobs that lie next to each
   * other in the packs, so their reads are merged too, and the reader's byte budget bounds the memory
   * of loaded-but-unwritten blobs across all files in flight.
   */
  private readonly reader: Pick<BlobReader, 'blobs'>;
  /** Entries being restored at once, across all folders. */
  private readonly inFlight = new Budget(FILES_IN_FLIGHT);

  constructor(
    private readonly repo: RestoreRepo,
    private readonly opts: FilesRestoreOptions,
  ) {
    this.includes = opts.includes && opts.includes.length > 0 ? compileGlobs(opts.includes) : undefined;
    this.reader = blobReaderOf(repo);
  }

  /** Restores the given nodes (a tree's children, or one node picked by path) into the target. */
  async restore(nodes: TreeNode[], logicalDir = ''): Promise<FilesRestoreResult> {
    const target = await prepareTarget(this.opts.target);
    const root = await DirHandle.open(target);
    try {
      const { done } = await this.startNodes(root, Buffer.from(target), nodes, logicalDir, this.includes);
      await done;
    } finally {
      await root.close();
    }
    this.opts.onProgress?.(this.progress);
    return { files: this.progress.files, dirs: this.progress.dirs, bytes: this.progress.bytesDone, errors: this.errors };
  }

  async loadTree(id: string): Promise<Tree> {
    const tree = decodeTree(await this.repo.loadBlob('tree', id), id);
    this.guard.tree(id, tree);
    return tree;
  }

  private failed(logical: string, err: unknown): void {
    this.errors.push({ path: logical, message: err instanceof Error ? err.message : String(err) });
    this.progress.errors++;
  }

  /**
   * Walks `nodes` into the folder `dir` and starts restoring them, waiting only for room among the
   * entries in flight; `done` settles when every one of them is restored or has failed.
   *
   * Entries are restored many at a time across the whole snapshot, not folder by folder: each file is
   * a chain of small waits (load, open in a worker) that would otherwise leave the disk and the CPU
   * idle, and most folders hold only a few files. The walk itself stays depth-first and in order, so
   * folder handles stay open only while entries below them are in flight.
   *
   * `dir` is a handle on the folder being filled (paths through it stay short at any depth); `real`
   * is its ordinary path, needed only as the source of hard links.
   */
  private async startNodes(dir: DirHandle, real: Buffer, nodes: TreeNode[], logicalDir: string, includes: Matcher | undefined): Promise<{ done: Promise<void> }> {
    const running = new Set<Promise<void>>();
    const track = (logical: string, task: Promise<void>): void => {
      const t = task.catch((err: unknown) => this.failed(logical, err));
      running.add(t);
      void t.then(() => running.delete(t));
    };
    try {
      for (const node of nodes) {
        const name = nodeName(node);
        validateName(name);
        this.guard.entry();
        const logical = `${logicalDir}/${displayName(name)}`;
        const path = dir.child(name);
        if (node.type === 'dir') {
          try {
            const started = await this.dir(path, join(real, name), node, logical, includes);
            if (started) track(logical, started.done);
          } catch (err) {
            this.failed(logical, err);
          }
          continue;
        }
        if (includes && !includes(logical)) continue;
        await this.inFlight.acquire(1);
        track(
          logical,
          this.leaf(path, join(real, name), node).finally(() => this.inFlight.release(1)),
        );
      }
    } catch (err) {
      // Entries already started use `dir`'s handle: it must stay open until they are done.
      await Promise.all(running);
      throw err;
    }
    return { done: Promise.all(running).then(() => undefined) };
  }

  /** Makes a folder and starts its entries; `done` settles once they are restored and the folder's own metadata is set. */
  private async dir(path: Buffer, real: Buffer, node: TreeNode, logical: string, includes: Matcher | undefined): Promise<{ done: Promise<void> } | undefined> {
    const tree = node.subtree ? await this.loadTree(node.subtree) : { nodes: [] };
    if (includes && !includes(logical) && !(await this.anyIncluded(tree, logical, includes))) return undefined;
    try {
      mkdirSync(path, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    // Opening with O_NOFOLLOW|O_DIRECTORY refuses a symlink planted where the folder should be.
    let handle: DirHandle;
    try {
      handle = DirHandle.openSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw code === 'ENOTDIR' || code === 'ELOOP' ? new Error('exists in the target and is not a directory (not followed)') : err;
    }
    let started: { done: Promise<void> };
    try {
      // Inside an included folder everything is restored.
      started = await this.startNodes(handle, real, tree.nodes, logical, includes && includes(logical) ? undefined : includes);
    } catch (err) {
      handle.closeSync();
      throw err;
    }
    const done = (async () => {
      try {
        await started.done;
        this.progress.dirs++;
        // Through the handle: /proc/self/fd/N names the directory inode opened above, whatever its path
        // has become meanwhile. Last, so the entries made inside do not change its times again.
        await this.metadataByHandle(handle.path, node);
      } finally {
        handle.closeSync();
      }
    })();
    return { done };
  }

  private async anyIncluded(tree: Tree, logical: string, includes: Matcher): Promise<boolean> {
    for (const n of tree.nodes) {
      const l = `${logical}/${displayName(nodeName(n))}`;
      if (includes(l)) return true;
      if (n.type === 'dir' && n.subtree) {
        for await (const e of walk(this.repo, n.subtree, l, { guard: this.guard })) if (includes(e.path)) return true;
      }
    }
    return false;
  }

  private async leaf(path: Buffer, real: Buffer, node: TreeNode): Promise<void> {
    // Hard links join regular files only, and only files this restore wrote: a link to a fifo or a
    // symlink would turn the "file" into one.
    const linkKey = `${node.dev}:${node.inode}`;
    if (node.links > 1 && node.type === 'file') {
      const partner = this.links.get(linkKey);
      if (partner) {
        // The partner was started earlier in the walk; it may still be being written.
        const first = await partner.catch(() => {
          throw new Error('its hard link partner was not restored; not linked');
        });
        const st = lstatSync(first);
        if (!st.isFile()) throw new Error('its hard link partner is not a regular file; not linked');
        replacing(path, () => linkSync(first, path));
        this.progress.files++;
        return;
      }
    }
    switch (node.type) {
      case 'file':
        if (node.links > 1) {
          const written = this.file(path, node).then(() => real);
          this.links.set(linkKey, written);
          await written;
        } else await this.file(path, node);
        break;
      case 'symlink':
        replacing(path, () => symlinkSync(linkTarget(node), path));
        // lchown and lutimes act on the link itself, never on what it points to.
        lchownSync(path, node.uid, node.gid);
        lutimesSync(path, toUtimes(node.atimeNs ?? node.mtimeNs), toUtimes(node.mtimeNs));
        break;
      case 'fifo':
        await this.mknod(path, ['p']);
        await this.specialMetadata(path, node, (st) => st.isFIFO());
        break;
      case 'chardev':
      case 'blockdev': {
        const rdev = node.rdev ?? 0;
        const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
        const minor = (rdev & 0xff) | ((rdev >>> 12) & ~0xff);
        await this.mknod(path, [node.type === 'chardev' ? 'c' : 'b', String(major), String(minor)]);
        await this.specialMetadata(path, node, (st) => (node.type === 'chardev' ? st.isCharacterDevice() : st.isBlockDevice()));
        break;
      }
      case 'socket':
        return; // a socket only means something while its server runs; nothing to restore
      default:
        throw new Error(`unknown entry type ${String(node.type)}`);
    }
    this.progress.files++;
  }

  /**
   * A file is written and given its metadata through the one handle that created it. If anything
   * fails, the partial file is removed: a half-written file must not look like restored data.
   */
  private async file(path: Buffer, node: TreeNode): Promise<void> {
    // Synchronous on purpose: creating, writing into the page cache, owner, mode and times are
    // microsecond system calls, and a thread-pool round trip for each costs more than the call itself
    // when restoring tens of thousands of files. Only the loads wait.
    // Created once its first bytes are there, not before: many files wait for their blobs at once (the
    // reader's look-ahead is made of them), and they must not each hold a descriptor meanwhile.
    let fd: number | undefined;
    const create = (): number => (fd ??= replacing(path, () => openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)));
    try {
      let pos = 0;
      // Where the last byte written ended: a file whose data runs to its end needs no truncate.
      let reached = 0;
      const ids = node.content ?? [];
      const zero = this.repo.zeroChunk();
      // A hole's chunk is known by its id: it stays a hole, nothing is read.
      const blobs = this.reader.blobs(ids.filter((id) => id !== zero.id));
      try {
        for (const id of ids) {
          let length = zero.length;
          if (id !== zero.id) {
            const next = await blobs.next();
            if (next.done) throw new Error('the blob reader ended early');
            const data = next.value;
            // Zero pages become holes: sparse files come back sparse.
            reached = writeSparseSync(create(), data, pos);
            length = data.length;
          }
          pos += length;
          this.progress.bytesDone += length;
          this.emit();
        }
      } finally {
        await blobs.return(undefined);
      }
      // Trailing holes (zero chunks or zero pages) and empty files get their size here.
      if (reached !== pos || fd === undefined) ftruncateSync(create(), pos);
    } catch (err) {
      if (fd !== undefined) {
        closeSync(fd);
        await fsp.unlink(path).catch(() => undefined);
      }
      throw new Error(`${err instanceof Error ? err.message : String(err)} (the partial file was removed)`, { cause: err });
    }
    // The content is complete: a metadata failure (e.g. chown when not restoring as root) is reported
    // for the file, which stays.
    fd = create();
    try {
      fchownSync(fd, node.uid, node.gid);
      fchmodSync(fd, node.mode);
      await this.xattrs(`/proc/self/fd/${fd}`, path, node);
      futimesSync(fd, toUtimes(node.atimeNs ?? node.mtimeNs), toUtimes(node.mtimeNs));
    } finally {
      closeSync(fd);
    }
  }

  /** Fifos and devices: opened without following (O_PATH), checked to be what was made, then set. */
  private async specialMetadata(path: Buffer, node: TreeNode, isExpected: (st: import('node:fs').Stats) => boolean): Promise<void> {
    const fh = await fsp.open(path, O_PATH | constants.O_NOFOLLOW);
    try {
      const proc = `/proc/self/fd/${fh.fd}`;
      if (!isExpected(await fsp.stat(proc))) throw new Error('changed while it was restored; metadata not set');
      await this.metadataByHandle(Buffer.from(proc), node);
    } finally {
      await fh.close();
    }
  }

  /** `proc` is /proc/self/fd/N of a handle on the inode itself: following it can only reach that inode. */
  private async metadataByHandle(proc: Buffer, node: TreeNode): Promise<void> {
    chownSync(proc, node.uid, node.gid);
    chmodSync(proc, node.mode);
    await this.xattrs(proc.toString(), proc, node);
    utimesSync(proc, toUtimes(node.atimeNs ?? node.mtimeNs), toUtimes(node.mtimeNs));
  }

  private async xattrs(procPath: string, shown: Buffer, node: TreeNode): Promise<void> {
    if (!node.xattrs) return;
    try {
      for (const x of node.xattrs) await setAttribute(procPath, x.name, Buffer.from(x.value, 'base64'));
    } catch (err) {
      this.errors.push({ path: displayName(shown), message: `extended attributes not restored: ${(err as Error).message}` });
    }
  }

  /**
   * Node has no mknod(2); the mknod program takes names as text, so it creates the node under a plain
   * temporary name in the target and a rename gives it its exact (possibly non-UTF-8) name.
   */
  private async mknod(path: Buffer, args: string[]): Promise<void> {
    const tmp = `${this.opts.target}/.bulwark-mknod-${randomBytes(8).toString('hex')}`;
    try {
      await run('mknod', [tmp, ...args]);
      await fsp.rename(tmp, path);
    } catch (err) {
      await fsp.unlink(tmp).catch(() => undefined);
      throw unable('create', 'special file', displayName(path), (err as { stderr?: string }).stderr?.trim() || err);
    }
  }

  private emit(): void {
    const now = Date.now();
    if (!this.opts.onProgress || now - this.lastEmit < 100) return;
    this.lastEmit = now;
    this.opts.onProgress(this.progress);
  }
}

/**
 * Creates an entry exclusively; one already in the target (an earlier restore, or a planted symlink) is
 * unlinked and the creation tried once more, so it is replaced, never followed. Trying first saves an
 * unlink per entry on the usual, empty target.
 */
function replacing<T>(path: Buffer, create: () => T): T {
  try {
    return create();
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') throw err;
  }
  unlinkSync(path);
  return create();
}


/**
 * utimes takes seconds as a double, which cannot hold a nanosecond time exactly; libuv truncates it.
 * Aiming half a microsecond in keeps the restored time exact to the microsecond. Node replaces a
 * negative number with the current time, so times before 1970 go as a Date (exact to the millisecond).
 */
export function toUtimes(ns: string): number | Date {
  const us = BigInt(ns) / 1000n;
  if (us < 0n) return new Date(Number(BigInt(ns) / 1000000n) - (BigInt(ns) % 1000000n === 0n ? 0 : 1));
  return (Number(us) + 0.5) / 1e6;
}
