// Writes a buffer at an offset, skipping every file-system page that is all zeros, so zeros inside a
// chunk become holes too (the file must have been sized with truncate first). Pages are aligned to
// the file offset, as the file system allocates them.
import { writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

export const SPARSE_PAGE = 4096;
const ZERO_PAGE = Buffer.alloc(SPARSE_PAGE);

/** The runs of `data` (start, end) that are not whole zero pages, as the file at `position` sees them. */
function* dataRuns(data: Buffer, position: number): Generator<[number, number]> {
  let runStart = -1;
  let at = 0;
  while (at < data.length) {
    // The first page may be partial so the rest line up with the file's pages.
    const next = Math.min(data.length, at + SPARSE_PAGE - ((position + at) % SPARSE_PAGE));
    const len = next - at;
    const zero = data.subarray(at, next).equals(len === SPARSE_PAGE ? ZERO_PAGE : ZERO_PAGE.subarray(0, len));
    if (zero) {
      if (runStart >= 0) yield [runStart, at];
      runStart = -1;
    } else if (runStart < 0) runStart = at;
    at = next;
  }
  if (runStart >= 0) yield [runStart, data.length];
}

/** Returns the number of bytes actually written. */
export async function writeSparse(fh: FileHandle, data: Buffer, position: number): Promise<number> {
  let written = 0;
  for (const [start, end] of dataRuns(data, position)) {
    await fh.write(data, start, end - start, position + start);
    written += end - start;
  }
  return written;
}

/**
 * The same through a plain descriptor, synchronously: for a file restore writing into the page cache,
 * a thread-pool round trip per write costs more than the write.
 */
export function writeSparseSync(fd: number, data: Buffer, position: number): number {
  let written = 0;
  for (const [start, end] of dataRuns(data, position)) {
    let at = start;
    while (at < end) at += writeSync(fd, data, at, end - at, position + at);
    written += end - start;
  }
  return written;
}
