// XAES-256-GCM (C2SP, https://c2sp.org/XAES-256-GCM): AES-256-GCM with a 192-bit nonce. Each message is
// sealed under its own key, derived from the main key and the first 96 bits of the nonce with two AES
// block operations (a CMAC-style KDF in counter mode), and the last 96 bits are the GCM nonce. Random
// nonces are then safe for about 2^80 messages under one key, where plain GCM stops at 2^32.
//
// Plain JavaScript with a .d.ts beside it: the blob worker (plain JS, no build step) and the typed
// modules share this one implementation.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { nativeBinding } from '../util/native-binding.js';

export const XAES_NONCE_BYTES = 24;
export const XAES_TAG_BYTES = 16;
export const XAES_OVERHEAD = XAES_NONCE_BYTES + XAES_TAG_BYTES;
const GCM_TAG_BYTES = 16;
/** Node's Cipher makes a new buffer (zeroed, then copied once more) for every update: in place is free. */
const nativeGcm = nativeBinding()?.gcm;
const AUTH_FAILED = 'Unsupported state or unable to authenticate data';

/**
 * Opens AES-256-GCM in place: `ct` becomes the plaintext. Throws an Error whose message says "unable to
 * authenticate" when it is not genuine (`ct` then holds garbage). Without the native helper the
 * plaintext is decrypted into a new buffer and copied back.
 */
export function gcmOpenInPlace(key, iv, ct, tag, ad) {
  if (nativeGcm) {
    if (!nativeGcm(false, key, iv, ad ?? null, ct, tag)) throw new Error(AUTH_FAILED);
    return;
  }
  const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: GCM_TAG_BYTES });
  if (ad && ad.length) decipher.setAAD(ad);
  decipher.setAuthTag(tag);
  const plain = decipher.update(ct);
  decipher.final();
  ct.set(plain);
}

/**
 * AES-256-GCM of `plain` under `key` and `iv`, written to `out` as stored ‖ ciphertext ‖ tag(16), where
 * `stored` is the nonce as the object keeps it; returns the part of `out` used. `plain` may lie in
 * `out`: it is read whole before `out` is written.
 */
export function gcmSealInto(out, key, iv, stored, plain, ad) {
  const end = stored.length + plain.length;
  if (nativeGcm && out.length >= end + GCM_TAG_BYTES) {
    // The plaintext moves to its place first (it may lie at the start of `out`), then is sealed there.
    const from = plain.byteOffset - out.byteOffset;
    if (plain.buffer === out.buffer && from >= 0 && from + plain.length <= out.length) out.copyWithin(stored.length, from, from + plain.length);
    else out.set(plain, stored.length);
    out.set(stored, 0);
    nativeGcm(true, key, iv, ad ?? null, out.subarray(stored.length, end), out.subarray(end, end + GCM_TAG_BYTES));
    return Buffer.from(out.buffer, out.byteOffset, end + GCM_TAG_BYTES);
  }
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  if (ad && ad.length) cipher.setAAD(ad);
  const a = cipher.update(plain);
  const b = cipher.final();
  let at = 0;
  for (const part of [stored, a, b, cipher.getAuthTag()]) {
    out.set(part, at);
    at += part.length;
  }
  return out.subarray(0, at);
}

export class Xaes {
  /** @param {Uint8Array} key 32 bytes */
  constructor(key) {
    if (key.length !== 32) throw new Error('XAES-256-GCM needs a 32-byte key');
    this.ecb = createCipheriv('aes-256-ecb', key, null);
    this.ecb.setAutoPadding(false);
    const l = this.ecb.update(Buffer.alloc(16));
    // K1 = L·x in GF(2^128), as CMAC's first subkey.
    const k1 = Buffer.alloc(16);
    for (let i = 0; i < 16; i++) k1[i] = ((l[i] << 1) | (i < 15 ? l[i + 1] >> 7 : 0)) & 0xff;
    if (l[0] & 0x80) k1[15] ^= 0x87;
    this.k1 = k1;
  }

  /** The per-message key for the first 12 bytes of a nonce. */
  deriveKey(nonce) {
    const m = Buffer.alloc(32);
    m[1] = 1;
    m[2] = 0x58; // 'X'
    m[17] = 2;
    m[18] = 0x58;
    for (let i = 0; i < 12; i++) {
      m[4 + i] = nonce[i];
      m[20 + i] = nonce[i];
    }
    for (let i = 0; i < 16; i++) {
      m[i] ^= this.k1[i];
      m[16 + i] ^= this.k1[i];
    }
    return this.ecb.update(m);
  }

  /** nonce(24) ‖ ciphertext ‖ tag(16). `nonce` is for test vectors only: leave it out. */
  seal(plain, ad, nonce = randomBytes(XAES_NONCE_BYTES)) {
    return this.sealInto(Buffer.allocUnsafe(plain.length + XAES_OVERHEAD), plain, ad, nonce);
  }

  /**
   * seal() into `out` (at least plain.length + XAES_OVERHEAD bytes); returns the part of `out` used.
   * `plain` may lie in `out`: it is read whole before `out` is written (the blob worker seals a blob
   * back into the buffer it came in).
   */
  sealInto(out, plain, ad, nonce = randomBytes(XAES_NONCE_BYTES)) {
    return gcmSealInto(out, this.deriveKey(nonce), nonce.subarray(12, 24), nonce, plain, ad);
  }

  /**
   * open() in place: returns the plaintext as a view of `sealed`, whose bytes it overwrites (garbage
   * when it throws). For buffers that are the caller's to spend: the blob worker's.
   */
  openInPlace(sealed, ad) {
    if (sealed.length < XAES_OVERHEAD) throw new Error(AUTH_FAILED);
    const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length);
    const nonce = buf.subarray(0, XAES_NONCE_BYTES);
    const ct = buf.subarray(XAES_NONCE_BYTES, buf.length - XAES_TAG_BYTES);
    gcmOpenInPlace(this.deriveKey(nonce), nonce.subarray(12, 24), ct, buf.subarray(buf.length - XAES_TAG_BYTES), ad);
    return ct;
  }

  /** Throws an Error whose message says "unable to authenticate" when the object is not genuine. */
  open(sealed, ad) {
    // A copy opened in place: the caller's bytes (a cached tree pack) stay as they are.
    return this.openInPlace(Buffer.from(sealed), ad);
  }
}
