// A disk of a restore point read at any offset, straight from the repository: the block device behind
// instant restore, `bulwark export`, verify-boot and the file system readers of granular restore.
// Only the blocks asked for are fetched (and the index pages that name them); decoded blocks stay in a
// byte-bounded LRU cache; a reader that moves forward block after block gets the next blocks fetched
// ahead of it, so a sequential copy runs at the repository's speed rather than one round trip per block.
import { decodePage } from '../repository/fixed-index.js';
import { FIXED_INDEX_PAGE_ENTRIES } from '../repository/format.js';
import type { Repository } from '../repository/repository.js';
import type { DiskRecord } from '../repository/snapshot.js';
import { BulwarkError } from '../util/errors.js';

const STATE_HOLE_ZERO = 3; // NBD_STATE_HOLE | NBD_STATE_ZERO

export interface RepositoryDiskOptions {
  /** Decoded blocks kept (default 64 MiB). */
  cacheBytes?: number;
  /** Blocks fetched ahead of a sequential reader (default 8). */
  readAhead?: number;
}

export class RepositoryDisk {
  readonly size: number;
  readonly blockSize: number;
  readonly writable = false;
  /** Data blocks fetched from the repository so far (holes cost nothing). */
  blocksFetched = 0;
  private readonly pages = new Map<number, (string | null)[]>();
  private readonly blocks = new Map<number, Promise<Buffer | null>>();
  /** Bytes held by each fetched block in `blocks` (0 for a hole). */
  private readonly sizes = new Map<number, number>();
  private cachedBytes = 0;
  private readonly cacheBytes: number;
  private readonly readAhead: number;
  private lastBlock = -2;

  constructor(
    private readonly repo: Pick<Repository, 'loadBlob'>,
    private readonly disk: DiskRecord,
    opts: RepositoryDiskOptions = {},
  ) {
    this.size = disk.size;
    this.blockSize = disk.blockSize;
    this.cacheBytes = opts.cacheBytes ?? 64 * 1024 * 1024;
    this.readAhead = opts.readAhead ?? 8;
    if (!(disk.blockSize > 0) || Math.ceil(disk.size / disk.blockSize) > disk.pages.length * FIXED_INDEX_PAGE_ENTRIES) {
      throw new BulwarkError('repository-corrupt', `disk ${disk.name}: its index does not cover its ${disk.size} bytes`);
    }
  }

  private async page(p: number): Promise<(string | null)[]> {
    let ids = this.pages.get(p);
    if (!ids) {
      const id = this.disk.pages[p];
      if (id === undefined) throw new BulwarkError('repository-corrupt', `disk ${this.disk.name}: index page ${p} is missing`);
      ids = decodePage(await this.repo.loadBlob('tree', id), id);
      // Pages are small (4096 ids); a few hundred cover terabytes.
      if (this.pages.size >= 256) this.pages.delete(this.pages.keys().next().value!);
      this.pages.set(p, ids);
    }
    return ids;
  }

  /** The blob id of block `i`, or null for a hole. */
  async blockId(i: number): Promise<string | null> {
    const ids = await this.page(Math.floor(i / FIXED_INDEX_PAGE_ENTRIES));
    return ids[i % FIXED_INDEX_PAGE_ENTRIES] ?? null;
  }

  private fetch(i: number): Promise<Buffer | null> {
    let b = this.blocks.get(i);
    if (b) {
      // Most recently used last.
      this.blocks.delete(i);
      this.blocks.set(i, b);
      return b;
    }
    b = this.blockId(i).then(async (id) => {
      if (id === null) return null;
      const data = await this.repo.loadBlob('data', id);
      this.blocksFetched++;
      if (this.blocks.has(i)) {
        this.sizes.set(i, data.length);
        this.cachedBytes += data.length;
        this.evict();
      }
      return data;
    });
    this.blocks.set(i, b);
    b.catch(() => this.blocks.delete(i));
    b.then((d) => {
      if (d === null) this.sizes.set(i, 0);
    }, () => undefined);
    return b;
  }

  private evict(): void {
    // Oldest first; blocks still being fetched stay (a reader waits on them).
    for (const k of this.blocks.keys()) {
      if (this.cachedBytes <= this.cacheBytes) break;
      const size = this.sizes.get(k);
      if (size === undefined) continue;
      this.blocks.delete(k);
      this.sizes.delete(k);
      this.cachedBytes -= size;
    }
    // Holes cost nothing but an entry: keep their count bounded too.
    if (this.blocks.size > 65536) {
      for (const k of [...this.blocks.keys()].slice(0, 16384)) {
        if (this.sizes.get(k) !== 0) continue;
        this.blocks.delete(k);
        this.sizes.delete(k);
      }
    }
  }

  private async block(i: number): Promise<Buffer | null> {
    const sequential = i === this.lastBlock + 1 || i === this.lastBlock;
    this.lastBlock = i;
    const b = this.fetch(i);
    if (sequential) {
      const last = Math.ceil(this.size / this.blockSize) - 1;
      for (let k = i + 1; k <= Math.min(last, i + this.readAhead); k++) if (!this.blocks.has(k)) void this.fetch(k).catch(() => undefined);
    }
    return b;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) throw new BulwarkError('usage', `a read of ${buf.length} bytes at ${offset} lies outside disk ${this.disk.name} (${this.size} bytes)`);
    let done = 0;
    while (done < buf.length) {
      const at = offset + done;
      const i = Math.floor(at / this.blockSize);
      const within = at - i * this.blockSize;
      const n = Math.min(buf.length - done, this.blockSize - within);
      const data = await this.block(i);
      if (!data) buf.fill(0, done, done + n);
      else {
        const avail = Math.max(0, Math.min(n, data.length - within));
        if (avail > 0) data.copy(buf, done, within, within + avail);
        if (avail < n) buf.fill(0, done + avail, done + n);
      }
      done += n;
    }
  }

  /** Holes (never written, or all zeros when backed up) and data, merged, covering [offset, offset + length). */
  async blockStatus(offset: number, length: number): Promise<{ length: number; flags: number }[]> {
    const out: { length: number; flags: number }[] = [];
    const end = Math.min(this.size, offset + length);
    let at = offset;
    while (at < end) {
      const i = Math.floor(at / this.blockSize);
      const n = Math.min(end - at, (i + 1) * this.blockSize - at);
      const flags = (await this.blockId(i)) === null ? STATE_HOLE_ZERO : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags && last.length + n <= 0xffffffff - this.blockSize) last.length += n;
      else out.push({ length: n, flags });
      at += n;
    }
    return out;
  }
}
