import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { RateLimiter, type Sleeper } from '../util/rate-limit.js';
import { LimitedBackend } from './limited.js';
import { LocalBackend } from './local.js';
import { backendSuite } from './testing/suite.js';

backendSuite('LimitedBackend over LocalBackend', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bulwark-limited-'));
  return { backend: new LimitedBackend(new LocalBackend(join(dir, 'repo')), { upload: 1e12, download: 1e12 }), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

describe('LimitedBackend', () => {
  it('paces saves and loads to the rates given, each direction on its own', async () => {
    // A clock that only moves when someone sleeps: the time the limiter asks for is the witness.
    let now = 0;
    const clock: Sleeper = { now: () => now, sleep: async (ms) => void (now += ms) };
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-limited-'));
    try {
      const inner = new LocalBackend(join(dir, 'repo'));
      await inner.create();
      const b = new LimitedBackend(inner, {}, { up: new RateLimiter(1_000_000, clock), down: new RateLimiter(4_000_000, clock) });
      const body = Buffer.alloc(500_000, 7);
      for (let i = 0; i < 4; i++) await b.save({ type: 'data', name: `${i}`.padStart(2, '0').repeat(32) }, body);
      // 2 MB at 1 MB/s: the first object is sent at once, the other three wait their turn.
      expect(now).toBeCloseTo(1500, 0);
      const before = now;
      for (let i = 0; i < 4; i++) expect((await b.load({ type: 'data', name: `${i}`.padStart(2, '0').repeat(32) })).length).toBe(500_000);
      // 2 MB back at 4 MB/s, paid after each load: again the first goes free, three wait 125 ms.
      expect(now - before).toBeCloseTo(375, 0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
