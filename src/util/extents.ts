// Where a sparse file's data is, so that a backup skips its holes instead of reading them as zeros: a
// 20 GiB disk image holding a few MB is then read in time proportional to the few MB.
import type { NativeHelpers } from './native.js';

/** Below this share of its size allocated, a file is worth asking where its data is (one lseek per extent). */
const SPARSE_ALLOCATED_SHARE = 0.9;

/** A file is worth mapping when a good part of it is not allocated, and it is larger than a few zero chunks. */
export function worthMapping(size: number, allocatedBytes: number, zeroChunk: number): boolean {
  return size >= 2 * zeroChunk && allocatedBytes < size * SPARSE_ALLOCATED_SHARE;
}

export class FileExtents {
  /** [0, dataEnd) holds no hole that starts at or after a point already asked about. */
  private dataEnd = 0;

  constructor(
    private readonly fd: number,
    /** The size seen when the file was opened: a hole reported as lasting to the end stops there. */
    private readonly size: number,
    private readonly helpers: Pick<NativeHelpers, 'seekData' | 'seekHole'>,
  ) {}

  /** Where the hole that `at` lies in ends; `at` itself when `at` is data. */
  holeEnd(at: number): number {
    if (at < this.dataEnd) return at;
    try {
      const data = this.helpers.seekData(this.fd, at);
      if (data < 0) return Math.max(at, this.size);
      if (data > at) return data;
      this.dataEnd = this.helpers.seekHole(this.fd, at);
    } catch {
      // A file system that cannot tell (EINVAL, EOPNOTSUPP): the file is read whole, as without the helper.
      this.dataEnd = Infinity;
    }
    return at;
  }
}
