import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { nativeHelpers } from './native.js';

// The in-place AES-256-GCM against Node's own crypto as the witness. The native helpers are built by
// `npm ci` (CI installs a compiler); without them this says so rather than passing silently.
describe('native gcm', () => {
  const gcm = nativeHelpers()?.gcm;
  it('is available (the helpers were built and the process lends its OpenSSL)', () => {
    expect(gcm, 'native/ was not built, or this Node exports no OpenSSL: run npm run build').toBeTypeOf('function');
  });

  it.each([0, 1, 15, 16, 17, 4096, 1_000_003])('encrypts and opens %i bytes in place exactly as Node does', (len) => {
    const key = randomBytes(32);
    const iv = randomBytes(12);
    const ad = len % 2 ? randomBytes(21) : null;
    const plain = randomBytes(len);
    const c = createCipheriv('aes-256-gcm', key, iv);
    if (ad) c.setAAD(ad);
    const ct = Buffer.concat([c.update(plain), c.final()]);
    const data = Buffer.from(plain);
    const tag = Buffer.alloc(16);
    expect(gcm!(true, key, iv, ad, data, tag)).toBe(true);
    expect(data.equals(ct)).toBe(true);
    expect(tag.equals(c.getAuthTag())).toBe(true);
    // Node opens what the helper sealed, and the helper opens it back in place.
    const d = createDecipheriv('aes-256-gcm', key, iv);
    if (ad) d.setAAD(ad);
    d.setAuthTag(tag);
    expect(Buffer.concat([d.update(data), d.final()]).equals(plain)).toBe(true);
    expect(gcm!(false, key, iv, ad, data, tag)).toBe(true);
    expect(data.equals(plain)).toBe(true);
  });

  it('refuses a flipped bit in the data, the tag or the associated data, and a wrong key', () => {
    const key = randomBytes(32);
    const iv = randomBytes(12);
    const ad = Buffer.from('bound to this blob');
    const sealed = randomBytes(1000);
    const tag = Buffer.alloc(16);
    gcm!(true, key, iv, ad, sealed, tag);
    const tries: [Buffer, Buffer, Buffer, Buffer][] = [
      [key, Buffer.from(sealed).fill(sealed[0]! ^ 1, 0, 1), tag, ad],
      [key, sealed, Buffer.from(tag).fill(tag[15]! ^ 0x80, 15), ad],
      [key, sealed, tag, Buffer.from('bound to this blog')],
      [randomBytes(32), sealed, tag, ad],
    ];
    for (const [k, data, t, a] of tries) expect(gcm!(false, k, iv, a, Buffer.from(data), t)).toBe(false);
    expect(gcm!(false, key, iv, ad, Buffer.from(sealed), tag)).toBe(true);
  });

  it('checks its arguments', () => {
    const ok = Buffer.alloc(16);
    expect(() => gcm!(true, Buffer.alloc(31), Buffer.alloc(12), null, ok, Buffer.alloc(16))).toThrow(RangeError);
    expect(() => gcm!(true, Buffer.alloc(32), Buffer.alloc(8), null, ok, Buffer.alloc(16))).toThrow(RangeError);
    expect(() => gcm!(true, Buffer.alloc(32), Buffer.alloc(12), null, ok, Buffer.alloc(8))).toThrow(RangeError);
    expect(() => gcm!(true, Buffer.alloc(32), Buffer.alloc(12), null, 'text' as unknown as Uint8Array, Buffer.alloc(16))).toThrow(TypeError);
  });
});
