import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { IntegrityError, blobId } from './crypto.js';
import { sealerFor } from './sealer.js';
import { BlobWorkers, type RunItem } from './workers.js';

// The real worker threads, opening a run of blobs cut from one range: the restore's path.
describe('BlobWorkers.openRun', () => {
  const master = { encrypt: randomBytes(32), id: randomBytes(32) };
  const sealer = sealerFor(2, master);
  const workers = new BlobWorkers(sealer, master.id, 3, 2);
  afterAll(() => workers.close());

  /** Seals `plains` as data blobs side by side, as a pack holds them; returns the range and its items. */
  async function packOf(plains: Buffer[]): Promise<{ range: Buffer; items: (RunItem & { id: string })[] }> {
    const parts: Buffer[] = [];
    const items: (RunItem & { id: string })[] = [];
    let at = 0;
    for (const p of plains) {
      const id = blobId(master, p).toString('hex');
      const ad = sealer.ad('data', Buffer.from(id, 'hex'));
      const s = await workers.seal(p, true, ad);
      parts.push(Buffer.from(s.sealed));
      items.push({ at, len: s.sealed.length, ulen: s.ulen, ad, what: `data blob ${id}`, id });
      at += s.sealed.length;
      s.release();
    }
    return { range: Buffer.concat(parts), items };
  }

  it('opens every blob of a range into one buffer, with ids; a blob cut twice gets its bytes twice', async () => {
    const plains = [Buffer.alloc(300_000, 'compressible '), randomBytes(70_000), Buffer.from('tiny')];
    const { range, items } = await packOf(plains);
    const pooled = workers.rangeBuffer(range.length);
    range.copy(pooled.buffer);
    // The first blob again at the end: a file that repeats a chunk.
    const asked = [...items, items[0]!];
    const r = await workers.openRun(pooled.buffer, asked);
    // Shared with the worker, not handed over: still the caller's memory (spent: its blobs were opened
    // in place), to hand back.
    expect(pooled.buffer.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(pooled.buffer.byteLength).toBe(range.length);
    pooled.release();
    expect(r.results).toHaveLength(4);
    [...plains, plains[0]!].forEach((p, i) => {
      const got = r.results[i]!;
      if (!('plain' in got)) throw got.error;
      expect(got.plain.equals(p)).toBe(true);
      expect(got.id).toBe(asked[i]!.id);
    });
    r.release();
    expect(workers.slabLent).toBe(0);
  });

  it('a damaged blob, or one bound to another id, fails alone as an integrity error; its neighbours open', async () => {
    const plains = [randomBytes(100_000), randomBytes(5_000), randomBytes(100_000)];
    const { range, items } = await packOf(plains);
    range[items[1]!.at + 30]! ^= 1;
    const other = { ...items[2]!, ad: sealer.ad('data', randomBytes(32)) };
    const r = await workers.openRun(range, [items[0]!, items[1]!, other]);
    expect('plain' in r.results[0]! && r.results[0].plain.equals(plains[0]!)).toBe(true);
    expect('error' in r.results[1]! && r.results[1].error).toBeInstanceOf(IntegrityError);
    expect('error' in r.results[2]! && r.results[2].error).toBeInstanceOf(IntegrityError);
    r.release();
  });

  it('a blob whose recorded length is wrong fails alone, and writes nothing outside its slot', async () => {
    const plains = [Buffer.alloc(200_000, 'a'), Buffer.alloc(200_000, 'b')];
    const { range, items } = await packOf(plains);
    const short = { ...items[0]!, ulen: items[0]!.ulen - 1000 };
    const r = await workers.openRun(range, [short, items[1]!]);
    expect('error' in r.results[0]! && r.results[0].error.message).toMatch(/data blob [0-9a-f]{64}: .*too small/);
    expect('plain' in r.results[1]! && r.results[1].plain.equals(plains[1]!)).toBe(true);
    r.release();
  });
});

// Small blobs are sealed in batches whose output buffer is pooled: it may serve the next batch only once
// every blob of this one was released (written to its pack).
describe('BlobWorkers.seal of small blobs', () => {
  const master = { encrypt: randomBytes(32), id: randomBytes(32) };
  const sealer = sealerFor(2, master);
  const workers = new BlobWorkers(sealer, master.id, 3, 2);
  afterAll(() => workers.close());

  async function sealAll(plains: Buffer[]): Promise<{ plain: Buffer; ad: Uint8Array | null; s: Awaited<ReturnType<BlobWorkers['seal']>> }[]> {
    return Promise.all(
      plains.map(async (plain) => {
        const ad = sealer.ad('data', blobId(master, plain));
        return { plain, ad, s: await workers.seal(plain, true, ad) };
      }),
    );
  }

  it('keeps a batch’s sealed blobs intact until each is released, then reuses their buffer', async () => {
    const first = await sealAll(Array.from({ length: 40 }, (_, i) => Buffer.alloc(3000 + i, `first ${i} `)));
    const held = first.map(({ s }) => Buffer.from(s.sealed));
    // All but one released: the buffer is still in use, so the next batches must not write into it.
    first.slice(1).forEach(({ s }) => s.release());
    for (let round = 0; round < 3; round++) {
      const more = await sealAll(Array.from({ length: 40 }, (_, i) => Buffer.alloc(3000 + i, `round ${round} ${i} `)));
      more.forEach(({ s }) => s.release());
    }
    expect(first[0]!.s.sealed.equals(held[0]!)).toBe(true);
    first[0]!.s.release();
    // Each sealed blob opens to its plaintext with its own associated data.
    for (const [i, { plain, ad, s }] of first.entries()) {
      const opened = await workers.open(held[i]!, s.ulen, 'blob', ad);
      expect(opened.plain.equals(plain), `blob ${i}`).toBe(true);
    }
  });
});

// Transfer memory is one slab shared with the workers; what does not fit it at the moment gets memory
// of its own, so a slab too small for the work is slower, never wrong.
describe('BlobWorkers transfer memory', () => {
  const master = { encrypt: randomBytes(32), id: randomBytes(32) };
  const sealer = sealerFor(2, master);

  it('seals and opens blobs larger than the slab, and while the slab is full, through buffers of their own', async () => {
    const workers = new BlobWorkers(sealer, master.id, 3, 1, 256 * 1024);
    try {
      const plains = [randomBytes(200_000), Buffer.alloc(1_500_000, 'big and compressible '), randomBytes(150_000), randomBytes(3000)];
      // All in flight at once, none released: the second and later do not fit beside the first.
      const sealed = await Promise.all(plains.map(async (p) => ({ p, ad: sealer.ad('data', blobId(master, p)), s: await workers.seal(p, true, sealer.ad('data', blobId(master, p))) })));
      expect(sealed.map(({ s }) => s.sealed.buffer instanceof SharedArrayBuffer)).toEqual([true, false, false, true]);
      const range = Buffer.concat(sealed.map(({ s }) => s.sealed));
      let at = 0;
      const items: RunItem[] = sealed.map(({ s, ad }) => ({ at: (at += s.sealed.length) - s.sealed.length, len: s.sealed.length, ulen: s.ulen, ad, what: 'blob' }));
      sealed.forEach(({ s }) => s.release());
      expect(workers.slabLent).toBe(0);
      // The run opens to more than the slab holds: its plaintexts come back in a buffer of their own.
      const r = await workers.openRun(range, items);
      r.results.forEach((got, i) => {
        if (!('plain' in got)) throw got.error;
        expect(got.plain.equals(plains[i]!), `blob ${i}`).toBe(true);
      });
      r.release();
      expect(workers.slabLent).toBe(0);
    } finally {
      await workers.close();
    }
  });

  it("reuses the slab's low pages: 120 blobs in a window of 4, with batched small ones between, touch about 4 blobs' worth", async () => {
    const workers = new BlobWorkers(sealer, master.id, 3, 2, 4 * 1024 * 1024);
    try {
      const window = new Set<Promise<void>>();
      for (let i = 0; i < 120; i++) {
        if (window.size === 4) await Promise.race(window);
        const one = (async () => {
          const small = await Promise.all([0, 1, 2].map((k) => workers.seal(Buffer.alloc(900 + k, `small ${i} `), true, null)));
          const big = await workers.seal(randomBytes(100_000), true, null);
          big.release();
          small.forEach((s) => s.release());
        })();
        const tracked = one.finally(() => window.delete(tracked));
        window.add(tracked);
      }
      await Promise.all(window);
      expect(workers.slabLent).toBe(0);
      // A place for a 100 000-byte blob is 25 grains (102 400 bytes). Pieces that wandered through
      // the slab would touch all of its 4 MiB, and that much memory, for good.
      expect(workers.slabTouched).toBeGreaterThan(0);
      expect(workers.slabTouched).toBeLessThanOrEqual(6 * 102_400);
    } finally {
      await workers.close();
    }
  });

  it('gives every piece back: after a mix of large and batched seals and runs, none of the slab is lent', async () => {
    const workers = new BlobWorkers(sealer, master.id, 3, 2, 4 * 1024 * 1024);
    try {
      const plains = Array.from({ length: 60 }, (_, i) => (i % 3 === 0 ? randomBytes(100_000 + i) : Buffer.alloc(500 + i * 10, `blob ${i} `)));
      const sealed = await Promise.all(plains.map((p) => workers.seal(p, true, null)));
      expect(workers.slabLent).toBeGreaterThan(0);
      const range = workers.rangeBuffer(sealed.reduce((n, s) => n + s.sealed.length, 0));
      let at = 0;
      const items: RunItem[] = sealed.map((s) => {
        s.sealed.copy(range.buffer, at);
        at += s.sealed.length;
        return { at: at - s.sealed.length, len: s.sealed.length, ulen: s.ulen, ad: null, what: 'blob' };
      });
      sealed.forEach((s) => s.release());
      const r = await workers.openRun(range.buffer, items);
      range.release();
      r.results.forEach((got, i) => expect('plain' in got && got.plain.equals(plains[i]!), `blob ${i}`).toBe(true));
      r.release();
      // Released twice: the second does nothing (it must not free what another request holds by then).
      r.release();
      range.release();
      expect(workers.slabLent).toBe(0);
    } finally {
      await workers.close();
    }
  });
});
