// Files of fixed-size records sorted by their first 32 bytes (a blob or pack id), for an index that
// lives on disk instead of in memory (index-cache.ts). Ids are keyed hashes, so they are uniformly
// spread: a table of where each of 2^bits id prefixes starts (the summary, kept in memory) sends a
// lookup to a bucket of a few dozen records, read with one pread.
//
// Layout: records ‖ summary (2^bits + 1 × u32le: first record of each prefix, then the count) ‖
// trailer (magic "BWSF" ‖ u32le record size ‖ u32le count ‖ u32le bits). Local cache files only,
// never stored in a repository.
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

export const SORT_KEY_BYTES = 32;
const MAGIC = 0x46535742; // "BWSF"
const TRAILER_BYTES = 16;
/** Aim for this many records per bucket: one pread of a few KB per lookup. */
const RECORDS_PER_BUCKET = 32;
/** At most 2^21 buckets: an 8 MiB summary, whatever the count. */
const MAX_BITS = 21;
const WRITE_BUFFER_BYTES = 1024 * 1024;
const READ_BUFFER_BYTES = 16 * 1024;

export class SortedFileError extends Error {}

function bitsFor(count: number): number {
  let bits = 0;
  while (bits < MAX_BITS && count / 2 ** bits > RECORDS_PER_BUCKET) bits++;
  return bits;
}

/** The first 4 bytes of a key as a number: the sort and merge order is this, then the whole key. */
function prefix(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) >>> 0) + (buf[at + 1]! << 16) + (buf[at + 2]! << 8) + buf[at + 3]!;
}

export function compareKeys(a: Uint8Array, aAt: number, b: Uint8Array, bAt: number): number {
  const pa = prefix(a, aAt);
  const pb = prefix(b, bAt);
  if (pa !== pb) return pa < pb ? -1 : 1;
  return Buffer.compare(a.subarray(aAt + 4, aAt + SORT_KEY_BYTES), b.subarray(bAt + 4, bAt + SORT_KEY_BYTES));
}

/** Writes records in key order (the caller's promise; checked) and the summary after them. */
export class SortedFileWriter {
  private readonly fd: number;
  private readonly buf = Buffer.allocUnsafe(WRITE_BUFFER_BYTES);
  private used = 0;
  private written = 0;
  private readonly bits: number;
  private readonly summary: Uint32Array;
  private readonly last: Buffer;
  private hasLast = false;

  constructor(
    readonly path: string,
    private readonly recordBytes: number,
    /** Exactly how many records will be written (sizes the summary). */
    private readonly count: number,
  ) {
    this.fd = openSync(path, 'w', 0o600);
    this.bits = bitsFor(count);
    this.summary = new Uint32Array(2 ** this.bits + 1).fill(0xffffffff);
    this.last = Buffer.alloc(recordBytes);
  }

  add(rec: Uint8Array, at = 0): void {
    if (this.hasLast && compareKeys(this.last, 0, rec, at) > 0) throw new SortedFileError(`records out of order in ${this.path}`);
    const bucket = this.bits === 0 ? 0 : prefix(rec, at) >>> (32 - this.bits);
    if (this.summary[bucket] === 0xffffffff) this.summary[bucket] = this.written;
    this.last.set(rec.subarray(at, at + this.recordBytes));
    this.hasLast = true;
    if (this.used + this.recordBytes > this.buf.length) this.drain();
    this.buf.set(rec.subarray(at, at + this.recordBytes), this.used);
    this.used += this.recordBytes;
    this.written++;
  }

  private drain(): void {
    let off = 0;
    while (off < this.used) off += writeSync(this.fd, this.buf, off, this.used - off);
    this.used = 0;
  }

