import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/repo.js';
import { compareKeys, mergeSorted, SortedFile, SortedFileWriter, sortRecords } from './sorted-file.js';

const R = 40;
let dir: { path: string; cleanup(): Promise<void> };
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => dir.cleanup());

/** n records: a random key (some repeated, some sharing a 4-byte prefix) and the record's number after it. */
function records(n: number): Buffer {
  const buf = randomBytes(n * R);
  for (let i = 0; i < n; i++) {
    if (i % 7 === 3) buf.copy(buf, i * R, (i - 1) * R, (i - 1) * R + 32); // same key as the one before
    if (i % 11 === 5) buf.copy(buf, i * R, (i - 2) * R, (i - 2) * R + 4); // same prefix, other key
    buf.writeUInt32LE(i, i * R + 32);
  }
  return buf;
}

function write(path: string, buf: Buffer, n: number): SortedFile {
  const order = sortRecords(buf, R, n);
  const w = new SortedFileWriter(path, R, n);
  for (const i of order) w.add(buf, i * R);
  w.finish();
  return SortedFile.open(path, R);
}

describe('sorted files', () => {
  it('finds every record by key, all copies of a repeated key, and nothing for absent keys', () => {
    const n = 20_000;
    const buf = records(n);
    for (const resident of [0, 1 << 30]) {
      const f = resident ? SortedFile.open(write(`${dir.path}/a`, buf, n).path, R, resident) : write(`${dir.path}/a`, buf, n);
      const byKey = new Map<string, number[]>();
      for (let j = 0; j < n; j++) {
        const k = buf.toString('hex', j * R, j * R + 32);
        byKey.set(k, [...(byKey.get(k) ?? []), j]);
      }
      for (let i = 0; i < n; i++) {
        const found = f.find(buf.subarray(i * R, i * R + 32));
        expect(found.map((r) => r.readUInt32LE(32)).sort((a, b) => a - b)).toEqual(byKey.get(buf.toString('hex', i * R, i * R + 32)));
      }
      for (let i = 0; i < 1000; i++) expect(f.find(randomBytes(32))).toEqual([]);
      f.close();
    }
  });

  it('scans in key order, and keeps records of equal keys in the order they came', () => {
    const n = 5000;
    const buf = records(n);
    const f = write(`${dir.path}/a`, buf, n);
    let prev: Buffer | undefined;
    let count = 0;
    for (const rec of f.scan()) {
      if (prev) {
        const c = compareKeys(prev, 0, rec, 0);
        expect(c).toBeLessThanOrEqual(0);
        if (c === 0) expect(prev.readUInt32LE(32)).toBeLessThan(rec.readUInt32LE(32));
      }
      prev = Buffer.from(rec);
      count++;
    }
    expect(count).toBe(n);
    f.close();
  });

  it('merges sorted files into one, rewriting records on the way', () => {
    const parts = [records(3000), records(10), records(2000)];
    const files = parts.map((b, i) => write(`${dir.path}/p${i}`, b, b.length / R));
    const w = new SortedFileWriter(`${dir.path}/m`, R, 5010);
    mergeSorted(files, w, (rec, input) => rec.writeUInt32LE(input, 36));
    w.finish();
    const m = SortedFile.open(`${dir.path}/m`, R);
    expect(m.count).toBe(5010);
    for (const [i, b] of parts.entries()) {
      for (let j = 0; j < b.length / R; j += 13) {
        const hits = m.find(b.subarray(j * R, j * R + 32));
        expect(hits.some((r) => r.readUInt32LE(32) === b.readUInt32LE(j * R + 32) && r.readUInt32LE(36) === i)).toBe(true);
      }
    }
    for (const f of [...files, m]) f.close();
  });

  it('refuses records out of order, a wrong count, and a damaged file', () => {
    const w = new SortedFileWriter(`${dir.path}/x`, R, 2);
    const a = Buffer.alloc(R, 2);
    const b = Buffer.alloc(R, 1);
    w.add(a);
    expect(() => w.add(b)).toThrow(/out of order/);
    expect(() => w.finish()).toThrow(/1 records written, 2 announced/);
    w.abort();
    const f = write(`${dir.path}/y`, records(100), 100);
    f.close();
    expect(() => SortedFile.open(`${dir.path}/y`, 48)).toThrow(/not a sorted file of 48-byte records/);
  });
});
