// The master key, keyed ids, password-derived keys, and the AES-256-GCM seal of format version 1 (which
// version 1 repositories and version 1 key files use; sealer.ts picks the seal of each version).
import { createCipheriv, createDecipheriv, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { BulwarkError } from '../util/errors.js';
import { keyedBlake3, keyedBlake3OfZeros } from './blake3.js';
import { KEY_BYTES, NONCE_BYTES, SEAL_OVERHEAD, TAG_BYTES } from './format.js';

export interface MasterKey {
  /** AES-256-GCM key for every sealed object. */
  encrypt: Buffer;
  /** Key of the keyed BLAKE3 hash that makes blob ids, so ids say nothing about content to someone without it. */
  id: Buffer;
}

export class IntegrityError extends BulwarkError {
  constructor(what: string) {
    super('repository-corrupt', `${what} failed authentication (damaged or tampered with)`, {
      hint: "run 'bulwark check --read-data' to find what is affected",
    });
  }
}

export function newMasterKey(): MasterKey {
  return { encrypt: randomBytes(KEY_BYTES), id: randomBytes(KEY_BYTES) };
}

/** Blob id: keyed BLAKE3 (native, ~10 GB/s here against ~2 GB/s for HMAC-SHA256: ids are on the hot path). */
export function blobId(key: Pick<MasterKey, 'id'>, plaintext: Uint8Array): Buffer {
  return keyedBlake3(key.id, plaintext);
}

/** blobId of `length` zero bytes, without making them. */
export function zeroBlobId(key: Pick<MasterKey, 'id'>, length: number): Buffer {
  return keyedBlake3OfZeros(key.id, length);
}

export function seal(encKey: Buffer, plaintext: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(plaintext.length + SEAL_OVERHEAD);
  const nonce = randomBytes(NONCE_BYTES);
  nonce.copy(out, 0);
  const cipher = createCipheriv('aes-256-gcm', encKey, nonce);
  const a = cipher.update(plaintext);
  a.copy(out, NONCE_BYTES);
  const b = cipher.final();
  b.copy(out, NONCE_BYTES + a.length);
  cipher.getAuthTag().copy(out, NONCE_BYTES + a.length + b.length);
  return out;
}

export function unseal(encKey: Buffer, sealed: Uint8Array, what: string): Buffer {
  if (sealed.length < SEAL_OVERHEAD) throw new IntegrityError(what);
  const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length);
  const decipher = createDecipheriv('aes-256-gcm', encKey, buf.subarray(0, NONCE_BYTES));
  decipher.setAuthTag(buf.subarray(buf.length - TAG_BYTES));
  try {
    const a = decipher.update(buf.subarray(NONCE_BYTES, buf.length - TAG_BYTES));
    const b = decipher.final();
    return b.length === 0 ? a : Buffer.concat([a, b]);
  } catch {
    throw new IntegrityError(what);
  }
}

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

export function deriveKey(password: string, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  const maxmem = 128 * params.N * params.r * 2 + 1024 * 1024;
  return new Promise((resolve, reject) => {
    scryptCb(password.normalize('NFC'), salt, KEY_BYTES, { ...params, maxmem }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export function equalIds(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
