import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp, type Dirent } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { BulwarkError } from '../util/errors.js';
import type { Handle } from './backend.js';
import { LocalBackend } from './local.js';
import { backendSuite } from './testing/suite.js';

function object(size: number): { h: Handle; data: Buffer } {
  const data = randomBytes(size);
  return { h: { type: 'data', name: createHash('sha256').update(data).digest('hex') }, data };
}

function dataPath(repo: string, name: string): string {
  return join(repo, 'data', name.slice(0, 2), name);
}

/** Every .tmp- file anywhere in the repository. */
async function tempFiles(repo: string): Promise<string[]> {
  const entries = await fsp.readdir(repo, { recursive: true });
  return entries.filter((e) => e.split('/').pop()!.startsWith('.tmp-'));
}

backendSuite('LocalBackend', async () => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bulwark-local-'));
  return { backend: new LocalBackend(join(dir, 'repo')), cleanup: () => fsp.rm(dir, { recursive: true, force: true }) };
});

describe('LocalBackend on disk', () => {
  let dir: string;
  let repo: string;
  let b: LocalBackend;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'bulwark-local-'));
    repo = join(dir, 'repo');
    b = new LocalBackend(repo);
    await b.create();
  });

  afterEach(async () => {
    vi.restoreAllMocks();
    await b.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('lays out the repository as documented, folders private', async () => {
    const top = (await fsp.readdir(repo)).sort();
    expect(top).toEqual(['data', 'index', 'keys', 'locks', 'notes', 'snapshots']);
    const subs = await fsp.readdir(join(repo, 'data'));
    expect(subs.length).toBe(256);
    expect(subs).toContain('00');
    expect(subs).toContain('ff');
    for (const d of [repo, join(repo, 'keys'), join(repo, 'data'), join(repo, 'data', 'a7')]) {
      expect((await fsp.stat(d)).mode & 0o777, d).toBe(0o700);
    }
    const o = object(10);
    await b.save(o.h, o.data);
    await b.save({ type: 'config', name: '' }, Buffer.from('c'));
    await b.save({ type: 'snapshots', name: o.h.name }, o.data);
    expect((await fsp.readFile(dataPath(repo, o.h.name))).equals(o.data)).toBe(true);
    expect((await fsp.readFile(join(repo, 'config'))).toString()).toBe('c');
    expect((await fsp.readFile(join(repo, 'snapshots', o.h.name))).equals(o.data)).toBe(true);
  });

  it('writes objects read-only and leaves no temp files', async () => {
    const objects = Array.from({ length: 20 }, (_, i) => object(100 * i));
    await Promise.all(objects.map((o) => b.save(o.h, o.data)));
    await b.save({ type: 'config', name: '' }, Buffer.from('c'));
    for (const o of objects) expect((await fsp.stat(dataPath(repo, o.h.name))).mode & 0o777).toBe(0o444);
    expect((await fsp.stat(join(repo, 'config'))).mode & 0o777).toBe(0o444);
    expect(await tempFiles(repo)).toEqual([]);
  });

  it('fsyncs the file before the rename and the folder after it', async () => {
    const o = object(1000);
    const events: string[] = [];
    const fdPath = new Map<number, string>();
    const realOpen = fsp.open.bind(fsp);
    vi.spyOn(fsp, 'open').mockImplementation(async (...args: Parameters<typeof fsp.open>) => {
      const fh = await realOpen(...args);
      fdPath.set(fh.fd, String(args[0]));
      return fh;
    });
    const probe = await realOpen(repo, 'r');
    const proto = Object.getPrototypeOf(probe) as { sync(this: { fd: number }): Promise<void> };
    await probe.close();
    const realSync = proto.sync;
    vi.spyOn(proto, 'sync').mockImplementation(function (this: { fd: number }) {
      const path = fdPath.get(this.fd) ?? '?';
      events.push(`sync ${path.split('/').pop()!.startsWith('.tmp-') ? 'temp file' : path}`);
      return realSync.call(this);
    });
    const realRename = fsp.rename.bind(fsp);
    vi.spyOn(fsp, 'rename').mockImplementation(async (from, to) => {
      events.push('rename');
      return realRename(from, to);
    });
    await b.save(o.h, o.data);
    expect(events).toEqual(['sync temp file', 'rename', `sync ${join(repo, 'data', o.h.name.slice(0, 2))}`]);
  });

  it('removes the temp file when a save fails, and reports the path', async () => {
    const o = object(50_000);
    vi.spyOn(fsp, 'rename').mockRejectedValueOnce(Object.assign(new Error('EIO: i/o error, rename'), { code: 'EIO' }));
    const err = await b.save(o.h, o.data).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'io' });
    expect((err as Error).message).toContain(dataPath(repo, o.h.name));
    expect(b.isPermanent(err), 'EIO may clear up').toBe(false);
    expect(b.isNotFound(err)).toBe(false);
    expect(await tempFiles(repo)).toEqual([]);
    expect(b.isNotFound(await b.stat(o.h).catch((e: unknown) => e))).toBe(true);
    await b.save(o.h, o.data);
    expect((await b.load(o.h)).equals(o.data)).toBe(true);
  });

  it('reads ranges without reading the whole file', async () => {
    const o = object(100_000);
    await b.save(o.h, o.data);
    const readFile = vi.spyOn(fsp, 'readFile');
    expect((await b.load(o.h, 99_000, 1000)).equals(o.data.subarray(99_000))).toBe(true);
    expect((await b.load(o.h, 5)).equals(o.data.subarray(5))).toBe(true);
    expect(readFile).not.toHaveBeenCalled();
  });

  it('explains a range beyond the end', async () => {
    const o = object(100);
    await b.save(o.h, o.data);
    const err = await b.load(o.h, 90, 20).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'repository-corrupt' });
    expect((err as Error).message).toMatch(/100 bytes.*20 bytes at offset 90.*beyond its end/);
    expect((err as Error).message).toContain(dataPath(repo, o.h.name));
    expect(b.isPermanent(err)).toBe(true);
    await expect(b.load(o.h, -1, 2)).rejects.toThrow(/invalid offset/);
    await expect(b.load(o.h, 0, 1.5)).rejects.toThrow(/invalid length/);
  });

  it('lists neither temp files nor strangers nor objects in the wrong subfolder', async () => {
    const o = object(10);
    await b.save(o.h, o.data);
    const sub = join(repo, 'data', o.h.name.slice(0, 2));
    await fsp.writeFile(join(sub, '.tmp-0123456789abcdef'), 'half');
    await fsp.writeFile(join(sub, 'README'), 'hello');
    const misplaced = (o.h.name.startsWith('00') ? '01' : '00') + o.h.name.slice(2);
    await fsp.writeFile(join(sub, misplaced), 'wrong place');
    await fsp.writeFile(join(repo, 'keys', '.tmp-abc'), 'half');
    await fsp.mkdir(join(repo, 'keys', 'b'.repeat(64)));
    const names: string[] = [];
    for await (const f of b.list('data')) names.push(f.name);
    expect(names).toEqual([o.h.name]);
    const keys: string[] = [];
    for await (const f of b.list('keys')) keys.push(f.name);
    expect(keys).toEqual([]);
  });

  it('recreates a data subfolder that went missing', async () => {
    const o = object(10);
    await fsp.rmdir(join(repo, 'data', o.h.name.slice(0, 2)));
    await b.save(o.h, o.data);
    expect((await b.load(o.h)).equals(o.data)).toBe(true);
  });

  it('does not create a repository folder on save when there is none', async () => {
    const nowhere = new LocalBackend(join(dir, 'nowhere'));
    const err = await nowhere.save({ type: 'config', name: '' }, Buffer.from('c')).catch((e: unknown) => e);
    expect(nowhere.isNotFound(err)).toBe(true);
    const o = object(10);
    expect(nowhere.isNotFound(await nowhere.save(o.h, o.data).catch((e: unknown) => e))).toBe(true);
    await expect(fsp.stat(join(dir, 'nowhere'))).rejects.toMatchObject({ code: 'ENOENT' });
    const listed: unknown[] = [];
    for await (const f of nowhere.list('keys')) listed.push(f);
    expect(listed).toEqual([]);
  });

  it('create() refuses a folder with other things in it, but finishes an interrupted create()', async () => {
    const other = join(dir, 'home');
    await fsp.mkdir(other);
    await fsp.writeFile(join(other, 'notes.txt'), 'mine');
    await expect(new LocalBackend(other).create()).rejects.toMatchObject({ code: 'usage', message: expect.stringContaining('notes.txt') });

    const interrupted = join(dir, 'interrupted');
    await fsp.mkdir(join(interrupted, 'data', '00'), { recursive: true });
    await fsp.mkdir(join(interrupted, 'keys'));
    await fsp.mkdir(join(interrupted, 'lost+found'));
    await new LocalBackend(interrupted).create();
    expect((await fsp.readdir(join(interrupted, 'data'))).length).toBe(256);

    // A key without a config: an init that died half way. Reusing it would mix two master keys.
    const halfInit = join(dir, 'half');
    await new LocalBackend(halfInit).create();
    await fsp.writeFile(join(halfInit, 'keys', 'c'.repeat(64)), 'key');
    await expect(new LocalBackend(halfInit).create()).rejects.toMatchObject({ code: 'usage' });
    const fileForFolder = join(dir, 'file-for-folder');
    await fsp.mkdir(fileForFolder);
    await fsp.writeFile(join(fileForFolder, 'keys'), 'not a folder');
    await expect(new LocalBackend(fileForFolder).create()).rejects.toMatchObject({ code: 'usage', message: expect.stringContaining('keys') });
    await fsp.mkdir(join(dir, 'empty-existing'));
    await new LocalBackend(join(dir, 'empty-existing')).create();
  });

  it('classifies errors', () => {
    const sys = (code: string) => Object.assign(new Error(code), { code });
    for (const c of ['EACCES', 'EPERM', 'ENOSPC', 'EROFS', 'EDQUOT', 'ENOENT']) expect(b.isPermanent(sys(c)), c).toBe(true);
    for (const c of ['EIO', 'EAGAIN', 'EBUSY', 'ETIMEDOUT', 'ECONNRESET']) expect(b.isPermanent(sys(c)), c).toBe(false);
    expect(b.isNotFound(sys('ENOENT'))).toBe(true);
    expect(b.isNotFound(sys('EACCES'))).toBe(false);
    expect(b.isNotFound(new BulwarkError('io', 'x', { cause: sys('ENOENT') })), 'seen through our wrapping').toBe(true);
    expect(b.isPermanent(new BulwarkError('io', 'x', { cause: sys('EIO') }))).toBe(false);
    expect(b.isPermanent(new BulwarkError('io', 'x', { cause: sys('EACCES') }))).toBe(true);
    expect(b.isPermanent(new Error('invalid data name'))).toBe(true);
    expect(b.isPermanent(Object.assign(new TypeError('bad'), { code: 'ERR_INVALID_ARG_TYPE' }))).toBe(true);
    const socketRefused = new BulwarkError('repository-corrupt', 'not a regular file', { cause: sys('ENXIO') });
    expect(b.isPermanent(socketRefused), 'a damaged object stays damaged, whatever the errno').toBe(true);
    expect(b.isNotFound(socketRefused)).toBe(false);
  });

  // A FIFO would block an ordinary open for reading until some writer came along: forever. Hence the
  // short timeout: a regression hangs rather than fails.
  it('neither lists nor reads FIFOs, sockets, symlinks or folders where objects belong', { timeout: 5000 }, async () => {
    const hex = (c: string, first = c) => first + c.repeat(63);
    const good = object(1000);
    await b.save(good.h, good.data);
    await b.save({ type: 'snapshots', name: good.h.name }, good.data);
    const strange: { h: Handle; path: string; kind: RegExp }[] = [];
    const plant = async (h: Handle, kind: RegExp, make: (path: string) => Promise<unknown>) => {
      const path = h.type === 'data' ? dataPath(repo, h.name) : h.type === 'config' ? join(repo, 'config') : join(repo, h.type, h.name);
      await make(path);
      strange.push({ h, path, kind });
    };
    const mkfifo = async (path: string) => execFileSync('mkfifo', [path]);
    await plant({ type: 'snapshots', name: hex('1') }, /not a regular file \(a fifo\); it was not read/, mkfifo);
    await plant({ type: 'data', name: hex('2', 'a') }, /a fifo/, mkfifo);
    await plant({ type: 'keys', name: hex('3') }, /a fifo/, mkfifo);
    await plant({ type: 'config', name: '' }, /a fifo/, mkfifo);
    // Symlinks to a good object of the same repository: following them would "work", and must not.
    await plant({ type: 'snapshots', name: hex('4') }, /is a symbolic link; it was not followed/, (p) => fsp.symlink(join(repo, 'snapshots', good.h.name), p));
    await plant({ type: 'data', name: hex('5', 'b') }, /symbolic link/, (p) => fsp.symlink(dataPath(repo, good.h.name), p));
    await plant({ type: 'index', name: hex('6') }, /symbolic link/, (p) => fsp.symlink(join(dir, 'nowhere'), p));
    await plant({ type: 'data', name: hex('7', 'c') }, /not a regular file \(a directory\)/, (p) => fsp.mkdir(p));
    await plant({ type: 'keys', name: hex('8') }, /a directory/, (p) => fsp.mkdir(p));
    const server = createServer();
    await plant({ type: 'index', name: hex('9') }, /not a regular file \(a socket\)/, (p) => new Promise<void>((ok) => server.listen(p, ok)));
    try {
      const listed = async (type: Handle['type']) => {
        const names: string[] = [];
        for await (const f of b.list(type)) names.push(f.name);
        return names;
      };
      expect(await listed('data')).toEqual([good.h.name]);
      expect(await listed('snapshots')).toEqual([good.h.name]);
      for (const type of ['keys', 'index', 'config'] as const) expect(await listed(type), type).toEqual([]);

      const fdsBefore = (await fsp.readdir('/proc/self/fd')).length;
      for (const { h, path, kind } of strange) {
        const attempts = { load: () => b.load(h), 'ranged load': () => b.load(h, 0, 1), 'open-ended load': () => b.load(h, 1), stat: () => b.stat(h) };
        for (const [what, attempt] of Object.entries(attempts)) {
          const err = await attempt().catch((e: unknown) => e);
          const where = `${what} of ${h.type} ${path}`;
          expect(err, where).toBeInstanceOf(BulwarkError);
          expect(err, where).toMatchObject({ code: 'repository-corrupt', hint: expect.stringMatching(/remove it|bulwark check/) });
          expect((err as Error).message, where).toMatch(kind);
          expect((err as Error).message, where).toContain(path);
          expect(b.isPermanent(err), where).toBe(true);
          expect(b.isNotFound(err), where).toBe(false);
        }
      }
      expect((await fsp.readdir('/proc/self/fd')).length, 'refused objects leave no open handles').toBe(fdsBefore);
      // A save under a symlink's name must not count the symlink as the object.
      await expect(b.save({ type: 'snapshots', name: hex('4') }, good.data)).rejects.toMatchObject({ code: 'repository-corrupt' });

      // Regular files next to them still read, whole and in ranges (the non-blocking open does not matter to them).
      expect((await b.load(good.h)).equals(good.data)).toBe(true);
      expect((await b.load(good.h, 10, 100)).equals(good.data.subarray(10, 110))).toBe(true);
      expect((await b.load(good.h, 900)).equals(good.data.subarray(900))).toBe(true);
      expect((await b.load({ type: 'snapshots', name: good.h.name })).equals(good.data)).toBe(true);
      expect(await b.stat(good.h)).toEqual({ name: good.h.name, size: 1000 });

      // A refused pack is not kept among the cached read handles: once repaired, it reads.
      const fifoPack = strange[1]!;
      await fsp.unlink(fifoPack.path);
      await fsp.writeFile(fifoPack.path, good.data);
      expect((await b.load(fifoPack.h, 0, 10)).equals(good.data.subarray(0, 10))).toBe(true);
    } finally {
      await new Promise((ok) => server.close(ok));
    }
  });

  it('list() asks lstat about entries whose type the file system did not report', { timeout: 5000 }, async () => {
    const good = object(10);
    await b.save({ type: 'snapshots', name: good.h.name }, good.data);
    const fifo = 'e'.repeat(64);
    execFileSync('mkfifo', [join(repo, 'snapshots', fifo)]);
    // What readdir gives for DT_UNKNOWN (XFS without ftype, some network file systems): no type at all.
    const untyped = (name: string) => ({ name, isFile: () => false, isDirectory: () => false, isSymbolicLink: () => false, isFIFO: () => false, isSocket: () => false, isCharacterDevice: () => false, isBlockDevice: () => false }) as unknown as Dirent;
    vi.spyOn(fsp, 'readdir').mockResolvedValueOnce([untyped(good.h.name), untyped(fifo)] as never);
    const names: string[] = [];
    for await (const f of b.list('snapshots')) names.push(f.name);
    expect(names).toEqual([good.h.name]);
  });

  it('rejects a bad connections option', () => {
    expect(() => new LocalBackend(repo, { connections: 0 })).toThrow(/connections/);
    expect(new LocalBackend(repo, { connections: 2 }).properties.connections).toBe(2);
    expect(new LocalBackend('relative/x').properties.location).toBe(join(process.cwd(), 'relative/x'));
  });
});

