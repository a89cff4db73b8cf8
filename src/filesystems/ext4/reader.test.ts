// The ext2/3/4 reader against images mke2fs populated from a directory (mkfs.ext4 -d; no mount
// needed): ext4 with 4 KiB and 1 KiB blocks, 64bit, inline_data, no extents (indirect blocks), ext3
// and ext2, each checked byte for byte against the source tree, with e2fsck -D building the htree
// of the 3000-entry directory and debugfs as a second witness. Damage is made with debugfs -w or
// by patching bytes.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { FileSystemError, FileVolume, FsNotFoundError, type FileSystem, type Volume } from '../types.js';
import { isExt, openExt4 } from './reader.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const LONG_TARGET = '/' + 'a-rather-long-target-segment/'.repeat(5) + 'end';
const SPARSE_SIZE = 300 * MiB;
const SPARSE_BITS: [number, string][] = [
  [0, 'start'],
  [123 * MiB + 17, 'middle'],
  [SPARSE_SIZE - 3, 'end'],
];

async function debugfs(img: string, cmd: string, write = false): Promise<string> {
  const args = write ? ['-w', '-R', cmd, img] : ['-R', cmd, img];
  return (await exec('debugfs', args)).stdout;
}

async function buildSource(root: string): Promise<void> {
  const w = (p: string, data: Buffer | string): Promise<void> => fsp.writeFile(join(root, p), data);
  await w('empty', '');
  await w('one', 'x');
  await w('f50', randomBytes(50));
  await w('f100', randomBytes(100));
  await w('f4k', randomBytes(4096));
  await w('f5000', randomBytes(5000));
  await w('big', randomBytes(MiB));
  await w('secret', 'for one user\n');
  await fsp.chmod(join(root, 'secret'), 0o600);
  await fsp.chown(join(root, 'secret'), 1234, 4321);
  await w('héllo-wörld-日本語.txt', 'unicode\n');
  await fsp.link(join(root, 'f4k'), join(root, 'hardlink'));
  // Many extents (a block every other block): an extent tree deeper than the inode.
  const frag = await fsp.open(join(root, 'fragmented'), 'w');
  for (let i = 0; i < 1500; i++) await frag.write(randomBytes(1024), 0, 1024, i * 2048);
  await frag.close();
  const sparse = await fsp.open(join(root, 'sparse'), 'w');
  await sparse.truncate(SPARSE_SIZE);
  for (const [at, text] of SPARSE_BITS) await sparse.write(Buffer.from(text), 0, text.length, at);
  await sparse.close();
  await fsp.mkdir(join(root, 'small-dir'));
  await w('small-dir/a', 'a\n');
  await w('small-dir/b', 'b\n');
  await fsp.mkdir(join(root, 'd3000'));
  for (let i = 0; i < 3000; i++) await w(join('d3000', i % 7 === 0 ? `ünïcödé-名前-${i}` : `entry-${i}-${'z'.repeat(i % 40)}`), `${i}\n`);
  let deep = join(root, 'deep');
  for (let i = 0; i < 30; i++) deep = join(deep, `level-${i}`);
  await fsp.mkdir(deep, { recursive: true });
  await fsp.writeFile(join(deep, 'bottom.txt'), 'the bottom\n');
  await fsp.symlink('small-dir/a', join(root, 'fast-link'));
  await fsp.symlink(LONG_TARGET, join(root, 'slow-link'));
  await exec('mkfifo', [join(root, 'fifo')]);
}

/** Every path under `root` (relative, '/'-prefixed), directories included. */
async function walk(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(join(root, rel), { withFileTypes: true })) {
    const p = `${rel}/${e.name}`;
    out.push(p);
    if (e.isDirectory()) out.push(...(await walk(root, p)));
  }
  return out;
}

class CountingVolume implements Volume {
  reads = 0;
  bytes = 0;
  constructor(private readonly base: Volume) {}
  get size(): number {
    return this.base.size;
  }
  read(buf: Buffer, offset: number): Promise<void> {
    this.reads++;
    this.bytes += buf.length;
    return this.base.read(buf, offset);
  }
}

