// The XFS reader against images mkfs.xfs populated from a protofile (mkfs.xfs -p; no mount needed),
// v5 (the RHEL default: crc, ftype, sparse inodes, finobt, reflink, bigtime) and v4 (crc=0, 8 KiB
// directory blocks), checked byte for byte against the source tree and against xfs_db. Holes,
// unwritten extents and a two-level bmap btree are made by patching inodes (xfs_db or raw bytes).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { FileSystemError, FileVolume, FsNotFoundError, SliceVolume, type FileSystem, type Volume } from '../types.js';
import { isXfs, openXfs } from './reader.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const BS = 4096;

/** Files whose owner the protofile sets (the source files are root's). */
const OWNERS: Record<string, [number, number]> = { 'perm.txt': [1234, 99] };
const LONG_TARGET = '/' + 'a-rather-long-target-segment/'.repeat(20) + 'end';

async function xfsDb(img: string, write: boolean, ...cmds: string[]): Promise<string> {
  const args = [write ? '-x' : '-r', ...cmds.flatMap((c) => ['-c', c]), img];
  return (await exec('xfs_db', args)).stdout;
}

async function buildSource(root: string): Promise<void> {
  const w = (p: string, data: Buffer | string): Promise<void> => fsp.writeFile(join(root, p), data);
  await w('empty', '');
  await w('one', 'x');
  await w('f5000', randomBytes(5000));
  await w('big', randomBytes(3 * MiB));
  await w('holey', randomBytes(16 * BS));
  await w('pad', randomBytes(16 * BS));
  await w('perm.txt', 'secret\n');
  await fsp.chmod(join(root, 'perm.txt'), 0o640);
  await w('héllo-wörld-日本語.txt', 'unicode\n');
  for (const [dir, n, name] of [
    ['d20', 20, (i: number) => `file-${i}`],
    ['d150', 150, (i: number) => `${String.fromCharCode(97 + (i % 26))}${Math.floor(i / 26)}`],
    ['d200', 200, (i: number) => `entry-number-${i}`],
    ['d5000', 5000, (i: number) => (i % 7 === 0 ? `ünïcödé-名前-${i}` : `a-longer-entry-name-${i}-${'z'.repeat(i % 30)}`)],
  ] as const) {
    await fsp.mkdir(join(root, dir));
    for (let i = 0; i < n; i++) await w(join(dir, name(i)), `${dir}/${i}\n`);
  }
  let deep = join(root, 'deep');
  for (let i = 0; i < 30; i++) deep = join(deep, `level-${i}`);
  await fsp.mkdir(deep, { recursive: true });
  await fsp.writeFile(join(deep, 'bottom.txt'), 'the bottom\n');
  await fsp.symlink('d20/file-1', join(root, 'short-link'));
  await fsp.symlink(LONG_TARGET, join(root, 'long-link'));
}

/** The protofile (mkfs.xfs(8) -p) describing the tree at `dir`. */
async function protofile(dir: string): Promise<string> {
  const lines = ['bulwark-test', '0 0', 'd--755 0 0'];
  const walk = async (d: string, depth: number): Promise<void> => {
    for (const name of (await fsp.readdir(d)).sort()) {
      const p = join(d, name);
      const st = await fsp.lstat(p);
      const perm = (st.mode & 0o777).toString(8).padStart(3, '0');
      const [uid, gid] = OWNERS[name] ?? [0, 0];
      const pad = ' '.repeat(depth);
      if (st.isDirectory()) {
        lines.push(`${pad}${name} d--${perm} ${uid} ${gid}`);
        await walk(p, depth + 1);
        lines.push(`${pad}$`);
      } else if (st.isSymbolicLink()) lines.push(`${pad}${name} l--${perm} ${uid} ${gid} ${await fsp.readlink(p)}`);
      else lines.push(`${pad}${name} ---${perm} ${uid} ${gid} ${p}`);
    }
  };
  await walk(dir, 1);
  lines.push('$', '');
  return lines.join('\n');
}

