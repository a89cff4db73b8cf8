// One test suite for every backend, checking the guarantees written down in backend.ts. A new backend
// is done when it passes this unchanged (restic's internal/backend/test plays the same part).
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FILE_TYPES, type Backend, type FileInfo, type FileType, type Handle } from '../backend.js';

export interface BackendUnderTest {
  backend: Backend;
  /** Removes everything the backend stored; called after each test. */
  cleanup(): Promise<void>;
}

const OBJECT_TYPES = FILE_TYPES.filter((t): t is Exclude<FileType, 'config'> => t !== 'config');

/** Bytes and the content-addressed name the repository would give them. */
function object(size: number): { name: string; data: Buffer } {
  const data = randomBytes(size);
  return { name: createHash('sha256').update(data).digest('hex'), data };
}

async function listAll(b: Backend, type: FileType): Promise<FileInfo[]> {
  const out: FileInfo[] = [];
  for await (const f of b.list(type)) out.push(f);
  return out.sort((x, y) => x.name.localeCompare(y.name));
}

/** The error `p` rejects with; fails the test when it resolves. */
export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection, but the call succeeded');
}

/**
 * @param make gives a backend for a new, empty location whose create() has not been called yet; the
 *   suite calls create() itself.
 */
export function backendSuite(name: string, make: () => Promise<BackendUnderTest>): void {
  describe(`backend contract: ${name}`, () => {
    let t: BackendUnderTest;
    let b: Backend;

    beforeEach(async () => {
      t = await make();
      b = t.backend;
      await b.create();
    });

    afterEach(async () => {
      await b.close();
      await t.cleanup();
    });

    it('states its connections and location', () => {
      expect(Number.isInteger(b.properties.connections)).toBe(true);
      expect(b.properties.connections).toBeGreaterThan(0);
      expect(b.properties.location.length).toBeGreaterThan(0);
    });

    it('starts with nothing to list', async () => {
      for (const type of FILE_TYPES) expect(await listAll(b, type)).toEqual([]);
    });

    it('loads back exactly what it saved, for every file type', async () => {
      const config = randomBytes(300);
      await b.save({ type: 'config', name: '' }, config);
      expect((await b.load({ type: 'config', name: '' })).equals(config)).toBe(true);
      for (const type of OBJECT_TYPES) {
        const o = object(1000 + type.length);
        await b.save({ type, name: o.name }, o.data);
        expect((await b.load({ type, name: o.name })).equals(o.data), type).toBe(true);
      }
    });

    it('saves empty and large objects', async () => {
      const empty = object(0);
      await b.save({ type: 'data', name: empty.name }, empty.data);
      expect((await b.load({ type: 'data', name: empty.name })).length).toBe(0);
      expect(await b.stat({ type: 'data', name: empty.name })).toEqual({ name: empty.name, size: 0 });
      const big = object(3 * 1024 * 1024 + 17);
      await b.save({ type: 'data', name: big.name }, big.data);
      expect((await b.load({ type: 'data', name: big.name })).equals(big.data)).toBe(true);
    });

    it('accepts any Uint8Array, including a view into a larger buffer', async () => {
      const backing = randomBytes(4096);
      const view = new Uint8Array(backing.buffer, backing.byteOffset + 100, 1000);
      const name = createHash('sha256').update(view).digest('hex');
      await b.save({ type: 'data', name }, view);
      expect((await b.load({ type: 'data', name })).equals(Buffer.from(view))).toBe(true);
    });

    // From TMPDIR (for a local backend there: the same file system, so linked) and from /dev/shm (another
    // file system: copied).
    it.each([tmpdir(), ...(existsSync('/dev/shm') ? ['/dev/shm'] : [])])('saves an object from a local file in %s, and leaves the file alone', async (root) => {
      const dir = await mkdtemp(join(root, 'bulwark-suite-'));
      try {
        for (const size of [0, 5, 2 * 1024 * 1024 + 3]) {
          const o = object(size);
          const path = join(dir, `src-${size}`);
          await writeFile(path, o.data);
          await b.save({ type: 'data', name: o.name }, { path, size });
          expect((await b.load({ type: 'data', name: o.name })).equals(o.data)).toBe(true);
          expect((await readFile(path)).equals(o.data)).toBe(true);
          // Again, as a retry would: the same bytes under the same name succeed.
          await b.save({ type: 'data', name: o.name }, { path, size });
        }
        const short = object(100);
        await writeFile(join(dir, 'short'), short.data.subarray(0, 50));
        await expect(b.save({ type: 'data', name: short.name }, { path: join(dir, 'short'), size: 100 })).rejects.toThrow();
        await expect(b.stat({ type: 'data', name: short.name })).rejects.toSatisfy((e) => b.isNotFound(e));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('loads ranges', async () => {
      const o = object(1000);
      const h: Handle = { type: 'data', name: o.name };
      await b.save(h, o.data);
      expect((await b.load(h, 0, 10)).equals(o.data.subarray(0, 10))).toBe(true);
      expect((await b.load(h, 990, 10)).equals(o.data.subarray(990))).toBe(true);
      expect((await b.load(h, 123, 456)).equals(o.data.subarray(123, 579))).toBe(true);
      expect((await b.load(h, 500)).equals(o.data.subarray(500)), 'offset alone reads to the end').toBe(true);
      expect((await b.load(h, undefined, 7)).equals(o.data.subarray(0, 7)), 'length alone reads from the start').toBe(true);
      expect((await b.load(h, 10, 0)).length).toBe(0);
      expect((await b.load(h, 1000, 0)).length, 'an empty range at the very end').toBe(0);
      expect((await b.load(h, 0, 1000)).equals(o.data)).toBe(true);
    });

    it('rejects a range beyond the end, and that is not "not found"', async () => {
      const o = object(1000);
      const h: Handle = { type: 'data', name: o.name };
      await b.save(h, o.data);
      for (const [offset, length] of [
        [995, 10],
        [1000, 1],
        [1001, 0],
        [5000, undefined],
      ] as const) {
        const err = await rejection(b.load(h, offset, length));
        expect(err, `offset ${offset} length ${length}`).toBeInstanceOf(Error);
        expect(b.isNotFound(err)).toBe(false);
      }
    });

    it('stats name and size', async () => {
      const o = object(4321);
      await b.save({ type: 'index', name: o.name }, o.data);
      expect(await b.stat({ type: 'index', name: o.name })).toEqual({ name: o.name, size: 4321 });
      await b.save({ type: 'config', name: '' }, Buffer.from('cfg'));
      expect(await b.stat({ type: 'config', name: '' })).toEqual({ name: '', size: 3 });
    });

    it('lists exactly the objects of each type, with sizes', async () => {
      const saved = new Map<FileType, FileInfo[]>();
      for (const type of OBJECT_TYPES) {
        const infos: FileInfo[] = [];
        // Enough data objects that some share a two-character prefix and most do not.
        for (let i = 0; i < (type === 'data' ? 40 : 3); i++) {
          const o = object(10 + i);
          await b.save({ type, name: o.name }, o.data);
          infos.push({ name: o.name, size: o.data.length });
        }
        saved.set(type, infos.sort((x, y) => x.name.localeCompare(y.name)));
      }
      await b.save({ type: 'config', name: '' }, Buffer.from('config!'));
      for (const type of OBJECT_TYPES) expect(await listAll(b, type), type).toEqual(saved.get(type));
      expect(await listAll(b, 'config')).toEqual([{ name: '', size: 7 }]);
    });

    it('removes: the object no longer loads, stats or lists; others stay', async () => {
      const gone = object(100);
      const kept = object(101);
      await b.save({ type: 'locks', name: gone.name }, gone.data);
      await b.save({ type: 'locks', name: kept.name }, kept.data);
      await b.remove({ type: 'locks', name: gone.name });
      expect(b.isNotFound(await rejection(b.load({ type: 'locks', name: gone.name })))).toBe(true);
      expect(b.isNotFound(await rejection(b.stat({ type: 'locks', name: gone.name })))).toBe(true);
      expect(await listAll(b, 'locks')).toEqual([{ name: kept.name, size: 101 }]);
      // Removing frees the name: saving it again works.
      await b.save({ type: 'locks', name: gone.name }, gone.data);
      expect((await b.load({ type: 'locks', name: gone.name })).equals(gone.data)).toBe(true);
    });

    it('reports missing objects with isNotFound, from load, ranged load, stat and remove', async () => {
      const { name } = object(1);
      for (const type of OBJECT_TYPES) {
        const h: Handle = { type, name };
        for (const [what, call] of [
          ['load', () => b.load(h)],
          ['ranged load', () => b.load(h, 0, 1)],
          ['stat', () => b.stat(h)],
          ['remove', () => b.remove(h)],
        ] as const) {
          const err = await rejection(call());
          expect(b.isNotFound(err), `${what} ${type}`).toBe(true);
        }
      }
      expect(b.isNotFound(await rejection(b.stat({ type: 'config', name: '' })))).toBe(true);
      expect(b.isNotFound(await rejection(b.load({ type: 'config', name: '' })))).toBe(true);
      expect(b.isNotFound(new Error('something else'))).toBe(false);
      expect(b.isNotFound(undefined)).toBe(false);
    });

    it('re-saving the same bytes succeeds; a different size under the same name is refused', async () => {
      const o = object(2000);
      const h: Handle = { type: 'data', name: o.name };
      await b.save(h, o.data);
      await b.save(h, o.data);
      await b.save(h, Buffer.from(o.data)); // an equal copy, not the same buffer
      expect((await b.load(h)).equals(o.data)).toBe(true);
      const err = await rejection(b.save(h, randomBytes(1999)));
      expect(b.isNotFound(err)).toBe(false);
      expect(b.isPermanent(err), 'retrying cannot help').toBe(true);
      expect((await b.load(h)).equals(o.data), 'the original is untouched').toBe(true);
      expect(await listAll(b, 'data')).toEqual([{ name: o.name, size: 2000 }]);
    });

    it('refuses invalid names and types before touching storage', async () => {
      const hex = 'a'.repeat(64);
      const bad: Handle[] = [
        { type: 'data', name: '' },
        { type: 'data', name: 'abc' },
        { type: 'data', name: hex.slice(1) },
        { type: 'data', name: hex + 'a' },
        { type: 'data', name: hex.toUpperCase() },
        { type: 'data', name: 'g'.repeat(64) },
        { type: 'data', name: '../' + hex.slice(3) },
        { type: 'keys', name: '../../' + hex.slice(6) },
        { type: 'index', name: hex.slice(2) + '/x' },
        { type: 'snapshots', name: hex.slice(1) + '\0' },
        { type: 'locks', name: ' ' + hex.slice(1) },
        { type: 'config', name: hex },
        { type: 'config', name: '../config' },
        { type: 'nope' as FileType, name: hex },
        { type: '../data' as FileType, name: hex },
      ];
      for (const h of bad) {
        const label = JSON.stringify(h);
        for (const call of [() => b.save(h, Buffer.from('x')), () => b.load(h), () => b.load(h, 0, 1), () => b.stat(h), () => b.remove(h)]) {
          const err = await rejection(call());
          expect(err, label).toBeInstanceOf(Error);
          expect(b.isNotFound(err), label).toBe(false);
        }
      }
      await expect(listAll(b, 'nope' as FileType)).rejects.toThrow();
      for (const type of FILE_TYPES) expect(await listAll(b, type), type).toEqual([]);
    });

    it('saves concurrently: distinct objects, and one object from many savers at once', async () => {
      const objects = Array.from({ length: 64 }, (_, i) => object(5000 + i));
      const shared = object(70_000);
      await Promise.all([
        ...objects.map((o) => b.save({ type: 'data', name: o.name }, o.data)),
        ...Array.from({ length: 8 }, () => b.save({ type: 'data', name: shared.name }, shared.data)),
      ]);
      const expected = [...objects, shared].map((o) => ({ name: o.name, size: o.data.length })).sort((x, y) => x.name.localeCompare(y.name));
      expect(await listAll(b, 'data')).toEqual(expected);
      for (const o of [...objects, shared]) expect((await b.load({ type: 'data', name: o.name })).equals(o.data)).toBe(true);
    });

    it('lists a consistent subset while others save', async () => {
      const before = Array.from({ length: 10 }, () => object(100));
      for (const o of before) await b.save({ type: 'snapshots', name: o.name }, o.data);
      const during = Array.from({ length: 30 }, () => object(200));
      const saving = Promise.all(during.map((o) => b.save({ type: 'snapshots', name: o.name }, o.data)));
      const listed = await listAll(b, 'snapshots');
      await saving;
      const sizes = new Map([...before, ...during].map((o) => [o.name, o.data.length]));
      for (const f of listed) expect(f.size, 'only whole objects, with their full size').toBe(sizes.get(f.name));
      for (const o of before) expect(listed.some((f) => f.name === o.name), 'objects saved before the listing are in it').toBe(true);
      expect(new Set(listed.map((f) => f.name)).size, 'no name twice').toBe(listed.length);
    });

    it('create() fails once a config exists, and leaves the repository as it was', async () => {
      const cfg = randomBytes(64);
      await b.save({ type: 'config', name: '' }, cfg);
      const o = object(10);
      await b.save({ type: 'keys', name: o.name }, o.data);
      await expect(b.create()).rejects.toMatchObject({ code: 'repository-exists' });
      expect((await b.load({ type: 'config', name: '' })).equals(cfg)).toBe(true);
      expect(await listAll(b, 'keys')).toEqual([{ name: o.name, size: 10 }]);
    });
  });
}