async function readAll(fs: FileSystem, path: string): Promise<Buffer> {
  const f = await fs.open(path);
  const buf = Buffer.alloc(f.size);
  let done = 0;
  // Odd-sized reads at odd positions: runs that cross blocks and extents.
  while (done < f.size) {
    const n = await f.read(buf.subarray(done, Math.min(f.size, done + 77777)), done);
    expect(n).toBeGreaterThan(0);
    done += n;
  }
  expect(await f.read(Buffer.alloc(10), f.size)).toBe(0);
  return buf;
}

let work: { path: string; cleanup(): Promise<void> };
let src: string;

beforeAll(async () => {
  work = await tempDir('bulwark-ext4-');
  src = join(work.path, 'src');
  await fsp.mkdir(src);
  await buildSource(src);
});
afterAll(async () => {
  await work.cleanup();
});

async function makeImage(name: string, mkfsArgs: string[], size = '64M'): Promise<string> {
  const img = join(work.path, `${name}.img`);
  await exec('mkfs.ext4', ['-q', '-F', ...mkfsArgs, '-d', src, img, size]);
  // -D: rebuild directories, which indexes the big one (an htree).
  await exec('e2fsck', ['-fyD', img]).catch((e: { code?: number }) => {
    if (e.code !== 1) throw e;
  });
  return img;
}

const IMAGES: [string, string[], string][] = [
  ['ext4-4k', ['-b', '4096'], 'ext4'],
  ['ext4-1k', ['-b', '1024'], 'ext4'],
  // 64 KiB blocks: 3000 one-block files need a bigger (sparse) image.
  ['ext4-64k', ['-b', '65536'], 'ext4'],
  ['ext4-metabg', ['-b', '1024', '-O', 'meta_bg,^resize_inode'], 'ext4'],
  ['ext4-64bit', ['-b', '4096', '-O', '64bit,metadata_csum'], 'ext4'],
  ['ext4-inline', ['-b', '4096', '-O', 'inline_data'], 'ext4'],
  ['ext4-noextent', ['-b', '4096', '-O', '^extent,^64bit,^flex_bg'], 'ext4'],
  ['ext3-1k', ['-t', 'ext3', '-b', '1024'], 'ext3'],
  ['ext2', ['-t', 'ext2', '-b', '4096'], 'ext2'],
];

