import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlobTable } from './blob-table.js';
import type { IndexEntry } from './index.js';

describe('BlobTable', () => {
  it('finds every entry added, through several growths, as a Map would; and nothing else', () => {
    const table = new BlobTable();
    const map = new Map<string, IndexEntry>();
    const packs = Array.from({ length: 7 }, () => randomBytes(32).toString('hex'));
    for (let i = 0; i < 5000; i++) {
      const id = randomBytes(32).toString('hex');
      // Offsets past 4 GiB and odd lengths survive the typed arrays.
      const e: IndexEntry = { pack: packs[i % 7]!, type: i % 3 === 0 ? 'tree' : 'data', offset: i * 2 ** 22 + 17, length: 1 + i, ulen: i % 2 ? 0 : 3 * i };
      table.add(id, e);
      map.set(id, e);
    }
    expect(table.size).toBe(5000);
    for (const [id, e] of map) expect(table.get(id)).toEqual(e);
    expect([...table.entries()]).toEqual([...map.entries()]);
    for (let i = 0; i < 1000; i++) expect(table.get(randomBytes(32).toString('hex'))).toBeUndefined();
    // Neighbouring ids (one bit apart) are different blobs.
    const [first] = map.keys();
    const near = Buffer.from(first!, 'hex');
    near[31]! ^= 1;
    expect(table.has(near.toString('hex'))).toBe(false);
    expect(table.memoryBytes).toBeLessThan(5000 * 2 * 80);
  });

  it('refuses what is not a blob id, and an id added twice; a malformed key is simply not found', () => {
    const table = new BlobTable();
    const e: IndexEntry = { pack: 'p', type: 'data', offset: 0, length: 1, ulen: 0 };
    const id = randomBytes(32).toString('hex');
    table.add(id, e);
    expect(() => table.add(id, e)).toThrow(/already/);
    expect(() => table.add(id.toUpperCase(), e)).toThrow(/not a blob id/);
    expect(() => table.add(id.slice(2), e)).toThrow(/not a blob id/);
    expect(table.get(id.slice(0, 62) + 'zz')).toBeUndefined();
    expect(table.get(id.slice(2))).toBeUndefined();
    expect(table.get('')).toBeUndefined();
    table.clear();
    expect(table.size).toBe(0);
    expect(table.has(id)).toBe(false);
    table.add(id, e);
    expect(table.get(id)).toEqual(e);
  });

  it('spreads ids that share their first bytes (ids another writer chose)', () => {
    const table = new BlobTable();
    const e: IndexEntry = { pack: 'p', type: 'data', offset: 0, length: 1, ulen: 0 };
    const ids: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const b = Buffer.alloc(32);
      b.writeUInt32BE(i, 28);
      ids.push(b.toString('hex'));
    }
    for (const id of ids) table.add(id, e);
    table.probes = 0;
    for (const id of ids) expect(table.has(id)).toBe(true);
    // Piled into one run of slots, these would take thousands of probes per lookup.
    expect(table.probes / ids.length).toBeLessThan(3);
  });
});