  finish(): void {
    if (this.written !== this.count) throw new SortedFileError(`${this.path}: ${this.written} records written, ${this.count} announced`);
    this.drain();
    // Empty buckets start where the next non-empty one does.
    this.summary[this.summary.length - 1] = this.count;
    for (let i = this.summary.length - 2; i >= 0; i--) if (this.summary[i] === 0xffffffff) this.summary[i] = this.summary[i + 1]!;
    const tail = Buffer.alloc(this.summary.byteLength + TRAILER_BYTES);
    for (let i = 0; i < this.summary.length; i++) tail.writeUInt32LE(this.summary[i]!, i * 4);
    const t = this.summary.byteLength;
    tail.writeUInt32LE(MAGIC, t);
    tail.writeUInt32LE(this.recordBytes, t + 4);
    tail.writeUInt32LE(this.count, t + 8);
    tail.writeUInt32LE(this.bits, t + 12);
    let off = 0;
    while (off < tail.length) off += writeSync(this.fd, tail, off, tail.length - off);
    closeSync(this.fd);
  }

  abort(): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}

/** An open sorted file: lookups by key, and a sequential scan. */
export class SortedFile {
  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly recordBytes: number,
    readonly count: number,
    private readonly bits: number,
    private readonly summary: Uint32Array,
    /** The records, when small enough to hold: lookups then make no system call. */
    private readonly resident: Buffer | undefined,
  ) {}

  /** Opens a sorted file; one whose records fit in `residentBytes` is read whole. */
  static open(path: string, recordBytes: number, residentBytes = 0): SortedFile {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const t = Buffer.alloc(TRAILER_BYTES);
      if (size < TRAILER_BYTES || readSync(fd, t, 0, TRAILER_BYTES, size - TRAILER_BYTES) !== TRAILER_BYTES) throw new SortedFileError(`${path} is truncated`);
      const count = t.readUInt32LE(8);
      const bits = t.readUInt32LE(12);
      if (t.readUInt32LE(0) !== MAGIC || t.readUInt32LE(4) !== recordBytes || bits > MAX_BITS) throw new SortedFileError(`${path} is not a sorted file of ${recordBytes}-byte records`);
      const sumBytes = (2 ** bits + 1) * 4;
      if (size !== count * recordBytes + sumBytes + TRAILER_BYTES) throw new SortedFileError(`${path} has the wrong size`);
      const raw = Buffer.alloc(sumBytes);
      if (readSync(fd, raw, 0, sumBytes, count * recordBytes) !== sumBytes) throw new SortedFileError(`${path} is truncated`);
      const summary = new Uint32Array(2 ** bits + 1);
      for (let i = 0; i < summary.length; i++) summary[i] = raw.readUInt32LE(i * 4);
      let resident: Buffer | undefined;
      if (count * recordBytes <= residentBytes) {
        resident = Buffer.allocUnsafe(count * recordBytes);
        if (readSync(fd, resident, 0, resident.length, 0) !== resident.length) throw new SortedFileError(`${path} is truncated`);
      }
      return new SortedFile(path, fd, recordBytes, count, bits, summary, resident);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Every record whose key is `key` (32 bytes), as views into one buffer. */
  find(key: Uint8Array): Buffer[] {
    const bucket = this.bits === 0 ? 0 : prefix(key, 0) >>> (32 - this.bits);
    const first = this.summary[bucket]!;
    const n = this.summary[bucket + 1]! - first;
    if (n === 0) return [];
    let buf: Buffer;
    if (this.resident) buf = this.resident.subarray(first * this.recordBytes, (first + n) * this.recordBytes);
    else {
      buf = Buffer.allocUnsafe(n * this.recordBytes);
      if (readSync(this.fd, buf, 0, buf.length, first * this.recordBytes) !== buf.length) throw new SortedFileError(`${this.path} is truncated`);
    }
    // Binary search for the first record not below the key, then take the equal ones.
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(buf, mid * this.recordBytes, key, 0) < 0) lo = mid + 1;
      else hi = mid;
    }
    const out: Buffer[] = [];
    for (let i = lo; i < n && compareKeys(buf, i * this.recordBytes, key, 0) === 0; i++) out.push(buf.subarray(i * this.recordBytes, (i + 1) * this.recordBytes));
    return out;
  }

  /** Reads the records in order, in blocks (each record a view valid until the next block is read). */
  *scan(): Generator<Buffer> {
    if (this.resident) {
      for (let i = 0; i < this.count; i++) yield this.resident.subarray(i * this.recordBytes, (i + 1) * this.recordBytes);
      return;
    }
    const per = Math.max(1, Math.floor(READ_BUFFER_BYTES / this.recordBytes));
    const buf = Buffer.allocUnsafe(per * this.recordBytes);
    for (let i = 0; i < this.count; i += per) {
      const n = Math.min(per, this.count - i);
      const got = readSync(this.fd, buf, 0, n * this.recordBytes, i * this.recordBytes);
      if (got !== n * this.recordBytes) throw new SortedFileError(`${this.path} is truncated`);
      for (let j = 0; j < n; j++) yield buf.subarray(j * this.recordBytes, (j + 1) * this.recordBytes);
    }
  }

  /** Bytes of memory this file holds (its summary, and its records when resident). */
  get memoryBytes(): number {
    return this.summary.byteLength + (this.resident?.length ?? 0);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Sorts `n` records held back to back in `buf`, in place order given back as record numbers. */
export function sortRecords(buf: Buffer, recordBytes: number, n: number): Uint32Array {
  // Numbers sort natively and fast: the 32-bit prefix times 2^21 plus the record number (n ≤ 2^21),
  // exact in a double. Equal prefixes (rare among random ids) are put in full-key order after.
  if (n > 2 ** 21) throw new SortedFileError('too many records to sort in one chunk');
  const keys = new Float64Array(n);
  for (let i = 0; i < n; i++) keys[i] = prefix(buf, i * recordBytes) * 2 ** 21 + i;
  keys.sort();
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = keys[i]! % 2 ** 21;
  for (let i = 0; i < n; ) {
    let j = i + 1;
    const p = prefix(buf, order[i]! * recordBytes);
    while (j < n && prefix(buf, order[j]! * recordBytes) === p) j++;
    if (j - i > 1) {
      const tie = Array.from(order.subarray(i, j)).sort((a, b) => compareKeys(buf, a * recordBytes, buf, b * recordBytes) || a - b);
      order.set(tie, i);
    }
    i = j;
  }
  return order;
}

/** Sequential reader of one merge input, in blocks. */
class MergeInput {
  private readonly it: Generator<Buffer>;
  current: Buffer | undefined;
  constructor(
    file: SortedFile,
    readonly index: number,
  ) {
    this.it = file.scan();
    this.advance();
  }
  advance(): void {
    const r = this.it.next();
    this.current = r.done ? undefined : r.value;
  }
}

/**
 * Merges sorted files into one writer, in key order; records with equal keys keep the order of their
 * inputs. `rewrite` may change a record (in a scratch copy) before it is written, e.g. to renumber packs.
 */
export function mergeSorted(inputs: readonly SortedFile[], out: SortedFileWriter, rewrite?: (rec: Buffer, input: number) => void): void {
  const heads = inputs.map((f, i) => new MergeInput(f, i)).filter((h) => h.current !== undefined);
  const less = (a: MergeInput, b: MergeInput): boolean => {
    const c = compareKeys(a.current!, 0, b.current!, 0);
    return c < 0 || (c === 0 && a.index < b.index);
  };
  // A binary heap of inputs by their current record.
  const heap = heads;
  const down = (i: number): void => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && less(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && less(heap[r]!, heap[m]!)) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
  };
  for (let i = (heap.length >> 1) - 1; i >= 0; i--) down(i);
  const scratch = Buffer.allocUnsafe(inputs[0]?.recordBytes ?? 0);
  while (heap.length > 0) {
    const top = heap[0]!;
    if (rewrite) {
      top.current!.copy(scratch);
      rewrite(scratch, top.index);
      out.add(scratch);
    } else out.add(top.current!);
    top.advance();
    if (top.current === undefined) {
      heap[0] = heap[heap.length - 1]!;
      heap.pop();
    }
    if (heap.length > 0) down(0);
  }
}
