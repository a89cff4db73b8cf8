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
    // compare() with ranges, not subarray().equals(): a restore checks every page, and a view per page
    // was 260 000 objects for each GB.
    const zero = data.compare(ZERO_PAGE, 0, next - at, at, next) === 0;
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
 * a thread-pool round trip per write costs more than the write. Returns the file offset just past the
 * last byte written (`position` when all of `data` is zero pages): a file whose last write reached its
 * end needs no truncate to get its size.
 */
export function writeSparseSync(fd: number, data: Buffer, position: number): number {
  let reached = position;
  for (const [start, end] of dataRuns(data, position)) {
    let at = start;
    while (at < end) at += writeSync(fd, data, at, end - at, position + at);
    reached = position + end;
  }
  return reached;
}
