import { describe, expect, it } from 'vitest';
import { XdrReader, XdrWriter } from './xdr.js';

describe('XDR as libvirt uses it', () => {
  it('round-trips ints, hypers, padded strings, optional strings, fixed opaques and arrays', () => {
    const uuid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const b = new XdrWriter().int(-5).uint(0xfffffffe).hyper(2n ** 40n).string('vda').optString(undefined).optString('x').fixed(uuid).array(['a', 'bcde'], (w, s) => w.string(s)).toBuffer();
    // int, uint, hyper, 'vda' (length + 4 padded), NULL, 'x' (flag + length + 4 padded), UUID, array (count + 2 strings of 8).
    expect(b.length).toBe(4 + 4 + 8 + 8 + 4 + 12 + 16 + 4 + 8 + 8);
    const r = new XdrReader(b);
    expect([r.int(), r.uint(), r.hyper(), r.string(), r.optString(), r.optString()]).toEqual([-5, 0xfffffffe, 2n ** 40n, 'vda', undefined, 'x']);
    expect(r.fixed(16)).toEqual(uuid);
    expect(r.array((x) => x.string())).toEqual(['a', 'bcde']);
    expect(r.remaining).toBe(0);
  });

  it('never trusts a length: strings, opaques and arrays longer than the message are refused, not allocated', () => {
    const huge = new XdrWriter().uint(0x7fffffff).toBuffer();
    expect(() => new XdrReader(huge).string()).toThrow(/opaque of 2147483647 bytes, more than/);
    expect(() => new XdrReader(huge).array((x) => x.int())).toThrow(/more than it can carry/);
    expect(() => new XdrReader(new XdrWriter().uint(10).uint(1).toBuffer()).opaque(4)).toThrow(/more than the 4 allowed/);
    expect(() => new XdrReader(Buffer.alloc(2)).int()).toThrow(/too short/);
  });
});
