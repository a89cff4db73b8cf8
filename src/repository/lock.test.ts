import { afterEach, describe, expect, it } from 'vitest';
import { createTestRepository, type TestRepository } from '../../test/helpers/repo.js';
import type { Clock } from '../util/clock.js';
import { listLocks, Lock, LOCK_REFRESH_MS, LOCK_STALE_MS, removeLocks } from './lock.js';

let t: TestRepository | undefined;
afterEach(async () => {
  await t?.cleanup();
  t = undefined;
});

describe('locks', () => {
  it('writes no snapshot under a lock it could not refresh for most of the stale period', async () => {
    let now = Date.parse('2026-01-01T00:00:00Z');
    t = await createTestRepository({ clock: { now: () => new Date(now) } });
    const lock = await Lock.acquire(t.repo, false, 'backup');
    await t.repo.saveDocument('snapshots', { n: 1 });
    // Another host would soon take this lock for stale, and a prune could remove what we reuse.
    now += LOCK_STALE_MS - LOCK_REFRESH_MS + 60_000;
    await expect(t.repo.saveDocument('snapshots', { n: 2 })).rejects.toThrow(/could not refresh its lock for 26 minutes .*the snapshot was not written/);
    // Other documents are not held back, and a refresh makes the lock fresh again.
    await t.repo.saveDocument('index', { version: 1, packs: [] });
    await lock.sawIndex(0);
    await t.repo.saveDocument('snapshots', { n: 3 });
    await lock.release();
  });

  it('lets shared locks coexist and keeps the exclusive lock alone', async () => {
    t = await createTestRepository();
    const a = await Lock.acquire(t.repo, false, 'backup');
    const b = await Lock.acquire(t.repo, false, 'backup');
    await expect(Lock.acquire(t.repo, true, 'prune')).rejects.toMatchObject({ code: 'repository-locked' });
    await a.release();
    await b.release();
    const x = await Lock.acquire(t.repo, true, 'prune');
    await expect(Lock.acquire(t.repo, false, 'backup')).rejects.toThrow(/locked exclusively by prune/);
    await x.release();
    expect(await listLocks(t.repo)).toEqual([]);
  });

  it('treats a lock not refreshed for the stale period as stale, and unlock removes only stale ones', async () => {
    t = await createTestRepository();
    let now = Date.parse('2026-01-01T00:00:00Z');
    const clock: Clock = { now: () => new Date(now) };
    const real = t.repo;
    const repo = {
      backend: real.backend,
      clock,
      saveDocument: real.saveDocument.bind(real),
      loadDocument: real.loadDocument.bind(real),
    };
    const old = await Lock.acquire(repo, true, 'prune');
    now += LOCK_STALE_MS + 1000;
    const locks = await listLocks(repo);
    expect(locks).toHaveLength(1);
    expect(locks[0]!.stale).toBe(true);
    // The stale exclusive lock does not block a backup.
    const fresh = await Lock.acquire(repo, false, 'backup');
    const removed = await removeLocks(repo);
    expect(removed.map((l) => l.purpose)).toEqual(['prune']);
    expect((await listLocks(repo)).map((l) => l.purpose)).toEqual(['backup']);
    await fresh.release();
    await old.release();
  });

  it('takes locks of dead processes on this host as stale', async () => {
    t = await createTestRepository();
    const { hostname } = await import('node:os');
    await t.repo.saveDocument('locks', { time: new Date().toISOString(), exclusive: true, hostname: hostname(), username: 'root', pid: 2 ** 22 + 12345, purpose: 'prune' });
    const [l] = await listLocks(t.repo);
    expect(l!.stale).toBe(true);
    const b = await Lock.acquire(t.repo, false, 'backup');
    await b.release();
  });
});
