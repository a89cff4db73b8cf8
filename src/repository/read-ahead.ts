// Read-ahead for small blobs. A restore of a file tree asks for tens of thousands of small blobs that
// a backup wrote next to each other; reading each with its own ranged request costs a storage round
// trip (a thread-pool hop for a local repository, a request for a remote one) per blob. Instead a
// window of the pack is read once and the following blobs are cut from it.

/** Reads `length` bytes of `pack` at `offset`; a short or failed read rejects. */
export type RangeLoader = (pack: string, offset: number, length: number) => Promise<Buffer>;

interface Window {
  pack: string;
  start: number;
  end: number;
  data: Promise<Buffer>;
}

export const READ_AHEAD_WINDOW = 1024 * 1024;
/** Windows kept: format 2 fills two packs per type at once, and several files are restored at a time. */
export const READ_AHEAD_WINDOWS = 6;

export class ReadAhead {
  /** Most recently used last. */
  private windows: Window[] = [];

  constructor(
    private readonly load: RangeLoader,
    private readonly windowBytes = READ_AHEAD_WINDOW,
    private readonly maxWindows = READ_AHEAD_WINDOWS,
  ) {}

  /**
   * The bytes at [offset, offset + length) of a pack `packSize` long (as the index says). A window
   * that cannot be read whole (the pack is shorter than the index says) is not kept, and the exact
   * range is read instead, so its error names the blob's own range.
   */
  async read(pack: string, packSize: number, offset: number, length: number): Promise<Buffer> {
    if (length > this.windowBytes || offset + length > packSize) return this.load(pack, offset, length);
    let w = this.windows.find((x) => x.pack === pack && x.start <= offset && offset + length <= x.end);
    if (w) {
      this.windows.splice(this.windows.indexOf(w), 1);
    } else {
      const start = offset;
      const end = Math.min(packSize, start + this.windowBytes);
      const data = this.load(pack, start, end - start);
      w = { pack, start, end, data };
      const made = w;
      data.catch(() => {
        this.windows = this.windows.filter((x) => x !== made);
      });
      if (this.windows.length >= this.maxWindows) this.windows.shift();
    }
    this.windows.push(w);
    let data: Buffer;
    try {
      data = await w.data;
    } catch {
      return this.load(pack, offset, length);
    }
    return data.subarray(offset - w.start, offset - w.start + length);
  }
}
