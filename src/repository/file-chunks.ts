// A file cut into chunks as the chunker cuts it, read through one reused buffer, with the holes of a
// sparse file skipped instead of read: a chunk that starts in a run of zeros at least a zero chunk long
// is that zero chunk whatever came before it (chunker.ts), so a hole yields zero chunks without a read,
// and a 1 TiB file holding a few MB costs the few MB. Backups and restore verification both cut files here.
import type { FileHandle } from 'node:fs/promises';
import { FileExtents, worthMapping } from '../util/extents.js';
import { nativeHelpers } from '../util/native.js';
import { Chunker, gearTable } from './chunker.js';
import type { RepositoryConfig } from './repository.js';

const READ_SIZE = 4 * 1024 * 1024;

export interface FileChunk {
  /** The chunk's bytes: a view of the reader's buffer, valid until the next chunk is asked for. */
  bytes: Buffer;
  /** All zeros, zero-chunk long: its blob id is the zero chunk's, known without hashing. */
  zero: boolean;
  /** Skipped in a hole: `bytes` is then a shared buffer of zeros, not read from the file. */
  skipped: boolean;
}

export class FileChunks {
  /** Bytes read from files (holes skipped are not). */
  bytesRead = 0;
  private readonly chunker: Chunker;
  private readonly maxSize: number;
  private readonly buf: Buffer;
  private zeros: Buffer | undefined;

  /** Cuts as the repository's chunker does (its sizes and its secret gear table). */
  constructor(params: RepositoryConfig['chunker']) {
    this.chunker = new Chunker({ minSize: params.minSize, avgSize: params.avgSize, maxSize: params.maxSize }, gearTable(Buffer.from(params.seed, 'hex')));
    this.maxSize = params.maxSize;
    this.buf = Buffer.allocUnsafe(Math.max(READ_SIZE, this.maxSize) + this.maxSize);
  }

  /** `allocated`: the bytes the file system holds for it (st_blocks × 512); far below `size` means holes worth finding. */
  async *chunks(fh: FileHandle, size: number, allocated: number): AsyncGenerator<FileChunk> {
    const buf = this.buf;
    const zeroLength = this.chunker.zeroLength;
    const helpers = nativeHelpers();
    const extents = helpers && worthMapping(size, allocated, zeroLength) ? new FileExtents(fh.fd, size, helpers) : undefined;
    let filled = 0;
    let start = 0;
    let eof = false;
    /** File offset of buf[filled]. */
    let readAt = 0;
    while (true) {
      if (extents && !eof) {
        const at = readAt - (filled - start);
        const whole = Math.floor((extents.holeEnd(at) - at) / zeroLength);
        if (whole > 0) {
          this.zeros ??= Buffer.alloc(zeroLength);
          for (let i = 0; i < whole; i++) yield { bytes: this.zeros, zero: true, skipped: true };
          // Bytes read beyond `at` are read again after the hole.
          readAt = at + whole * zeroLength;
          start = filled = 0;
          continue;
        }
      }
      if (!eof && filled - start < this.maxSize) {
        if (start > 0) {
          buf.copy(buf, 0, start, filled);
          filled -= start;
          start = 0;
        }
        const { bytesRead } = await fh.read(buf, filled, Math.min(READ_SIZE, buf.length - filled), readAt);
        if (bytesRead === 0) eof = true;
        filled += bytesRead;
        readAt += bytesRead;
        this.bytesRead += bytesRead;
        continue;
      }
      if (start === filled) return;
      const n = this.chunker.cut(buf, start, filled, eof);
      if (n === 0) continue;
      yield { bytes: buf.subarray(start, start + n), zero: this.chunker.lastWasZero, skipped: false };
      start += n;
    }
  }
}
