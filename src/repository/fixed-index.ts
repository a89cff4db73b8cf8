// Fixed indexes describe a disk as equal-sized blocks: block i covers bytes [i·blockSize, (i+1)·blockSize).
// Pages of up to FIXED_INDEX_PAGE_ENTRIES ids are stored as tree blobs; an all-zero id marks a block
// that is all zeros (a hole), which is never stored as data.
import { BulwarkError } from '../util/errors.js';
import { FIXED_INDEX_HEADER_BYTES, FIXED_INDEX_MAGIC, FIXED_INDEX_PAGE_ENTRIES, FIXED_INDEX_VERSION, ID_BYTES } from './format.js';

export const HOLE: null = null;

export function encodePage(ids: readonly (string | null)[]): Buffer {
  if (ids.length > FIXED_INDEX_PAGE_ENTRIES) throw new Error('fixed index page too large');
  const out = Buffer.alloc(FIXED_INDEX_HEADER_BYTES + ids.length * ID_BYTES);
  FIXED_INDEX_MAGIC.copy(out, 0);
  out.writeUInt32LE(FIXED_INDEX_VERSION, 4);
  out.writeUInt32LE(ids.length, 8);
  ids.forEach((id, i) => {
    if (id !== null) out.write(id, FIXED_INDEX_HEADER_BYTES + i * ID_BYTES, 'hex');
  });
  return out;
}

export function decodePage(buf: Buffer, pageId: string): (string | null)[] {
  if (buf.length < FIXED_INDEX_HEADER_BYTES || !buf.subarray(0, 4).equals(FIXED_INDEX_MAGIC) || buf.readUInt32LE(4) !== FIXED_INDEX_VERSION) {
    throw new BulwarkError('repository-corrupt', `fixed index page ${pageId} has a bad header`);
  }
  const count = buf.readUInt32LE(8);
  if (buf.length !== FIXED_INDEX_HEADER_BYTES + count * ID_BYTES) throw new BulwarkError('repository-corrupt', `fixed index page ${pageId} has a bad length`);
  const out: (string | null)[] = [];
  for (let i = 0; i < count; i++) {
    const at = FIXED_INDEX_HEADER_BYTES + i * ID_BYTES;
    let zero = true;
    for (let j = at; j < at + ID_BYTES; j++) if (buf[j] !== 0) { zero = false; break; }
    out.push(zero ? null : buf.toString('hex', at, at + ID_BYTES));
  }
  return out;
}
