// Restore points as a drive (docs/drive.md): one read-only tree of every snapshot in the repository,
// which `bulwark mount` (FUSE) shows as a folder. Everything is read on demand from the repository:
//
//   /snapshots/<YYYY-MM-DD_HH-MM-SS>_<id8>/…         a file snapshot: its files as they were backed up
//   /snapshots/<…>/<disk>.raw                        a VM or disk snapshot: each disk as a raw image,
//                                                    sparse, readable at any offset
//   /snapshots/<…>/<disk>/<part>/…                   and the files inside it (filesystems/)
//
// A file of a file snapshot is its data blobs in order; their plaintext lengths come from the index,
// so a read at any offset loads only the blobs it covers (a few kept in a small cache).
import type { FileSystem } from '../filesystems/types.js';
import { listSnapshots, type SnapshotWithId } from '../repository/snapshot.js';
import { decodeTree, displayName, linkTarget, nodeName, type TreeNode } from '../repository/tree.js';
import type { Repository } from '../repository/repository.js';
import { BulwarkError } from '../util/errors.js';
import { SnapshotDisks } from './disk-files.js';
import { RepositoryDisk } from './repo-disk.js';

export interface DriveNode {
  name: string;
  kind: 'dir' | 'file' | 'symlink';
  size: number;
  mtimeMs: number;
  /** Permission bits (0o7777). */
  mode: number;
  /** Folders: their entries, read when asked. */
  list?(): Promise<DriveNode[]>;
  /** Files: up to `length` bytes at `offset` (fewer only at the end). */
  read?(offset: number, length: number): Promise<Buffer>;
  /** Symlinks: the target, as stored. */
  target?: string;
}

type DriveRepo = Pick<Repository, 'loadBlob' | 'index' | 'sealer' | 'backend' | 'loadDocument'>;

/** A node whose lookups fail with the errno a file system reader expects. */
export class DriveNotFoundError extends BulwarkError {
  readonly errno = 'ENOENT';
  constructor(path: string) {
    super('not-found', `'${path}' is not in the drive`);
  }
}

const DIR_MODE = 0o555;
const FILE_MODE = 0o444;

/** 2026-11-28_09-16-38_1a2b3c4d: sorts by time, and no character a Windows client refuses. */
export function snapshotFolderName(s: SnapshotWithId): string {
  return `${s.time.slice(0, 19).replace('T', '_').replace(/:/g, '-')}_${s.id.slice(0, 8)}`;
}

function dir(name: string, mtimeMs: number, list: () => Promise<DriveNode[]>, mode = DIR_MODE): DriveNode {
  return { name, kind: 'dir', size: 0, mtimeMs, mode, list };
}

export class RestorePointDrive {
  private readonly blobCache = new Map<string, Buffer>();
  private snapshots: Promise<SnapshotWithId[]> | undefined;

  constructor(
    private readonly repo: DriveRepo,
    private readonly opts: { blobCacheEntries?: number } = {},
  ) {}

  root(): DriveNode {
    return dir('', Date.now(), async () => [dir('snapshots', Date.now(), () => this.snapshotFolders())]);
  }

  /** A node by its path from the root ('/snapshots/…'). */
  async resolve(path: string): Promise<DriveNode> {
    let node = this.root();
    for (const seg of path.split('/').filter((s) => s !== '' && s !== '.')) {
      if (seg === '..' || !node.list) throw new DriveNotFoundError(path);
      const next = (await node.list()).find((n) => n.name === seg);
      if (!next) throw new DriveNotFoundError(path);
      node = next;
    }
    return node;
  }

  private async snapshotFolders(): Promise<DriveNode[]> {
    // Read once per drive: a mount shows the repository as it was when it was mounted.
    this.snapshots ??= listSnapshots(this.repo);
    return (await this.snapshots).map((s) => dir(snapshotFolderName(s), Date.parse(s.time), () => this.snapshotContents(s)));
  }

  private async snapshotContents(s: SnapshotWithId): Promise<DriveNode[]> {
    if (s.tree) return this.treeEntries(s.tree);
    const disks = new SnapshotDisks(this.repo, s);
    const out: DriveNode[] = [];
    for (const d of s.disks ?? []) {
      const vol = new RepositoryDisk(this.repo, d, { readAhead: 4 });
      out.push({
        name: `${d.name}.raw`,
        kind: 'file',
        size: d.size,
        mtimeMs: Date.parse(s.time),
        mode: FILE_MODE,
        read: async (offset, length) => {
          const n = Math.max(0, Math.min(length, d.size - offset));
          const b = Buffer.alloc(n);
          if (n > 0) await vol.read(b, offset);
          return b;
        },
      });
      out.push(
        dir(d.name, Date.parse(s.time), async () =>
          (await disks.partsOf(d.name)).filter((p) => p.fs).map((p) => dir(p.name, Date.parse(s.time), () => this.fsEntries(p.fs!, '/'))),
        ),
      );
    }
    return out;
  }

