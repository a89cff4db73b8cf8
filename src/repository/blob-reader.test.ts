import { describe, expect, it } from 'vitest';
import { BlobReader, type BlobLocation, type BlobReaderSource } from './blob-reader.js';

/** Blobs laid out in packs as "sealed" bytes equal to their plaintext; opening checks the bytes. */
function fake(layout: Record<string, [string, number, number][]>, opts: { broken?: Set<string>; missingPacks?: Set<string>; ulen?: Record<string, number> } = {}) {
  const packs = new Map<string, Buffer>();
  const where = new Map<string, BlobLocation>();
  const content = (id: string, n: number): Buffer => Buffer.alloc(n, id.charCodeAt(0));
  for (const [pack, blobs] of Object.entries(layout)) {
    const size = Math.max(...blobs.map(([, off, len]) => off + len));
    const buf = Buffer.alloc(size, 0xee);
    for (const [id, off, len] of blobs) {
      content(id, len).copy(buf, off);
      where.set(id, { pack, offset: off, length: len, ulen: opts.ulen?.[id] ?? len });
    }
    packs.set(pack, buf);
  }
  const ranges: [string, number, number][] = [];
  const alone: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const src: BlobReaderSource = {
    locate: (id) => where.get(id),
    loadRange: async (pack, offset, length) => {
      ranges.push([pack, offset, length]);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, 2));
      inFlight--;
      if (opts.missingPacks?.has(pack)) throw new Error(`pack ${pack} is gone`);
      return Buffer.from(packs.get(pack)!.subarray(offset, offset + length));
    },
    open: async (id, at, sealed) => {
      if (opts.broken?.has(id) || !sealed.equals(content(id, at.length))) throw new Error(`blob ${id} does not verify`);
      const plain = Buffer.from(sealed);
      // As the workers do: a view spanning its whole buffer is transferred, which detaches the buffer.
      if (sealed.byteOffset === 0 && sealed.byteLength === sealed.buffer.byteLength) structuredClone(sealed.buffer, { transfer: [sealed.buffer as ArrayBuffer] });
      return plain;
    },
    loadBlob: async (id) => {
      alone.push(id);
      const at = where.get(id);
      if (!at) throw new Error(`blob ${id} is not in the index`);
      if (opts.missingPacks?.has(at.pack)) throw new Error(`pack ${at.pack} is gone (alone)`);
      return content(id, at.length);
    },
  };
  return { src, ranges, alone, content, maxInFlight: () => maxInFlight };
}

async function all(g: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const b of g) out.push(b);
  return out;
}

