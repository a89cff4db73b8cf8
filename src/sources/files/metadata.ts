// Reads what a file system entry is, beyond its bytes: type, owner, mode, times, links, xattrs.
import { constants, promises as fsp, type BigIntStats } from 'node:fs';
import { listAttributes, getAttribute } from 'fs-xattr';
import type { NodeType, TreeNode } from '../../repository/tree.js';
import { encodeName } from '../../repository/tree.js';
import { O_PATH } from '../../util/dirhandle.js';


export function nodeType(st: BigIntStats): NodeType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  return 'socket';
}

export function nodeFromStat(name: Buffer, st: BigIntStats): TreeNode {
  const enc = encodeName(name);
  const type = nodeType(st);
  const n: TreeNode = {
    ...(enc.text !== undefined ? { name: enc.text } : { nameB64: enc.b64! }),
    type,
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeNs: st.mtimeNs.toString(),
    atimeNs: st.atimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    size: type === 'file' ? Number(st.size) : 0,
    inode: Number(st.ino),
    dev: Number(st.dev),
    links: Number(st.nlink),
  };
  if (type === 'chardev' || type === 'blockdev') n.rdev = Number(st.rdev);
  return n;
}

/**
 * Extended attributes of an entry, read through an O_PATH fd so that names which are not valid UTF-8
 * work (the xattr binding only takes string paths) and fifos are not opened. Symlinks carry none we keep.
 */
export async function readXattrs(path: Buffer, type: NodeType): Promise<{ name: string; value: string }[] | undefined> {
  if (type === 'symlink' || type === 'socket') return undefined;
  const fh = await fsp.open(path, O_PATH | constants.O_NOFOLLOW);
  try {
    const p = `/proc/self/fd/${fh.fd}`;
    const names = await listAttributes(p);
    if (names.length === 0) return undefined;
    const out: { name: string; value: string }[] = [];
    for (const name of names.sort()) out.push({ name, value: (await getAttribute(p, name)).toString('base64') });
    return out;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') return undefined;
    throw err;
  } finally {
    await fh.close();
  }
}

/** True when the two stats describe the same unchanged content (used for change-while-reading and parent reuse). */
export function sameContent(a: { size: number | bigint; mtimeNs: bigint | string; ctimeNs: bigint | string; inode: number | bigint }, b: typeof a): boolean {
  return BigInt(a.size) === BigInt(b.size) && BigInt(a.mtimeNs) === BigInt(b.mtimeNs) && BigInt(a.ctimeNs) === BigInt(b.ctimeNs) && BigInt(a.inode) === BigInt(b.inode);
}
