import { describe, expect, it } from 'vitest';
import { ReadAhead } from './read-ahead.js';

/** Packs as buffers, with a log of the ranged reads asked of "storage". */
function storage(packs: Record<string, Buffer>) {
  const reads: [string, number, number][] = [];
  const load = async (pack: string, offset: number, length: number): Promise<Buffer> => {
    reads.push([pack, offset, length]);
    const p = packs[pack];
    if (!p || offset + length > p.length) throw new Error(`pack ${pack} is shorter than expected`);
    return Buffer.from(p.subarray(offset, offset + length));
  };
  return { reads, load };
}

const pack = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

describe('ReadAhead', () => {
  it('serves blobs that follow each other from one read of a window', async () => {
    const a = pack(10_000, 1);
    const s = storage({ a });
    const ra = new ReadAhead(s.load, 4096, 2);
    for (let off = 0; off + 100 <= 4000; off += 100) expect((await ra.read('a', a.length, off, 100)).equals(a.subarray(off, off + 100))).toBe(true);
    expect(s.reads).toEqual([['a', 0, 4096]]);
    // Past the window: a new one, from the blob's own offset, never beyond the pack's end.
    expect((await ra.read('a', a.length, 8000, 500)).equals(a.subarray(8000, 8500))).toBe(true);
    expect(s.reads[1]).toEqual(['a', 8000, 2000]);
  });

  it('keeps a window per pack being read, up to its limit, and shares a read in progress', async () => {
    const packs = { a: pack(8192, 1), b: pack(8192, 2), c: pack(8192, 3) };
    const s = storage(packs);
    const ra = new ReadAhead(s.load, 4096, 2);
    const got = await Promise.all([ra.read('a', 8192, 0, 10), ra.read('a', 8192, 10, 10), ra.read('b', 8192, 0, 10)]);
    expect(got[1]!.equals(packs.a.subarray(10, 20))).toBe(true);
    expect(s.reads).toHaveLength(2);
    await ra.read('a', 8192, 20, 10);
    await ra.read('c', 8192, 0, 10); // evicts b, the least recently used
    await ra.read('a', 8192, 30, 10);
    await ra.read('b', 8192, 10, 10);
    expect(s.reads.map((r) => r[0])).toEqual(['a', 'b', 'c', 'b']);
  });

  it('reads a blob larger than a window, or past the end the index gives, on its own', async () => {
    const a = pack(10_000, 1);
    const s = storage({ a });
    const ra = new ReadAhead(s.load, 1024, 2);
    expect((await ra.read('a', a.length, 100, 2000)).equals(a.subarray(100, 2100))).toBe(true);
    expect(s.reads).toEqual([['a', 100, 2000]]);
  });

  it('falls back to the exact range when a window cannot be read (a pack shorter than the index says)', async () => {
    const a = pack(3000, 1);
    const s = storage({ a });
    const ra = new ReadAhead(s.load, 4096, 2);
    // The index claims 8000 bytes: the window read fails, the blob's own range still reads.
    expect((await ra.read('a', 8000, 100, 50)).equals(a.subarray(100, 150))).toBe(true);
    // A blob beyond the real end fails with the exact range's error.
    await expect(ra.read('a', 8000, 2990, 50)).rejects.toThrow(/shorter than expected/);
    expect(s.reads).toEqual([
      ['a', 100, 4096],
      ['a', 100, 50],
      ['a', 2990, 4096],
      ['a', 2990, 50],
    ]);
  });
});
