import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeSparse } from './sparse.js';

describe('writeSparse', () => {
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
      const written = await writeSparse(fh, data, 1000); // unaligned position
      const back = Buffer.alloc(data.length);
      await fh.read(back, 0, data.length, 1000);
      await fh.close();
      expect(back.equals(data)).toBe(true);
      expect(written).toBeLessThan(5 * 4096);
      expect((await stat(file)).blocks * 512).toBeLessThanOrEqual(4 * 4096);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
