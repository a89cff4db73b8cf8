// Pack files group many blobs into one storage object, so object stores and FTP see few, large files.
// Layout: blob_1 ‖ … ‖ blob_n ‖ seal(header) ‖ u32le(length of sealed header). The header lists each
// blob (type, sealed length, plaintext length, id) in order, so a pack can be re-indexed from itself.
import { createHash } from 'node:crypto';
import { BulwarkError } from '../util/errors.js';
import { seal, unseal } from './crypto.js';
import { BLOB_TYPE_CODES, BLOB_TYPES_BY_CODE, ID_BYTES, PACK_ENTRY_BYTES, PACK_TRAILER_BYTES, type BlobType } from './format.js';

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

export function buildPack(encKey: Buffer, blobs: readonly PackBlob[]): BuiltPack {
  const header = Buffer.alloc(blobs.length * PACK_ENTRY_BYTES);
  const entries: PackEntry[] = [];
  let offset = 0;
  blobs.forEach((b, i) => {
    const at = i * PACK_ENTRY_BYTES;
    header.writeUInt8(BLOB_TYPE_CODES[b.type], at);
    header.writeUInt32LE(b.sealed.length, at + 1);
    header.writeUInt32LE(b.ulen, at + 5);
    b.id.copy(header, at + 9);
    entries.push({ type: b.type, id: b.id.toString('hex'), offset, length: b.sealed.length, ulen: b.ulen });
    offset += b.sealed.length;
  });
  const sealedHeader = seal(encKey, header);
  const trailer = Buffer.alloc(PACK_TRAILER_BYTES);
  trailer.writeUInt32LE(sealedHeader.length, 0);
  const bytes = Buffer.concat([...blobs.map((b) => b.sealed), sealedHeader, trailer]);
  const id = createHash('sha256').update(bytes).digest('hex');
  return { id, bytes, entries };
}

/** Parses a pack's own header (used by check and index rebuilds); `bytes` is the whole pack. */
export function readPackHeader(encKey: Buffer, bytes: Buffer, packId: string): PackEntry[] {
  if (bytes.length < PACK_TRAILER_BYTES) throw new BulwarkError('repository-corrupt', `pack ${packId} is truncated`);
  const hlen = bytes.readUInt32LE(bytes.length - PACK_TRAILER_BYTES);
  if (hlen > bytes.length - PACK_TRAILER_BYTES) throw new BulwarkError('repository-corrupt', `pack ${packId} has an invalid header length`);
  const start = bytes.length - PACK_TRAILER_BYTES - hlen;
  return parsePackHeader(encKey, bytes.subarray(start, bytes.length - PACK_TRAILER_BYTES), packId, start);
}

/**
 * Opens a sealed pack header and checks it against the pack: the blobs it lists must fill exactly the
 * `dataEnd` bytes before the header, so a damaged or hostile header cannot point outside its pack.
 */
export function parsePackHeader(encKey: Buffer, sealedHeader: Buffer, packId: string, dataEnd: number): PackEntry[] {
  const header = unseal(encKey, sealedHeader, `header of pack ${packId}`);
  if (header.length % PACK_ENTRY_BYTES !== 0) throw new BulwarkError('repository-corrupt', `pack ${packId} has a malformed header`);
  const entries: PackEntry[] = [];
  let offset = 0;
  for (let at = 0; at < header.length; at += PACK_ENTRY_BYTES) {
    const type = BLOB_TYPES_BY_CODE[header.readUInt8(at)];
    if (!type) throw new BulwarkError('repository-corrupt', `pack ${packId} has an unknown blob type`);
    const length = header.readUInt32LE(at + 1);
    entries.push({ type, length, offset, ulen: header.readUInt32LE(at + 5), id: header.subarray(at + 9, at + 9 + ID_BYTES).toString('hex') });
    offset += length;
  }
  if (offset !== dataEnd) throw new BulwarkError('repository-corrupt', `pack ${packId}: its header lists ${offset} bytes of blobs, but ${dataEnd} bytes precede the header`);
  return entries;
}
