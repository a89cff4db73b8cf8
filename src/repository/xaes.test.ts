import { describe, expect, it } from 'vitest';
import { Xaes } from './xaes.js';

// C2SP test vectors (https://c2sp.org/XAES-256-GCM): ciphertext ‖ tag after the nonce.
describe('XAES-256-GCM', () => {
  const nonce = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWX');
  it('matches the C2SP vector without associated data', () => {
    const sealed = new Xaes(Buffer.alloc(32, 1)).seal(Buffer.from('XAES-256-GCM'), null, nonce);
    expect(sealed.subarray(24).toString('hex')).toBe('ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271');
  });
  it('matches the C2SP vector with associated data, and refuses other associated data', () => {
    const x = new Xaes(Buffer.alloc(32, 3));
    const ad = Buffer.from('c2sp.org/XAES-256-GCM');
    const sealed = x.seal(Buffer.from('XAES-256-GCM'), ad, nonce);
    expect(sealed.subarray(24).toString('hex')).toBe('986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d');
    expect(x.open(sealed, ad).toString()).toBe('XAES-256-GCM');
    expect(() => x.open(sealed, Buffer.from('c2sp.org/XAES-256-GCN'))).toThrow(/authenticate/);
    expect(() => x.open(sealed, null)).toThrow(/authenticate/);
  });
  it('seals each message under a fresh nonce', () => {
    const x = new Xaes(Buffer.alloc(32, 9));
    const a = x.seal(Buffer.from('same'), null);
    const b = x.seal(Buffer.from('same'), null);
    expect(a.equals(b)).toBe(false);
    expect(x.open(b, null).toString()).toBe('same');
  });
  it('seals into a given buffer exactly as seal() does, also when the plaintext lies in it', () => {
    const x = new Xaes(Buffer.alloc(32, 3));
    const ad = Buffer.from('c2sp.org/XAES-256-GCM');
    const plain = Buffer.from('XAES-256-GCM');
    const expected = x.seal(plain, ad, nonce);
    // The blob worker's case: the plaintext at the start of the buffer the sealed blob goes back in.
    const room = Buffer.alloc(plain.length + 64, 0xee);
    plain.copy(room, 0);
    const sealed = x.sealInto(room, room.subarray(0, plain.length), ad, nonce);
    expect(sealed.buffer).toBe(room.buffer);
    expect(sealed.equals(expected)).toBe(true);
    expect(x.open(sealed, ad).toString()).toBe('XAES-256-GCM');
  });
});
