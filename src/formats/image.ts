// A disk image as a backup reads it: its virtual size, which ranges hold data (holes are never read),
// and the bytes of a range. Container formats (formats/qcow2, …) implement it over their files; a
// raw image or block device is its own content.
import { promises as fsp, type BigIntStats } from 'node:fs';
import { BulwarkError } from '../util/errors.js';

export interface DiskImage {
  readonly format: string;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Bytes of guest data read from files so far (metadata not counted): holes cost nothing. */
  readonly dataBytesRead: number;
  /** Whether any byte of [offset, offset + length) may hold data; false means it reads as zeros. */
  hasData(offset: number, length: number): Promise<boolean>;
  /** Fills `buf` with the bytes at `offset` (zeros past the end and in holes). */
  read(buf: Buffer, offset: number): Promise<void>;
  close(): Promise<void>;
}

export class RawImage implements DiskImage {
  readonly format = 'raw';
  dataBytesRead = 0;

  private constructor(
    private readonly fh: fsp.FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string, size?: number): Promise<RawImage> {
    const fh = await fsp.open(path, 'r');
    try {
      const st: BigIntStats = await fh.stat({ bigint: true });
      return new RawImage(fh, size ?? Number(st.size));
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async hasData(offset: number): Promise<boolean> {
    return offset < this.size;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const n = Math.max(0, Math.min(buf.length, this.size - offset));
    let done = 0;
    while (done < n) {
      const { bytesRead } = await this.fh.read(buf, done, n - done, offset + done);
      if (bytesRead === 0) break; // a raw file shorter than its recorded size reads as zeros
      done += bytesRead;
    }
    this.dataBytesRead += done;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/** Reads exactly `length` bytes at `offset` of a container file, or fails naming what was being read. */
export async function readExactly(fh: fsp.FileHandle, length: number, offset: number, what: string, file: string): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await readInto(fh, buf, offset, what, file);
  return buf;
}

/** Reads exactly `out.length` bytes at `offset` into `out`, or fails naming what was being read. */
export async function readInto(fh: fsp.FileHandle, out: Buffer, offset: number, what: string, file: string): Promise<void> {
  let done = 0;
  while (done < out.length) {
    const { bytesRead } = await fh.read(out, done, out.length - done, offset + done);
    if (bytesRead === 0) throw new BulwarkError('failed', `'${file}' is damaged: its ${what} at offset ${offset} runs past the end of the file`);
    done += bytesRead;
  }
}