async function makeImage(img: string, proto: string, opts: string[]): Promise<void> {
  await fsp.writeFile(img, '');
  await fsp.truncate(img, 320 * MiB);
  await exec('mkfs.xfs', ['-q', '-f', ...opts, '-p', proto, img]);
}

async function readAll(fs: FileSystem, path: string, chunk = 65537): Promise<Buffer> {
  const f = await fs.open(path);
  const out = Buffer.alloc(f.size);
  for (let pos = 0; pos < f.size; ) {
    const n = await f.read(out.subarray(pos, pos + chunk), pos);
    expect(n).toBeGreaterThan(0);
    pos += n;
  }
  expect(await f.read(Buffer.alloc(10), f.size)).toBe(0);
  return out;
}

/** Compares the whole tree: names, types, bytes, link targets. Returns the number of entries seen. */
async function compareTree(fs: FileSystem, src: string, skip: Set<string>): Promise<number> {
  let seen = 0;
  const walk = async (rel: string): Promise<void> => {
    const names = (await fsp.readdir(join(src, rel))).sort();
    const entries = await fs.list(rel === '' ? '/' : '/' + rel);
    expect(entries.map((e) => e.name).sort()).toEqual(names);
    for (const e of entries) {
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      seen++;
      const st = await fsp.lstat(join(src, r));
      if (st.isDirectory()) {
        expect(e.type).toBe('dir');
        await walk(r);
      } else if (st.isSymbolicLink()) {
        expect(e.type).toBe('symlink');
        expect(await fs.readlink('/' + r)).toBe(await fsp.readlink(join(src, r)));
      } else {
        expect(e.type).toBe('file');
        expect(e.size).toBe(st.size);
        if (!skip.has(r)) expect((await readAll(fs, '/' + r)).equals(await fsp.readFile(join(src, r)))).toBe(true);
      }
    }
  };
  await walk('');
  return seen;
}

/** A volume whose bytes at some offsets are replaced (damage without copying the image). */
class PatchedVolume implements Volume {
  constructor(
    private readonly base: Volume,
    private readonly patches: { offset: number; bytes: Buffer }[],
  ) {}
  get size(): number {
    return this.base.size;
  }
  async read(buf: Buffer, offset: number): Promise<void> {
    await this.base.read(buf, offset);
    for (const p of this.patches) {
      const from = Math.max(offset, p.offset);
      const to = Math.min(offset + buf.length, p.offset + p.bytes.length);
      if (from < to) p.bytes.copy(buf, from - offset, from - p.offset, to - p.offset);
    }
  }
}

let tmp: { path: string; cleanup(): Promise<void> };
let src: string;
let proto: string;

beforeAll(async () => {
  tmp = await tempDir('bulwark-xfs-');
  src = join(tmp.path, 'src');
  await fsp.mkdir(src);
  await buildSource(src);
  proto = join(tmp.path, 'proto');
  await fsp.writeFile(proto, await protofile(src));
}, 120_000);

afterAll(async () => {
  await tmp?.cleanup();
});