describe.each(IMAGES)('%s', (name, args, type) => {
  let img: string;
  let vol: FileVolume;
  let fs: FileSystem;
  beforeAll(async () => {
    img = await makeImage(name, args, name === 'ext4-64k' ? '512M' : '64M');
    vol = await FileVolume.open(img);
    fs = await openExt4(vol);
  });
  afterAll(async () => {
    await vol?.close();
  });

  it('is recognised and typed', async () => {
    const sb = Buffer.alloc(1024);
    await vol.read(sb, 1024);
    expect(isExt(sb)).toBe(true);
    expect(fs.type).toBe(type);
    const root = await fs.stat('/');
    expect(root.type).toBe('dir');
    expect(root.id).toBe(2);
  });

  it('lists, stats and reads every entry as the source has it', async () => {
    for (const rel of await walk(src)) {
      const st = await fsp.lstat(join(src, rel));
      const e = await fs.stat(rel);
      expect(e.mode, rel).toBe(st.mode);
      expect(e.uid, rel).toBe(st.uid);
      expect(e.gid, rel).toBe(st.gid);
      expect(Math.floor((e.mtimeMs ?? 0) / 1000), rel).toBe(Math.floor(st.mtimeMs / 1000));
      if (st.isDirectory()) {
        const names = (await fs.list(rel)).map((x) => x.name).sort();
        expect(names, rel).toEqual((await fsp.readdir(join(src, rel))).sort());
        expect(e.type).toBe('dir');
      } else if (st.isSymbolicLink()) {
        expect(e.type).toBe('symlink');
        expect(await fs.readlink(rel)).toBe(await fsp.readlink(join(src, rel)));
        expect(e.size).toBe(st.size);
      } else if (st.isFile()) {
        expect(e.type).toBe('file');
        expect(e.size, rel).toBe(st.size);
        if (rel === '/sparse') continue;
        expect((await readAll(fs, rel)).equals(await fsp.readFile(join(src, rel))), rel).toBe(true);
      } else {
        expect(e.type).toBe('other');
      }
    }
  });

  it('lists the root with . and .. hidden, and a hard link as the same inode', async () => {
    const names = (await fs.list('/')).map((x) => x.name);
    expect(names).not.toContain('.');
    expect(names).not.toContain('..');
    expect(names.sort()).toEqual([...(await fsp.readdir(src)), 'lost+found'].sort());
    expect((await fs.stat('/hardlink')).id).toBe((await fs.stat('/f4k')).id);
    expect((await fs.list('/d3000')).length).toBe(3000);
  });

  it('agrees with debugfs on mode, owner and size', async () => {
    const out = await debugfs(img, 'stat /secret');
    const e = await fs.stat('/secret');
    expect(out).toMatch(new RegExp(`Mode:\\s+0${(e.mode! & 0o7777).toString(8)}\\b`));
    expect(out).toMatch(/User:\s+1234\s+Group:\s+4321/);
    expect(out).toMatch(new RegExp(`Size: ${e.size}\\b`));
    expect(e.mode).toBe(0o100600);
  });

  it('reads the 300 MiB sparse file by its holes, touching little of the volume', async () => {
    const counting = new CountingVolume(vol);
    const cfs = await openExt4(counting);
    const f = await cfs.open('/sparse');
    expect(f.size).toBe(SPARSE_SIZE);
    for (const [at, text] of SPARSE_BITS) {
      const b = Buffer.alloc(text.length + 6);
      const n = await f.read(b, at - 3 < 0 ? at : at - 3);
      const got = b.subarray(0, n).toString('latin1');
      expect(got).toContain(text);
    }
    const chunk = Buffer.alloc(4 * MiB);
    let zeros = true;
    for (let pos = 4 * MiB; pos < 120 * MiB; pos += chunk.length) {
      expect(await f.read(chunk, pos)).toBe(chunk.length);
      if (chunk.some((x) => x !== 0)) zeros = false;
    }
    expect(zeros).toBe(true);
    expect(counting.bytes).toBeLessThan(2 * MiB);
    expect(counting.reads).toBeLessThan(200);
  });

  it('resolves deep paths and refuses what is not there', async () => {
    const deep = '/deep/' + Array.from({ length: 30 }, (_, i) => `level-${i}`).join('/') + '/bottom.txt';
    expect((await readAll(fs, deep)).toString()).toBe('the bottom\n');
    await expect(fs.stat('/nope')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.open('/small-dir')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.list('/f4k')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/f4k/x')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/fast-link/b')).rejects.toThrow(/symlink/);
    await expect(fs.readlink('/f4k')).rejects.toBeInstanceOf(FsNotFoundError);
  });
});

describe('ext4 structures', () => {
  it('stores small files and directories inline with inline_data, and htree indexes d3000', async () => {
    const img = join(work.path, 'ext4-inline.img');
    expect(await debugfs(img, 'stat /f100')).toMatch(/Size of inline data: 100/);
    expect(await debugfs(img, 'stat /small-dir')).toMatch(/Size of inline data/);
    expect(await debugfs(img, 'htree /d3000')).toMatch(/Root node dump/);
  });

  it('gives a fragmented file a deeper extent tree', async () => {
    // ETB0 and ETB1: index blocks at two levels below the inode (depth 2).
    expect(await debugfs(join(work.path, 'ext4-1k.img'), 'stat /fragmented')).toMatch(/\(ETB1\)/);
  });
});

/** A fresh copy of an image to damage. */
async function copyImage(name: string): Promise<string> {
  const to = join(work.path, `${name}-damaged-${randomBytes(4).toString('hex')}.img`);
  await fsp.copyFile(join(work.path, `${name}.img`), to);
  return to;
}

async function withFs<T>(img: string, fn: (fs: FileSystem) => Promise<T>): Promise<T> {
  const vol = await FileVolume.open(img);
  try {
    return await fn(await openExt4(vol));
  } finally {
    await vol.close();
  }
}

