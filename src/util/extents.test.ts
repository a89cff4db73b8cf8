import { closeSync, openSync, mkdtempSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { nativeHelpers } from './native.js';
import { FileExtents, worthMapping } from './extents.js';

const dir = mkdtempSync(join(tmpdir(), 'bulwark-extents-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;

describe('native helpers', () => {
  it('are built (npm install and npm run build make them; scripts/build-native.mjs)', () => {
    expect(nativeHelpers(), 'native/build/Release/bulwark_native.node did not load').toBeDefined();
  });
});

describe('FileExtents', () => {
  it('finds the holes of a real sparse file, one lseek per extent', () => {
    const path = join(dir, 'sparse');
    writeFileSync(path, '');
    truncateSync(path, 1024 * MiB);
    const fd = openSync(path, 'r+');
    try {
      writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 100 * MiB);
      writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, 1024 * MiB - 4096);
      const helpers = nativeHelpers()!;
      let calls = 0;
      const counted = { seekData: (f: number, o: number) => (calls++, helpers.seekData(f, o)), seekHole: (f: number, o: number) => (calls++, helpers.seekHole(f, o)) };
      const x = new FileExtents(fd, 1024 * MiB, counted);
      expect(x.holeEnd(0)).toBe(100 * MiB);
      expect(x.holeEnd(50 * MiB)).toBe(100 * MiB);
      expect(x.holeEnd(100 * MiB)).toBe(100 * MiB);
      const before = calls;
      // Inside the data extent just found: no system call.
      expect(x.holeEnd(100 * MiB + 100)).toBe(100 * MiB + 100);
      expect(calls).toBe(before);
      expect(x.holeEnd(100 * MiB + 4096)).toBe(1024 * MiB - 4096);
      expect(x.holeEnd(1024 * MiB - 4096)).toBe(1024 * MiB - 4096);
      expect(x.holeEnd(1024 * MiB)).toBe(1024 * MiB);
    } finally {
      closeSync(fd);
    }
  });

  it('treats a hole that runs to the end as ending at the size seen when opened', () => {
    const helpers = { seekData: () => -1, seekHole: () => 0 };
    expect(new FileExtents(3, 10 * MiB, helpers).holeEnd(2 * MiB)).toBe(10 * MiB);
    expect(new FileExtents(3, 10 * MiB, helpers).holeEnd(12 * MiB)).toBe(12 * MiB);
  });

  it('reads the file whole where the file system cannot say where its data is', () => {
    let calls = 0;
    const refusing = {
      seekData: () => {
        calls++;
        throw Object.assign(new Error('lseek(SEEK_DATA): Invalid argument'), { code: 'EINVAL' });
      },
      seekHole: () => 0,
    };
    const x = new FileExtents(3, 100 * MiB, refusing);
    expect(x.holeEnd(0)).toBe(0);
    expect(x.holeEnd(50 * MiB)).toBe(50 * MiB);
    expect(calls).toBe(1);
  });

  it('maps only files that are large and mostly unallocated', () => {
    expect(worthMapping(1024 * MiB, 4 * MiB, 8 * MiB)).toBe(true);
    expect(worthMapping(1024 * MiB, 1000 * MiB, 8 * MiB)).toBe(false);
    expect(worthMapping(12 * MiB, 0, 8 * MiB)).toBe(false);
  });
});