describe('XFS v5', () => {
  let img: string;
  let vol: FileVolume;
  let fs: FileSystem;
  const sb: Record<string, number> = {};

  beforeAll(async () => {
    img = join(tmp.path, 'v5.img');
    await makeImage(img, proto, []);
    for (const line of (await xfsDb(img, false, 'sb 0', 'p agblocks agblklog inopblog inodesize')).trim().split('\n')) {
      const [k, v] = line.split(' = ');
      sb[k!] = Number(v);
    }
    await fixRemoteSymlink();
    vol = await FileVolume.open(img);
    fs = await openXfs(vol);
  }, 120_000);

  const diskOf = (fsb: number): number => (Math.floor(fsb / 2 ** sb.agblklog!) * sb.agblocks! + (fsb % 2 ** sb.agblklog!)) * BS;
  let symlinkBlock = 0;

  /**
   * mkfs.xfs -p of xfsprogs 6.1 writes a remote symlink's target with no 'XSLM' header on v5 (the
   * image it makes fails xfs_repair -n and the kernel's verifier); the block is rewritten as the
   * kernel writes it (header, then the target), and xfs_db recomputes its CRC.
   */
  async function fixRemoteSymlink(): Promise<void> {
    const ino = Number(/= (\d+)/.exec(await xfsDb(img, false, 'path /long-link', 'p v3.inumber'))![1]);
    symlinkBlock = Number(/0:\[0,(\d+),1,0\]/.exec(await xfsDb(img, false, 'path /long-link', 'p u3.bmx'))![1]);
    const fh = await fsp.open(img, 'r');
    const uuid = Buffer.alloc(16);
    await fh.read(uuid, 0, 16, 32);
    const raw = Buffer.alloc(16);
    await fh.read(raw, 0, 16, diskOf(symlinkBlock));
    await fh.close();
    if (raw.readUInt32BE(0) === 0x58534c4d) return; // a fixed mkfs.xfs
    const b = Buffer.alloc(BS);
    b.write('XSLM', 0, 'latin1');
    b.writeUInt32BE(0, 4);
    b.writeUInt32BE(LONG_TARGET.length, 8);
    uuid.copy(b, 16);
    b.writeBigUInt64BE(BigInt(ino), 32);
    b.writeBigUInt64BE(BigInt(diskOf(symlinkBlock) / 512), 40);
    b.write(LONG_TARGET, 56, 'utf8');
    patchFile(img, diskOf(symlinkBlock), b);
    await xfsDb(img, true, 'path /long-link', 'dblock 0', 'type symlink', `write owner ${ino}`);
    expect(await xfsDb(img, false, 'path /long-link', 'dblock 0', 'type symlink', 'p crc')).toMatch(/correct/);
  }

  afterAll(async () => {
    await vol?.close();
  });

  it('recognises the superblock', async () => {
    const first = Buffer.alloc(512);
    await vol.read(first, 0);
    expect(isXfs(first)).toBe(true);
    expect(isXfs(Buffer.alloc(512))).toBe(false);
    expect(fs.type).toBe('xfs');
    const features = await xfsDb(img, false, 'version');
    expect(features).toMatch(/CRC/);
    for (const f of ['FTYPE', 'FINOBT', 'SPARSE_INODES', 'REFLINK', 'BIGTIME']) expect(features).toContain(f);
  });

  it('reads every file, directory and link as the source has it', async () => {
    expect(await compareTree(fs, src, new Set())).toBeGreaterThan(5400);
  }, 120_000);

  it('uses all directory forms: short-form, block, leaf and node', async () => {
    const form = async (dir: string): Promise<{ format: string; bmap: string }> => ({
      format: await xfsDb(img, false, `path /${dir}`, 'p core.format'),
      bmap: await xfsDb(img, false, `path /${dir}`, 'bmap'),
    });
    expect((await form('d20')).format).toMatch(/local/);
    const block = await form('d150');
    expect(block.format).toMatch(/extents/);
    expect(block.bmap.trim().split('\n')).toHaveLength(1); // one directory block
    const leaf = await form('d200');
    expect(leaf.bmap).toMatch(/data offset 8388608 /); // the leaf at 32 GiB
    expect(leaf.bmap).not.toMatch(/data offset 16777216 /);
    const node = await form('d5000');
    expect(node.bmap).toMatch(/data offset 16777216 /); // a free index at 64 GiB: node form
    expect((await fs.list('/d5000')).length).toBe(5000);
  });

  it('gives stat fields as xfs_db prints them', async () => {
    const st = await fs.stat('/perm.txt');
    expect(st).toMatchObject({ name: 'perm.txt', type: 'file', size: 7, mode: 0o100640, uid: 1234, gid: 99 });
    const printed = await xfsDb(img, false, 'path /perm.txt', 'p v3.inumber core.mode core.uid core.gid core.size core.mtime.sec core.mtime.nsec');
    expect(printed).toContain(`v3.inumber = ${st.id}`);
    expect(printed).toContain('core.mode = 0100640');
    const srcStat = await fsp.stat(join(src, 'perm.txt'));
    expect(Math.abs(st.mtimeMs! - srcStat.mtimeMs)).toBeLessThan(10 * 60_000); // mkfs stamps its own time
    expect(Math.abs(st.mtimeMs! - Date.now())).toBeLessThan(60 * 60_000);
    const root = await fs.stat('/');
    expect(root).toMatchObject({ name: '', type: 'dir', mode: 0o40755 });
    expect(root.id).toBe(Number((await xfsDb(img, false, 'sb 0', 'p rootino')).split(' = ')[1]));
    const link = await fs.stat('/long-link');
    expect(link).toMatchObject({ type: 'symlink', size: LONG_TARGET.length });
    expect(await xfsDb(img, false, 'path /long-link', 'p core.format')).toMatch(/extents/); // remote
    expect(await xfsDb(img, false, 'path /short-link', 'p core.format')).toMatch(/local/);
    expect(await fs.readlink('/deep/../long-link')).toBe(LONG_TARGET);
    const deep = '/deep/' + Array.from({ length: 30 }, (_, i) => `level-${i}`).join('/') + '/bottom.txt';
    expect((await readAll(fs, deep)).toString()).toBe('the bottom\n');
  });

  it('answers missing paths and wrong kinds with FsNotFoundError', async () => {
    await expect(fs.stat('/nope')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/d5000/nope')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.list('/one')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.open('/d20')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.readlink('/one')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/one/x')).rejects.toBeInstanceOf(FsNotFoundError);
    expect((await fs.stat('/d5000/ünïcödé-名前-4991')).type).toBe('file');
  });

  it('reads at odd positions without reading the whole file', async () => {
    const want = await fsp.readFile(join(src, 'big'));
    const f = await fs.open('/big');
    const buf = Buffer.alloc(10_000);
    for (const pos of [0, 1, 4095, 4096, 1_000_000, want.length - 5000]) {
      const n = await f.read(buf, pos);
      expect(n).toBe(Math.min(buf.length, want.length - pos));
      expect(buf.subarray(0, n).equals(want.subarray(pos, pos + n))).toBe(true);
    }
    expect(await f.read(buf, want.length + 100)).toBe(0);
  });

  it('reads holes and unwritten extents as zeros (extents patched with xfs_db)', async () => {
    const copy = join(tmp.path, 'holes.img');
    await exec('cp', ['--sparse=always', img, copy]);
    const m = /0:\[0,(\d+),16,0\]/.exec(await xfsDb(copy, false, 'path /holey', 'p u3.bmx'));
    expect(m).not.toBeNull();
    const start = Number(m![1]);
    // Blocks 0-3 data, 4-7 a hole, 8-11 unwritten, 12-15 a hole before the end of the file.
    await xfsDb(copy, true, 'path /holey', 'write core.nextents 2', 'write u3.bmx[0].blockcount 4', 'write u3.bmx[1].startoff 8', `write u3.bmx[1].startblock ${start + 8}`, 'write u3.bmx[1].blockcount 4', 'write u3.bmx[1].extentflag 1');
    expect(await xfsDb(copy, false, 'path /holey', 'bmap')).toMatch(/data offset 8 startblock \d+ \(\d+\/\d+\) count 4 flag 1/);
    const want = await fsp.readFile(join(src, 'holey'));
    want.fill(0, 4 * BS);
    const v = await FileVolume.open(copy);
    try {
      const hfs = await openXfs(v);
      expect((await readAll(hfs, '/holey', 3000)).equals(want)).toBe(true);
    } finally {
      await v.close();
    }
  });

  const inodeAt = (ino: number): number => diskOf(Math.floor(ino / 2 ** sb.inopblog!)) + (ino % 2 ** sb.inopblog!) * sb.inodesize!;

  /** [startoff, startblock, blockcount] of every data extent of `path`, from xfs_db. */
  async function extentsOf(path: string): Promise<[number, number, number][]> {
    const out = await xfsDb(img, false, `path ${path}`, 'bmap');
    return [...out.matchAll(/data offset (\d+) startblock (\d+) \(\d+\/\d+\) count (\d+) flag 0/g)].map((m) => [Number(m[1]), Number(m[2]), Number(m[3])]);
  }

  /**
   * Patches turning an inode's data fork into a bmap btree: a root of level 1 in the inode with two
   * pointers, to two leaves (written over two blocks of /pad, linked as siblings) holding `recs`
   * ([startoff, startblock, count] each) split in half.
   */
  async function btreePatches(ino: number, recs: [number, number, number][]): Promise<{ patches: { offset: number; bytes: Buffer }[]; root: Buffer; rootMax: number }> {
    const [[, padStart]] = (await extentsOf('/pad')) as [[number, number, number]];
    const pack = ([off, blk, cnt]: [number, number, number]): Buffer => {
      const r = Buffer.alloc(16);
      r.writeBigUInt64BE((BigInt(off) << 9n) | (BigInt(blk) >> 43n), 0);
      r.writeBigUInt64BE(((BigInt(blk) & ((1n << 43n) - 1n)) << 21n) | BigInt(cnt), 8);
      return r;
    };
    const half = Math.ceil(recs.length / 2);
    const NULL = 2n ** 64n - 1n;
    const leaf = (i: number, rs: [number, number, number][]): Buffer => {
      const b = Buffer.alloc(BS);
      b.write('BMA3', 0, 'latin1');
      b.writeUInt16BE(0, 4);
      b.writeUInt16BE(rs.length, 6);
      b.writeBigUInt64BE(i === 0 ? NULL : BigInt(padStart), 8); // leftsib
      b.writeBigUInt64BE(i === 0 ? BigInt(padStart + 1) : NULL, 16); // rightsib
      b.writeBigUInt64BE(BigInt(ino), 56); // owner
      Buffer.concat(rs.map(pack)).copy(b, 72);
      return b;
    };
    const forkSize = sb.inodesize! - 176;
    const rootMax = Math.floor((forkSize - 4) / 16);
    const root = Buffer.alloc(forkSize);
    root.writeUInt16BE(1, 0);
    root.writeUInt16BE(2, 2);
    root.writeBigUInt64BE(BigInt(recs[0]![0]), 4);
    root.writeBigUInt64BE(BigInt(recs[half]![0]), 12);
    root.writeBigUInt64BE(BigInt(padStart), 4 + rootMax * 8);
    root.writeBigUInt64BE(BigInt(padStart + 1), 12 + rootMax * 8);
    const nextents = Buffer.alloc(4);
    nextents.writeUInt32BE(recs.length);
    return {
      root,
      rootMax,
      patches: [
        { offset: inodeAt(ino) + 5, bytes: Buffer.from([3]) }, // di_format: btree
        { offset: inodeAt(ino) + 76, bytes: nextents },
        { offset: inodeAt(ino) + 176, bytes: root },
        { offset: diskOf(padStart), bytes: leaf(0, recs.slice(0, half)) },
        { offset: diskOf(padStart + 1), bytes: leaf(1, recs.slice(half)) },
      ],
    };
  }

  it('reads a file whose extents are in a two-level bmap btree', async () => {
    // /big's one extent cut into 2-block records, with a hole at blocks 300-309.
    const [[, bigStart, bigCount]] = (await extentsOf('/big')) as [[number, number, number]];
    const bigIno = (await fs.stat('/big')).id;
    const recs: [number, number, number][] = [];
    for (let off = 0; off < bigCount; off += 2) if (off < 300 || off >= 310) recs.push([off, bigStart + off, 2]);
    const { patches, root, rootMax } = await btreePatches(bigIno, recs);
    const bfs = await openXfs(new PatchedVolume(vol, patches));
    const want = await fsp.readFile(join(src, 'big'));
    want.fill(0, 300 * BS, 310 * BS);
    expect((await readAll(bfs, '/big', 100_000)).equals(want)).toBe(true);
    // A root claiming a level its children do not have, one deeper than 8, and a pointer past the AGs.
    const at = inodeAt(bigIno) + 176;
    const bad = Buffer.from(root);
    bad.writeUInt16BE(2, 0);
    const lfs = await openXfs(new PatchedVolume(vol, [...patches, { offset: at, bytes: bad }]));
    await expect(readAll(lfs, '/big')).rejects.toThrow(/level 0 below a node of level 2/);
    const tall = Buffer.from(root);
    tall.writeUInt16BE(9, 0);
    const tfs = await openXfs(new PatchedVolume(vol, [...patches, { offset: at, bytes: tall }]));
    await expect(readAll(tfs, '/big')).rejects.toThrow(/root level 9 \(at most 8\)/);
    const far = Buffer.from(root);
    far.writeBigUInt64BE(2n ** 40n, 4 + rootMax * 8);
    const ffs = await openXfs(new PatchedVolume(vol, [...patches, { offset: at, bytes: far }]));
    await expect(readAll(ffs, '/big')).rejects.toThrow(/bmap btree block 1099511627776.*outside/);
  });

  it('lists a node directory whose extents are in a bmap btree', async () => {
    // /d5000's extents cut into 1-block records (data blocks, leaves and free index alike).
    const recs: [number, number, number][] = [];
    for (const [off, blk, cnt] of await extentsOf('/d5000')) for (let i = 0; i < cnt; i++) recs.push([off + i, blk + i, 1]);
    expect(recs.length).toBeGreaterThan(20);
    const { patches } = await btreePatches((await fs.stat('/d5000')).id, recs);
    const bfs = await openXfs(new PatchedVolume(vol, patches));
    expect((await bfs.list('/d5000')).map((e) => e.name).sort()).toEqual((await fsp.readdir(join(src, 'd5000'))).sort());
    expect((await readAll(bfs, '/d5000/ünïcödé-名前-4991')).toString()).toBe('d5000/4991\n');
  });

  describe('damaged', () => {
    it('refuses a superblock with a bad magic (patched file)', async () => {
      const copy = join(tmp.path, 'badsb.img');
      await exec('cp', ['--sparse=always', img, copy]);
      patchFile(copy, 0, Buffer.from('XFSX'));
      const v = await FileVolume.open(copy);
      try {
        await expect(openXfs(v)).rejects.toThrow(FileSystemError);
        await expect(openXfs(v)).rejects.toThrow(/superblock: bad magic/);
      } finally {
        await v.close();
      }
    });

    it('refuses a remote symlink block without its XSLM header', async () => {
      const raw = Buffer.alloc(BS);
      raw.write(LONG_TARGET, 0, 'utf8');
      const dfs = await openXfs(new PatchedVolume(vol, [{ offset: diskOf(symlinkBlock), bytes: raw }]));
      await expect(dfs.readlink('/long-link')).rejects.toThrow(/long-link.*bad magic.*XSLM/);
      const short = Buffer.alloc(12);
      short.write('XSLM', 0, 'latin1');
      short.writeUInt32BE(5, 8); // claims 5 bytes of a 423-byte target
      const sfs = await openXfs(new PatchedVolume(vol, [{ offset: diskOf(symlinkBlock), bytes: short }]));
      await expect(sfs.readlink('/long-link')).rejects.toThrow(/holds 5 bytes/);
    });

    it('reads what a truncated volume holds and refuses blocks past its end', async () => {
      const short = new SliceVolume(vol, 0, 100 * MiB);
      const tfs = await openXfs(short);
      expect((await tfs.stat('/one')).size).toBe(1);
      await expect(compareTree(tfs, src, new Set())).rejects.toThrow(/past the end of the volume/);
    }, 60_000);

    it('survives random damage to its metadata with FileSystemError or FsNotFoundError only', async () => {
      // Targets: the superblock, the inodes of directories, files and links, and directory blocks.
      const targets: { offset: number; length: number }[] = [{ offset: 0, length: 256 }];
      for (const p of ['/', '/d20', '/d150', '/d200', '/d5000', '/big', '/f5000', '/long-link', '/short-link', '/holey']) targets.push({ offset: inodeAt((await fs.stat(p)).id), length: sb.inodesize! });
      for (const d of ['/d150', '/d200', '/d5000']) for (const [, blk] of (await extentsOf(d)).slice(0, 3)) targets.push({ offset: diskOf(blk), length: BS });
      targets.push({ offset: diskOf(symlinkBlock), length: 128 });
      let seed = 12345;
      const rand = (n: number): number => {
        seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
        return seed % n;
      };
      const ops: ((f: FileSystem) => Promise<unknown>)[] = [
        (f) => f.list('/'),
        (f) => f.list('/d20'),
        (f) => f.list('/d150'),
        (f) => f.list('/d200'),
        (f) => f.stat('/d5000/a-longer-entry-name-4999-zzzzzzzzzzzzzzzzzzzzzzzzzzzzz'),
        (f) => f.readlink('/long-link'),
        (f) => f.readlink('/short-link'),
        async (f) => {
          for (const p of ['/big', '/f5000', '/holey']) {
            const file = await f.open(p);
            const buf = Buffer.alloc(65536);
            await file.read(buf, 0);
            await file.read(buf, Math.max(0, file.size - 1000));
          }
        },
      ];
      const started = Date.now();
      let failures = 0;
      for (let round = 0; round < 300; round++) {
        const t = targets[rand(targets.length)]!;
        const patches = Array.from({ length: 1 + rand(8) }, () => ({ offset: t.offset + rand(t.length), bytes: Buffer.from([rand(256)]) }));
        const v = new PatchedVolume(vol, patches);
        for (const op of ops) {
          try {
            await op(await openXfs(v));
          } catch (e) {
            failures++;
            if (!(e instanceof FileSystemError || e instanceof FsNotFoundError)) throw new Error(`round ${round}: ${String(e)}`, { cause: e });
          }
        }
      }
      expect(failures).toBeGreaterThan(0);
      expect(Date.now() - started).toBeLessThan(60_000);
    }, 120_000);

    it('refuses impossible geometry', async () => {
      const agcount = Buffer.alloc(4);
      agcount.writeUInt32BE(1000);
      await expect(openXfs(new PatchedVolume(vol, [{ offset: 88, bytes: agcount }]))).rejects.toThrow(/allocation groups/);
      await expect(openXfs(new PatchedVolume(vol, [{ offset: 120, bytes: Buffer.from([20]) }]))).rejects.toThrow(/block size/);
    });

    it('gives a clear error for an extent past the end of the file system (xfs_db)', async () => {
      const copy = join(tmp.path, 'badext.img');
      await exec('cp', ['--sparse=always', img, copy]);
      await xfsDb(copy, true, 'path /f5000', `write u3.bmx[0].startblock ${3 * 2 ** sb.agblklog! + sb.agblocks! - 1}`);
      await xfsDb(copy, true, 'path /big', `write u3.bmx[0].startblock ${5 * 2 ** sb.agblklog!}`);
      await xfsDb(copy, true, 'path /one', 'write core.size 99999999999');
      const v = await FileVolume.open(copy);
      try {
        const dfs = await openXfs(v);
        await expect(readAll(dfs, '/f5000')).rejects.toThrow(/f5000.*lies outside the file system/);
        await expect(readAll(dfs, '/big')).rejects.toThrow(FileSystemError);
        // A size far past the one block: the rest reads as a hole, in bounded pieces.
        const f = await dfs.open('/one');
        const buf = Buffer.alloc(8192);
        expect(await f.read(buf, 0)).toBe(8192);
        expect(buf[0]).toBe(0x78);
        expect(buf.subarray(1).every((b) => b === 0)).toBe(true);
        expect(await f.read(buf, 99999999990)).toBe(9);
      } finally {
        await v.close();
      }
    });

    it('gives a clear error for a directory entry pointing at no inode, and a bad directory block', async () => {
      const d20 = (await fs.stat('/d20')).id;
      const d150 = await fs.stat('/d150');
      const blk = /0:\[0,(\d+),1,0\]/.exec(await xfsDb(img, false, 'path /d150', 'p u3.bmx'))!;
      const v1 = new PatchedVolume(vol, [{ offset: inodeAt(d20) + 176 + 6 + 3 + 'file-0'.length + 1, bytes: Buffer.from([0x7f, 0xff, 0xff, 0xff]) }]);
      const f1 = await openXfs(v1);
      await expect(f1.list('/d20')).rejects.toThrow(FileSystemError);
      const v2 = new PatchedVolume(vol, [{ offset: diskOf(Number(blk[1])), bytes: Buffer.from('JUNK') }]);
      await expect((await openXfs(v2)).list('/d150')).rejects.toThrow(/d150.*bad magic/);
      const v3 = new PatchedVolume(vol, [{ offset: inodeAt(d150.id), bytes: Buffer.from('NO') }]);
      await expect((await openXfs(v3)).stat('/d150')).rejects.toThrow(/inode.*bad magic/);
      // A data block whose entries run off its end.
      const v4 = new PatchedVolume(vol, [{ offset: diskOf(Number(blk[1])) + 64 + 8, bytes: Buffer.from([250]) }]);
      await expect((await openXfs(v4)).list('/d150')).rejects.toThrow(FileSystemError);
    });
  });
});

