// File backup: walks the given paths and turns them into tree blobs and data blobs.
//
// Memory stays bounded by one directory listing per level of depth plus a fixed read buffer: file
// contents are streamed through the chunker, never held whole.
import { closeSync, lstatSync, openSync, promises as fsp, readlinkSync, readSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { FileChunks } from '../../repository/file-chunks.js';
import type { Repository } from '../../repository/repository.js';
import type { SnapshotSummary } from '../../repository/snapshot.js';
import { compareNames, decodeTree, displayName, encodeTree, nodeName, type Tree, type TreeNode } from '../../repository/tree.js';
import { BulwarkError } from '../../util/errors.js';
import { compileGlobs, type Matcher } from '../../util/glob.js';
import { newProgress, type Progress, type ProgressSink } from '../progress.js';
import { DirHandle } from '../../util/dirhandle.js';
import { fstatEntry, listFolder, lstatEntry, type EntryStat } from './entry-stat.js';
import { nodeFromStat, readXattrsSync, sameContent } from './metadata.js';
import { scanTotals, type ScanTotals } from './scan.js';

export type ArchiveRepo = Pick<Repository, 'saveBlob' | 'loadBlob' | 'blobId' | 'hasBlob' | 'config' | 'zeroChunk'>;

export interface FilesBackupOptions {
  paths: string[];
  excludes?: string[];
  oneFileSystem?: boolean;
  /** Root tree of the parent snapshot: unchanged files are taken from it without reading. */
  parentTree?: string;
  onProgress?: ProgressSink;
  /** Walk the tree's metadata alongside, so progress has totals (percent, ETA). */
  estimate?: boolean;
  /** Reuse nothing from the parent by metadata: every file is read, and every blob it dedups against is checked. */
  verifyReused?: boolean;
}

export interface ItemError {
  path: string;
  message: string;
}

export interface FilesBackupResult {
  tree: string;
  summary: Omit<SnapshotSummary, 'durationMs'>;
  /** Items that could not be read; they are not in the snapshot. */
  errors: ItemError[];
  /** Files that kept changing while read; stored as last read, listed so nobody trusts them blindly. */
  changed: string[];
  /** Damage worked around, e.g. a parent folder that could not be read (its files were read again). */
  warnings: string[];
}

/** How often a file that changes while it is read is read again before it is reported. */
const READ_ATTEMPTS = 3;
/** Folders with paths shorter than this are read by path: a name (≤ 255 bytes) more stays under PATH_MAX. */
const SHORT_PATH = 3800;
/** Files up to this size are read in one call (capped at the chunker's minimum, so they are one chunk either way). */
const SMALL_FILE_MAX = 256 * 1024;

interface SelectionDir {
  children: Map<string, SelectionDir>;
  /** The whole subtree at this path was asked for. */
  selected: boolean;
}

function join(dir: Buffer, name: Buffer): Buffer {
  return dir.length === 1 && dir[0] === 0x2f ? Buffer.concat([dir, name]) : Buffer.concat([dir, Buffer.from('/'), name]);
}

export class FilesArchiver {
  private readonly fileChunks: FileChunks;
  /** Small files are read whole into this. */
  private readonly smallBuf: Buffer;
  private readonly excluded: Matcher;
  private readonly progress: Progress = newProgress();
  private readonly errors: ItemError[] = [];
  private readonly warnings: string[] = [];
  private readonly changed: string[] = [];
  private filesNew = 0;
  private filesChanged = 0;
  private filesUnmodified = 0;
  private blobsNew = 0;
  private totalSize = 0;
  /** Bytes actually read from disk (files reused from the parent are not read). */
  private bytesRead = 0;
  private rootDevs = new Set<number>();
  private lastEmit = 0;
  private sinceYield = 0;
  private readonly smallFile: number;
  private totals: ScanTotals | undefined;

  constructor(
    private readonly repo: ArchiveRepo,
    private readonly opts: FilesBackupOptions,
  ) {
    const c = repo.config.chunker;
    this.fileChunks = new FileChunks(c);
    this.smallBuf = Buffer.allocUnsafe(Math.min(SMALL_FILE_MAX, c.minSize) + 1);
    this.excluded = compileGlobs(opts.excludes ?? []);
    this.smallFile = Math.min(SMALL_FILE_MAX, c.minSize);
  }

  async run(): Promise<FilesBackupResult> {
    const root: SelectionDir = { children: new Map(), selected: false };
    for (const p of this.opts.paths) {
      const abs = resolvePath(p);
      let node = root;
      for (const part of abs.split('/').filter(Boolean)) {
        let next = node.children.get(part);
        if (!next) node.children.set(part, (next = { children: new Map(), selected: false }));
        node = next;
      }
      node.selected = true;
    }
    if (root.selected) throw new BulwarkError('usage', "backing up '/' as a whole is not supported yet", { hint: 'name the top-level folders to back up' });
    // A snapshot of nothing would become 'latest' and hide the real restore points.
    if (!this.opts.paths.some((p) => lstatSync(resolvePath(p), { throwIfNoEntry: false }) !== undefined)) {
      throw new BulwarkError('usage', `nothing to back up: ${this.opts.paths.map((p) => `'${p}'`).join(', ')} ${this.opts.paths.length === 1 ? 'does' : 'do'} not exist`, { hint: 'check the paths; no snapshot was saved' });
    }
    const parent = this.opts.parentTree ? await this.loadTree(this.opts.parentTree) : undefined;
    let finished = false;
    const totals: ScanTotals = { files: 0, bytes: 0, done: false };
    if (this.opts.onProgress && this.opts.estimate) {
      this.totals = totals;
      void scanTotals(this.opts.paths, this.excluded, totals, () => finished).catch(() => undefined);
    }
    let tree: string;
    try {
      tree = await this.selectionTree(Buffer.from('/'), root, parent);
    } finally {
      finished = true;
    }
    this.emit(true);
    return {
      tree,
      warnings: this.warnings,
      errors: this.errors,
      changed: this.changed,
      summary: {
        filesNew: this.filesNew,
        filesChanged: this.filesChanged,
        filesUnmodified: this.filesUnmodified,
        dirs: this.progress.dirs,
        bytesRead: this.bytesRead,
        bytesNew: this.progress.bytesNew,
        blobsNew: this.blobsNew,
        totalSize: this.totalSize,
        warnings: [...this.errors.map((e) => `${e.path}: ${e.message}`), ...this.changed.map((p) => `${p}: changed while being read`), ...this.warnings],
      },
    };
  }

  /** Directories above the selected paths: only the chosen children, with the directories' own metadata. */
  private async selectionTree(path: Buffer, sel: SelectionDir, parent: Tree | undefined): Promise<string> {
    const nodes: TreeNode[] = [];
    const names = [...sel.children.keys()].map((n) => Buffer.from(n)).sort(compareNames);
    const before = parent ? new ParentCursor(parent) : undefined;
    for (const name of names) {
      const child = sel.children.get(name.toString())!;
      const childPath = join(path, name);
      const prev = before?.find(name);
      if (child.selected) {
        const n = await this.entry(childPath, childPath, name, prev, true);
        if (n) nodes.push(n);
        continue;
      }
      let st: EntryStat;
      try {
        st = lstatEntry(childPath);
      } catch (err) {
        this.fail(childPath, err);
        continue;
      }
      const node = nodeFromStat(name, st);
      const prevTree = prev?.subtree ? await this.loadTree(prev.subtree) : undefined;
      node.subtree = await this.selectionTree(childPath, child, prevTree);
      nodes.push(node);
    }
    return this.saveTree({ nodes });
  }

  /**
   * `path` reaches the entry (possibly through a directory handle); `logical` is its real path, for people
   * and excludes; `known`: the entry's status as its folder's listing brought it, when it did.
   */
  private async entry(path: Buffer, logical: Buffer, name: Buffer, prev: TreeNode | undefined, isRoot = false, known?: EntryStat): Promise<TreeNode | undefined> {
    // The walk itself is synchronous; let worker replies and uploads through now and then.
    if (++this.sinceYield >= 256) {
      this.sinceYield = 0;
      await new Promise<void>((r) => setImmediate(r));
    }
    const shown = displayName(logical);
    if (!isRoot && this.excluded(shown)) return undefined;
    let st: EntryStat;
    try {
      st = known ?? lstatEntry(path);
    } catch (err) {
      this.fail(logical, err);
      return undefined;
    }
    const node = nodeFromStat(name, st);
    if (isRoot) this.rootDevs.add(node.dev);
    try {
      // Setting an xattr changes ctime: same inode and ctime as in the parent means the same xattrs.
      const same = prev !== undefined && prev.type === node.type && prev.inode === node.inode && prev.ctimeNs === node.ctimeNs;
      // The folder's listing tells most entries have none without asking each.
      const xattrs = same ? prev.xattrs : st.xattrListBytes === 0 ? undefined : readXattrsSync(path, node.type);
      if (xattrs) node.xattrs = xattrs;
      switch (node.type) {
        case 'file':
          await this.file(path, logical, st, node, prev);
          break;
        case 'dir':
          if (this.opts.oneFileSystem && !this.rootDevs.has(node.dev)) {
            node.subtree = await this.saveTree({ nodes: [] }); // the mount point itself, not what is mounted on it
          } else {
            node.subtree = await this.dir(path, logical, prev?.type === 'dir' && prev.subtree ? prev.subtree : undefined);
          }
          this.progress.dirs++;
          break;
        case 'symlink': {
          const target = readlinkSync(path, { encoding: 'buffer' });
          const t = target.toString('utf8');
          if (Buffer.from(t, 'utf8').equals(target)) node.linkTarget = t;
          else node.linkTargetB64 = target.toString('base64');
          break;
        }
        default:
          break;
      }
    } catch (err) {
      this.fail(logical, err);
      return undefined;
    }
    return node;
  }

  private async dir(path: Buffer, logical: Buffer, prevTreeId: string | undefined): Promise<string> {
    // Ordinary paths are resolved about twice as fast as /proc/self/fd links, so they are used while
    // every child's path fits in PATH_MAX; deeper folders are reached through a directory handle.
    const handle = logical.length < SHORT_PATH ? undefined : DirHandle.openSync(path);
    const base = handle ? handle.path : logical;
    try {
      const listing = listFolder(base);
      const names = listing.names;
      const prev = prevTreeId ? await this.loadTree(prevTreeId) : undefined;
      const nodes: TreeNode[] = [];
      let unchanged = prev !== undefined && prev.nodes.length === names.length;
      const parent = prev ? new ParentCursor(prev) : undefined;
      for (const [i, name] of names.entries()) {
        const childLogical = join(logical, name);
        const before = parent?.find(name);
        const n = await this.entry(handle ? handle.child(name) : childLogical, childLogical, name, before, false, listing.stat(i));
        if (n) nodes.push(n);
        if (unchanged && !(n && before && sameNode(n, before))) unchanged = false;
      }
      // Every entry as in the parent: its tree is this folder's tree, no need to encode and hash it again.
      if (unchanged && prevTreeId) return prevTreeId;
      return await this.saveTree({ nodes });
    } finally {
      handle?.closeSync();
    }
  }

  private async file(path: Buffer, logical: Buffer, st: EntryStat, node: TreeNode, prev: TreeNode | undefined): Promise<void> {
    this.progress.current = displayName(logical);
    this.totalSize += node.size;
    if (!this.opts.verifyReused && prev && prev.type === 'file' && prev.content && sameContent(prev, { size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, inode: st.ino }) && prev.content.every((id) => this.repo.hasBlob(id))) {
      node.content = prev.content;
      this.filesUnmodified++;
      this.progress.files++;
      this.progress.bytesDone += node.size;
      this.emit();
      return;
    }
    let before = st;
    for (let attempt = 1; ; attempt++) {
      const { content, after, bytes } = await this.readFile(path, before.size, before.blocks * 512);
      const stable = sameContent({ size: before.size, mtimeNs: before.mtimeNs, ctimeNs: before.ctimeNs, inode: before.ino }, { size: after.size, mtimeNs: after.mtimeNs, ctimeNs: after.ctimeNs, inode: after.ino }) && bytes === after.size;
      if (stable || attempt === READ_ATTEMPTS) {
        node.content = content;
        node.size = bytes;
        node.mtimeNs = after.mtimeNs;
        node.ctimeNs = after.ctimeNs;
        if (!stable) {
          this.changed.push(displayName(logical));
          // Never let the next backup trust this copy by metadata alone.
          node.ctimeNs = '0';
        }
        break;
      }
      before = after;
    }
    if (prev) this.filesChanged++;
    else this.filesNew++;
    this.progress.files++;
    this.emit();
  }

  private async readFile(path: Buffer, size: number, allocated = size): Promise<{ content: string[]; after: EntryStat; bytes: number }> {
    if (size < this.smallFile) return this.readSmallFile(path);
    const fh = await fsp.open(path, 'r');
    try {
      const content: string[] = [];
      const zeroId = this.repo.zeroChunk().id;
      let bytes = 0;
      const readBefore = this.fileChunks.bytesRead;
      for await (const { bytes: chunk, zero } of this.fileChunks.chunks(fh, size, allocated)) {
        const n = chunk.length;
        bytes += n;
        this.progress.bytesDone += n;
        // A hole's chunks all have one id, known without hashing (and skipped holes are not even read).
        const r = await this.repo.saveBlob('data', chunk, zero ? zeroId : undefined);
        if (r.stored) {
          this.blobsNew++;
          this.progress.bytesNew += n;
        }
        content.push(r.id);
        this.emit();
      }
      this.bytesRead += this.fileChunks.bytesRead - readBefore;
      const after = fstatEntry(fh.fd);
      return { content, after, bytes };
    } finally {
      await fh.close();
    }
  }

  /**
   * Files below the chunker's minimum are one chunk: read in one synchronous call (cheaper than three
   * thread-pool round trips). A file that grew past the buffer meanwhile is read again the long way.
   */
  private async readSmallFile(path: Buffer): Promise<{ content: string[]; after: EntryStat; bytes: number }> {
    const fd = openSync(path, 'r');
    let n: number;
    let after: EntryStat;
    try {
      n = readSync(fd, this.smallBuf, 0, this.smallFile + 1, 0);
      after = fstatEntry(fd);
    } finally {
      closeSync(fd);
    }
    if (n > this.smallFile) return this.readFile(path, n);
    this.bytesRead += n;
    this.progress.bytesDone += n;
    const content: string[] = [];
    if (n > 0) {
      const r = await this.repo.saveBlob('data', this.smallBuf.subarray(0, n));
      if (r.stored) {
        this.blobsNew++;
        this.progress.bytesNew += n;
      }
      content.push(r.id);
    }
    return { content, after, bytes: n };
  }

  private async saveTree(tree: Tree): Promise<string> {
    const r = await this.repo.saveBlob('tree', encodeTree(tree));
    if (r.stored) this.blobsNew++;
    return r.id;
  }

  /**
   * A folder of the parent snapshot. One that cannot be read is no reason to fail or to drop anything:
   * that part is backed up as if there were no parent (every file read again), with a warning.
   */
  private async loadTree(id: string): Promise<Tree | undefined> {
    try {
      return decodeTree(await this.repo.loadBlob('tree', id), id);
    } catch (err) {
      if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
      this.warnings.push(`a folder of the parent snapshot cannot be read (${err.message}); its files were read again`);
      return undefined;
    }
  }

  private fail(path: Buffer, err: unknown): void {
    const code = (err as NodeJS.ErrnoException).code;
    const message = code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'ENOENT' ? 'vanished before it could be read' : (err as Error).message;
    this.errors.push({ path: displayName(path), message });
    this.progress.errors++;
    this.emit();
  }

  private emit(force = false): void {
    if (!this.opts.onProgress) return;
    const now = Date.now();
    if (!force && now - this.lastEmit < 100) return;
    this.lastEmit = now;
    if (this.totals?.done) {
      this.progress.filesTotal = this.totals.files;
      this.progress.bytesTotal = Math.max(this.totals.bytes, this.progress.bytesDone);
    }
    this.opts.onProgress(this.progress);
  }
}

/**
 * Same entry as in the parent, metadata included: any change of mode, owner, xattrs, link count or
 * content moves ctime, so identity, ctime, mtime and size (and a folder's own tree) decide.
 */
function sameNode(a: TreeNode, b: TreeNode): boolean {
  return a.type === b.type && a.inode === b.inode && a.dev === b.dev && a.ctimeNs === b.ctimeNs && a.mtimeNs === b.mtimeNs && a.size === b.size && a.subtree === b.subtree;
}

/**
 * The parent snapshot's entries of a folder, looked up in name order: both lists are sorted the same
 * way, so a cursor finds each in turn, and each parent name is decoded once.
 */
class ParentCursor {
  private at = 0;
  private atName: Buffer | undefined;

  constructor(private readonly tree: Tree) {}

  /** The entry named `name`; names must come in increasing order. */
  find(name: Buffer): TreeNode | undefined {
    const nodes = this.tree.nodes;
    while (this.at < nodes.length) {
      this.atName ??= nodeName(nodes[this.at]!);
      const c = compareNames(this.atName, name);
      if (c === 0) return nodes[this.at];
      if (c > 0) return undefined;
      this.at++;
      this.atName = undefined;
    }
    return undefined;
  }
}

