import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeSparse, writeSparseSync } from './sparse.js';

describe.each([
  ['writeSparse', (fh: Awaited<ReturnType<typeof open>>, data: Buffer, pos: number) => writeSparse(fh, data, pos)],
  ['writeSparseSync', (fh: Awaited<ReturnType<typeof open>>, data: Buffer, pos: number) => Promise.resolve(writeSparseSync(fh.fd, data, pos))],
])('%s', (name, write) => {
  it('writes the data exactly and leaves zero pages unallocated', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sparse-'));
    try {
      const file = join(dir, 'f');
      const fh = await open(file, 'w+');
      const size = 8 * 1024 * 1024;
      await fh.truncate(size);
      const data = Buffer.alloc(4 * 1024 * 1024);
      data.fill(0xaa, 100, 200); // inside the first (partial) page
      data.fill(0xbb, 2 * 1024 * 1024, 2 * 1024 * 1024 + 5000); // spans two pages
      data.fill(0xcc, data.length - 10); // the last bytes: a run that ends the buffer
      const written = await write(fh, data, 1000); // unaligned position
      const back = Buffer.alloc(data.length);
      await fh.read(back, 0, data.length, 1000);
      await fh.close();
      expect(back.equals(data)).toBe(true);
      // writeSparse counts the bytes written; writeSparseSync says where the last one ended.
      if (name === 'writeSparse') expect(written).toBeLessThan(6 * 4096);
      else expect(written).toBe(1000 + data.length);
      expect((await stat(file)).blocks * 512).toBeLessThanOrEqual(5 * 4096);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('writeSparseSync', () => {
  it('says where its last write ended: the start for all zeros, before a zero tail', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sparse-'));
    try {
      const fh = await open(join(dir, 'f'), 'w+');
      try {
        expect(writeSparseSync(fh.fd, Buffer.alloc(3 * 4096), 4096)).toBe(4096);
        const data = Buffer.alloc(3 * 4096);
        data.fill(1, 10, 20);
        // Written up to the end of the first (file-aligned) page that holds data, not the zero pages after it.
        expect(writeSparseSync(fh.fd, data, 4096 + 100)).toBe(2 * 4096);
        expect((await fh.stat()).size).toBe(2 * 4096);
      } finally {
        await fh.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
