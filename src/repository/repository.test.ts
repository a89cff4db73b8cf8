import { randomBytes } from 'node:crypto';
import { chmod, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createTestRepository, TEST_PASSWORD, type TestRepository } from '../../test/helpers/repo.js';
import { LocalBackend } from '../storage/local.js';
import { BulwarkError } from '../util/errors.js';
import { Repository } from './repository.js';
import { readPackHeader } from './pack.js';

let t: TestRepository | undefined;
afterEach(async () => {
  await t?.cleanup();
  t = undefined;
});

function pseudoRandom(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Damages a stored blob in place: one bit flipped `at` bytes into its sealed form. */
async function flipStoredByte(t: TestRepository, id: string, at: number): Promise<void> {
  const e = t.repo.index.lookup(id)!;
  const file = `${t.path}/data/${e.pack.slice(0, 2)}/${e.pack}`;
  const bytes = await readFile(file);
  bytes[e.offset + at]! ^= 0x01;
  await chmod(file, 0o644);
  await writeFile(file, bytes);
}

describe('Repository', () => {
  it('never waits forever when two packs of a type, each just short of full, hold the whole budget (format 2)', async () => {
    // The shape that hung the bench: ~700 KiB chunks saved one after another spread over two data packs
    // at random until both are nearly full, and the next save waits with nothing in flight to free room.
    t = await createTestRepository();
    const base = randomBytes(700 * 1024);
    for (let i = 0; i < 400; i++) {
      base.writeUInt32LE(i, 0); // distinct blobs, incompressible
      await t.repo.saveBlob('data', base);
      // As a backup reading files does: the sealing in flight finishes before the next save comes.
      await new Promise((r) => setTimeout(r, 4));
    }
    await t.repo.flush();
    expect(t.repo.bytesWritten).toBeGreaterThan(400 * 700 * 1024);
  }, 30_000);

  it('stores blobs once, durably after flush, and reads them back from another process', async () => {
    t = await createTestRepository({ packSize: 256 * 1024 });
    const blobs = Array.from({ length: 20 }, (_, i) => pseudoRandom(50_000 + i, i + 1));
    const ids: string[] = [];
    for (const b of blobs) ids.push((await t.repo.saveBlob('data', b)).id);
    const again = await t.repo.saveBlob('data', blobs[3]!);
    expect(again).toEqual({ id: ids[3], stored: false });
    await t.repo.flush();

    const other = await t.reopen();
    await other.loadIndex();
    expect(other.index.blobCount).toBe(20);
    for (let i = 0; i < blobs.length; i++) expect((await other.loadBlob('data', ids[i]!)).equals(blobs[i]!)).toBe(true);
    expect(other.index.packCount).toBeGreaterThan(1); // 1 MB of blobs in 256 KiB packs
  });

  it('compresses compressible data and stores incompressible data raw', async () => {
    t = await createTestRepository();
    const text = Buffer.from('all work and no play makes jack a dull boy\n'.repeat(20_000));
    const noise = pseudoRandom(500_000, 7);
    const a = await t.repo.saveBlob('data', text);
    const b = await t.repo.saveBlob('data', noise);
    await t.repo.flush();
    const ea = t.repo.index.lookup(a.id)!;
    const eb = t.repo.index.lookup(b.id)!;
    expect(ea.ulen).toBe(text.length);
    expect(ea.length).toBeLessThan(text.length / 20);
    expect(eb.ulen).toBe(0);
    expect(eb.length).toBe(noise.length + 40);
  });

  it('writes packs whose own header lists their blobs (so an index can be rebuilt)', async () => {
    t = await createTestRepository();
    const id = (await t.repo.saveBlob('tree', Buffer.from('{"nodes":[]}'))).id;
    await t.repo.flush();
    const e = t.repo.index.lookup(id)!;
    const bytes = await t.repo.backend.load({ type: 'data', name: e.pack });
    const entries = readPackHeader(t.repo.sealer, bytes, e.pack);
    expect(entries).toEqual([{ type: 'tree', id, offset: 0, length: e.length, ulen: e.ulen }]);
  });

  it('rejects a wrong password with exit-code-mapped error, and a missing repository likewise', async () => {
    t = await createTestRepository();
    await expect(Repository.open(new LocalBackend(t.path), 'wrong')).rejects.toMatchObject({ code: 'wrong-password' });
    await expect(Repository.open(new LocalBackend(t.path + '-nope'), TEST_PASSWORD)).rejects.toMatchObject({ code: 'repository-not-found' });
  });

  it('opens with any of several keys', async () => {
    t = await createTestRepository();
    await t.repo.addKey('second password', { N: 1024, r: 8, p: 1 });
    const r = await t.reopen('second password');
    expect(r.config.id).toBe(t.repo.config.id);
  });

  it('detects a blob whose bytes were changed in storage', async () => {
    t = await createTestRepository();
    const id = (await t.repo.saveBlob('data', pseudoRandom(10_000, 3))).id;
    await t.repo.flush();
    await flipStoredByte(t, id, 100);
    const err = await t.repo.loadBlob('data', id).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).code).toBe('repository-corrupt');
  });

  it('copies a small blob when it is saved: the caller may reuse its buffer at once (as the archiver does)', async () => {
    t = await createTestRepository();
    const buf = Buffer.alloc(64 * 1024);
    const expected: Buffer[] = [];
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      buf.fill(i & 0xff);
      buf.writeUInt32LE(i, 0);
      const plain = buf.subarray(0, 1000 + i * 37);
      expected.push(Buffer.from(plain));
      ids.push((await t.repo.saveBlob('data', plain)).id);
    }
    buf.fill(0xee);
    await t.repo.flush();
    const other = await t.reopen();
    await other.loadIndex();
    try {
      for (let i = 0; i < ids.length; i++) expect((await other.loadBlob('data', ids[i]!)).equals(expected[i]!), `blob ${i}`).toBe(true);
    } finally {
      await other.close();
    }
  });

  it('writes an index document per few thousand blobs, not one for a whole tree of small files', async () => {
    // A document is built whole in memory; one for 40 000 blobs was the peak of a small-files backup.
    // Small packs (about 1 200 of these blobs each): ten of them, far from the 64 packs that also start a
    // new document, and more than 8 192 blobs in the packs that fill before the end.
    t = await createTestRepository({ packSize: 64 * 1024 });
    const ids: string[] = [];
    for (let i = 0; i < 12_000; i++) ids.push((await t.repo.saveBlob('data', Buffer.from(`small file ${i}`))).id);
    await t.repo.flush();
    const indexFiles = await readdir(join(t.path, 'index'));
    expect(indexFiles.length).toBeGreaterThanOrEqual(2);
    const other = await t.reopen();
    await other.loadIndex();
    expect(other.index.blobCount).toBe(12_000);
    for (const i of [0, 4321, 11_999]) expect((await other.loadBlob('data', ids[i]!)).toString()).toBe(`small file ${i}`);
  }, 30_000);

  it('loads many small blobs at once (read ahead, opened in batches); a damaged one fails alone', async () => {
    t = await createTestRepository();
    const plains = Array.from({ length: 200 }, (_, i) => (i % 2 ? pseudoRandom(3000 + i, i + 1) : Buffer.alloc(5000 + i, i & 0xff)));
    const ids: string[] = [];
    for (const p of plains) ids.push((await t.repo.saveBlob('data', p)).id);
    await t.repo.flush();
    const victim = 77;
    await flipStoredByte(t, ids[victim]!, 40);

    const fresh = await t.reopen();
    await fresh.loadIndex();
    try {
      const got = await Promise.allSettled(ids.map((id) => fresh.loadBlob('data', id)));
      got.forEach((r, i) => {
        if (i === victim) {
          expect(r.status).toBe('rejected');
          expect(((r as PromiseRejectedResult).reason as BulwarkError).code).toBe('repository-corrupt');
        } else {
          expect(r.status, `blob ${i}`).toBe('fulfilled');
          expect((r as PromiseFulfilledResult<Buffer>).value.equals(plains[i]!), `blob ${i}`).toBe(true);
        }
      });
    } finally {
      await fresh.close();
    }
  });
});

