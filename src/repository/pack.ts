// Pack files group many blobs into one storage object, so object stores and FTP see few, large files.
//
// Version 1: blob_1 ‖ … ‖ blob_n ‖ seal(header) ‖ u32le(length of sealed header), the header listing each
// blob (type, sealed length, plaintext length, id) in order, so a pack can be re-indexed from itself.
//
// Version 2 hides what version 1 shows to whoever hosts the storage (the blob count, and the exact bytes
// of blobs): blob_1 ‖ … ‖ blob_n ‖ filler ‖ seal(header) ‖ u32le(length of sealed header), where the
// header is u32le count ‖ u32le filler length ‖ entries ‖ zeros, at least V2_PACK_HEADER_MIN_BYTES and
// Padmé-rounded, and random filler makes the whole pack a Padmé length. See docs/repository-format.md.
import { createHash, randomBytes } from 'node:crypto';
import { BulwarkError } from '../util/errors.js';
import { BLOB_TYPE_CODES, BLOB_TYPES_BY_CODE, ID_BYTES, PACK_ENTRY_BYTES, PACK_TRAILER_BYTES, V2_PACK_HEADER_FIXED_BYTES, V2_PACK_HEADER_MIN_BYTES, type BlobType } from './format.js';
import { padme, type Sealer } from './sealer.js';

export interface PackBlob {
  type: BlobType;
  id: Buffer;
  sealed: Buffer;
  /** Plaintext length when compressed, else 0. */
  ulen: number;
}

export interface PackEntry {
  type: BlobType;
  id: string;
  offset: number;
  length: number;
  ulen: number;
}

export interface BuiltPack {
  id: string;
  bytes: Buffer;
  entries: PackEntry[];
}

function corrupt(packId: string, what: string): BulwarkError {
  return new BulwarkError('repository-corrupt', `pack ${packId} ${what}`);
}

/** Length of a version 2 header's plaintext for this many blobs. */
export function v2HeaderBytes(count: number): number {
  return Math.max(V2_PACK_HEADER_MIN_BYTES, padme(V2_PACK_HEADER_FIXED_BYTES + count * PACK_ENTRY_BYTES));
}

export function buildPack(sealer: Sealer, blobs: readonly PackBlob[]): BuiltPack {
  const entries: PackEntry[] = [];
  let offset = 0;
  for (const b of blobs) {
    entries.push({ type: b.type, id: b.id.toString('hex'), offset, length: b.sealed.length, ulen: b.ulen });
    offset += b.sealed.length;
  }
  const bytes = Buffer.concat([...blobs.map((b) => b.sealed), ...packTail(sealer, entries, offset)]);
  const id = createHash('sha256').update(bytes).digest('hex');
  return { id, bytes, entries };
}

/**
 * What follows the blobs of a pack: filler (format 2), the sealed header, the trailer. `dataBytes` is
 * the blobs' total length; `entries` lists them in order.
 */
export function packTail(sealer: Sealer, entries: readonly PackEntry[], dataBytes: number): Buffer[] {
  const v2 = sealer.version === 2;
  const fixed = v2 ? V2_PACK_HEADER_FIXED_BYTES : 0;
  const header = Buffer.alloc(v2 ? v2HeaderBytes(entries.length) : entries.length * PACK_ENTRY_BYTES);
  entries.forEach((e, i) => {
    const at = fixed + i * PACK_ENTRY_BYTES;
    header.writeUInt8(BLOB_TYPE_CODES[e.type], at);
    header.writeUInt32LE(e.length, at + 1);
    header.writeUInt32LE(e.ulen, at + 5);
    header.write(e.id, at + 9, ID_BYTES, 'hex');
  });
  let filler = Buffer.alloc(0);
  if (v2) {
    const unpadded = dataBytes + header.length + sealer.overhead + PACK_TRAILER_BYTES;
    // Random, not zeros: storage that compresses would otherwise tell the filler's length.
    filler = randomBytes(padme(unpadded) - unpadded);
    header.writeUInt32LE(entries.length, 0);
    header.writeUInt32LE(filler.length, 4);
  }
  const sealedHeader = sealer.seal('pack-header', header);
  const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
  trailer.writeUInt32LE(sealedHeader.length, 0);
  return [filler, sealedHeader, trailer];
}

/** Parses a pack's own header (used by check and index rebuilds); `bytes` is the whole pack. */
export function readPackHeader(sealer: Sealer, bytes: Buffer, packId: string): PackEntry[] {
  if (bytes.length < PACK_TRAILER_BYTES) throw corrupt(packId, 'is truncated');
  const hlen = bytes.readUInt32LE(bytes.length - PACK_TRAILER_BYTES);
  if (hlen > bytes.length - PACK_TRAILER_BYTES) throw corrupt(packId, 'has an invalid header length');
  const start = bytes.length - PACK_TRAILER_BYTES - hlen;
  return parsePackHeader(sealer, bytes.subarray(start, bytes.length - PACK_TRAILER_BYTES), packId, start);
}

/**
 * Opens a sealed pack header and checks it against the pack: the blobs it lists (and, in version 2,
 * the filler) must fill exactly the `dataEnd` bytes before the header, so a damaged or hostile header
 * cannot point outside its pack.
 */
export function parsePackHeader(sealer: Sealer, sealedHeader: Buffer, packId: string, dataEnd: number): PackEntry[] {
  const header = sealer.open('pack-header', sealedHeader, `header of pack ${packId}`);
  let first = 0;
  let count: number;
  let filler = 0;
  if (sealer.version === 2) {
    if (header.length < V2_PACK_HEADER_FIXED_BYTES) throw corrupt(packId, 'has a malformed header');
    count = header.readUInt32LE(0);
    filler = header.readUInt32LE(4);
    first = V2_PACK_HEADER_FIXED_BYTES;
    if (count > (header.length - first) / PACK_ENTRY_BYTES) throw corrupt(packId, `has a header that lists ${count} blobs but has room for fewer`);
    if (header.subarray(first + count * PACK_ENTRY_BYTES).some((b) => b !== 0)) throw corrupt(packId, 'has a header whose padding is not zero');
  } else {
    if (header.length % PACK_ENTRY_BYTES !== 0) throw corrupt(packId, 'has a malformed header');
    count = header.length / PACK_ENTRY_BYTES;
  }
  const entries: PackEntry[] = [];
  let offset = 0;
  for (let i = 0; i < count; i++) {
    const at = first + i * PACK_ENTRY_BYTES;
    const type = BLOB_TYPES_BY_CODE[header.readUInt8(at)];
    if (!type) throw corrupt(packId, 'has an unknown blob type');
    const length = header.readUInt32LE(at + 1);
    entries.push({ type, length, offset, ulen: header.readUInt32LE(at + 5), id: header.subarray(at + 9, at + 9 + ID_BYTES).toString('hex') });
    offset += length;
  }
  if (offset + filler !== dataEnd) {
    throw new BulwarkError('repository-corrupt', `pack ${packId}: its header lists ${offset + filler} bytes of blobs${filler ? ' and filler' : ''}, but ${dataEnd} bytes precede the header`);
  }
  return entries;
}
