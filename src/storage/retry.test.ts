import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FileType, Handle } from './backend.js';
import { LocalBackend } from './local.js';
import { RetryBackend, type RetryEvent, type RetryOptions } from './retry.js';
import { FaultyBackend, InjectedFault } from './testing/faulty.js';
import { backendSuite } from './testing/suite.js';

function object(size: number, type: FileType = 'data'): { h: Handle; data: Buffer } {
  const data = randomBytes(size);
  return { h: { type, name: createHash('sha256').update(data).digest('hex') }, data };
}

// The contract must survive the retry layer even when the store underneath keeps failing for a moment:
// every few saves fail (some after storing, their reply lost), and so do some loads, stats and listings.
backendSuite('RetryBackend over a flaky LocalBackend', async () => {
  const dir = await fsp.mkdtemp(join(tmpdir(), 'bulwark-retry-'));
  const faulty = new FaultyBackend(new LocalBackend(join(dir, 'repo')));
  for (let n = 2; n < 400; n += 4) faulty.failNthSave(n, 'transient', { replyLost: n % 8 === 2 });
  faulty.failNext('load', { times: 2 }).failNext('stat', { times: 2, replyLost: true }).failNext('list', { times: 3, afterItems: 1 }).failNext('remove', { replyLost: true });
  // Generous: concurrent saves interleave, so one save may meet several of the faults above in a row.
  const backend = new RetryBackend(faulty, { sleep: async () => {}, maxAttempts: 50 });
  return { backend, cleanup: () => fsp.rm(dir, { recursive: true, force: true }) };
});

