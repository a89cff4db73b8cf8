// The NTFS reader against an image mkntfs made and ntfs-3g populated (FUSE mount, compression on):
// resident and non-resident files, a sparse file, LZNT1-compressed files, a fragmented file, a
// 2000-entry directory (a multi-level index B+tree), Unicode names, a deep path, a file with so many
// hard links that its attributes spill into extension records ($ATTRIBUTE_LIST), names differing
// only in case, an Interix symlink (what ntfs-3g makes) and a named stream (ignored). Checked byte for
// byte against the source files; then damaged on purpose (fix-ups, a runlist, the boot sector).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { FileSystemError, FileVolume, FsNotFoundError, type FileSystem, type FsFile } from '../types.js';
import { isNtfs, openNtfs } from './reader.js';

const exec = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const UNICODE = 'héllo-wörld-日本語-Ωμέγα.txt';
const DEEP = Array.from({ length: 25 }, (_, i) => `level-${i}`).join('/');
const LINKS = 40;

async function mounted(mnt: string): Promise<boolean> {
  return (await fsp.readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === mnt);
}

/** Mounts `img` at `mnt` with ntfs-3g in the foreground; resolves with the process once mounted. */
async function mount(img: string, mnt: string): Promise<ChildProcess> {
  const child = spawn('ntfs-3g', ['-o', 'compression,no_detach', img, mnt], { stdio: 'ignore' });
  for (let i = 0; i < 200; i++) {
    if (await mounted(mnt)) return child;
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill();
  throw new Error('ntfs-3g did not mount the image');
}

async function unmount(mnt: string, child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
  await exec('umount', [mnt]);
  await exited;
}

function symlinkReparse(target: string, relative: boolean): Buffer {
  const t = Buffer.from(target, 'utf16le');
  const head = Buffer.alloc(20);
  head.writeUInt32LE(0xa000000c, 0);
  head.writeUInt16LE(12 + 2 * t.length, 4);
  head.writeUInt16LE(0, 8); // substitute name
  head.writeUInt16LE(t.length, 10);
  head.writeUInt16LE(t.length, 12); // print name
  head.writeUInt16LE(t.length, 14);
  head.writeUInt32LE(relative ? 1 : 0, 16);
  return Buffer.concat([head, t, t]);
}

function junctionReparse(subst: string, print: string): Buffer {
  const s = Buffer.from(subst + '\0', 'utf16le');
  const p = Buffer.from(print + '\0', 'utf16le');
  const head = Buffer.alloc(16);
  head.writeUInt32LE(0xa0000003, 0);
  head.writeUInt16LE(8 + s.length + p.length, 4);
  head.writeUInt16LE(0, 8);
  head.writeUInt16LE(s.length - 2, 10);
  head.writeUInt16LE(s.length, 12);
  head.writeUInt16LE(p.length - 2, 14);
  return Buffer.concat([head, s, p]);
}

async function setReparse(path: string, data: Buffer): Promise<void> {
  await exec('setfattr', ['-n', 'system.ntfs_reparse_data', '-v', '0x' + data.toString('hex'), path]);
}

/** The tree copied in: relative path → contents (directories implied). */
function sourceFiles(): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  m.set('empty', Buffer.alloc(0));
  m.set('one', Buffer.from('x'));
  m.set('f700', randomBytes(700));
  m.set('f100k', randomBytes(100 * KiB));
  m.set('big', randomBytes(3 * MiB));
  m.set(UNICODE, Buffer.from('unicode\n'));
  m.set(`deep/${DEEP}/bottom.txt`, Buffer.from('the bottom\n'));
  for (let i = 0; i < 2000; i++) m.set(`d2000/file-${String(i).padStart(4, '0')}${i % 9 === 0 ? '-ünï-名前' : ''}`, Buffer.from(`d2000/${i}\n`));
  const text = Buffer.from(Array.from({ length: 20000 }, (_, i) => `line ${i} of a compressible text file\n`).join(''));
  m.set('comp/text', text);
  m.set('comp/random', randomBytes(200 * KiB + 123));
  m.set('comp/mixed', Buffer.concat([text.subarray(0, 70 * KiB), Buffer.alloc(200 * KiB), randomBytes(64 * KiB), text.subarray(0, 33 * KiB + 7)]));
  m.set('comp/small', Buffer.from('tiny compressed-directory file\n'));
  m.set('cases/Case', Buffer.from('upper\n'));
  m.set('cases/case', Buffer.from('lower\n'));
  return m;
}

