import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { keyedBlake3, keyedBlake3OfZeros } from './blake3.js';

describe('keyedBlake3OfZeros', () => {
  it('hashes zeros a slice at a time to what hashing them whole gives', () => {
    const key = randomBytes(32);
    for (const n of [0, 1, 65_535, 65_536, 65_537, 3 * 65_536 + 5, 8 * 1024 * 1024]) {
      expect(keyedBlake3OfZeros(key, n).toString('hex'), `${n} zeros`).toBe(keyedBlake3(key, Buffer.alloc(n)).toString('hex'));
    }
    // The shared hasher is left clean for the next blob.
    expect(keyedBlake3(key, Buffer.from('after')).equals(keyedBlake3(Buffer.from(key), Buffer.from('after')))).toBe(true);
  });
});
