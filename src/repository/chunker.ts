// Content-defined chunking: FastCDC (Xia et al., USENIX ATC 2016) with normalised chunking and a
// 32-bit gear hash. Cut points depend only on the bytes of the chunk in progress, so an insertion
// moves the boundaries of one or two chunks and every later chunk deduplicates as before.
//
// The cut rule is part of the repository format (docs/repository-format.md §8): changing anything
// below changes every chunk boundary and defeats deduplication against existing snapshots.
//
// For a chunk starting at byte s, with b = the data and all arithmetic mod 2^32:
//
//   h = 0
//   for p = minSize, minSize+1, …, maxSize−1:        (the first minSize bytes are never hashed)
//     h = 2·h + G[b[s+p]]
//     if (h & (p < avgSize ? MASK_S : MASK_L)) == 0: the chunk is b[s .. s+p], length p+1; stop
//   otherwise the chunk has length maxSize (or ends with the stream, whichever is first)
//
//   with k = log2(avgSize):  MASK_S = the top k+2 bits of 32 set,  MASK_L = the top k−2 bits set
//
// The top bits are the ones to test: bit j of h depends on the last j+1 bytes only, so bit 31 sees a
// 32-byte window and bit 0 a single byte. The stricter mask below the average and the looser one
// above it ("normalisation level 2" in the paper) pull sizes towards the average. Because the first
// minSize bytes can never cut, the mean lands above avgSize: about 1.2 × avgSize for the defaults
// (min = avg/2) and 1.1 × for min = avg/4. Level 1 would put the defaults near 1.33 ×.
import { createHash } from 'node:crypto';
import { nativeHelpers, type NativeHelpers } from '../util/native.js';

export interface ChunkerParams {
  minSize: number;
  /** A power of two. */
  avgSize: number;
  maxSize: number;
}

export const DEFAULT_CHUNKER_PARAMS: ChunkerParams = Object.freeze({ minSize: 512 * 1024, avgSize: 1024 * 1024, maxSize: 8 * 1024 * 1024 });

/** Bits of normalisation: MASK_S has log2(avg) + NORMALIZATION bits, MASK_L log2(avg) − NORMALIZATION. */
const NORMALIZATION = 2;

/**
 * Gear table derived from a per-repository secret so chunk boundaries don't fingerprint content across repositories.
 *
 * Derivation (part of the repository format):
 *
 *     G[i] for i in 0..255 = u32le( SHA-256(seed ‖ u32le(⌊i / 8⌋)) [4·(i mod 8) .. 4·(i mod 8)+3] )
 *
 * i.e. 32 SHA-256 blocks in counter mode (seed followed by a 4-byte little-endian counter 0..31),
 * their 32 × 32 bytes concatenated and read as 256 little-endian unsigned 32-bit integers.
 */
export function gearTable(seed: Uint8Array): Uint32Array {
  if (seed.length === 0) throw new Error('chunker: empty gear seed');
  const bytes = Buffer.alloc(256 * 4);
  const counter = Buffer.alloc(4);
  for (let block = 0; block < 32; block++) {
    counter.writeUInt32LE(block, 0);
    createHash('sha256').update(seed).update(counter).digest().copy(bytes, block * 32);
  }
  const g = new Uint32Array(256);
  for (let i = 0; i < 256; i++) g[i] = bytes.readUInt32LE(i * 4);
  return g;
}

/** Where the chunk in progress stands, so a scan can resume on the next piece of a stream. */
interface ScanState {
  /** Bytes of the chunk already consumed (skipped or hashed). */
  pos: number;
  h: number;
}

/** Validated parameters and masks; one per Chunker, read by the scan loop. */
class Rule {
  readonly min: number;
  readonly avg: number;
  readonly max: number;
  readonly maskS: number;
  readonly maskL: number;
  /** Int32Array, not Uint32Array: entries ≥ 2^31 would leave V8's small-integer fast path. */
  readonly gear: Int32Array;

