// The index at scale, small enough for CI: bench/index-scale.mjs writes a repository whose index lists
// a million blobs (no pack data), then backs up an image against it. The memory the index costs is
// measured from outside (GNU time's peak RSS of the CLI, against a backup into an empty repository)
// and must stay under the 64 MB the index is allowed whatever the repository's size.
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patternBytes } from '../fixtures/tree.js';
import { NODE, ROOT } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

const ENTRIES = 1_000_000;
let tmp: { path: string; cleanup(): Promise<void> };

beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => tmp.cleanup());

interface Timed {
  seconds: number;
  rssMB: number;
}

describe('index at scale', () => {
  it(
    `backs up against an index of ${ENTRIES.toLocaleString('en')} blobs with the index in under 64 MB, finding every blob it holds`,
    async () => {
      // 96 MiB of data blocks (some repeated) and a hole: a small disk.
      const image = `${tmp.path}/disk.img`;
      await writeFile(image, Buffer.concat([patternBytes(64 * 1024 * 1024, 5), patternBytes(32 * 1024 * 1024, 5)]));
      await promisify(execFile)('truncate', ['-s', '160M', image]);
      const json = `${tmp.path}/result.json`;
      await promisify(execFile)(NODE, [`${ROOT}bench/index-scale.mjs`, '--entries', String(ENTRIES), '--image', image, '--out', `${tmp.path}/scale`, '--json', json], { maxBuffer: 1 << 24 });
      const r = JSON.parse(await readFile(json, 'utf8')) as { baseline: Timed; cold: Timed; warm: Timed; hitsFound: number; hitsAsked: number; missesFound: number; indexMemoryMB: number; blobCount: number };
      expect(r.blobCount).toBeGreaterThanOrEqual(ENTRIES);
      expect(r.hitsAsked).toBeGreaterThan(10_000);
      expect(r.hitsFound).toBe(r.hitsAsked);
      expect(r.missesFound).toBe(0);
      expect(r.indexMemoryMB).toBeLessThan(64);
      // Building the cache (first backup) and using it (second): peak RSS beyond the baseline's.
      expect(r.cold.rssMB - r.baseline.rssMB).toBeLessThan(64);
      expect(r.warm.rssMB - r.baseline.rssMB).toBeLessThan(64);
    },
    10 * 60_000,
  );
});