  private async treeEntries(treeId: string): Promise<DriveNode[]> {
    const tree = decodeTree(await this.repo.loadBlob('tree', treeId), treeId);
    const out: DriveNode[] = [];
    for (const n of tree.nodes) {
      const name = displayName(nodeName(n));
      const mtimeMs = Number(BigInt(n.mtimeNs) / 1_000_000n);
      if (n.type === 'dir' && n.subtree) out.push(dir(name, mtimeMs, () => this.treeEntries(n.subtree!), n.mode & 0o7777 & ~0o222));
      else if (n.type === 'file') out.push({ name, kind: 'file', size: n.size, mtimeMs, mode: n.mode & 0o7777 & ~0o222, read: this.fileReader(n) });
      else if (n.type === 'symlink') out.push({ name, kind: 'symlink', size: linkTarget(n).length, mtimeMs, mode: 0o777, target: linkTarget(n).toString() });
      // Devices, FIFOs and sockets have no bytes to show.
    }
    return out;
  }

  private fileReader(n: TreeNode): (offset: number, length: number) => Promise<Buffer> {
    let starts: number[] | undefined;
    return async (offset, length) => {
      const content = n.content ?? [];
      if (!starts) {
        starts = [];
        let at = 0;
        for (const id of content) {
          starts.push(at);
          const e = this.repo.index.lookup(id);
          if (!e) throw new BulwarkError('repository-corrupt', `blob ${id} is not in the index`);
          at += e.ulen > 0 ? e.ulen : e.length - this.repo.sealer.overhead;
        }
        starts.push(at);
      }
      const end = Math.min(offset + length, starts[starts.length - 1]!);
      const parts: Buffer[] = [];
      // The blob holding `offset`: the last start at or before it.
      let i = upperBound(starts, offset) - 1;
      for (let at = offset; at < end && i < content.length; i++) {
        const blob = await this.blob(content[i]!);
        const from = at - starts[i]!;
        const take = Math.min(blob.length - from, end - at);
        parts.push(blob.subarray(from, from + take));
        at += take;
      }
      return Buffer.concat(parts);
    };
  }

  private async blob(id: string): Promise<Buffer> {
    const hit = this.blobCache.get(id);
    if (hit) {
      this.blobCache.delete(id);
      this.blobCache.set(id, hit);
      return hit;
    }
    const b = await this.repo.loadBlob('data', id);
    this.blobCache.set(id, b);
    if (this.blobCache.size > (this.opts.blobCacheEntries ?? 16)) this.blobCache.delete(this.blobCache.keys().next().value!);
    return b;
  }

  private async fsEntries(fs: FileSystem, path: string): Promise<DriveNode[]> {
    const out: DriveNode[] = [];
    for (const e of await fs.list(path)) {
      if (e.name === '' || e.name === '.' || e.name === '..' || e.name.includes('/') || e.name.includes('\0')) continue;
      const p = path === '/' ? `/${e.name}` : `${path}/${e.name}`;
      const mtimeMs = e.mtimeMs ?? 0;
      const mode = (e.mode ?? (e.type === 'dir' ? 0o755 : 0o644)) & 0o7777 & ~0o222;
      if (e.type === 'dir') out.push(dir(e.name, mtimeMs, () => this.fsEntries(fs, p), mode));
      else if (e.type === 'symlink') out.push({ name: e.name, kind: 'symlink', size: e.size, mtimeMs, mode: 0o777, target: await fs.readlink(p) });
      else if (e.type === 'file') {
        let file: ReturnType<FileSystem['open']> | undefined;
        out.push({
          name: e.name,
          kind: 'file',
          size: e.size,
          mtimeMs,
          mode,
          read: async (offset, length) => {
            file ??= fs.open(p);
            const f = await file;
            const b = Buffer.alloc(Math.max(0, Math.min(length, f.size - offset)));
            let got = 0;
            while (got < b.length) {
              const n = await f.read(b.subarray(got), offset + got);
              if (n === 0) break;
              got += n;
            }
            return b.subarray(0, got);
          },
        });
      }
    }
    return out;
  }
}

/** Index of the first element greater than x (sorted ascending). */
function upperBound(a: number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
