import { describe, expect, it } from 'vitest';
import { orderedMap } from './ordered.js';

describe('orderedMap', () => {
  it('keeps input order while running calls concurrently, within the window', async () => {
    let inFlight = 0;
    let peak = 0;
    const out: number[] = [];
    const delays = [30, 5, 20, 1, 10, 2, 25, 3];
    for await (const r of orderedMap(delays.keys(), 3, async (i) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((res) => setTimeout(res, delays[i]));
      inFlight--;
      return i;
    })) out.push(r);
    expect(out).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(peak).toBe(3);
  });
  it('pulls lazily from async sources and propagates errors in order', async () => {
    async function* src(): AsyncGenerator<number> {
      for (let i = 0; i < 5; i++) yield i;
    }
    const got: number[] = [];
    await expect(
      (async () => {
        for await (const r of orderedMap(src(), 2, async (i) => {
          if (i === 3) throw new Error('boom at 3');
          return i;
        })) got.push(r);
      })(),
    ).rejects.toThrow('boom at 3');
    expect(got).toEqual([0, 1, 2]);
  });

  it('hands results computed ahead but never consumed to onDiscard', async () => {
    const computed: number[] = [];
    const consumed: number[] = [];
    const discarded: number[] = [];
    for await (const r of orderedMap([1, 2, 3, 4, 5, 6, 7], 3, async (i) => (computed.push(i), i), (r) => discarded.push(r))) {
      consumed.push(r);
      if (r === 2) break;
    }
    await new Promise((res) => setTimeout(res, 10));
    expect(consumed).toEqual([1, 2]);
    expect(discarded.length).toBeGreaterThan(0);
    expect([...consumed, ...discarded].sort()).toEqual(computed.sort());
  });
});
