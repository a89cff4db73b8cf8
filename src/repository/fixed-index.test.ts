import { describe, expect, it } from 'vitest';
import { decodePage, encodePage } from './fixed-index.js';
import { FIXED_INDEX_HEADER_BYTES, FIXED_INDEX_PAGE_ENTRIES, ID_BYTES } from './format.js';

describe('fixed index pages', () => {
  it('round-trips ids and holes with the documented layout', () => {
    const ids = ['ab'.repeat(32), null, 'cd'.repeat(32)];
    const page = encodePage(ids);
    expect(page.length).toBe(FIXED_INDEX_HEADER_BYTES + 3 * ID_BYTES);
    expect(page.subarray(0, 4).toString('latin1')).toBe('BWFI');
    expect(page.readUInt32LE(4)).toBe(1);
    expect(page.readUInt32LE(8)).toBe(3);
    expect(page.subarray(12 + 32, 12 + 64).every((b) => b === 0)).toBe(true);
    expect(decodePage(page, 'p')).toEqual(ids);
  });
  it('refuses damaged pages and oversized ones', () => {
    const page = encodePage(['ab'.repeat(32)]);
    expect(() => decodePage(page.subarray(0, page.length - 1), 'p')).toThrow(/bad length/);
    const bad = Buffer.from(page);
    bad[0] = 0x58;
    expect(() => decodePage(bad, 'p')).toThrow(/bad header/);
    expect(() => encodePage(new Array<null>(FIXED_INDEX_PAGE_ENTRIES + 1).fill(null))).toThrow();
  });
});
