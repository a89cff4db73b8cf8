// The restore-point drive (drive.ts) as a FUSE mount (protocols/fuse): inode numbers handed out as
// the kernel looks names up, and each node's folder listing read once and kept while mounted.
import { mountFuse, type Attr, type ReadOnlyFs } from '../protocols/fuse/server.js';
import type { DriveNode, RestorePointDrive } from './drive.js';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

interface Known {
  node: DriveNode;
  /** Listing by name, read when first needed. */
  children?: Promise<Map<string, bigint>>;
}

export interface MountedDrive {
  unmount(): Promise<void>;
  /** Resolves when the mount is gone (unmounted here, or by `umount` from outside). */
  closed: Promise<void>;
}

/** Mounts the drive read-only at `mountpoint` (an empty folder); needs root (see docs/drive.md). */
export async function mountDrive(drive: RestorePointDrive, mountpoint: string): Promise<MountedDrive> {
  const nodes = new Map<bigint, Known>([[1n, { node: drive.root() }]]);
  let next = 2n;
  const known = (ino: bigint): Known => {
    const k = nodes.get(ino);
    if (!k) throw Object.assign(new Error(`inode ${ino} is not known`), { code: 'ENOENT' });
    return k;
  };
  const attr = (ino: bigint, n: DriveNode): Attr => ({
    ino,
    mode: (n.kind === 'dir' ? S_IFDIR : n.kind === 'symlink' ? S_IFLNK : S_IFREG) | n.mode,
    size: BigInt(n.size),
    mtimeMs: n.mtimeMs,
    nlink: n.kind === 'dir' ? 2 : 1,
    uid: 0,
    gid: 0,
    blocks: BigInt(Math.ceil(n.size / 512)),
  });
  const children = (ino: bigint): Promise<Map<string, bigint>> => {
    const k = known(ino);
    k.children ??= (async () => {
      const out = new Map<string, bigint>();
      for (const child of (await k.node.list?.()) ?? []) {
        const id = next++;
        nodes.set(id, { node: child });
        out.set(child.name, id);
      }
      return out;
    })();
    return k.children;
  };
  const fs: ReadOnlyFs = {
    getattr: async (ino) => attr(ino, known(ino).node),
    lookup: async (parent, name) => {
      const id = (await children(parent)).get(name);
      return id === undefined ? undefined : attr(id, known(id).node);
    },
    readdir: async (ino) => [...(await children(ino)).entries()].map(([name, id]) => ({ name, attr: attr(id, known(id).node) })),
    read: async (ino, offset, length) => {
      const n = known(ino).node;
      if (!n.read) throw Object.assign(new Error('not a file'), { code: 'EISDIR' });
      return n.read(Number(offset), length);
    },
    readlink: async (ino) => known(ino).node.target ?? '',
  };
  return mountFuse(mountpoint, fs);
}
