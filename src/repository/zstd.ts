// Bounded zstd decompression. Everything decompressed here came out of the repository, and a hostile
// repository (or a damaged one) could otherwise make a few kilobytes expand into gigabytes. The output
// is allocated at the size the caller expects (a blob's recorded length) or the size the frame header
// declares, never more than the caller's limit, and zstd fails rather than write past it.
import { Decompressor } from 'zstd-napi';
import { BulwarkError } from '../util/errors.js';

interface DCtx {
  decompress(out: Uint8Array, input: Uint8Array): number;
}

const ZSTD_MAGIC = 0xfd2fb528;

let dctx: DCtx | undefined;
function context(): DCtx {
  // zstd-napi keeps its native context in a field its types call private; its one-shot decompress
  // allocates whatever the frame claims, which is what must not happen here.
  dctx ??= (new Decompressor() as unknown as { dctx: DCtx }).dctx;
  return dctx;
}

/** The content size the first frame declares, or undefined when it declares none (we always write it). */
export function frameContentSize(frame: Uint8Array): number | undefined {
  if (frame.length < 6) return undefined;
  const view = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  if (view.readUInt32LE(0) !== ZSTD_MAGIC) return undefined;
  const fhd = view[4]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const dictFlag = fhd & 3;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][dictFlag]!;
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (fcsBytes === 0 || view.length < at + fcsBytes) return undefined;
  switch (fcsBytes) {
    case 1:
      return view[at];
    case 2:
      return view.readUInt16LE(at) + 256;
    case 4:
      return view.readUInt32LE(at);
    default: {
      const v = view.readBigUInt64LE(at);
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
    }
  }
}

/**
 * Decompresses `body` into exactly `expected` bytes when given (a blob's recorded plaintext length),
 * else into the size the frame declares; either must be at most `limit`.
 */
export function decompressBounded(body: Uint8Array, limit: number, what: string, expected?: number): Buffer {
  const size = expected ?? frameContentSize(body);
  if (size === undefined) throw new BulwarkError('repository-corrupt', `${what} is compressed without a declared size`);
  if (size > limit) throw new BulwarkError('repository-corrupt', `${what} would decompress to ${size} bytes, more than the ${limit} allowed`);
  const out = Buffer.allocUnsafe(size);
  let n: number;
  try {
    n = size === 0 ? 0 : context().decompress(out, body);
  } catch (err) {
    throw new BulwarkError('repository-corrupt', `${what} does not decompress: ${(err as Error).message}`);
  }
  if (n !== size) throw new BulwarkError('repository-corrupt', `${what} decompresses to ${n} bytes, not the ${size} recorded`);
  return out;
}