/** debugfs imap: the byte offset of an inode in the image. */
async function inodeOffset(img: string, path: string): Promise<number> {
  const out = await debugfs(img, `imap ${path}`);
  const m = /located at block (\d+), offset 0x([0-9a-f]+)/.exec(out);
  const bs = Number(/Block size:\s+(\d+)/.exec(await debugfs(img, 'stats'))?.[1]);
  if (!m || !bs) throw new Error(`imap: ${out}`);
  return Number(m[1]) * bs + parseInt(m[2]!, 16);
}

describe('damage', () => {
  it('refuses a superblock with a bad magic', async () => {
    const img = await copyImage('ext4-4k');
    patchFile(img, 1024 + 0x38, Buffer.from([0x00, 0x00]));
    const vol = await FileVolume.open(img);
    try {
      await expect(openExt4(vol)).rejects.toThrow(/bad magic/);
      await expect(openExt4(vol)).rejects.toBeInstanceOf(FileSystemError);
    } finally {
      await vol.close();
    }
  });

  it('refuses a garbage extent header', async () => {
    const img = await copyImage('ext4-4k');
    await debugfs(img, 'sif /f4k block[0] 12345', true);
    await withFs(img, async (fs) => {
      await expect(readAll(fs, '/f4k')).rejects.toThrow(/extent header magic/);
    });
  });

  it('refuses an extent past the end of the file system', async () => {
    const img = await copyImage('ext4-4k');
    await debugfs(img, 'sif /f4k block[5] 0x7fffff00', true);
    await withFs(img, async (fs) => {
      await expect(readAll(fs, '/f4k')).rejects.toThrow(/outside the file system/);
    });
  });

  it('refuses an indirect block pointer past the end', async () => {
    const img = await copyImage('ext2');
    await debugfs(img, 'sif /big block[IND] 0x7fffff00', true);
    await withFs(img, async (fs) => {
      await expect(readAll(fs, '/big')).rejects.toBeInstanceOf(FileSystemError);
    });
  });

  it('refuses an extent tree deeper than allowed, or whose levels disagree', async () => {
    const img = await copyImage('ext4-1k');
    const at = await inodeOffset(img, '/fragmented');
    patchFile(img, at + 0x28 + 6, Buffer.from([9, 0]));
    await withFs(img, async (fs) => {
      await expect(readAll(fs, '/fragmented')).rejects.toThrow(/depth 9/);
    });
    patchFile(img, at + 0x28 + 6, Buffer.from([1, 0]));
    await withFs(img, async (fs) => {
      await expect(readAll(fs, '/fragmented')).rejects.toThrow(/depth \d+ where 0 was expected/);
    });
  });

  it('refuses a directory entry with record length 0', async () => {
    const img = await copyImage('ext4-4k');
    const blocks = (await debugfs(img, 'blocks /deep')).trim().split(/\s+/).map(Number);
    patchFile(img, blocks[0]! * 4096 + 12 + 4, Buffer.from([0, 0]));
    await withFs(img, async (fs) => {
      await expect(fs.list('/deep')).rejects.toThrow(/record length 0/);
    });
  });

  it('refuses a directory of absurd size', async () => {
    const img = await copyImage('ext2');
    await debugfs(img, 'sif /deep size 0x10000000000', true);
    await withFs(img, async (fs) => {
      await expect(fs.list('/deep')).rejects.toThrow(/more than \d+ blocks/);
    });
  });

  it('reads an uninitialised extent as zeros', async () => {
    const img = await copyImage('ext4-4k');
    const at = await inodeOffset(img, '/f5000');
    const len = Buffer.alloc(2);
    const vol = await FileVolume.open(img);
    await vol.read(len, at + 0x28 + 12 + 4);
    await vol.close();
    len.writeUInt16LE(len.readUInt16LE(0) + 32768);
    patchFile(img, at + 0x28 + 12 + 4, len);
    await withFs(img, async (fs) => {
      const b = await readAll(fs, '/f5000');
      expect(b.length).toBe(5000);
      expect(b.every((x) => x === 0)).toBe(true);
    });
  });
});