describe('XFS v5 with large extent counts (nrext64)', () => {
  it('reads the 64-bit extent count', async () => {
    const img = join(tmp.path, 'nrext64.img');
    try {
      await makeImage(img, proto, ['-i', 'nrext64=1']);
    } catch (e) {
      console.warn(`skipping nrext64: ${(e as Error).message}`);
      return;
    }
    expect(await xfsDb(img, false, 'version')).toContain('NREXT64');
    const v = await FileVolume.open(img);
    try {
      const fs = await openXfs(v);
      // The remote symlink of mkfs.xfs 6.1 is headerless (see above): refused, or read when mkfs is fixed.
      const link: unknown = await fs.readlink('/long-link').catch((e: unknown) => e);
      expect(link === LONG_TARGET || link instanceof FileSystemError).toBe(true);
      for (const p of ['big', 'f5000', 'holey', 'deep/level-0/level-1/level-2/level-3/level-4/level-5/level-6/level-7/level-8/level-9/level-10/level-11/level-12/level-13/level-14/level-15/level-16/level-17/level-18/level-19/level-20/level-21/level-22/level-23/level-24/level-25/level-26/level-27/level-28/level-29/bottom.txt']) {
        expect((await readAll(fs, '/' + p)).equals(await fsp.readFile(join(src, p)))).toBe(true);
      }
      for (const d of ['d20', 'd150', 'd200', 'd5000']) expect((await fs.list('/' + d)).map((e) => e.name).sort()).toEqual((await fsp.readdir(join(src, d))).sort());
    } finally {
      await v.close();
      await fsp.rm(img);
    }
  }, 120_000);
});

describe('XFS v4', () => {
  it('reads a crc=0 file system with 8 KiB directory blocks', async () => {
    const img = join(tmp.path, 'v4.img');
    try {
      await makeImage(img, proto, ['-m', 'crc=0', '-n', 'size=8192']);
    } catch (e) {
      // mkfs.xfs builds without v4 support refuse crc=0; nothing to test then.
      console.warn(`skipping XFS v4: ${(e as Error).message}`);
      return;
    }
    expect(await xfsDb(img, false, 'version')).not.toMatch(/CRC/);
    const v = await FileVolume.open(img);
    try {
      const fs = await openXfs(v);
      expect(await compareTree(fs, src, new Set())).toBeGreaterThan(5400);
      expect(await fs.stat('/perm.txt')).toMatchObject({ mode: 0o100640, uid: 1234, gid: 99 });
    } finally {
      await v.close();
      await fsp.rm(img);
    }
  }, 180_000);
});
