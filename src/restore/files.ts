// File restore: recreates entries from tree blobs under a target folder, with their metadata.
//
// Safety: every name from the repository is checked to be a single path component, and nothing under
// the target that is a symlink is ever followed (directories are created, not trusted; files are
// unlinked and created exclusively), so a damaged or hostile snapshot cannot write outside the target.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { promisify } from 'node:util';
import { setAttribute } from 'fs-xattr';
import type { Repository } from '../repository/repository.js';
import { decodeTree, displayName, linkTarget, nodeName, validateName, type Tree, type TreeNode } from '../repository/tree.js';
import { newProgress, type Progress, type ProgressSink } from '../sources/progress.js';
import { BulwarkError, unable } from '../util/errors.js';
import { Budget } from '../util/budget.js';
import { DirHandle, O_PATH } from '../util/dirhandle.js';
import { compileGlobs, type Matcher } from '../util/glob.js';
import { orderedMap } from '../util/ordered.js';
import { writeSparse } from '../util/sparse.js';

const run = promisify(execFile);

/** Files restored at the same time within one folder. */
const FILES_IN_FLIGHT = 16;
/** Loaded-but-unwritten blob bytes, whatever the number of files in flight. */
const RESTORE_MEMORY = 128 * 1024 * 1024;

export type RestoreRepo = Pick<Repository, 'loadBlob' | 'index'>;

export interface FilesRestoreOptions {
  target: string;
  /** Only entries matching one of these globs (and the folders leading to them) are restored. */
  includes?: string[];
  onProgress?: ProgressSink;
  /** Blobs fetched ahead of the writer. */
  prefetch?: number;
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

export async function prepareTarget(target: string): Promise<void> {
  try {
    await makeDirs(target);
    await fsp.access(target, constants.W_OK);
    const st = await fsp.stat(target);
    if (!st.isDirectory()) throw new Error('not a directory');
  } catch (err) {
    throw new BulwarkError('failed', `restore target '${target}' is not a writable directory: ${(err as Error).message}`, {
      hint: 'choose a target folder you can write to (--target)',
    });
  }
}

export class FilesRestorer {
  private readonly progress: Progress = newProgress();
  private readonly errors: { path: string; message: string }[] = [];
  private readonly links = new Map<string, Buffer>();
  private readonly includes: Matcher | undefined;
  private lastEmit = 0;
  /** Bytes of blobs loaded and not yet written, across all files being restored. */
  private readonly budget = new Budget(RESTORE_MEMORY);

  constructor(
    private readonly repo: RestoreRepo,
    private readonly opts: FilesRestoreOptions,
  ) {
    this.includes = opts.includes && opts.includes.length > 0 ? compileGlobs(opts.includes) : undefined;
  }

  /** Restores the given nodes (a tree's children, or one node picked by path) into the target. */
  async restore(nodes: TreeNode[], logicalDir = ''): Promise<FilesRestoreResult> {
    await prepareTarget(this.opts.target);
    const root = await DirHandle.open(this.opts.target);
    try {
      await this.restoreNodes(root, Buffer.from(this.opts.target), nodes, logicalDir, this.includes);
    } finally {
      await root.close();
    }
    this.opts.onProgress?.(this.progress);
    return { files: this.progress.files, dirs: this.progress.dirs, bytes: this.progress.bytesDone, errors: this.errors };
  }

  async loadTree(id: string): Promise<Tree> {
    return decodeTree(await this.repo.loadBlob('tree', id), id);
  }

  /**
   * `dir` is a handle on the folder being filled (paths through it stay short at any depth); `real`
   * is its ordinary path, needed only as the source of hard links.
   */
  private async restoreNodes(dir: DirHandle, real: Buffer, nodes: TreeNode[], logicalDir: string, includes: Matcher | undefined): Promise<void> {
    // Files of one folder are restored several at a time: each is a chain of small waits (create,
    // load, write, owner, mode, times) that would otherwise leave the disk and the CPU idle.
    const running = new Set<Promise<void>>();
    const drain = async (): Promise<void> => {
      await Promise.all(running);
    };
    try {
      for (const node of nodes) {
        const name = nodeName(node);
        validateName(name);
        const logical = `${logicalDir}/${displayName(name)}`;
        const path = dir.child(name);
        if (includes && node.type !== 'dir' && !includes(logical)) continue;
        const task = (async () => {
          try {
            if (node.type === 'dir') await this.dir(path, join(real, name), node, logical, includes);
            else await this.leaf(path, join(real, name), node);
          } catch (err) {
            this.errors.push({ path: logical, message: err instanceof Error ? err.message : String(err) });
            this.progress.errors++;
          }
        })();
        // Folders one at a time (they hold a handle each, and recurse); hard links in order, after the
        // file they link to exists.
        if (node.type === 'dir' || node.links > 1) {
          await drain();
          await task;
          continue;
        }
        running.add(task);
        void task.finally(() => running.delete(task));
        if (running.size >= FILES_IN_FLIGHT) await Promise.race(running);
      }
    } finally {
      await drain();
    }
  }