// Real small and read-only file systems: the errors come from the kernel, as they will in the field.
describe('LocalBackend on a full or read-only disk', () => {
  let base: string;
  const mounts: string[] = [];

  async function smallDisk(name: string, size: string): Promise<string> {
    const mnt = join(base, name);
    await fsp.mkdir(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
    mounts.push(mnt);
    return mnt;
  }

  beforeAll(async () => {
    base = await fsp.mkdtemp(join(tmpdir(), 'bulwark-local-mnt-'));
  });

  afterAll(async () => {
    for (const m of mounts) execFileSync('umount', ['-l', m]);
    await fsp.rm(base, { recursive: true, force: true });
  });

  it('a full disk fails the save with no-space, the path, and no temp file left', async () => {
    const mnt = await smallDisk('full', '4m');
    const repo = join(mnt, 'repo');
    const b = new LocalBackend(repo);
    await b.create();
    const big = object(8 * 1024 * 1024);
    const err = await b.save(big.h, big.data).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'no-space' });
    expect((err as BulwarkError).message).toContain(dataPath(repo, big.h.name));
    expect((err as BulwarkError).message).toMatch(/no space/);
    expect((err as BulwarkError).hint).toBeTruthy();
    expect(b.isPermanent(err)).toBe(true);
    expect(b.isNotFound(err)).toBe(false);
    expect(await tempFiles(repo)).toEqual([]);
    expect(b.isNotFound(await b.stat(big.h).catch((e: unknown) => e))).toBe(true);
    // The partial bytes were released: what fits still saves.
    const small = object(3 * 1024 * 1024);
    await b.save(small.h, small.data);
    expect((await b.load(small.h)).equals(small.data)).toBe(true);
  });

  it('a read-only disk fails the save with io, the path and a hint; nothing is left behind', async () => {
    const mnt = await smallDisk('ro', '1m');
    const repo = join(mnt, 'repo');
    const b = new LocalBackend(repo);
    await b.create();
    const kept = object(100);
    await b.save(kept.h, kept.data);
    execFileSync('mount', ['-o', 'remount,ro', mnt]);
    const o = object(100);
    const err = await b.save(o.h, o.data).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'io' });
    expect((err as BulwarkError).message).toContain(dataPath(repo, o.h.name));
    expect((err as BulwarkError).message).toMatch(/EROFS/);
    expect((err as BulwarkError).hint).toMatch(/writable/);
    expect(b.isPermanent(err)).toBe(true);
    expect(await tempFiles(repo)).toEqual([]);
    expect((await b.load(kept.h)).equals(kept.data), 'reading still works').toBe(true);
    await b.save(kept.h, kept.data); // already there: nothing to write, so a read-only disk is no obstacle
  });
});