describe('Repository memory budget', () => {
  it('does not stall on highly compressible data (sealed blobs far smaller than their plaintext)', async () => {
    // 400 MiB of zeros-with-a-counter compress to a few KiB per blob: the budget must follow the sealed
    // size, or it fills long before one pack is full and the backup hangs.
    const r = await createTestRepository();
    t = r;
    const block = Buffer.alloc(8 * 1024 * 1024);
    for (let i = 0; i < 50; i++) {
      block.writeUInt32LE(i, 0);
      await r.repo.saveBlob('data', block);
    }
    await r.repo.flush();
    expect(r.repo.index.blobCount).toBe(50);
  }, 30_000);

  it('does not stall when a data pack and a tree pack filling side by side hold the whole budget', async () => {
    // 24 MiB packs: the budget is 40 MiB. 23 MiB of tree blobs park in a tree pack that is not full,
    // then data blobs fill a data pack: both together need more than the budget, so a partial pack
    // must be written early or the next saveBlob waits forever.
    const r = await createTestRepository({ packSize: 24 * 1024 * 1024 });
    t = r;
    for (let i = 0; i < 23; i++) await r.repo.saveBlob('tree', randomBytes(1024 * 1024));
    for (let i = 0; i < 30; i++) await r.repo.saveBlob('data', randomBytes(1024 * 1024));
    await r.repo.flush();
    expect(r.repo.index.blobCount).toBe(53);
  }, 30_000);
});