  private async dir(path: Buffer, real: Buffer, node: TreeNode, logical: string, includes: Matcher | undefined): Promise<void> {
    const tree = node.subtree ? await this.loadTree(node.subtree) : { nodes: [] };
    if (includes && !includes(logical) && !(await this.anyIncluded(tree, logical, includes))) return;
    try {
      await fsp.mkdir(path, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    // Opening with O_NOFOLLOW|O_DIRECTORY refuses a symlink planted where the folder should be.
    const handle = await DirHandle.open(path).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOTDIR' || err.code === 'ELOOP' ? new Error('exists in the target and is not a directory (not followed)') : err;
    });
    try {
      // Inside an included folder everything is restored.
      await this.restoreNodes(handle, real, tree.nodes, logical, includes && includes(logical) ? undefined : includes);
    } finally {
      await handle.close();
    }
    this.progress.dirs++;
    await this.metadata(path, node);
  }

  private async anyIncluded(tree: Tree, logical: string, includes: Matcher): Promise<boolean> {
    for (const n of tree.nodes) {
      const l = `${logical}/${displayName(nodeName(n))}`;
      if (includes(l)) return true;
      if (n.type === 'dir' && n.subtree && (await this.anyIncluded(await this.loadTree(n.subtree), l, includes))) return true;
    }
    return false;
  }

  private async leaf(path: Buffer, real: Buffer, node: TreeNode): Promise<void> {
    await fsp.unlink(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    const linkKey = `${node.dev}:${node.inode}`;
    if (node.links > 1 && node.type !== 'dir') {
      const first = this.links.get(linkKey);
      if (first) {
        await fsp.link(first, path);
        this.progress.files++;
        return;
      }
    }
    switch (node.type) {
      case 'file':
        await this.file(path, node);
        break;
      case 'symlink':
        await fsp.symlink(linkTarget(node), path);
        break;
      case 'fifo':
        await this.mknod(path, ['p']);
        break;
      case 'chardev':
      case 'blockdev': {
        const rdev = node.rdev ?? 0;
        const major = ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
        const minor = (rdev & 0xff) | ((rdev >>> 12) & ~0xff);
        await this.mknod(path, [node.type === 'chardev' ? 'c' : 'b', String(major), String(minor)]);
        break;
      }
      case 'socket':
        return; // a socket only means something while its server runs; nothing to restore
      default:
        throw new Error(`unknown entry type ${String(node.type)}`);
    }
    if (node.links > 1) this.links.set(linkKey, real);
    this.progress.files++;
    await this.metadata(path, node);
  }

  private async file(path: Buffer, node: TreeNode): Promise<void> {
    const fh = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      let pos = 0;
      const ids = node.content ?? [];
      const load = async (id: string): Promise<{ data: Buffer; cost: number }> => {
        const e = this.repo.index.lookup(id);
        const cost = e ? e.ulen || e.length : 0;
        await this.budget.acquire(cost);
        try {
          return { data: await this.repo.loadBlob('data', id), cost };
        } catch (err) {
          this.budget.release(cost);
          throw err;
        }
      };
      for await (const { data, cost } of orderedMap(ids, this.opts.prefetch ?? 8, load, (r) => this.budget.release(r.cost))) {
        // Zero pages become holes: sparse files come back sparse.
        try {
          await writeSparse(fh, data, pos);
        } finally {
          this.budget.release(cost);
        }
        pos += data.length;
        this.progress.bytesDone += data.length;
        this.emit();
      }
      await fh.truncate(pos);
    } finally {
      await fh.close();
    }
  }

  private async metadata(path: Buffer, node: TreeNode): Promise<void> {
    await fsp.lchown(path, node.uid, node.gid);
    if (node.type !== 'symlink') await fsp.chmod(path, node.mode);
    if (node.xattrs && node.type !== 'symlink') {
      const fh = await fsp.open(path, O_PATH | constants.O_NOFOLLOW);
      try {
        for (const x of node.xattrs) await setAttribute(`/proc/self/fd/${fh.fd}`, x.name, Buffer.from(x.value, 'base64'));
      } catch (err) {
        this.errors.push({ path: displayName(path), message: `extended attributes not restored: ${(err as Error).message}` });
      } finally {
        await fh.close();
      }
    }
    await fsp.lutimes(path, toUtimes(node.atimeNs ?? node.mtimeNs), toUtimes(node.mtimeNs));
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
 * utimes takes seconds as a double, which cannot hold a nanosecond time exactly; libuv truncates it.
 * Aiming half a microsecond in keeps the restored time exact to the microsecond.
 */
function toUtimes(ns: string): number {
  return (Number(BigInt(ns) / 1000n) + 0.5) / 1e6;
}
