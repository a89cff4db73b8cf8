import { createCipheriv, createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { nativeHelpers } from '../util/native.js';
import { Chunker, chunkStream, DEFAULT_CHUNKER_PARAMS, gearTable, type ChunkerParams } from './chunker.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SMALL: ChunkerParams = { minSize: 64 * KiB, avgSize: 256 * KiB, maxSize: 1 * MiB };
const SEED = Buffer.alloc(32, 0x42);
// Test vector (docs/repository-format.md): seed 0x42 × 32, params SMALL, data from vectorData(8 MiB).
// Byte offsets where the first five chunks end (chunk lengths 227713, 480743, 273861, 337262,
// 320566), and how many chunks the 8 MiB make.
const VECTOR_FIRST_CUTS = [227_713, 708_456, 982_317, 1_319_579, 1_640_145];
const VECTOR_CHUNKS = 31;

/** Deterministic incompressible bytes (AES-256-CTR keystream), so a failure reproduces. */
function noise(bytes: number, key = 1): Buffer {
  return createCipheriv('aes-256-ctr', Buffer.alloc(32, key), Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

/** The test-vector stream: data[32k .. 32k+31] = SHA-256(0x01 × 32 ‖ u32le(k)). */
function vectorData(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  const key = Buffer.alloc(32, 0x01);
  const ctr = Buffer.alloc(4);
  for (let k = 0; k * 32 < bytes; k++) {
    ctr.writeUInt32LE(k, 0);
    createHash('sha256').update(key).update(ctr).digest().copy(out, k * 32);
  }
  return out;
}

function lengths(chunker: Chunker, data: Uint8Array): number[] {
  const out: number[] = [];
  for (let at = 0; at < data.length; ) {
    const n = chunker.cut(data, at, data.length, true);
    expect(n).toBeGreaterThan(0);
    out.push(n);
    at += n;
  }
  return out;
}

function offsets(lens: number[]): number[] {
  let at = 0;
  return lens.map((n) => (at += n));
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function* pieces(data: Buffer, size: (i: number) => number): AsyncGenerator<Uint8Array> {
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = size(i);
    // Plain Uint8Array views as well as Buffers: sources may hand over either.
    yield i % 2 === 0 ? data.subarray(at, at + n) : new Uint8Array(data.buffer, data.byteOffset + at, Math.min(n, data.length - at));
    at += n;
  }
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const b of it) out.push(b);
  return out;
}

describe('gearTable', () => {
  it('is the documented SHA-256 counter-mode derivation', () => {
    const g = gearTable(SEED);
    expect(g).toHaveLength(256);
    const blocks: Buffer[] = [];
    for (let k = 0; k < 32; k++) {
      const ctr = Buffer.alloc(4);
      ctr.writeUInt32LE(k);
      blocks.push(createHash('sha256').update(Buffer.concat([SEED, ctr])).digest());
    }
    const all = Buffer.concat(blocks);
    for (let i = 0; i < 256; i++) expect(g[i]).toBe(all.readUInt32LE(4 * i));
    expect(gearTable(Buffer.alloc(32, 0x42))).toEqual(g);
    expect(gearTable(Buffer.alloc(32, 0x43))).not.toEqual(g);
  });

  it('refuses an empty seed', () => {
    expect(() => gearTable(new Uint8Array(0))).toThrow();
  });
});

describe('Chunker', () => {
  const gear = gearTable(SEED);

  it('rejects bad parameters', () => {
    const bad: ChunkerParams[] = [
      { minSize: 0, avgSize: 1024, maxSize: 4096 },
      { minSize: 1024, avgSize: 1024, maxSize: 4096 },
      { minSize: 512, avgSize: 4096, maxSize: 4096 },
      { minSize: 512, avgSize: 3000, maxSize: 8192 },
      { minSize: 1.5, avgSize: 1024, maxSize: 4096 },
      { minSize: 1, avgSize: 4, maxSize: 8 },
    ];
    for (const p of bad) expect(() => new Chunker(p, gear), JSON.stringify(p)).toThrow();
    expect(() => new Chunker(SMALL, new Uint32Array(255))).toThrow();
    expect(() => new Chunker(DEFAULT_CHUNKER_PARAMS, gear)).not.toThrow();
  });

  it('pins boundaries to a test vector, in native code and in JavaScript', () => {
    // Copied into docs/repository-format.md; a change here is a repository format change.
    for (const native of [true, false]) {
      const chunker = new Chunker(SMALL, gearTable(Buffer.alloc(32, 0x42)), { native });
      const lens = lengths(chunker, vectorData(8 * MiB));
      expect(offsets(lens).slice(0, 5)).toEqual(VECTOR_FIRST_CUTS);
      expect(lens.length).toBe(VECTOR_CHUNKS);
    }
  });

  it('cuts the same in native code as in JavaScript, whole or in windows, for many seeds and sizes', () => {
    expect(nativeHelpers(), 'the native helpers were not built (npm run build)').toBeDefined();
    const params: ChunkerParams[] = [SMALL, DEFAULT_CHUNKER_PARAMS, { minSize: 64, avgSize: 256, maxSize: 1024 }, { minSize: 4096, avgSize: 8192, maxSize: 65536 }];
    const data = Buffer.concat([noise(3 * MiB, 7), Buffer.alloc(2 * MiB), vectorData(2 * MiB), Buffer.alloc(100_000, 0xff), noise(MiB, 8)]);
    for (const [k, p] of params.entries()) {
      const g = gearTable(Buffer.alloc(32, k + 1));
      const native = new Chunker(p, g, { native: true });
      const js = new Chunker(p, g, { native: false });
      // Windows that end before a cut (the caller must give more) as well as final ones.
      for (let at = 0; at < data.length; at += 77_777) {
        for (const len of [10, p.minSize + 1, p.avgSize, p.maxSize + 5, 3 * p.maxSize]) {
          const end = Math.min(data.length, at + len);
          for (const final of [false, true]) expect(native.cut(data, at, end, final), `params ${k} at ${at} len ${len}`).toBe(js.cut(data, at, end, final));
        }
      }
      expect(lengths(native, data)).toEqual(lengths(js, data));
    }
  });

  it('reassembles the input, respects min and max, and is deterministic for a seed', () => {
    const data = noise(16 * MiB);
    const chunker = new Chunker(SMALL, gear);
    const lens = lengths(chunker, data);
    expect(lens.reduce((a, b) => a + b, 0)).toBe(data.length);
    for (const n of lens.slice(0, -1)) {
      expect(n).toBeGreaterThanOrEqual(SMALL.minSize);
      expect(n).toBeLessThanOrEqual(SMALL.maxSize);
    }
    expect(lens.at(-1)).toBeLessThanOrEqual(SMALL.maxSize);
    expect(lengths(new Chunker(SMALL, gearTable(SEED)), data)).toEqual(lens);
  });

  it('cuts runs of zeros (holes) exactly where hashing them would, for seeds whose zero chunks are full or short', async () => {
    const tiny: ChunkerParams = { minSize: 64, avgSize: 256, maxSize: 1024 };
    // Most gear tables never cut inside zeros (zero chunks are maxSize); find one that does.
    let shortSeed = 0;
    while (new Chunker(tiny, gearTable(Buffer.from([shortSeed & 0xff, shortSeed >> 8]))).zeroLength === tiny.maxSize) shortSeed++;
    const cases: [ChunkerParams, Buffer][] = [
      [SMALL, SEED],
      [tiny, SEED],
      [tiny, Buffer.from([shortSeed & 0xff, shortSeed >> 8])],
    ];
    for (const [params, seed] of cases) {
      const chunker = new Chunker(params, gearTable(seed));
      // The zero chunk's length is worked out, not scanned for: the same as hashing zeros finds.
      expect(chunker.zeroLength).toBe((await collect(chunkStream(pieces(Buffer.alloc(params.maxSize + 1), () => 4096), chunker)))[0]!.length);
      // Zero runs of many lengths between data, starting at and off chunk boundaries, and a zero tail.
      const parts: Buffer[] = [];
      for (const z of [0, 1, params.minSize, chunker.zeroLength - 1, chunker.zeroLength, 3 * params.maxSize + 17, 10 * params.maxSize]) {
        parts.push(noise(params.avgSize + z, z + 7), Buffer.alloc(z));
      }
      const data = Buffer.concat(parts);
      // chunkStream scans with the hash only: the reference.
      const reference = (await collect(chunkStream(pieces(data, () => 4096), chunker))).map((c) => c.length);
      expect(lengths(chunker, data)).toEqual(reference);
    }
    expect(new Chunker(SMALL, gearTable(SEED)).zeroLength).toBe(SMALL.maxSize);
    expect(new Chunker(tiny, gearTable(Buffer.from([shortSeed & 0xff, shortSeed >> 8]))).zeroLength).toBeLessThan(tiny.maxSize);
  });

  it('works out the zero chunk’s length as hashing zeros would find it, for hundreds of gear tables', async () => {
    // Small sizes, so that many tables cut inside zeros (in either half of the normalized range).
    for (const params of [
      { minSize: 64, avgSize: 256, maxSize: 1024 },
      { minSize: 16, avgSize: 64, maxSize: 4096 },
      // The hash settles only after avgSize: the switch to the wider mask comes while it still moves.
      { minSize: 50, avgSize: 64, maxSize: 512 },
    ] satisfies ChunkerParams[]) {
      const lengths = new Set<number>();
      for (let seed = 0; seed < 400; seed++) {
        const chunker = new Chunker(params, gearTable(Buffer.from([seed & 0xff, seed >> 8, 7])));
        const scanned = (await collect(chunkStream(pieces(Buffer.alloc(params.maxSize + 1), () => 333), chunker)))[0]!.length;
        expect(chunker.zeroLength, `seed ${seed}`).toBe(scanned);
        lengths.add(scanned);
      }
      // Not only full zero chunks: the cases that cut early were covered too.
      expect(lengths.size).toBeGreaterThan(2);
    }
  });

  it('cuts elsewhere under another seed', () => {
    const data = noise(16 * MiB);
    const a = new Set(offsets(lengths(new Chunker(SMALL, gear), data)));
    const b = offsets(lengths(new Chunker(SMALL, gearTable(Buffer.alloc(32, 0x43))), data));
    // The end of the data is always a cut; chance agreement elsewhere is rare.
    expect(b.filter((o) => a.has(o)).length).toBeLessThanOrEqual(3);
  });

  it('averages near avgSize on random data', () => {
    const data = noise(64 * MiB);
    const lens = lengths(new Chunker(DEFAULT_CHUNKER_PARAMS, gear), data);
    const mean = data.length / lens.length;
    expect(mean).toBeGreaterThan(0.7 * DEFAULT_CHUNKER_PARAMS.avgSize);
    expect(mean).toBeLessThan(1.3 * DEFAULT_CHUNKER_PARAMS.avgSize);
  });

  it('keeps later chunks when bytes are inserted at the start', () => {
    const data = noise(32 * MiB);
    const chunker = new Chunker(DEFAULT_CHUNKER_PARAMS, gear);
    const split = (d: Buffer): string[] => {
      const out: string[] = [];
      let at = 0;
      for (const n of lengths(chunker, d)) out.push(sha(d.subarray(at, (at += n))));
      return out;
    };
    const before = split(data);
    const after = split(Buffer.concat([Buffer.from('hello'), data]));
    expect(before.length).toBeGreaterThan(10);
    const known = new Set(before);
    const changed = after.filter((h) => !known.has(h));
    expect(changed.length).toBeLessThanOrEqual(2);
    expect(after.slice(-(before.length - 2))).toEqual(before.slice(2));
  });

  it('asks for more data only while fewer than maxSize bytes are available', () => {
    const p: ChunkerParams = { minSize: 1024, avgSize: 4096, maxSize: 16384 };
    const chunker = new Chunker(p, gear);
    const data = noise(1 << 20);
    const whole = lengths(chunker, data);
    const first = whole[0]!;
    // Not enough data to decide: 0, never a premature cut.
    expect(chunker.cut(data, 0, first - 1, false)).toBe(0);
    expect(chunker.cut(data, 0, first, false)).toBe(first);
    expect(chunker.cut(data, 0, first - 1, true)).toBe(first - 1);
    expect(chunker.cut(data, 0, 10, true)).toBe(10);
    expect(chunker.cut(data, 5, 5, true)).toBe(0);
    // Offsets are relative to start, wherever start lies.
    expect(chunker.cut(data, first, data.length, false)).toBe(whole[1]);
    // A run with no cut point (all zeros never matches for this seed, or matches at once) ends at maxSize.
    const zeros = new Uint8Array(3 * p.maxSize);
    const z = chunker.cut(zeros, 0, zeros.length, false);
    expect(z === p.maxSize || z === p.minSize + 1).toBe(true);
    expect(() => chunker.cut(data, 10, 5, true)).toThrow();
    expect(() => chunker.cut(data, 0, data.length + 1, true)).toThrow();
  });
});

describe('chunkStream', () => {
  const chunker = new Chunker(SMALL, gearTable(SEED));
  const data = noise(12 * MiB + 12345);
  const expected = lengths(chunker, data);

  it.each([
    ['1 KiB', () => KiB],
    ['1 MiB', () => MiB],
    ['odd sizes', (i: number) => [1, 7919, 65537, 3 * MiB + 1, 0, 300_001][i % 6]!],
    ['one piece', () => data.length],
  ])('gives the same boundaries for %s pieces', async (_name, size) => {
    const chunks = await collect(chunkStream(pieces(data, size), chunker));
    expect(chunks.map((c) => c.length)).toEqual(expected);
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
  });

  it('yields views, not copies, of chunks inside one input buffer', async () => {
    const chunks = await collect(chunkStream(pieces(data, () => data.length), chunker));
    // A boolean, not toBe(): on failure vitest would try to print both 12 MiB buffers.
    expect(chunks.every((c) => c.buffer === data.buffer)).toBe(true);
  });

  it('yields nothing for an empty stream', async () => {
    expect(await collect(chunkStream(pieces(Buffer.alloc(0), () => KiB), chunker))).toEqual([]);
  });
});