describe('BlobReader', () => {
  it('ends a run where its plaintexts would pass the run size, though its range is far shorter (blobs that compress)', async () => {
    const blobs: [string, number, number][] = ['a', 'b', 'c', 'd', 'e'].map((id, i) => [id, i * 100, 100]);
    const f = fake({ p: blobs }, { ulen: { a: 1000, b: 1000, c: 1000, d: 1000, e: 1000 } });
    const r = new BlobReader(f.src, { connections: 1, memoryBytes: 1 << 20, maxRunBytes: 2500 });
    const got = await all(r.blobs(['a', 'b', 'c', 'd', 'e']));
    expect(got.map((b) => String.fromCharCode(b[0]!))).toEqual(['a', 'b', 'c', 'd', 'e']);
    // Two blobs' plaintexts (2000 bytes) to a run: the 500-byte range alone would have been one read.
    expect(f.ranges).toEqual([
      ['p', 0, 200],
      ['p', 200, 200],
      ['p', 400, 100],
    ]);
  });

  it('gives every asker of a blob repeated in a run its bytes, though opening one detaches the read buffer', async () => {
    const f = fake({ p: [['a', 0, 5000]] });
    const r = new BlobReader(f.src, { connections: 2, memoryBytes: 1 << 20 });
    const got = await all(r.blobs(['a', 'a', 'a']));
    expect(got.map((b) => b.length)).toEqual([5000, 5000, 5000]);
    expect(got.every((b) => b.equals(f.content('a', 5000)))).toBe(true);
    expect(f.alone).toEqual([]);
  });

  it('reads neighbours of a pack with one range, gaps read through, in the order asked', async () => {
    const f = fake({
      p: [
        ['a', 0, 100],
        ['b', 100, 100],
        ['c', 250, 100], // 50-byte gap
        ['d', 10_000, 100], // beyond the gap limit
      ],
      q: [['e', 0, 100]],
    });
    const r = new BlobReader(f.src, { connections: 2, memoryBytes: 1 << 20, maxGapBytes: 1000 });
    const got = await all(r.blobs(['a', 'e', 'b', 'c', 'd']));
    expect(got.map((b) => String.fromCharCode(b[0]!))).toEqual(['a', 'e', 'b', 'c', 'd']);
    expect(got.every((b) => b.length === 100)).toBe(true);
    expect(f.ranges).toEqual([
      ['p', 0, 350],
      ['q', 0, 100],
      ['p', 10_000, 100],
    ]);
    expect(f.alone).toEqual([]);
  });

  it('bounds a range, the reads in flight and (through its budget) how far it reads ahead', async () => {
    const blobs: [string, number, number][] = [];
    for (let i = 0; i < 64; i++) blobs.push([`x${i}`, i * 1000, 1000]);
    const f = fake({ p: blobs });
    const r = new BlobReader(f.src, { connections: 2, memoryBytes: 6 * 5096, maxRunBytes: 3000 });
    const got = await all(r.blobs(blobs.map(([id]) => id)));
    expect(got).toHaveLength(64);
    expect(f.ranges.every(([, , len]) => len <= 3000)).toBe(true);
    expect(f.maxInFlight()).toBeLessThanOrEqual(2);
  });

  it('a blob that does not verify, or a range that fails, is read again on its own; its error surfaces in order', async () => {
    const f = fake({ p: [['a', 0, 10], ['b', 10, 10], ['c', 20, 10]], q: [['d', 0, 10]] }, { broken: new Set(['b']), missingPacks: new Set(['q']) });
    const r = new BlobReader(f.src, { connections: 4, memoryBytes: 1 << 20 });
    const got = await all(r.blobs(['a', 'b', 'c']));
    expect(got.map((b) => String.fromCharCode(b[0]!))).toEqual(['a', 'b', 'c']);
    expect(f.alone).toEqual(['b']);
    const g = r.blobs(['a', 'd', 'c']);
    expect(String.fromCharCode((await g.next()).value![0]!)).toBe('a');
    await expect(g.next()).rejects.toThrow(/gone \(alone\)/);
    await expect(all(r.blobs(['zz']))).rejects.toThrow(/not in the index/);
  });

  it('a consumer that stops early gives its budget back: other lists still read', async () => {
    const blobs: [string, number, number][] = [];
    for (let i = 0; i < 40; i++) blobs.push([`y${i}`, i * 1000, 1000]);
    const f = fake({ p: blobs });
    const r = new BlobReader(f.src, { connections: 1, memoryBytes: 4 * 5096 });
    for await (const _ of r.blobs(blobs.map(([id]) => id))) break;
    const got = await all(r.blobs(blobs.slice(0, 10).map(([id]) => id)));
    expect(got).toHaveLength(10);
  });

  describe('with a source that opens whole runs', () => {
    /** The fake above, plus openRun: each run's plaintexts share one buffer, whose release is counted. */
    function runFake(layout: Parameters<typeof fake>[0], opts: Parameters<typeof fake>[1] = {}) {
      const f = fake(layout, opts);
      const runs: { ids: string[]; released: number; whole: Buffer }[] = [];
      f.src.openRun = async (range, start, blobs) => {
        const whole = Buffer.alloc(blobs.reduce((n, b) => n + b.at.length, 0));
        const run = { ids: blobs.map((b) => b.id), released: 0, whole };
        runs.push(run);
        let at = 0;
        const plains = blobs.map(({ id, at: loc }) => {
          const sealed = range.subarray(loc.offset - start, loc.offset - start + loc.length);
          if (opts.broken?.has(id) || !sealed.equals(f.content(id, loc.length))) return undefined;
          sealed.copy(whole, at);
          at += loc.length;
          return whole.subarray(at - loc.length, at);
        });
        return { plains, release: () => run.released++ };
      };
      return { ...f, runs };
    }

    it('hands each blob of a run to its consumer in order, and releases the run once the last is done with', async () => {
      const f = runFake({ p: [['a', 0, 100], ['b', 100, 100], ['c', 200, 100]] });
      const r = new BlobReader(f.src, { connections: 2, memoryBytes: 1 << 20 });
      const g = r.blobs(['a', 'b', 'c', 'a']);
      const seen: string[] = [];
      for (;;) {
        const next = await g.next();
        if (next.done) break;
        seen.push(String.fromCharCode(next.value[0]!));
        // Still the consumer's: nothing released while any blob of the run is out.
        if (seen.length < 3) expect(f.runs[0]!.released).toBe(0);
      }
      expect(seen).toEqual(['a', 'b', 'c', 'a']);
      expect(f.ranges).toEqual([['p', 0, 300]]);
      expect(f.runs.map((x) => [x.ids, x.released])).toEqual([[['a', 'b', 'c', 'a'], 1]]);
      expect(f.alone).toEqual([]);
    });

    it('a blob the run could not open is read again on its own; a consumer that stops early still releases the run', async () => {
      const f = runFake({ p: [['a', 0, 10], ['b', 10, 10], ['c', 20, 10]] }, { broken: new Set(['b']) });
      const r = new BlobReader(f.src, { connections: 2, memoryBytes: 1 << 20 });
      const got = await all(r.blobs(['a', 'b', 'c']));
      expect(got.map((b) => String.fromCharCode(b[0]!))).toEqual(['a', 'b', 'c']);
      expect(f.alone).toEqual(['b']);
      expect(f.runs[0]!.released).toBe(1);

      for await (const _ of r.blobs(['a', 'c'])) break;
      // The blob never taken is given back once it arrives.
      await new Promise((res) => setImmediate(res));
      expect(f.runs[1]!.released).toBe(1);
    });

    it('a run the source fails to open as a whole is read blob by blob', async () => {
      const f = runFake({ p: [['a', 0, 10], ['b', 10, 10]] });
      f.src.openRun = () => Promise.reject(new Error('worker gone'));
      const r = new BlobReader(f.src, { connections: 2, memoryBytes: 1 << 20 });
      expect((await all(r.blobs(['a', 'b']))).map((b) => String.fromCharCode(b[0]!))).toEqual(['a', 'b']);
      expect(f.alone).toEqual(['a', 'b']);
    });
  });
});
