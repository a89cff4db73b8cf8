// Reads what a file system entry is, beyond its bytes: type, owner, mode, times, links, xattrs.
import { closeSync, constants, openSync, type BigIntStats } from 'node:fs';
import { getAttributeSync, listAttributesSync } from 'fs-xattr';
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
 * Synchronous on purpose: these are microsecond syscalls, and a thread-pool round trip for each of
 * them costs more than the call itself when walking tens of thousands of files.
 */
export function readXattrsSync(path: Buffer, type: NodeType): { name: string; value: string }[] | undefined {
  if (type === 'symlink' || type === 'socket') return undefined;
  // The binding takes text paths: a name that is valid UTF-8 is used directly (one syscall); other
  // names are reached through an O_PATH fd. Not symlinks here, so following the path is safe.
  const text = path.toString('utf8');
  if (Buffer.byteLength(text) === path.length && Buffer.from(text).equals(path)) {
    try {
      const names = listAttributesSync(text);
      if (names.length === 0) return undefined;
      return names.sort().map((name) => ({ name, value: getAttributeSync(text, name).toString('base64') }));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') return undefined;
      throw err;
    }
  }
  const fd = openSync(path, O_PATH | constants.O_NOFOLLOW);
  try {
    const p = `/proc/self/fd/${fd}`;
    const names = listAttributesSync(p);
    if (names.length === 0) return undefined;
    return names.sort().map((name) => ({ name, value: getAttributeSync(p, name).toString('base64') }));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') return undefined;
    throw err;
  } finally {
    closeSync(fd);
  }
}

/** True when the two stats describe the same unchanged content (used for change-while-reading and parent reuse). */
export function sameContent(a: { size: number | bigint; mtimeNs: bigint | string; ctimeNs: bigint | string; inode: number | bigint }, b: typeof a): boolean {
  return BigInt(a.size) === BigInt(b.size) && BigInt(a.mtimeNs) === BigInt(b.mtimeNs) && BigInt(a.ctimeNs) === BigInt(b.ctimeNs) && BigInt(a.inode) === BigInt(b.inode);
}
