import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
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

  it('opens in place: the plaintext is a view of the sealed buffer, and damage or other associated data is refused', () => {
    const x = new Xaes(randomBytes(32));
    const ad = Buffer.from('data blob 1234');
    for (const len of [0, 1, 100, 70_001]) {
      const plain = randomBytes(len);
      const sealed = x.seal(plain, ad);
      const spent = Buffer.from(sealed);
      const opened = x.openInPlace(spent, ad);
      expect(opened.buffer).toBe(spent.buffer);
      expect(opened.equals(plain)).toBe(true);
      expect(x.open(sealed, ad).equals(plain)).toBe(true);
      const flipped = Buffer.from(sealed);
      flipped[flipped.length - 1]! ^= 1;
      expect(() => x.openInPlace(flipped, ad)).toThrow(/authenticate/);
      expect(() => x.openInPlace(Buffer.from(sealed), Buffer.from('data blob 1235'))).toThrow(/authenticate/);
    }
    expect(() => x.openInPlace(Buffer.alloc(39), null)).toThrow(/authenticate/);
  });

  it('gives the same vectors without the native helper (Node crypto alone), in place too', () => {
    // A process of its own: the helper is chosen when the module loads.
    const url = new URL('./xaes.js', import.meta.url).href;
    const binding = new URL('../util/native-binding.js', import.meta.url).href;
    const script = `
      import { Xaes } from ${JSON.stringify(url)};
      import { nativeBinding } from ${JSON.stringify(binding)};
      const x = new Xaes(Buffer.alloc(32, 3));
      const ad = Buffer.from('c2sp.org/XAES-256-GCM');
      const room = Buffer.alloc(64, 0xee);
      room.write('XAES-256-GCM');
      const sealed = x.sealInto(room, room.subarray(0, 12), ad, Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWX'));
      const hex = sealed.subarray(24).toString('hex');
      const opened = x.openInPlace(Buffer.from(sealed), ad).toString();
      let refused = false;
      try { x.openInPlace(Buffer.from(sealed), null); } catch (e) { refused = /authenticate/.test(e.message); }
      console.log(JSON.stringify({ without: nativeBinding() === undefined, hex, opened, refused }));`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, BULWARK_NO_NATIVE: '1' },
      cwd: fileURLToPath(new URL('.', import.meta.url)),
      encoding: 'utf8',
    });
    expect(JSON.parse(out)).toEqual({ without: true, hex: '986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d', opened: 'XAES-256-GCM', refused: true });
  });
});