describe('RetryBackend', () => {
  let dir: string;
  let faulty: FaultyBackend;
  let sleeps: number[];
  let events: RetryEvent[];

  function retrying(opts: RetryOptions = {}): RetryBackend {
    return new RetryBackend(faulty, {
      jitter: 0,
      initialDelayMs: 100,
      sleep: async (ms) => {
        sleeps.push(ms);
      },
      onRetry: (e) => events.push(e),
      ...opts,
    });
  }

  beforeEach(async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'bulwark-retry-'));
    faulty = new FaultyBackend(new LocalBackend(join(dir, 'repo')));
    await faulty.create();
    sleeps = [];
    events = [];
  });

  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('retries transient failures with exponentially growing waits, then succeeds', async () => {
    const r = retrying();
    const o = object(100);
    faulty.failNext('save', { times: 3 });
    await r.save(o.h, o.data);
    expect(sleeps).toEqual([100, 200, 400]);
    expect(events.map((e) => [e.op, e.type, e.name, e.attempt])).toEqual([
      ['save', 'data', o.h.name, 1],
      ['save', 'data', o.h.name, 2],
      ['save', 'data', o.h.name, 3],
    ]);
    expect(events[0]!.error).toBeInstanceOf(InjectedFault);
    expect((await r.load(o.h)).equals(o.data)).toBe(true);
    expect(faulty.saveCalls).toBe(4);
  });

  it('caps each wait at maxDelayMs', async () => {
    const r = retrying({ maxDelayMs: 350, maxAttempts: 6 });
    faulty.failNext('stat', { times: 5 });
    await expect(r.stat({ type: 'config', name: '' })).rejects.toSatisfy((e: unknown) => r.isNotFound(e));
    expect(sleeps).toEqual([100, 200, 350, 350, 350]);
  });

  it('gives up after maxAttempts with the last error, still classifiable', async () => {
    const r = retrying({ maxAttempts: 4 });
    const o = object(10);
    faulty.failNext('save', { times: Infinity });
    const err = await r.save(o.h, o.data).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InjectedFault);
    expect(err).toBe(faulty.injected.at(-1));
    expect(r.isPermanent(err)).toBe(false);
    expect(sleeps).toHaveLength(3);
    expect(faulty.saveCalls).toBe(4);
  });

  it('does not retry permanent errors: no space, permission, a different object under the same name', async () => {
    const r = retrying();
    const o = object(100);
    faulty.failAfterBytes(50);
    await expect(r.save(o.h, o.data)).rejects.toMatchObject({ code: 'ENOSPC' });
    faulty.clearFaults().failNext('save', { kind: 'permanent' });
    await expect(r.save(o.h, o.data)).rejects.toMatchObject({ code: 'EACCES' });
    await r.save(o.h, o.data);
    await expect(r.save(o.h, randomBytes(99))).rejects.toMatchObject({ code: 'repository-corrupt' });
    expect(sleeps).toEqual([]);
  });

  it('does not retry a missing object: it will stay missing', async () => {
    const r = retrying();
    const { h } = object(10);
    for (const p of [() => r.load(h), () => r.stat(h), () => r.remove(h)]) {
      const err = await p().catch((e: unknown) => e);
      expect(r.isNotFound(err)).toBe(true);
    }
    expect(sleeps).toEqual([]);
  });

  it('repeats a save whose reply was lost: the object is stored once and the save succeeds', async () => {
    const r = retrying();
    const o = object(1000);
    faulty.failNthSave(1, 'transient', { replyLost: true });
    await r.save(o.h, o.data);
    expect(sleeps).toHaveLength(1);
    expect(faulty.saveCalls).toBe(2);
    const listed: string[] = [];
    for await (const f of r.list('data')) listed.push(f.name);
    expect(listed).toEqual([o.h.name]);
  });

  it('counts a remove whose reply was lost as done', async () => {
    const r = retrying();
    const o = object(10, 'locks');
    await r.save(o.h, o.data);
    faulty.failNext('remove', { replyLost: true });
    await r.remove(o.h);
    expect(sleeps).toHaveLength(1);
    expect(r.isNotFound(await r.stat(o.h).catch((e: unknown) => e))).toBe(true);
  });

  it('restarts a listing that broke off, without handing out a name twice', async () => {
    const r = retrying();
    const saved: string[] = [];
    for (let i = 0; i < 10; i++) {
      const k = object(10 + i, 'keys');
      await r.save(k.h, k.data);
      saved.push(k.h.name);
    }
    faulty.failNext('list', { afterItems: 4 }).failNext('list', { afterItems: 7 });
    const listed: string[] = [];
    for await (const f of r.list('keys')) listed.push(f.name);
    expect(listed.sort()).toEqual(saved.sort());
    expect(sleeps).toEqual([100, 200]);
    expect(events.map((e) => [e.op, e.type])).toEqual([
      ['list', 'keys'],
      ['list', 'keys'],
    ]);
  });

  it('spreads waits by the jitter factor', async () => {
    const low = retrying({ jitter: 0.5, random: () => 0 });
    faulty.failNext('stat', { times: 2 });
    await low.stat({ type: 'config', name: '' }).catch(() => undefined);
    const high = retrying({ jitter: 0.5, random: () => 0.999999 });
    faulty.failNext('stat', { times: 2 });
    await high.stat({ type: 'config', name: '' }).catch(() => undefined);
    expect(sleeps).toEqual([50, 100, 150, 300]);
  });

  it('stops retrying once closed', async () => {
    let r: RetryBackend | undefined;
    r = retrying({
      sleep: async (ms) => {
        sleeps.push(ms);
        await r!.close();
      },
    });
    faulty.failNext('save', { times: 5 });
    const o = object(10);
    await expect(r.save(o.h, o.data)).rejects.toBeInstanceOf(InjectedFault);
    expect(sleeps).toHaveLength(1);
    r = undefined;
  });

  it('passes properties and create() through', async () => {
    const r = retrying();
    expect(r.properties).toBe(faulty.properties);
    await r.save({ type: 'config', name: '' }, Buffer.from('c'));
    await expect(r.create()).rejects.toMatchObject({ code: 'repository-exists' });
    expect(sleeps).toEqual([]);
    expect(() => new RetryBackend(faulty, { maxAttempts: 0 })).toThrow(/maxAttempts/);
    expect(() => new RetryBackend(faulty, { jitter: 2 })).toThrow(/jitter/);
  });
});
