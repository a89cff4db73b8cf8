// Reads what a file system entry is, beyond its bytes: type, owner, mode, times, links, xattrs.
import { closeSync, constants, openSync } from 'node:fs';
import { getAttributeSync, listAttributesSync } from 'fs-xattr';
import type { NodeType, TreeNode } from '../../repository/tree.js';
import { encodeName } from '../../repository/tree.js';
import { O_PATH } from '../../util/dirhandle.js';
import type { EntryStat } from './entry-stat.js';


const TYPES = new Map<number, NodeType>([
  [constants.S_IFREG, 'file'],
  [constants.S_IFDIR, 'dir'],
  [constants.S_IFLNK, 'symlink'],
  [constants.S_IFIFO, 'fifo'],
  [constants.S_IFCHR, 'chardev'],
  [constants.S_IFBLK, 'blockdev'],
]);

export function nodeType(st: EntryStat): NodeType {
  return TYPES.get(st.mode & constants.S_IFMT) ?? 'socket';
}

export function nodeFromStat(name: Buffer, st: EntryStat): TreeNode {
  const enc = encodeName(name);
  const type = nodeType(st);
  // One object literal of one shape per kind of name (no spread): this runs once per entry.
  const n: TreeNode = {
    name: enc.text,
    nameB64: enc.b64,
    type,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    mtimeNs: st.mtimeNs,
    ctimeNs: st.ctimeNs,
    size: type === 'file' ? st.size : 0,
    inode: st.ino,
    dev: st.dev,
    links: st.nlink,
  };
  if (type === 'chardev' || type === 'blockdev') n.rdev = st.rdev;
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

/**
 * True when the two stats describe the same unchanged content (used for change-while-reading and parent
 * reuse). Compared as decimal text: exact for nanosecond times, and no BigInts made per file.
 */
export function sameContent(a: { size: number; mtimeNs: string; ctimeNs: string; inode: number }, b: typeof a): boolean {
  return a.size === b.size && a.inode === b.inode && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}