let dir: { path: string; cleanup(): Promise<void> };
let img: string;
let vol: FileVolume;
let fs: FileSystem;
let files: Map<string, Buffer>;
let sparse: Buffer;
let fragmented: Buffer;

/** The number of runs of the unnamed $DATA of a file as ntfsinfo shows them. */
async function dataRuns(which: string[]): Promise<number> {
  const out = (await exec('ntfsinfo', [...which, '-v', img])).stdout;
  const data = out.split('Dumping attribute ').find((s) => s.startsWith('$DATA')) ?? '';
  return data.split('Runlist:')[1]?.match(/^\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+0x[0-9a-f]+$/gim)?.length ?? 0;
}

async function readAll(f: FsFile, chunk: number): Promise<Buffer> {
  const out = Buffer.alloc(f.size);
  for (let pos = 0; pos < f.size; pos += chunk) {
    const n = await f.read(out.subarray(pos, Math.min(f.size, pos + chunk)), pos);
    expect(n).toBe(Math.min(chunk, f.size - pos));
  }
  expect(await f.read(Buffer.alloc(10), f.size)).toBe(0);
  return out;
}

beforeAll(async () => {
  dir = await tempDir('bulwark-ntfs-');
  img = join(dir.path, 'ntfs.img');
  const mnt = join(dir.path, 'mnt');
  await fsp.mkdir(mnt);
  await exec('truncate', ['-s', '64M', img]);
  await exec('mkntfs', ['-q', '-F', '-f', '-L', 'BULWARK-TEST', img]);
  files = sourceFiles();
  const child = await mount(img, mnt);
  try {
    await fsp.mkdir(join(mnt, 'comp'));
    await exec('setfattr', ['-n', 'system.ntfs_attrib_be', '-v', '0x00000800', join(mnt, 'comp')]);
    // Fragment the free space: fill the volume (the MFT zone too), then free every other filler, so
    // that the big files and the growing $MFT itself are written into holes.
    await fsp.mkdir(join(mnt, 'frag'));
    const filler = randomBytes(256 * KiB);
    let fillers = 0;
    for (;;) {
      try {
        await fsp.writeFile(join(mnt, 'frag', `p${fillers}`), filler);
        fillers++;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
        await fsp.rm(join(mnt, 'frag', `p${fillers}`), { force: true });
        break;
      }
    }
    for (let i = 0; i < fillers; i += 2) await fsp.rm(join(mnt, 'frag', `p${i}`));
    for (const [p, data] of files) {
      await fsp.mkdir(join(mnt, p, '..'), { recursive: true });
      await fsp.writeFile(join(mnt, p), data);
    }
    fragmented = randomBytes(600 * KiB + 5);
    await fsp.writeFile(join(mnt, 'frag', 'fragmented'), fragmented);
    // Sparse: a 10 MiB file with a few bytes written in the middle and at the end.
    sparse = Buffer.alloc(10 * MiB);
    sparse.write('middle', 5 * MiB + 3);
    sparse.write('end', 10 * MiB - 3);
    const fh = await fsp.open(join(mnt, 'sparse'), 'w');
    await fh.truncate(10 * MiB);
    await fh.write(Buffer.from('middle'), 0, 6, 5 * MiB + 3);
    await fh.write(Buffer.from('end'), 0, 3, 10 * MiB - 3);
    await fh.close();
    // Many hard links with long names: the $FILE_NAMEs overflow the record into extension records.
    await fsp.mkdir(join(mnt, 'links'));
    await fsp.writeFile(join(mnt, 'links', 'target'), 'linked contents\n');
    for (let i = 0; i < LINKS; i++) await fsp.link(join(mnt, 'links', 'target'), join(mnt, 'links', `a-long-hard-link-name-${'x'.repeat(60)}-${i}`));
    await fsp.symlink('d2000/file-0001', join(mnt, 'link'));
    // Windows symlinks and junctions: reparse points set through ntfs-3g's reparse data attribute.
    await fsp.writeFile(join(mnt, 'winlink'), '');
    await setReparse(join(mnt, 'winlink'), symlinkReparse('..\\d2000\\file-0002', true));
    await fsp.mkdir(join(mnt, 'junction'));
    await setReparse(join(mnt, 'junction'), junctionReparse('\\??\\C:\\Windows', 'C:\\Windows'));
    await fsp.writeFile(join(mnt, 'streamy'), 'main stream\n');
    await exec('setfattr', ['-n', 'user.extra', '-v', 'a named stream that is not the file', join(mnt, 'streamy')]);
  } finally {
    await unmount(mnt, child);
  }
  vol = await FileVolume.open(img);
  fs = await openNtfs(vol);
}, 300_000);

