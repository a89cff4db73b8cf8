import { describe, expect, it } from 'vitest';
import { bytes, parseSize, rate } from './format.js';

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

describe('bytes and rate', () => {
  it('round what they show, also below one KiB', () => {
    expect(rate(6.949270326615705, 1000)).toBe('6.9 B/s');
    expect(rate(500.4, 1000)).toBe('500 B/s');
    expect(bytes(512)).toBe('512 B');
    expect(bytes(1536)).toBe('1.50 KiB');
    expect(rate(0, 0)).toBe('-');
  });
});