  constructor(params: ChunkerParams, gear: Uint32Array) {
    const { minSize: min, avgSize: avg, maxSize: max } = params;
    if (![min, avg, max].every(Number.isSafeInteger)) throw new Error(`chunker: sizes must be integers, got ${min} / ${avg} / ${max}`);
    if (!(min > 0 && min < avg && avg < max)) throw new Error(`chunker: need 0 < minSize < avgSize < maxSize, got ${min} / ${avg} / ${max}`);
    const bits = Math.log2(avg);
    // Below 2^(NORMALIZATION+1) MASK_L would be empty; above 2^30 MASK_S would not fit in 32 bits.
    if (!Number.isInteger(bits) || bits <= NORMALIZATION || bits + NORMALIZATION > 32) {
      throw new Error(`chunker: avgSize must be a power of two between 2^${NORMALIZATION + 1} and 2^${32 - NORMALIZATION}, got ${avg}`);
    }
    if (max > 2 ** 31 - 1) throw new Error(`chunker: maxSize ${max} is too large`);
    if (gear.length !== 256) throw new Error(`chunker: gear table needs 256 entries, got ${gear.length}`);
    this.min = min;
    this.avg = avg;
    this.max = max;
    this.maskS = topBits(bits + NORMALIZATION);
    this.maskL = topBits(bits - NORMALIZATION);
    this.gear = new Int32Array(256);
    this.gear.set(new Int32Array(gear.buffer, gear.byteOffset, 256));
  }

  /**
   * The length of a chunk of zeros, as scan() would cut it, without a buffer to scan. Over zeros the gear
   * hash settles: each byte shifts one bit out and adds the same table entry, so after 32 bytes it
   * equals -gear[0] for good, and every later position tests that same value.
   */
  zeroLength(): number {
    const g0 = this.gear[0]!;
    let h = 0;
    let i = this.min;
    for (let k = 0; k < 32 && i < this.max; k++, i++) {
      h = ((h << 1) + g0) | 0;
      if ((h & (i < this.avg ? this.maskS : this.maskL)) === 0) return i + 1;
    }
    if (i < this.avg) {
      if ((h & this.maskS) === 0) return i + 1;
      i = this.avg;
    }
    if (i < this.max && (h & this.maskL) === 0) return i + 1;
    return this.max;
  }

  /**
   * Continues the chunk described by `st` over data[from..to). Returns the index just past the chunk's
   * last byte, or -1 when data ran out first (st then describes the chunk so far).
   */
  scan(data: Uint8Array, from: number, to: number, st: ScanState): number {
    // Index of the chunk's first byte (may lie before `from`, in an earlier piece): p = i − base.
    const base = from - st.pos;
    let i = from;
    if (st.pos < this.min) {
      i = Math.min(to, base + this.min);
      if (i === to) {
        st.pos = i - base;
        return -1;
      }
    }
    const g = this.gear;
    let h = st.h;
    let stop = Math.min(to, base + this.avg);
    if (i < stop) {
      const m = this.maskS;
      for (; i < stop; i++) {
        h = ((h << 1) + g[data[i]!]!) | 0;
        if ((h & m) === 0) return i + 1;
      }
    }
    stop = Math.min(to, base + this.max);
    if (i < stop) {
      const m = this.maskL;
      for (; i < stop; i++) {
        h = ((h << 1) + g[data[i]!]!) | 0;
        if ((h & m) === 0) return i + 1;
      }
    }
    if (i - base === this.max) return i;
    st.pos = i - base;
    st.h = h;
    return -1;
  }

  /**
   * scan() of a chunk that starts at data[from]: in native code when it was built (about three times
   * the speed of the JavaScript loop, same result; chunker.test.ts compares the two).
   */
  fresh(data: Uint8Array, from: number, to: number, st: ScanState, native: NativeHelpers | undefined): number {
    if (native) return native.gearCut(data, from, to, this.min, this.avg, this.max, this.maskS >>> 0, this.maskL >>> 0, this.gear);
    st.pos = 0;
    st.h = 0;
    return this.scan(data, from, to, st);
  }
}

function topBits(n: number): number {
  return (-1 << (32 - n)) | 0;
}

// Lets chunkStream resume scans across input pieces without making that a public method of Chunker.
let ruleOf: (c: Chunker) => Rule;

/** Compared against in slices: zero runs are checked with memcmp, not byte by byte. */
const ZERO_SLICE = new Uint8Array(64 * 1024);

