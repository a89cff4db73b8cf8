// Tree blobs: one directory's entries, sorted by the raw bytes of their names. File content is a list
// of data blob ids; a subdirectory is the id of its own tree blob, so unchanged subtrees deduplicate.
import { BulwarkError } from '../util/errors.js';

export type NodeType = 'file' | 'dir' | 'symlink' | 'fifo' | 'chardev' | 'blockdev' | 'socket';

export interface TreeNode {
  /** UTF-8 name; names that are not valid UTF-8 are kept exactly in nameB64 instead. */
  name?: string;
  nameB64?: string;
  type: NodeType;
  /** Permission and set-id/sticky bits (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Nanoseconds since the epoch, as decimal strings (JSON numbers cannot hold them exactly). */
  mtimeNs: string;
  /**
   * Not written: reading a file for the backup changes its access time, so recording it would make
   * every tree new on every run and defeat deduplication of unchanged folders. Restores use mtime.
   */
  atimeNs?: string;
  ctimeNs: string;
  size: number;
  inode: number;
  dev: number;
  links: number;
  content?: string[];
  subtree?: string;
  linkTarget?: string;
  linkTargetB64?: string;
  rdev?: number;
  xattrs?: { name: string; value: string }[];
}

export interface Tree {
  nodes: TreeNode[];
}

/** Text that survives a UTF-8 round trip is stored as a string; anything else as base64 bytes. */
export function encodeName(raw: Buffer): { text?: string; b64?: string } {
  const text = raw.toString('utf8');
  return Buffer.from(text, 'utf8').equals(raw) ? { text } : { b64: raw.toString('base64') };
}

export function nodeName(n: TreeNode): Buffer {
  if (n.nameB64 !== undefined) return Buffer.from(n.nameB64, 'base64');
  if (n.name !== undefined) return Buffer.from(n.name, 'utf8');
  throw new BulwarkError('repository-corrupt', 'tree node without a name');
}

/** A name as people see it: invalid UTF-8 bytes are shown as \xNN. */
export function displayName(raw: Buffer): string {
  const enc = encodeName(raw);
  if (enc.text !== undefined) return enc.text;
  let s = '';
  for (const b of raw) s += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
  return s;
}

export function linkTarget(n: TreeNode): Buffer {
  if (n.linkTargetB64 !== undefined) return Buffer.from(n.linkTargetB64, 'base64');
  return Buffer.from(n.linkTarget ?? '', 'utf8');
}

/** A name is one path component: never empty, ".", "..", or containing "/" or NUL. */
export function validateName(raw: Buffer): void {
  if (raw.length === 0 || raw.includes(0x2f) || raw.includes(0) || raw.equals(Buffer.from('.')) || raw.equals(Buffer.from('..'))) {
    throw new BulwarkError('repository-corrupt', `tree holds an unsafe name '${displayName(raw)}'`, { hint: 'the snapshot may have been tampered with; nothing outside the target is written' });
  }
}

export function encodeTree(tree: Tree): Buffer {
  return Buffer.from(JSON.stringify(tree), 'utf8');
}

export function decodeTree(plain: Buffer, id: string): Tree {
  try {
    const t = JSON.parse(plain.toString('utf8')) as Tree;
    if (!Array.isArray(t.nodes)) throw new Error('no nodes');
    return t;
  } catch (err) {
    throw new BulwarkError('repository-corrupt', `tree ${id} is malformed: ${(err as Error).message}`);
  }
}

export function compareNames(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}
