// Tree blobs: one directory's entries, sorted by the raw bytes of their names. File content is a list
// of data blob ids; a subdirectory is the id of its own tree blob, so unchanged subtrees deduplicate.
import { isUtf8 } from 'node:buffer';
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
  // Well-formed UTF-8 decodes and encodes back to the same bytes; isUtf8 checks without making a copy.
  return isUtf8(raw) ? { text: raw.toString('utf8') } : { b64: raw.toString('base64') };
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
export function isSafeName(raw: Buffer): boolean {
  return !(raw.length === 0 || raw.length > 255 || raw.includes(0x2f) || raw.includes(0) || raw.equals(Buffer.from('.')) || raw.equals(Buffer.from('..')));
}

export function validateName(raw: Buffer): void {
  if (!isSafeName(raw)) {
    throw new BulwarkError('repository-corrupt', `tree holds an unsafe name '${displayName(raw)}'`, { hint: 'the snapshot may have been tampered with; nothing outside the target is written' });
  }
}

export function encodeTree(tree: Tree): Buffer {
  return Buffer.from(JSON.stringify(tree), 'utf8');
}

/**
 * Largest tree blob a reader accepts (about 290,000 entries in one folder). A tree comes from the
 * repository, which may be hostile: without a bound a few kilobytes of compressed JSON can expand into
 * gigabytes of memory.
 */
export const MAX_TREE_BYTES = 64 * 1024 * 1024;

const NODE_TYPES: ReadonlySet<string> = new Set<NodeType>(['file', 'dir', 'symlink', 'fifo', 'chardev', 'blockdev', 'socket']);
const HEX_ID = /^[0-9a-f]{64}$/;
const NS = /^-?[0-9]{1,22}$/;

const isUint = (v: unknown, max = Number.MAX_SAFE_INTEGER): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;

/** Why a node cannot be trusted, or undefined when it is well formed. */
function nodeProblem(n: TreeNode): string | undefined {
  if (typeof n !== 'object' || n === null) return 'an entry is not an object';
  if ((n.name === undefined) === (n.nameB64 === undefined)) return 'an entry has no name, or two';
  if (n.name !== undefined && typeof n.name !== 'string') return 'an entry has a name that is not text';
  if (n.nameB64 !== undefined && typeof n.nameB64 !== 'string') return 'an entry has a malformed name';
  if (typeof n.type !== 'string' || !NODE_TYPES.has(n.type)) return `an entry has the unknown type '${String(n.type)}'`;
  if (!isUint(n.mode, 0o7777)) return 'an entry has an invalid mode';
  if (!isUint(n.uid, 0xffffffff) || !isUint(n.gid, 0xffffffff)) return 'an entry has an invalid owner';
  if (typeof n.mtimeNs !== 'string' || !NS.test(n.mtimeNs) || typeof n.ctimeNs !== 'string' || !NS.test(n.ctimeNs)) return 'an entry has an invalid time';
  if (n.atimeNs !== undefined && (typeof n.atimeNs !== 'string' || !NS.test(n.atimeNs))) return 'an entry has an invalid access time';
  if (!isUint(n.size) || !isUint(n.inode) || !isUint(n.dev) || !isUint(n.links)) return 'an entry has an invalid size, inode or link count';
  if (n.content !== undefined && (n.type !== 'file' || !Array.isArray(n.content) || !n.content.every((c) => typeof c === 'string' && HEX_ID.test(c)))) return 'an entry has invalid content';
  if (n.subtree !== undefined && (n.type !== 'dir' || typeof n.subtree !== 'string' || !HEX_ID.test(n.subtree))) return 'an entry has an invalid subtree';
  if ((n.linkTarget !== undefined || n.linkTargetB64 !== undefined) && (n.type !== 'symlink' || (n.linkTarget !== undefined && typeof n.linkTarget !== 'string') || (n.linkTargetB64 !== undefined && typeof n.linkTargetB64 !== 'string'))) {
    return 'an entry has an invalid link target';
  }
  if (n.rdev !== undefined && !isUint(n.rdev)) return 'an entry has an invalid device number';
  if (n.xattrs !== undefined && (!Array.isArray(n.xattrs) || !n.xattrs.every((x) => typeof x === 'object' && x !== null && typeof x.name === 'string' && typeof x.value === 'string'))) {
    return 'an entry has invalid extended attributes';
  }
  return undefined;
}

/**
 * Parses a tree and checks it as the format requires: every entry well formed, every name one safe
 * path component, names strictly increasing by their bytes (so no name twice). Restores rely on the
 * last: two entries of one name (a file and a symlink) restored side by side could otherwise make one
 * follow the other out of the target.
 */
export function decodeTree(plain: Buffer, id: string): Tree {
  const bad = (why: string): BulwarkError => new BulwarkError('repository-corrupt', `tree ${id} is malformed: ${why}`, { hint: "the snapshot is damaged or was tampered with; run 'bulwark check'" });
  if (plain.length > MAX_TREE_BYTES) throw bad(`it is ${plain.length} bytes, more than the ${MAX_TREE_BYTES} allowed`);
  let t: Tree;
  try {
    t = JSON.parse(plain.toString('utf8')) as Tree;
  } catch (err) {
    throw bad((err as Error).message);
  }
  if (typeof t !== 'object' || t === null || !Array.isArray(t.nodes)) throw bad('no entries');
  let prev: Buffer | undefined;
  for (const n of t.nodes) {
    const problem = nodeProblem(n);
    if (problem) throw bad(problem);
    const name = nodeName(n);
    if (n.nameB64 !== undefined && encodeName(name).text !== undefined) throw bad(`the name '${displayName(name)}' is stored in two ways`);
    if (!isSafeName(name)) throw bad(`it holds the unsafe name '${displayName(name)}'`);
    if (prev !== undefined && Buffer.compare(prev, name) >= 0) {
      throw bad(Buffer.compare(prev, name) === 0 ? `the name '${displayName(name)}' appears twice` : `the names are not in order ('${displayName(prev)}' before '${displayName(name)}')`);
    }
    prev = name;
  }
  return t;
}

export function compareNames(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}
