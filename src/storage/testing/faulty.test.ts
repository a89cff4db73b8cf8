import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FileType, Handle } from '../backend.js';
import { LocalBackend } from '../local.js';
import { FaultyBackend, InjectedFault } from './faulty.js';

function object(size: number, type: FileType = 'data'): { h: Handle; data: Buffer } {
  const data = randomBytes(size);
  return { h: { type, name: createHash('sha256').update(data).digest('hex') }, data };
}

describe('FaultyBackend', () => {
  let dir: string;
  let inner: LocalBackend;
  let f: FaultyBackend;

  beforeEach(async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'bulwark-faulty-'));
    inner = new LocalBackend(join(dir, 'repo'));
    f = new FaultyBackend(inner);
    await f.create();
  });

  afterEach(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('passes everything through when told nothing', async () => {
    const o = object(100);
    await f.save(o.h, o.data);
    expect((await f.load(o.h)).equals(o.data)).toBe(true);
    expect(await f.stat(o.h)).toEqual({ name: o.h.name, size: 100 });
    expect(f.properties).toBe(inner.properties);
    await f.remove(o.h);
    expect(f.isNotFound(await f.stat(o.h).catch((e: unknown) => e))).toBe(true);
  });

  it('fails exactly the nth save, storing nothing', async () => {
    f.failNthSave(3);
    const objects = Array.from({ length: 5 }, (_, i) => object(10 + i));
    const results = [];
    for (const o of objects) results.push(await f.save(o.h, o.data).then(() => 'ok', (e: unknown) => e));
    expect(results.map((r) => (r === 'ok' ? 'ok' : 'fail'))).toEqual(['ok', 'ok', 'fail', 'ok', 'ok']);
    expect(results[2]).toBeInstanceOf(InjectedFault);
    expect(f.isPermanent(results[2]), 'transient by default').toBe(false);
    expect(f.isNotFound(results[2])).toBe(false);
    expect(inner.isNotFound(await inner.stat(objects[2]!.h).catch((e: unknown) => e))).toBe(true);
    expect(f.saveCalls).toBe(5);
  });

  it('fails the saves of one type only, as often as told', async () => {
    f.failSavesOfType('index', { kind: 'permanent' });
    const d = object(10);
    await f.save(d.h, d.data);
    for (let i = 0; i < 3; i++) {
      const x = object(10 + i, 'index');
      const err = await f.save(x.h, x.data).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'EACCES', kind: 'permanent' });
      expect(f.isPermanent(err)).toBe(true);
    }
    f.clearFaults().failSavesOfType('snapshots', { times: 1 });
    const s1 = object(5, 'snapshots');
    const s2 = object(6, 'snapshots');
    await expect(f.save(s1.h, s1.data)).rejects.toBeInstanceOf(InjectedFault);
    await f.save(s1.h, s1.data);
    await f.save(s2.h, s2.data);
  });

  it('runs out of space after a number of bytes, like a full disk (nothing partial stored)', async () => {
    f.failAfterBytes(1000);
    const a = object(600);
    const b = object(600);
    const c = object(400);
    await f.save(a.h, a.data);
    const err = await f.save(b.h, b.data).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ENOSPC', kind: 'no-space' });
    expect((err as Error).message).toMatch(/no space/);
    expect(f.isPermanent(err)).toBe(true);
    expect(inner.isNotFound(await inner.stat(b.h).catch((e: unknown) => e))).toBe(true);
    await f.save(c.h, c.data); // still fits
    expect(f.savedBytes).toBe(1000);
    expect(f.injected).toHaveLength(1);
  });

  it('counts concurrent saves against the free space', async () => {
    f.failAfterBytes(1000);
    const objects = Array.from({ length: 4 }, (_, i) => object(400 + i));
    const results = await Promise.allSettled(objects.map((o) => f.save(o.h, o.data)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(2);
  });

  it('can lose the reply of a save that did happen', async () => {
    const o = object(50);
    f.failNthSave(1, 'transient', { replyLost: true });
    await expect(f.save(o.h, o.data)).rejects.toBeInstanceOf(InjectedFault);
    expect((await inner.load(o.h)).equals(o.data)).toBe(true);
  });

  it('corrupts loaded bytes without touching what is stored', async () => {
    const o = object(1000);
    await f.save(o.h, o.data);
    f.corruptLoads({ times: 1 });
    const bad = await f.load(o.h);
    expect(bad.length).toBe(1000);
    let diffBits = 0;
    for (let i = 0; i < bad.length; i++) diffBits += (bad[i]! ^ o.data[i]!).toString(2).replaceAll('0', '').length;
    expect(diffBits).toBe(1);
    expect((await f.load(o.h)).equals(o.data), 'only once').toBe(true);
    expect((await inner.load(o.h)).equals(o.data)).toBe(true);

    f.corruptLoads({ type: 'index', mode: 'truncate' });
    expect((await f.load(o.h)).equals(o.data), 'other types untouched').toBe(true);
    const x = object(20, 'index');
    await f.save(x.h, x.data);
    expect((await f.load(x.h)).equals(x.data.subarray(0, 19))).toBe(true);
    expect((await f.load(x.h, 0, 10)).length, 'ranged loads too').toBe(9);
  });

  it('fails listings at the start or half way', async () => {
    for (let i = 0; i < 5; i++) {
      const k = object(10 + i, 'keys');
      await f.save(k.h, k.data);
    }
    f.failNext('list');
    await expect(drain(f.list('keys'))).rejects.toBeInstanceOf(InjectedFault);
    expect(await drain(f.list('keys'))).toHaveLength(5);
    f.failNext('list', { afterItems: 2 });
    const seen: string[] = [];
    await expect(drain(f.list('keys'), seen)).rejects.toBeInstanceOf(InjectedFault);
    expect(seen).toHaveLength(2);
  });

  it('refuses nonsense options', () => {
    expect(() => f.failNthSave(0)).toThrow();
    expect(() => f.failNext('list', { replyLost: true })).toThrow();
    expect(() => f.failNext('save', { afterItems: 1 })).toThrow();
  });
});

async function drain(it: AsyncIterable<{ name: string }>, into: string[] = []): Promise<string[]> {
  for await (const x of it) into.push(x.name);
  return into;
}
