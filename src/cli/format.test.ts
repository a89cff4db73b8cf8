import { describe, expect, it } from 'vitest';
import { parseSize } from './format.js';

describe('parseSize', () => {
  it('reads plain numbers and binary units, with or without B', () => {
    expect(parseSize('0')).toBe(0);
    expect(parseSize('512')).toBe(512);
    expect(parseSize('64K')).toBe(64 * 1024);
    expect(parseSize('10G')).toBe(10 * 1024 ** 3);
    expect(parseSize('1.5GiB')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('20 mb')).toBe(20 * 1024 ** 2);
  });
  it('refuses what is not a size', () => {
    for (const bad of ['', 'ten', '-1', '1X', '1.2.3', 'G']) expect(parseSize(bad), bad).toBeUndefined();
  });
});