afterAll(async () => {
  await vol?.close();
  await dir?.cleanup();
});

describe('NTFS reader', () => {
  it('recognises the boot sector and reads the label', async () => {
    const b = Buffer.alloc(512);
    await vol.read(b, 0);
    expect(isNtfs(b)).toBe(true);
    expect(isNtfs(Buffer.alloc(512))).toBe(false);
    expect(fs.type).toBe('ntfs');
    expect(fs.label).toBe('BULWARK-TEST');
  });

  it('lists the root without the metafiles', async () => {
    const names = (await fs.list('/')).map((e) => e.name).sort();
    expect(names).toEqual(['big', 'cases', 'comp', 'd2000', 'deep', 'empty', 'f100k', 'f700', 'frag', 'junction', 'link', 'links', 'one', 'sparse', 'streamy', 'winlink', UNICODE].sort());
    expect((await fs.stat('/')).type).toBe('dir');
    expect((await fs.stat('/$MFT')).id).toBe(0);
  });

  it('reads every file byte for byte', async () => {
    for (const [p, data] of files) {
      const st = await fs.stat('/' + p);
      expect(st.type, p).toBe('file');
      expect(st.size, p).toBe(data.length);
      const f = await fs.open('/' + p);
      expect(f.size).toBe(data.length);
      const got = await readAll(f, p.startsWith('d2000') ? 4096 : 7777);
      expect(got.equals(data), p).toBe(true);
    }
  });

  it('reads at odd positions across runs and compression units', async () => {
    for (const p of ['big', 'comp/mixed', 'comp/text']) {
      const data = files.get(p)!;
      const f = await fs.open('/' + p);
      for (const pos of [0, 1, 4095, 4096, 65535, 65536, 70 * KiB - 1, data.length - 5000, data.length - 1]) {
        const b = Buffer.alloc(9000);
        const n = await f.read(b, pos);
        expect(n).toBe(Math.min(9000, data.length - pos));
        expect(b.subarray(0, n).equals(data.subarray(pos, pos + n)), `${p} at ${pos}`).toBe(true);
      }
    }
  });

  it('reads a sparse file with zeros in its holes', async () => {
    const f = await fs.open('/sparse');
    expect(f.size).toBe(10 * MiB);
    expect((await readAll(f, 1 * MiB + 17)).equals(sparse)).toBe(true);
  });

  it('reads a fragmented file', async () => {
    const f = await fs.open('/frag/fragmented');
    expect((await readAll(f, 5000)).equals(fragmented)).toBe(true);
    // More than one run (the free space was holed before it was written): the file and $MFT.
    expect(await dataRuns(['-F', '/frag/fragmented'])).toBeGreaterThan(1);
    expect(await dataRuns(['-i', '0'])).toBeGreaterThan(1);
    expect((await fs.list('/frag')).length).toBeGreaterThan(10);
  });

  it('lists a 2000-entry directory (index allocation) and finds entries in it', async () => {
    const want = [...files.keys()].filter((p) => p.startsWith('d2000/')).map((p) => p.slice(6)).sort();
    const got = await fs.list('/d2000');
    expect(got.map((e) => e.name).sort()).toEqual(want);
    expect(got.every((e) => e.type === 'file' && e.size === Buffer.byteLength(`d2000/${e.name.slice(5, 9).replace(/^0+(?=.)/, '')}\n`))).toBe(true);
    for (const name of [want[0]!, want[999]!, want[1998]!, want[1999]!, 'file-0999-ünï-名前']) {
      const st = await fs.stat(`/d2000/${name}`);
      expect(st.name).toBe(name);
    }
    await expect(fs.stat('/d2000/file-2000')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/d2000/file-0000x')).rejects.toBeInstanceOf(FsNotFoundError);
  });

  it('looks names up case-insensitively, an exact match first', async () => {
    expect((await fs.stat('/D2000/FILE-0123')).name).toBe('file-0123');
    expect((await fs.stat('/HÉLLO-WÖRLD-日本語-ΩΜΈΓΑ.TXT')).name).toBe(UNICODE);
    const upper = await fs.stat('/cases/Case');
    const lower = await fs.stat('/cases/case');
    expect(upper.id).not.toBe(lower.id);
    expect((await readAll(await fs.open('/cases/Case'), 100)).toString()).toBe('upper\n');
    expect((await readAll(await fs.open('/cases/case'), 100)).toString()).toBe('lower\n');
    expect((await fs.list('/cases')).map((e) => e.name).sort()).toEqual(['Case', 'case']);
  });

  it('follows a deep path and stats directories', async () => {
    const st = await fs.stat(`/deep/${DEEP}`);
    expect(st.type).toBe('dir');
    expect((await fs.list(`/deep/${DEEP}`)).map((e) => e.name)).toEqual(['bottom.txt']);
    expect((await fs.stat(`/deep/${DEEP}/bottom.txt`)).mtimeMs).toBeGreaterThan(Date.now() - 3600_000);
  });

  it('reads a file whose attributes spill into extension records', async () => {
    const { stdout } = await exec('ntfsinfo', ['-F', '/links/target', img]);
    expect(stdout).toContain('$ATTRIBUTE_LIST');
    const st = await fs.stat('/links/target');
    expect((await readAll(await fs.open('/links/target'), 100)).toString()).toBe('linked contents\n');
    const l = await fs.list('/links');
    expect(l).toHaveLength(LINKS + 1);
    expect(l.every((e) => e.id === st.id && e.size === 16)).toBe(true);
  });

  it('reads an Interix symlink and ignores named streams', async () => {
    const st = await fs.stat('/link');
    expect(st.type).toBe('symlink');
    expect(await fs.readlink('/link')).toBe('d2000/file-0001');
    await expect(fs.readlink('/big')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.open('/link')).rejects.toBeInstanceOf(FsNotFoundError);
    expect((await fs.stat('/streamy')).size).toBe(12);
    expect((await readAll(await fs.open('/streamy'), 100)).toString()).toBe('main stream\n');
  });

  it('reads Windows symlinks and junctions (reparse points)', async () => {
    expect((await fs.stat('/winlink')).type).toBe('symlink');
    expect(await fs.readlink('/winlink')).toBe('../d2000/file-0002');
    expect((await fs.stat('/winlink')).size).toBe(18);
    expect((await fs.stat('/junction')).type).toBe('symlink');
    expect(await fs.readlink('/junction')).toBe('C:\\Windows');
    await expect(fs.list('/junction')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/junction/x')).rejects.toBeInstanceOf(FsNotFoundError);
  });

  it('decompresses LZNT1 files one compression unit at a time', async () => {
    for (const p of ['/comp/text', '/comp/mixed', '/comp/random']) {
      const out = (await exec('ntfsinfo', ['-F', p, '-v', img])).stdout;
      const data = out.split('Dumping attribute ').find((s) => s.startsWith('$DATA')) ?? '';
      expect(data, p).toMatch(/Attribute flags:\s+0x0001/);
      expect(data, p).toMatch(/Compression unit:\s+4/);
    }
    // The compressible file takes far fewer clusters than its size (LZNT1 chunks, not stored units).
    const text = (await exec('ntfsinfo', ['-F', '/comp/text', '-v', img])).stdout;
    const compressed = /Compressed size:\s+(\d+)/.exec(text);
    expect(compressed).not.toBeNull();
    expect(Number(compressed![1])).toBeLessThan(files.get('comp/text')!.length / 2);
    const f = await fs.open('/comp/mixed');
    const b = Buffer.alloc(100 * KiB);
    expect(await f.read(b, 100 * KiB)).toBe(b.length);
    expect(b.equals(files.get('comp/mixed')!.subarray(100 * KiB, 200 * KiB))).toBe(true);
  });

  it('says what is missing or of the wrong kind', async () => {
    await expect(fs.stat('/nope')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.list('/big')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.open('/d2000')).rejects.toBeInstanceOf(FsNotFoundError);
    await expect(fs.stat('/big/x')).rejects.toBeInstanceOf(FsNotFoundError);
  });
});

describe('NTFS reader on damaged images', () => {
  /** The byte offset of MFT record `n` in the image, through $MFT's runlist as ntfsinfo shows it. */
  async function recordAt(n: number): Promise<number> {
    const out = (await exec('ntfsinfo', ['-i', '0', '-v', img])).stdout;
    const data = out.split('Dumping attribute ').find((s) => s.startsWith('$DATA')) ?? '';
    const vcn = Math.floor((n * 1024) / 4096);
    for (const m of (data.split('Runlist:')[1] ?? '').matchAll(/^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)$/gim)) {
      const [v, l, len] = [parseInt(m[1]!, 16), parseInt(m[2]!, 16), parseInt(m[3]!, 16)];
      if (vcn >= v && vcn < v + len) return (l + vcn - v) * 4096 + ((n * 1024) % 4096);
    }
    throw new Error(`record ${n} not in $MFT's runlist`);
  }

  async function damaged(name: string, patch: (copy: string) => Promise<void>): Promise<FileVolume> {
    const copy = join(dir.path, name);
    await fsp.copyFile(img, copy);
    await patch(copy);
    return FileVolume.open(copy);
  }

  async function record(n: number): Promise<[Buffer, number]> {
    const at = await recordAt(n);
    const rec = Buffer.alloc(1024);
    await vol.read(rec, at);
    expect(rec.toString('latin1', 0, 4)).toBe('FILE');
    return [rec, at];
  }

  async function expectFsError(p: Promise<unknown>, re: RegExp): Promise<void> {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(FileSystemError);
    expect((e as Error).message).toMatch(re);
  }

  it('rejects a zeroed boot sector', async () => {
    const v = await damaged('zero-boot.img', async (copy) => patchFile(copy, 0, Buffer.alloc(512)));
    await expectFsError(openNtfs(v), /NTFS boot sector/);
    await v.close();
  });

  it('rejects an MFT record whose fix-up does not match', async () => {
    const id = (await fs.stat('/f100k')).id;
    const [rec, at] = await record(id);
    const v = await damaged('bad-fixup.img', async (copy) => patchFile(copy, at + 1022, Buffer.from([rec[1022]! ^ 0xff, rec[1023]!])));
    const bad = await openNtfs(v);
    await expectFsError(bad.stat('/f100k'), /update sequence mismatch/);
    expect((await bad.stat('/f700')).size).toBe(700);
    await v.close();
    const rootAt = (await record(5))[1];
    const root = await damaged('bad-root.img', async (copy) => patchFile(copy, rootAt + 510, Buffer.from([0x12, 0x34])));
    await expectFsError(openNtfs(root), /MFT record 5/);
    await root.close();
  });

  it('rejects a runlist that points past the end of the volume', async () => {
    const id = (await fs.stat('/big')).id;
    const [rec, at] = await record(id);
    const v = await damaged('bad-runlist.img', async (copy) => {
      let p = rec.readUInt16LE(20);
      while (rec.readUInt32LE(p) !== 0x80) p += rec.readUInt32LE(p + 4);
      expect(rec[p + 8]).toBe(1);
      const mp = p + rec.readUInt16LE(p + 32);
      // One run of 0x300 clusters at cluster 0x7fffff00, then the end.
      patchFile(copy, at + mp, Buffer.from([0x42, 0x00, 0x03, 0x00, 0xff, 0xff, 0x7f, 0x00]));
    });
    const bad = await openNtfs(v);
    await expectFsError(bad.open('/big'), /outside the volume/);
    await v.close();
  });

  it('rejects a directory index block with a bad fix-up', async () => {
    const out = (await exec('ntfsinfo', ['-F', '/d2000', '-v', img])).stdout;
    const m = /\$INDEX_ALLOCATION[\s\S]*?\n\s*0x0\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)/i.exec(out);
    expect(m).not.toBeNull();
    const lcn = parseInt(m![1]!, 16);
    const v = await damaged('bad-indx.img', async (copy) => patchFile(copy, lcn * 4096 + 510, Buffer.from([0xaa, 0x55])));
    const bad = await openNtfs(v);
    await expectFsError(bad.list('/d2000'), /update sequence mismatch/);
    await v.close();
  });

  it('rejects an index whose subnodes loop', async () => {
    // d2000's root holds one entry pointing at an inner node: point that node's first subnode at itself.
    const id = (await fs.stat('/d2000')).id;
    const [rec] = await record(id);
    let p = rec.readUInt16LE(20);
    while (rec.readUInt32LE(p) !== 0x90) p += rec.readUInt32LE(p + 4);
    const hdr = p + rec.readUInt16LE(p + 20) + 16;
    const rootEntry = hdr + rec.readUInt32LE(hdr);
    expect(rec.readUInt16LE(rootEntry + 12) & 1).toBe(1);
    const innerVcn = rec.readBigUInt64LE(rootEntry + rec.readUInt16LE(rootEntry + 8) - 8);
    const out = (await exec('ntfsinfo', ['-F', '/d2000', '-v', img])).stdout;
    const alloc = out.split('Dumping attribute ').find((x) => x.startsWith('$INDEX_ALLOCATION')) ?? '';
    let at = -1;
    for (const m of (alloc.split('Runlist:')[1] ?? '').matchAll(/^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)$/gim)) {
      const [v, l, len] = [parseInt(m[1]!, 16), parseInt(m[2]!, 16), parseInt(m[3]!, 16)];
      if (Number(innerVcn) >= v && Number(innerVcn) < v + len) at = (l + Number(innerVcn) - v) * 4096;
    }
    expect(at).toBeGreaterThan(0);
    const raw = Buffer.alloc(4096);
    await vol.read(raw, at);
    expect(raw.toString('latin1', 0, 4)).toBe('INDX');
    const fixed = Buffer.from(raw);
    const usa = fixed.readUInt16LE(4);
    for (let i = 0; i < 8; i++) fixed.writeUInt16LE(fixed.readUInt16LE(usa + 2 + 2 * i), i * 512 + 510);
    let target = -1;
    for (let e = 24 + fixed.readUInt32LE(24); ; e += fixed.readUInt16LE(e + 8)) {
      const len = fixed.readUInt16LE(e + 8);
      const flags = fixed.readUInt16LE(e + 12);
      const sub = e + len - 8;
      if (flags & 1 && sub % 512 <= 502) {
        target = sub;
        break;
      }
      if (flags & 2) break;
    }
    expect(target).toBeGreaterThan(0);
    const self = Buffer.alloc(8);
    self.writeBigUInt64LE(innerVcn);
    const v = await damaged('index-loop.img', async (copy) => patchFile(copy, at + target, self));
    const bad = await openNtfs(v);
    await expectFsError(bad.list('/d2000'), /reached twice/);
    await v.close();
  });

  it('rejects an extension record that belongs to another file', async () => {
    const id = (await fs.stat('/links/target')).id;
    let ext = -1;
    let extRec: Buffer = Buffer.alloc(0);
    let extAt = 0;
    for (let n = id + 1; n < id + 400 && ext < 0; n++) {
      const [r, a] = await record(n).catch(() => [Buffer.alloc(1024), 0] as [Buffer, number]);
      if (r.toString('latin1', 0, 4) === 'FILE' && Number(r.readBigUInt64LE(32) & 0xffffffffffffn) === id) [ext, extRec, extAt] = [n, r, a];
    }
    expect(ext).toBeGreaterThan(0);
    const other = Buffer.from(extRec.subarray(32, 40));
    other.writeUInt32LE(id + 1, 0);
    const v = await damaged('bad-extension.img', async (copy) => patchFile(copy, extAt + 32, other));
    const bad = await openNtfs(v);
    await expectFsError(bad.open('/links/target'), /does not belong/);
    await v.close();
  });

  it('rejects LZNT1 data that refers before its chunk', async () => {
    const out = (await exec('ntfsinfo', ['-F', '/comp/text', '-v', img])).stdout;
    const data = out.split('Dumping attribute ').find((x) => x.startsWith('$DATA')) ?? '';
    const m = /^\s+0x0\s+0x([0-9a-f]+)\s+0x[0-9a-f]+$/im.exec(data.split('Runlist:')[1] ?? '');
    expect(m).not.toBeNull();
    const v = await damaged('bad-lznt1.img', async (copy) => patchFile(copy, parseInt(m![1]!, 16) * 4096, Buffer.alloc(64, 0xff)));
    const bad = await openNtfs(v);
    const f = await bad.open('/comp/text');
    await expectFsError(f.read(Buffer.alloc(100), 0), /refers before its start/);
    // Other compression units still read.
    const b = Buffer.alloc(1000);
    expect(await f.read(b, 64 * KiB)).toBe(1000);
    expect(b.equals(files.get('comp/text')!.subarray(64 * KiB, 64 * KiB + 1000))).toBe(true);
    await v.close();
  });
});
