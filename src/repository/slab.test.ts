import { describe, expect, it } from 'vitest';
import { SlabAllocator } from './slab.js';

describe('SlabAllocator', () => {
  it('hands out places from the low end, rounded to the grain, and says when none is large enough', () => {
    const s = new SlabAllocator(64 * 1024, 4096);
    expect(s.alloc(1)).toBe(0);
    expect(s.alloc(4097)).toBe(4096);
    expect(s.alloc(4096)).toBe(3 * 4096);
    expect(s.used).toBe(4 * 4096);
    expect(s.alloc(13 * 4096)).toBe(-1);
    expect(s.alloc(12 * 4096)).toBe(4 * 4096);
    expect(s.alloc(1)).toBe(-1);
  });

  it('merges places that come back, so the whole range is one place again', () => {
    const s = new SlabAllocator(16 * 4096, 4096);
    const a = s.alloc(4096);
    const b = s.alloc(3 * 4096);
    const c = s.alloc(4096);
    s.release(b);
    // The hole between a and c takes three grains, not four.
    expect(s.alloc(4 * 4096)).toBe(5 * 4096);
    expect(s.alloc(3 * 4096)).toBe(b);
    s.release(a);
    s.release(b);
    s.release(c);
    s.release(5 * 4096);
    expect(s.used).toBe(0);
    expect(s.alloc(16 * 4096)).toBe(0);
  });

  it('says how much of the range was ever touched: the end of the highest place handed out', () => {
    const s = new SlabAllocator(16 * 4096, 4096);
    expect(s.highWater).toBe(0);
    const a = s.alloc(2 * 4096);
    const b = s.alloc(4096);
    expect(s.highWater).toBe(3 * 4096);
    s.release(a);
    s.release(b);
    // Taken again from the low end: nothing new is touched.
    s.alloc(3 * 4096);
    expect(s.highWater).toBe(3 * 4096);
    s.alloc(4096);
    expect(s.highWater).toBe(4 * 4096);
  });

  it('throws on a place it did not hand out, or one given back twice', () => {
    const s = new SlabAllocator(8 * 4096, 4096);
    const a = s.alloc(100);
    expect(() => s.release(4096)).toThrow(/not handed out/);
    s.release(a);
    expect(() => s.release(a)).toThrow(/not handed out/);
    expect(() => new SlabAllocator(5000, 4096)).toThrow(RangeError);
  });

  it('never hands out overlapping places, through thousands of random takes and gives', () => {
    const size = 256 * 4096;
    const s = new SlabAllocator(size, 4096);
    const owner = new Int32Array(size / 4096).fill(-1);
    const live = new Map<number, number>();
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let step = 0; step < 20_000; step++) {
      if (live.size > 0 && rand(3) === 0) {
        const keys = [...live.keys()];
        const at = keys[rand(keys.length)]!;
        const len = live.get(at)!;
        for (let g = at / 4096; g < (at + len) / 4096; g++) owner[g] = -1;
        live.delete(at);
        s.release(at);
        continue;
      }
      const want = 1 + rand(24 * 4096);
      const at = s.alloc(want);
      if (at < 0) {
        // Only when no run of free grains is long enough.
        const need = Math.ceil(want / 4096);
        let run = 0;
        let best = 0;
        for (const o of owner) best = Math.max(best, (run = o < 0 ? run + 1 : 0));
        expect(best).toBeLessThan(need);
        continue;
      }
      const len = Math.ceil(want / 4096) * 4096;
      expect(at + len).toBeLessThanOrEqual(size);
      for (let g = at / 4096; g < (at + len) / 4096; g++) {
        expect(owner[g]).toBe(-1);
        owner[g] = step;
      }
      live.set(at, len);
    }
    for (const at of live.keys()) s.release(at);
    expect(s.used).toBe(0);
    expect(s.alloc(size)).toBe(0);
  });
});
