// Writes a buffer at an offset, skipping every file-system page that is all zeros, so zeros inside a
// chunk become holes too (the file must have been sized with truncate first). Pages are aligned to
// the file offset, as the file system allocates them.
import type { FileHandle } from 'node:fs/promises';

export const SPARSE_PAGE = 4096;
const ZERO_PAGE = Buffer.alloc(SPARSE_PAGE);

/** Returns the number of bytes actually written. */
export async function writeSparse(fh: FileHandle, data: Buffer, position: number): Promise<number> {
  let written = 0;
  let runStart = -1;
  let at = 0;
  const flush = async (end: number): Promise<void> => {
    if (runStart < 0) return;
    await fh.write(data, runStart, end - runStart, position + runStart);
    written += end - runStart;
    runStart = -1;
  };
  while (at < data.length) {
    // The first page may be partial so the rest line up with the file's pages.
    const next = Math.min(data.length, at + SPARSE_PAGE - ((position + at) % SPARSE_PAGE));
    const len = next - at;
    const zero = data.subarray(at, next).equals(len === SPARSE_PAGE ? ZERO_PAGE : ZERO_PAGE.subarray(0, len));
    if (zero) await flush(at);
    else if (runStart < 0) runStart = at;
    at = next;
  }
  await flush(data.length);
  return written;
}
