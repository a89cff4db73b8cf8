// Writes to an exported restore point (`export --writable`, instant restore's scratch) kept in a local
// sparse file, never in the repository: 64 KiB granules, a bitmap of those written, reads served from
// the overlay where written and from the repository elsewhere. A partial write of a granule first
// copies the granule's bytes from below, so the overlay always holds whole granules.
import { constants, promises as fsp } from 'node:fs';
import { BulwarkError, unable } from '../util/errors.js';
import type { RepositoryDisk } from './repo-disk.js';

const GRANULE = 64 * 1024;

export class OverlayDisk {
  readonly writable = true;
  private readonly written: Uint8Array;

  private constructor(
    private readonly base: RepositoryDisk,
    private readonly fh: fsp.FileHandle,
    readonly file: string,
  ) {
    this.written = new Uint8Array(Math.ceil(Math.ceil(base.size / GRANULE) / 8));
  }

  get size(): number {
    return this.base.size;
  }

  /** A new overlay file (never an existing one: it would hold another run's writes). */
  static async create(base: RepositoryDisk, file: string): Promise<OverlayDisk> {
    const fh = await fsp.open(file, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600).catch((err: unknown) => {
      throw unable('create', 'overlay file', file, err);
    });
    await fh.truncate(base.size);
    return new OverlayDisk(base, fh, file);
  }

  private isWritten(g: number): boolean {
    return (this.written[g >> 3]! & (1 << (g & 7))) !== 0;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const at = offset + done;
      const g = Math.floor(at / GRANULE);
      const w = this.isWritten(g);
      // A run of granules of the same kind in one read.
      let end = Math.min(offset + buf.length, (g + 1) * GRANULE);
      while (end < offset + buf.length && this.isWritten(Math.floor(end / GRANULE)) === w) end = Math.min(offset + buf.length, end + GRANULE);
      const part = buf.subarray(done, end - offset);
      if (w) await this.fh.read(part, 0, part.length, at);
      else await this.base.read(part, at);
      done = end - offset;
    }
  }

  async write(data: Buffer, offset: number): Promise<void> {
    if (offset + data.length > this.size) throw new BulwarkError('usage', 'a write past the end of the disk');
    const first = Math.floor(offset / GRANULE);
    const last = Math.floor((offset + data.length - 1) / GRANULE);
    // Granules only partly covered come up from below first.
    for (const g of new Set([first, last])) {
      if (this.isWritten(g)) continue;
      const gs = g * GRANULE;
      const ge = Math.min(this.size, gs + GRANULE);
      if (offset <= gs && offset + data.length >= ge) continue;
      const below = Buffer.alloc(ge - gs);
      await this.base.read(below, gs);
      await this.fh.write(below, 0, below.length, gs);
    }
    await this.fh.write(data, 0, data.length, offset);
    for (let g = first; g <= last; g++) this.written[g >> 3]! |= 1 << (g & 7);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const zero = Buffer.alloc(Math.min(length, 4 * 1024 * 1024));
    for (let at = offset; at < offset + length; at += zero.length) await this.write(zero.subarray(0, Math.min(zero.length, offset + length - at)), at);
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<{ length: number; flags: number }[]> {
    const below = await this.base.blockStatus(offset, length);
    // Written granules are data whatever lies below.
    const out: { length: number; flags: number }[] = [];
    let at = offset;
    for (const e of below) {
      for (let p = at; p < at + e.length; ) {
        const g = Math.floor(p / GRANULE);
        const n = Math.min(at + e.length - p, (g + 1) * GRANULE - p);
        const flags = this.isWritten(g) ? 0 : e.flags;
        const last = out[out.length - 1];
        if (last && last.flags === flags) last.length += n;
        else out.push({ length: n, flags });
        p += n;
      }
      at += e.length;
    }
    return out;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
