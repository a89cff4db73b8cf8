// Hostile and damaged repositories for tests: crafted trees, snapshots, keys and packs written with
// the repository's own key (the strongest attacker a reader must survive: one who has the password),
// and damage done to stored files (flipped bytes, FIFOs, truncation). Plus bait files outside any
// restore target whose owner, mode, size and times must never change.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Repository } from '../../src/repository/repository.js';
import type { Snapshot } from '../../src/repository/snapshot.js';
import type { TreeNode } from '../../src/repository/tree.js';

/** A tree node as the format stores it, any field overridable, with harmless defaults. */
export function node(name: string, type: TreeNode['type'] | string, extra: Record<string, unknown> = {}): TreeNode {
  return {
    name,
    type: type as TreeNode['type'],
    mode: type === 'dir' ? 0o755 : 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: '1700000000000000000',
    ctimeNs: '1700000000000000000',
    size: 0,
    inode: 1000 + Math.floor(Math.random() * 1e9),
    dev: 1,
    links: 1,
    ...extra,
  } as TreeNode;
}

/** Stores a tree blob exactly as given: no sorting, no validation (that is the point). */
export async function writeTree(repo: Repository, nodes: unknown[]): Promise<string> {
  return (await repo.saveBlob('tree', Buffer.from(JSON.stringify({ nodes })))).id;
}

export async function writeData(repo: Repository, bytes: Buffer): Promise<string> {
  return (await repo.saveBlob('data', bytes)).id;
}

/** A file node holding `bytes`. */
export async function fileNode(repo: Repository, name: string, bytes: Buffer, extra: Record<string, unknown> = {}): Promise<TreeNode> {
  const content = bytes.length > 0 ? [await writeData(repo, bytes)] : [];
  return node(name, 'file', { size: bytes.length, content, ...extra });
}

/** Flushes pending blobs and writes a snapshot record (any fields overridable, even invalid ones). */
export async function writeSnapshot(repo: Repository, fields: Partial<Snapshot> & Record<string, unknown>): Promise<string> {
  await repo.flush();
  const doc = {
    version: 1,
    time: new Date().toISOString(),
    hostname: 'hostile',
    username: 'mallory',
    source: 'files',
    paths: ['/crafted'],
    tags: [],
    summary: { bytesRead: 0, bytesNew: 0, blobsNew: 0, totalSize: 0, durationMs: 0, warnings: [] },
    ...fields,
  };
  return repo.saveDocument('snapshots', doc);
}

/** A snapshot of a crafted root tree. */
export async function hostileSnapshot(repo: Repository, rootNodes: unknown[], fields: Record<string, unknown> = {}): Promise<{ snapshot: string; tree: string }> {
  const tree = await writeTree(repo, rootNodes);
  return { snapshot: await writeSnapshot(repo, { tree, ...fields }), tree };
}

/** Where a stored object lives in a local repository. */
export function objectPath(repoPath: string, type: 'data' | 'index' | 'snapshots' | 'keys' | 'locks', name: string): string {
  return type === 'data' ? join(repoPath, 'data', name.slice(0, 2), name) : join(repoPath, type, name);
}

/** Stored objects of a type (file names), sorted. */
export async function listObjects(repoPath: string, type: 'data' | 'index' | 'snapshots' | 'keys'): Promise<string[]> {
  if (type !== 'data') return (await fsp.readdir(join(repoPath, type))).filter((n) => /^[0-9a-f]{64}$/.test(n)).sort();
  const out: string[] = [];
  for (const sub of await fsp.readdir(join(repoPath, 'data'))) out.push(...(await fsp.readdir(join(repoPath, 'data', sub))).filter((n) => /^[0-9a-f]{64}$/.test(n)));
  return out.sort();
}

/** Flips one byte of a stored object in place (objects are read-only on disk: made writable first). */
export async function flipByte(path: string, at: number): Promise<void> {
  await fsp.chmod(path, 0o644);
  const fh = await fsp.open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

/** Replaces a stored object with other bytes (keeping its name, so it no longer matches its hash). */
export async function overwrite(path: string, bytes: Buffer | string): Promise<void> {
  await fsp.chmod(path, 0o644).catch(() => undefined);
  await fsp.writeFile(path, bytes);
}

/** Replaces a stored object with a FIFO of the same name. */
export async function replaceWithFifo(path: string): Promise<void> {
  await fsp.rm(path, { force: true });
  execFileSync('mkfifo', [path]);
}

/** Writes a key file with exactly these bytes under its content-hash name. */
export async function plantKeyFile(repoPath: string, bytes: Buffer | string): Promise<string> {
  const b = Buffer.from(bytes);
  const name = createHash('sha256').update(b).digest('hex');
  await fsp.writeFile(join(repoPath, 'keys', name), b);
  return name;
}

export interface BaitRecord {
  path: string;
  uid: number;
  gid: number;
  mode: number;
  size: number;
  mtimeMs: number;
  kind: string;
}

/**
 * Files a hostile snapshot would love to change: a setuid copy of a shell, a plain copy, a root-owned
 * config file, a folder. Their owner, mode, size and times are recorded; `changed()` names any that moved.
 */
export class Bait {
  readonly files: string[];

  private constructor(
    readonly dir: string,
    private before: BaitRecord[],
  ) {
    this.files = before.map((b) => b.path);
  }

  static async plant(dir: string): Promise<Bait> {
    await fsp.mkdir(dir, { recursive: true });
    const shell = join(dir, 'dash');
    const setuid = join(dir, 'setuid-dash');
    await fsp.copyFile('/bin/dash', shell);
    await fsp.chmod(shell, 0o755);
    await fsp.copyFile('/bin/dash', setuid);
    await fsp.chmod(setuid, 0o4755);
    await fsp.writeFile(join(dir, 'shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o600 });
    await fsp.mkdir(join(dir, 'folder'), { mode: 0o700 });
    await fsp.writeFile(join(dir, 'folder', 'inside'), 'keep me\n', { mode: 0o640 });
    const paths = ['dash', 'setuid-dash', 'shadow', 'folder', 'folder/inside'].map((p) => join(dir, p));
    // Times well in the past, so a change to "now" is seen.
    for (const p of paths) await fsp.utimes(p, 1_000_000_000, 1_000_000_000);
    await fsp.utimes(dir, 1_000_000_000, 1_000_000_000);
    return new Bait(dir, await Bait.record([dir, ...paths]));
  }

  private static async record(paths: string[]): Promise<BaitRecord[]> {
    const out: BaitRecord[] = [];
    for (const path of paths) {
      const st = await fsp.lstat(path);
      out.push({ path, uid: st.uid, gid: st.gid, mode: st.mode, size: st.size, mtimeMs: st.mtimeMs, kind: st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other' });
    }
    return out;
  }

  /** The bait files whose owner, mode, size, mtime or kind differ from when they were planted. */
  async changed(): Promise<{ before: BaitRecord; after: BaitRecord | string }[]> {
    const out: { before: BaitRecord; after: BaitRecord | string }[] = [];
    for (const b of this.before) {
      const [after] = await Bait.record([b.path]).catch((err: Error) => [err.message] as const);
      if (typeof after === 'string' || after === undefined) out.push({ before: b, after: after ?? 'missing' });
      else if (JSON.stringify(after) !== JSON.stringify(b)) out.push({ before: b, after });
    }
    return out;
  }

  /** A path inside the bait folder, as a symlink target a hostile tree points at. */
  path(name: string): string {
    return join(this.dir, name);
  }
}
