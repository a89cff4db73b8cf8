/**
 * Places in one fixed range of memory, handed out and taken back: the book-keeping of the blob workers'
 * transfer memory (workers.ts). The memory itself is elsewhere; this only says which offsets are taken.
 *
 * First fit from the low end, so that the pages in use stay at the start of the range: pages never
 * touched cost nothing, and a backup whose blobs in flight need 10 MiB touches about 10 MiB of a
 * 32 MiB range, for good. Free places next to each other are merged as they come back.
 */
export class SlabAllocator {
  /** Free places, by offset; none touches the next (they are merged). */
  private readonly free: { at: number; len: number }[];
  /** Places handed out: offset → length. */
  private readonly taken = new Map<number, number>();
  private usedBytes = 0;
  private highest = 0;

  constructor(
    readonly size: number,
    /** Every place is a multiple of this long and starts at one (a page: two places never share one). */
    readonly grain = 4096,
  ) {
    if (!(size > 0 && size % grain === 0)) throw new RangeError(`a slab of ${size} bytes is not a whole number of ${grain}-byte grains`);
    this.free = [{ at: 0, len: size }];
  }

  /** Bytes handed out (rounded up to the grain). */
  get used(): number {
    return this.usedBytes;
  }

  /** The end of the highest place ever handed out: how much of the range has been touched. */
  get highWater(): number {
    return this.highest;
  }

  /** The offset of a place of at least `bytes`, or -1 when no free place is that large. */
  alloc(bytes: number): number {
    const len = Math.max(this.grain, Math.ceil(bytes / this.grain) * this.grain);
    const i = this.free.findIndex((f) => f.len >= len);
    if (i < 0) return -1;
    const f = this.free[i]!;
    const at = f.at;
    if (f.len === len) this.free.splice(i, 1);
    else {
      f.at += len;
      f.len -= len;
    }
    this.taken.set(at, len);
    this.usedBytes += len;
    this.highest = Math.max(this.highest, at + len);
    return at;
  }

  /** Takes back the place at `at`. Anything else is a bug in the caller, and throws. */
  release(at: number): void {
    const len = this.taken.get(at);
    if (len === undefined) throw new Error(`slab offset ${at} is not handed out`);
    this.taken.delete(at);
    this.usedBytes -= len;
    // The first free place after this one (binary search: the list can hold hundreds).
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.free[mid]!.at < at) lo = mid + 1;
      else hi = mid;
    }
    const before = this.free[lo - 1];
    const after = this.free[lo];
    const joinsBefore = before !== undefined && before.at + before.len === at;
    const joinsAfter = after !== undefined && at + len === after.at;
    if (joinsBefore && joinsAfter) {
      before.len += len + after.len;
      this.free.splice(lo, 1);
    } else if (joinsBefore) before.len += len;
    else if (joinsAfter) {
      after.at = at;
      after.len += len;
    } else this.free.splice(lo, 0, { at, len });
  }
}