export class Chunker {
  readonly #rule: Rule;
  /** Reused by cut(): it is synchronous, so calls never overlap. */
  readonly #st: ScanState = { pos: 0, h: 0 };
  #zeroLength: number | undefined;
  #lastWasZero = false;
  /** The native cut, unless built without it or asked not to (tests compare both). */
  readonly #native: NativeHelpers | undefined;

  static {
    ruleOf = (c) => c.#rule;
  }

  constructor(params: ChunkerParams, gear: Uint32Array, opts: { native?: boolean } = {}) {
    this.#rule = new Rule(params, gear);
    this.#native = opts.native === false ? undefined : nativeHelpers();
  }

  /**
   * The length of a chunk cut from a long run of zero bytes. The rule depends only on the chunk's own
   * bytes, so every chunk that starts inside such a run (a hole of a sparse file) has this length:
   * usually maxSize, shorter for the rare gear table whose hash of zeros matches a mask.
   */
  get zeroLength(): number {
    // Every backup and restore asks once: scanning maxSize zeros took 40 ms and 8 MiB of fresh memory.
    this.#zeroLength ??= this.#rule.zeroLength();
    return this.#zeroLength;
  }

  /** Whether the last chunk cut() returned was all zeros, zeroLength long (its blob id is known without hashing). */
  get lastWasZero(): boolean {
    return this.#lastWasZero;
  }

  /** Returns the length of the chunk that starts at data[start], looking at data[start..end). If fewer than maxSize bytes are available and !final, returns 0 when no cut point was found (caller must supply more data); when final, returns at most end-start. */
  cut(data: Uint8Array, start: number, end: number, final: boolean): number {
    if (!(Number.isInteger(start) && Number.isInteger(end) && start >= 0 && start <= end && end <= data.length)) {
      throw new Error(`chunker: bad range ${start}..${end} of ${data.length} bytes`);
    }
    // A run of zeros (a hole) is cut without hashing: the result is the same, found at memcmp speed.
    this.#lastWasZero = data[start] === 0 && end - start >= this.zeroLength && allZero(data, start, start + this.zeroLength);
    if (this.#lastWasZero) return this.zeroLength;
    const r = this.#rule.fresh(data, start, end, this.#st, this.#native);
    if (r >= 0) return r - start;
    return final ? end - start : 0;
  }
}

function allZero(data: Uint8Array, from: number, to: number): boolean {
  const b = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let at = from; at < to; at += ZERO_SLICE.length) {
    const n = Math.min(ZERO_SLICE.length, to - at);
    if (b.compare(ZERO_SLICE, 0, n, at, at + n) !== 0) return false;
  }
  return true;
}

/**
 * Convenience stream splitter for callers: takes an async iterable of buffers of any size, yields
 * chunk Buffers (copies only when a chunk spans input buffers). Memory bounded by ~2×maxSize.
 *
 * A chunk that lies within one input buffer is yielded as a view of it, so the source must not
 * reuse or overwrite a buffer after handing it over. Boundaries are the same as cut() gives on the
 * whole stream at once, however the input is split.
 */
export async function* chunkStream(source: AsyncIterable<Uint8Array>, chunker: Chunker): AsyncGenerator<Buffer> {
  const rule = ruleOf(chunker);
  const st: ScanState = { pos: 0, h: 0 };
  // Earlier pieces of the chunk in progress; together shorter than maxSize, since a scan never runs past it.
  let held: Uint8Array[] = [];
  for await (const piece of source) {
    let at = 0;
    while (at < piece.length) {
      const end = rule.scan(piece, at, piece.length, st);
      if (end < 0) {
        held.push(piece.subarray(at));
        break;
      }
      const tail = piece.subarray(at, end);
      yield held.length === 0 ? view(tail) : Buffer.concat([...held, tail]);
      held = [];
      st.pos = 0;
      st.h = 0;
      at = end;
    }
  }
  if (held.length > 0) yield held.length === 1 ? view(held[0]!) : Buffer.concat(held);
}

function view(a: Uint8Array): Buffer {
  return Buffer.isBuffer(a) ? a : Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}
