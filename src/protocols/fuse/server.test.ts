// Mounts an in-memory tree through the real kernel and checks it with ordinary tools. The tools run
// as child processes through async execFile: the server lives on this event loop, so anything
// synchronous that touches the mount (spawnSync, fs.*Sync) would deadlock the test.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as A from './abi.js';
import { mountFuse, type Attr, type FuseMount, type ReadOnlyFs } from './server.js';

interface Node {
  attr: Attr;
  children?: Map<string, bigint>;
  data?: (offset: number, length: number) => Buffer | Promise<Buffer>;
  target?: string;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const MiB = 1024 * 1024;
const BIG_SIZE = 50 * MiB;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const MTIME = Date.UTC(2024, 0, 2, 3, 4, 5, 678);
const NON_ASCII_FILE = 'héllo wörld ✓.txt';
const NON_ASCII_DIR = '日本語';

const exec = promisify(execFile);

/** Runs a command, never throwing on a non-zero exit: the exit code and stderr are what is checked. */
async function sh(script: string, timeoutMs = 60_000): Promise<Run> {
  try {
    const { stdout, stderr } = await exec('sh', ['-c', script], { timeout: timeoutMs, maxBuffer: 64 * MiB, encoding: 'utf8' });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; killed?: boolean; signal?: string };
    if (e.killed) throw new Error(`'${script}' did not finish within ${timeoutMs} ms (signal ${e.signal})`, { cause: err });
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

const q = (p: string): string => `'${p.replace(/'/g, `'\\''`)}'`;

/**
 * The big file: 1 MiB stretches that are alternately pseudo-random words and zeros ("sparse-ish"),
 * computable at any offset so reads never need the whole file in memory.
 */
function bigBytes(offset: number, length: number): Buffer {
  const end = Math.min(BIG_SIZE, offset + length);
  if (end <= offset) return Buffer.alloc(0);
  const first = Math.floor(offset / 4);
  const words = Math.ceil(end / 4) - first;
  const out = Buffer.alloc(words * 4);
  for (let i = 0; i < words; i++) {
    const w = first + i;
    if (Math.floor((w * 4) / MiB) % 3 === 1) continue;
    let x = Math.imul(w ^ 0x9e3779b9, 0x85ebca6b);
    x ^= x >>> 13;
    x = Math.imul(x, 0xc2b2ae35);
    out.writeUInt32LE((x ^ (x >>> 16)) >>> 0, i * 4);
  }
  return out.subarray(offset - first * 4, end - first * 4);
}

/** The tree under test, with a hook to make one file's reads fail like a broken backend would. */
function buildTree(bigCopy?: Buffer): { tree: ReadOnlyFs; manyNames: string[] } {
  const nodes = new Map<bigint, Node>();
  let nextIno = 2n;
  const add = (parent: bigint | undefined, name: string, node: Omit<Node, 'attr'> & { mode: number; size?: bigint }): bigint => {
    const ino = parent === undefined ? 1n : nextIno++;
    const isDir = (node.mode & 0o170000) === S_IFDIR;
    nodes.set(ino, {
      ...node,
      ...(isDir ? { children: new Map() } : {}),
      attr: { ino, mode: node.mode, size: node.size ?? 0n, mtimeMs: MTIME, nlink: isDir ? 2 : 1, uid: 0, gid: 0 },
    });
    if (parent !== undefined) nodes.get(parent)!.children!.set(name, ino);
    return ino;
  };
  const text = (s: string): Pick<Node, 'data'> & { size: bigint } => {
    const b = Buffer.from(s, 'utf8');
    return { size: BigInt(b.length), data: (o, l) => b.subarray(o, o + l) };
  };

  const root = add(undefined, '', { mode: S_IFDIR | 0o555 });
  const many = add(root, 'many', { mode: S_IFDIR | 0o555 });
  const manyNames: string[] = [];
  for (let i = 0; i < 1000; i++) {
    const name = `file-${String(i).padStart(4, '0')}.txt`;
    manyNames.push(name);
    add(many, name, { mode: S_IFREG | 0o444, ...text(`file ${i}\n`) });
  }
  add(root, 'big.bin', { mode: S_IFREG | 0o444, size: BigInt(BIG_SIZE), data: bigBytes });
  // The same bytes served from memory, so its read time is the server's and not the generator's.
  const cold = bigCopy ? (o: number, l: number): Buffer => bigCopy.subarray(o, o + l) : bigBytes;
  add(root, 'big-cold.bin', { mode: S_IFREG | 0o444, size: BigInt(BIG_SIZE), data: cold });
  add(root, 'link', { mode: S_IFLNK | 0o777, size: 18n, target: 'many/file-0007.txt' });
  const a = add(root, 'a', { mode: S_IFDIR | 0o555 });
  const b = add(a, 'b', { mode: S_IFDIR | 0o555 });
  const c = add(b, 'c', { mode: S_IFDIR | 0o555 });
  add(c, 'deep.txt', { mode: S_IFREG | 0o444, ...text('deep\n') });
  add(root, NON_ASCII_FILE, { mode: S_IFREG | 0o444, ...text('ünïcödé\n') });
  const jp = add(root, NON_ASCII_DIR, { mode: S_IFDIR | 0o555 });
  add(jp, 'ファイル.txt', { mode: S_IFREG | 0o444, ...text('こんにちは\n') });
  add(root, 'broken.bin', {
    mode: S_IFREG | 0o444,
    size: 4096n,
    data: () => {
      throw new Error('backend exploded');
    },
  });
  add(root, 'slow.bin', {
    mode: S_IFREG | 0o444,
    ...text('slow\n'),
    data: async (o, l) => {
      await new Promise((r) => setTimeout(r, 3000));
      return Buffer.from('slow\n').subarray(o, o + l);
    },
  });
  add(root, 'denied.bin', {
    mode: S_IFREG | 0o444,
    size: 4096n,
    data: () => {
      throw Object.assign(new Error('no'), { code: 'EACCES' });
    },
  });

  const get = (ino: bigint): Node => {
    const n = nodes.get(ino);
    if (!n) throw Object.assign(new Error(`no inode ${ino}`), { code: 'ENOENT' });
    return n;
  };
  const tree: ReadOnlyFs = {
    getattr: async (ino) => get(ino).attr,
    lookup: async (parent, name) => {
      const child = get(parent).children?.get(name);
      return child === undefined ? undefined : get(child).attr;
    },
    readdir: async (ino) => {
      const n = get(ino);
      if (!n.children) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
      return [...n.children].map(([name, child]) => ({ name, attr: get(child).attr }));
    },
    read: async (ino, offset, length) => {
      const n = get(ino);
      if (!n.data) throw Object.assign(new Error('not a file'), { code: 'EISDIR' });
      return n.data(Number(offset), length);
    },
    readlink: async (ino) => {
      const t = get(ino).target;
      if (t === undefined) throw Object.assign(new Error('not a link'), { code: 'EINVAL' });
      return t;
    },
  };
  return { tree, manyNames };
}

describe('abi', () => {
  it('refuses truncated requests instead of reading past them', () => {
    expect(() => A.decodeInHeader(Buffer.alloc(39))).toThrow(A.FuseAbiError);
    const h = Buffer.alloc(40);
    h.writeUInt32LE(48, 0);
    expect(() => A.decodeInHeader(h)).toThrow(/len 48/);
    expect(() => A.decodeReadIn(Buffer.alloc(23))).toThrow(A.FuseAbiError);
    expect(() => A.decodeName(Buffer.from('abc'))).toThrow(/NUL/);
    expect(A.decodeName(Buffer.from('ü\0rest'))).toBe('ü');
  });

  it('packs dirents on 8-byte boundaries and stops before one that does not fit', () => {
    const e = (name: string, i: number): A.Dirent => ({ ino: BigInt(i + 10), nextOffset: BigInt(i + 1), type: 8, name: Buffer.from(name) });
    const entries = [e('a', 0), e('abcdefghi', 1), e('c', 2)];
    expect(A.direntSize(1)).toBe(32);
    expect(A.direntSize(9)).toBe(40);
    const { buf, count } = A.encodeDirents(entries, 32 + 40 + 31);
    expect(count).toBe(2);
    expect(buf.length).toBe(72);
    expect(buf.readBigUInt64LE(32 + 8)).toBe(2n);
    expect(buf.toString('utf8', 32 + 24, 32 + 24 + 9)).toBe('abcdefghi');
  });

  it('lays out attributes where the kernel expects them', () => {
    const out = A.encodeEntryOut({ ino: 7n, size: 5n, blocks: 1n, mtimeMs: 1500, mode: S_IFREG | 0o444, nlink: 1, uid: 3, gid: 4, blksize: 4096 }, 1.5, 2);
    expect(out.length).toBe(128);
    expect(out.readBigUInt64LE(16)).toBe(1n); // entry_valid
    expect(out.readUInt32LE(32)).toBe(500_000_000); // entry_valid_nsec
    expect(out.readBigUInt64LE(40 + 32)).toBe(1n); // mtime seconds
    expect(out.readUInt32LE(40 + 52)).toBe(500_000_000); // mtimensec
    expect(out.readUInt32LE(40 + 60)).toBe(S_IFREG | 0o444);
  });
});

describe('mountFuse (real kernel)', () => {
  let dir: string;
  let mnt: string;
  let expectedPath: string;
  let expectedSha: string;
  let mount: FuseMount | undefined;
  let manyNames: string[];
  const logs: string[] = [];

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-fuse-'));
    mnt = path.join(dir, 'mnt');
    await fs.mkdir(mnt);
    const expected = bigBytes(0, BIG_SIZE);
    expectedSha = createHash('sha256').update(expected).digest('hex');
    expectedPath = path.join(dir, 'expected.bin');
    await fs.writeFile(expectedPath, expected);
    const built = buildTree(expected);
    manyNames = built.manyNames;
    try {
      mount = await mountFuse(mnt, built.tree, { log: (m) => logs.push(m) });
    } catch (err) {
      console.warn(`\n*** FUSE MOUNT REFUSED: the kernel or container would not mount ${mnt}: ${(err as Error).message}\n`);
      throw err;
    }
  });

  afterAll(async () => {
    if (mount) await mount.unmount().catch((err: unknown) => console.warn(`unmount in afterAll failed: ${String(err)}`));
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('lists the tree with ls and find', async () => {
    const ls = await sh(`ls -la ${q(mnt)}`);
    expect(ls.code, ls.stderr).toBe(0);
    for (const name of ['many', 'big.bin', 'link -> many/file-0007.txt', 'a', NON_ASCII_FILE, NON_ASCII_DIR]) expect(ls.stdout).toContain(name);
    expect(ls.stdout).toMatch(/^lrwxrwxrwx .* link -> many\/file-0007\.txt$/m);
    expect(ls.stdout).toMatch(/^-r--r--r-- +1 root root 52428800 /m);

    const many = await sh(`ls -1 ${q(path.join(mnt, 'many'))}`);
    expect(many.stdout.split('\n').filter(Boolean)).toEqual(manyNames);

    const find = await sh(`cd ${q(mnt)} && find . | LC_ALL=C sort`);
    expect(find.code, find.stderr).toBe(0);
    const expected = [
      '.', './a', './a/b', './a/b/c', './a/b/c/deep.txt', './big-cold.bin', './big.bin', './broken.bin', './denied.bin', './link', './many', './slow.bin',
      ...manyNames.map((n) => `./many/${n}`), `./${NON_ASCII_FILE}`, `./${NON_ASCII_DIR}`, `./${NON_ASCII_DIR}/ファイル.txt`,
    ].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    expect(find.stdout.split('\n').filter(Boolean)).toEqual(expected);
    expect((await sh(`find ${q(mnt)} -type f | wc -l`)).stdout.trim()).toBe('1008');
  });

  it('reports sizes, modes and times through stat', async () => {
    expect((await sh(`stat -c %s ${q(path.join(mnt, 'big.bin'))}`)).stdout.trim()).toBe(String(BIG_SIZE));
    expect((await sh(`stat -c '%s %a %F %Y' ${q(path.join(mnt, NON_ASCII_FILE))}`)).stdout.trim()).toBe(
      `${Buffer.byteLength('ünïcödé\n')} 444 regular file ${Math.floor(MTIME / 1000)}`,
    );
    expect((await sh(`stat -c '%a %F' ${q(path.join(mnt, 'a/b/c'))}`)).stdout.trim()).toBe('555 directory');
    expect((await sh(`stat -c %s ${q(path.join(mnt, 'missing'))}`)).stderr).toMatch(/No such file or directory/);
  });

  it('reads the 50 MiB file cold, twice at once, and both readers get the right bytes', async () => {
    const big = q(path.join(mnt, 'big.bin'));
    const t0 = process.hrtime.bigint();
    const [r1, r2] = await Promise.all([sh(`cat ${big} | sha256sum`), sh(`sha256sum ${big}`)]);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    expect(r1.code, r1.stderr).toBe(0);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r1.stdout.split(' ')[0]).toBe(expectedSha);
    expect(r2.stdout.split(' ')[0]).toBe(expectedSha);
    console.log(`two concurrent sha256sum of the generated 50 MiB file (cold): ${secs.toFixed(2)} s = ${(BIG_SIZE / 1e6 / secs).toFixed(0)} MB/s served`);
    const cmp = await sh(`cmp ${big} ${q(expectedPath)}`);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
  });

  it('streams a cold 50 MiB file at a measured rate', async () => {
    const t0 = process.hrtime.bigint();
    const r = await sh(`dd if=${q(path.join(mnt, 'big-cold.bin'))} of=/dev/null bs=1M status=none`);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    expect(r.code, r.stderr).toBe(0);
    console.log(`cold sequential dd of 50 MiB served from memory: ${secs.toFixed(2)} s = ${(BIG_SIZE / 1e6 / secs).toFixed(0)} MB/s`);
    const cmp = await sh(`cmp ${q(path.join(mnt, 'big-cold.bin'))} ${q(expectedPath)}`);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
  });

  it('reads at an odd offset with dd', async () => {
    const skip = 3 * MiB - 7; // straddles a data/zero boundary
    const r = await exec('dd', [`if=${path.join(mnt, 'big.bin')}`, 'bs=1', `skip=${skip}`, 'count=4099', 'status=none'], { encoding: 'buffer', maxBuffer: MiB });
    expect(Buffer.compare(r.stdout, bigBytes(skip, 4099))).toBe(0);
    const tail = await exec('dd', [`if=${path.join(mnt, 'big.bin')}`, 'bs=1', `skip=${BIG_SIZE - 3}`, 'count=100', 'status=none'], { encoding: 'buffer' });
    expect(Buffer.compare(tail.stdout, bigBytes(BIG_SIZE - 3, 3))).toBe(0);
  });

  it('follows the symlink and reads small and non-ASCII files', async () => {
    expect((await sh(`readlink ${q(path.join(mnt, 'link'))}`)).stdout).toBe('many/file-0007.txt\n');
    expect((await sh(`cat ${q(path.join(mnt, 'link'))}`)).stdout).toBe('file 7\n');
    expect((await sh(`cat ${q(path.join(mnt, NON_ASCII_DIR, 'ファイル.txt'))}`)).stdout).toBe('こんにちは\n');
    expect((await sh(`cat ${q(path.join(mnt, 'a/b/c/deep.txt'))}`)).stdout).toBe('deep\n');
    const all = await sh(`cat ${q(path.join(mnt, 'many'))}/* | wc -l`);
    expect(all.stdout.trim()).toBe('1000');
  });

  it('answers requests concurrently: a slow read does not hold up others', async () => {
    const t0 = Date.now();
    const slow = sh(`cat ${q(path.join(mnt, 'slow.bin'))}`);
    await new Promise((r) => setTimeout(r, 200));
    const fast = await sh(`cat ${q(path.join(mnt, 'many/file-0042.txt'))}`);
    const fastMs = Date.now() - t0;
    expect(fast.stdout).toBe('file 42\n');
    expect((await slow).stdout).toBe('slow\n');
    expect(fastMs).toBeLessThan(2500);
  });

  it('has no extended attributes', async () => {
    const file = q(path.join(mnt, 'a/b/c/deep.txt'));
    const get = await sh(`getfattr -n user.test ${file}`);
    expect(get.code).not.toBe(0);
    expect(get.stderr).toMatch(/No such attribute/);
    const dump = await sh(`getfattr -d -m - ${file}`);
    expect(dump.code, dump.stderr).toBe(0);
    expect(dump.stdout.trim()).toBe('');
    expect((await sh(`setfattr -n user.test -v 1 ${file}`)).stderr).toMatch(/Read-only file system/);
  });

  it('refuses every change with EROFS', async () => {
    for (const cmd of [
      `touch ${q(path.join(mnt, 'new'))}`,
      `touch ${q(path.join(mnt, 'many/file-0001.txt'))}`,
      `rm -f ${q(path.join(mnt, 'many/file-0001.txt'))}`,
      `mkdir ${q(path.join(mnt, 'd'))}`,
      `echo x >> ${q(path.join(mnt, 'a/b/c/deep.txt'))}`,
    ]) {
      const r = await sh(cmd);
      expect(r.code, cmd).not.toBe(0);
      expect(r.stderr, cmd).toMatch(/Read-only file system/);
    }
    expect((await sh(`cat ${q(path.join(mnt, 'many/file-0001.txt'))}`)).stdout).toBe('file 1\n');
  });

  it('turns a throwing file system into EIO for the reader, not a hang', async () => {
    const r = await sh(`cat ${q(path.join(mnt, 'broken.bin'))}`, 15_000);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Input\/output error/);
    await sh(`cat ${q(path.join(mnt, 'broken.bin'))}`, 15_000);
    expect(logs.filter((m) => m.includes('backend exploded'))).toHaveLength(1);
    const d = await sh(`cat ${q(path.join(mnt, 'denied.bin'))}`, 15_000);
    expect(d.stderr).toMatch(/Permission denied/);
  });

  it('unmounts, leaves the folder empty and settles closed', async () => {
    const m = mount!;
    await m.unmount();
    await expect(Promise.race([m.closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('timeout'), 5000))])).resolves.toBe('closed');
    expect(await fs.readdir(mnt)).toEqual([]);
    expect(await fs.readFile('/proc/self/mounts', 'utf8')).not.toContain(mnt);
    mount = undefined;
  });

  it('unmounts while a file is held open and ends once it is let go', async () => {
    const built = buildTree();
    const m = await mountFuse(mnt, built.tree, { log: (msg) => logs.push(msg) });
    let unmounted = false;
    try {
      // The shell keeps the file open on fd 3 for two seconds after the unmount has begun.
      const holder = sh(`exec 3< ${q(path.join(mnt, 'many/file-0003.txt'))}; touch ${q(path.join(dir, 'opened'))}; sleep 2; cat <&3`);
      while (!(await fs.stat(path.join(dir, 'opened')).catch(() => undefined))) await new Promise((r) => setTimeout(r, 50));
      const t0 = Date.now();
      await m.unmount();
      unmounted = true;
      expect(Date.now() - t0).toBeGreaterThan(1000);
      const r = await holder;
      expect(r.stdout).toBe('file 3\n');
      await m.closed;
      expect(await fs.readdir(mnt)).toEqual([]);
    } finally {
      if (!unmounted) await m.unmount();
    }
  });

  it('aborts a session still held open when the unmount grace period ends', async () => {
    const built = buildTree();
    const aborted: string[] = [];
    const m = await mountFuse(mnt, built.tree, { unmountTimeoutMs: 300, log: (msg) => aborted.push(msg) });
    const flag = path.join(dir, 'opened-2');
    // Holds the directory open (it is served from the kernel's cache once read), then lists a file
    // the kernel has not seen yet, which needs the server.
    const holder = sh(`cd ${q(path.join(mnt, 'a/b'))} && touch ${q(flag)} && sleep 3 && cat c/deep.txt`, 20_000);
    while (!(await fs.stat(flag).catch(() => undefined))) await new Promise((r) => setTimeout(r, 50));
    const t0 = Date.now();
    await m.unmount();
    expect(Date.now() - t0).toBeLessThan(2500);
    await m.closed;
    expect(aborted.join('\n')).toMatch(/aborted the connection/);
    const r = await holder;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Transport endpoint is not connected|Software caused connection abort/);
    expect(await fs.readdir(mnt)).toEqual([]);
  });
});
