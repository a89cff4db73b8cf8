// Sparse files cost what they hold, not what they measure: a 1 TiB file holding a few MB is backed up
// and restored in seconds (read whole, its zeros alone would take many minutes: the time limits below
// fail such a run: each command is killed after 60 s, well inside the test's own limit so that no
// command outlives its test), and comes back with the same data in the same places and its holes as holes.
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SIZE = 1024 * GiB;
/** Data written into the file: at its start, unaligned in the middle, and at its very end. */
const REGIONS: [number, number][] = [
  [0, MiB],
  [300 * GiB + 12_345, 2 * MiB],
  [SIZE - 100 * 1024, 100 * 1024],
];

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let file: string;
const written = new Map<number, Buffer>();

function writeRegion(at: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, at);
  } finally {
    closeSync(fd);
  }
  written.set(at, bytes);
}

function readRegion(path: string, at: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    expect(readSync(fd, b, 0, length, at)).toBe(length);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** The restored file: same size, every region written back in place, and stored sparse. */
function checkRestored(path: string): void {
  const st = statSync(path);
  expect(st.size).toBe(SIZE);
  for (const [at, bytes] of written) expect(readRegion(path, at, bytes.length).equals(bytes), `data at ${at}`).toBe(true);
  // Zeros between the regions: read a few places in the holes.
  for (const at of [10 * MiB, 200 * GiB, 900 * GiB]) expect(readRegion(path, at, 4096).equals(Buffer.alloc(4096)), `zeros at ${at}`).toBe(true);
  expect(st.blocks * 512).toBeLessThan(64 * MiB);
}

beforeAll(async () => {
  tmp = await tempDir();
  file = `${tmp.path}/src/huge.img`;
  execFileSync('mkdir', ['-p', `${tmp.path}/src`]);
  writeFileSync(file, '');
  truncateSync(file, SIZE);
  for (const [at, length] of REGIONS) writeRegion(at, randomBytes(length));
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'x' };
  expect((await runCli(['init'], { env })).code).toBe(0);
});
afterAll(async () => {
  await tmp.cleanup();
});

describe('a 1 TiB sparse file', () => {
  it('is backed up reading only its data, and restored with its holes', async () => {
    const backup = await runCli(['backup', 'files', `${tmp.path}/src`, '--json'], { env, timeoutMs: 60_000 });
    expect(backup.code, backup.stderr).toBe(0);
    const s = jsonResult<{ summary: { bytesRead: number; totalSize: number } }>(backup);
    expect(s.summary.totalSize).toBe(SIZE);
    expect(s.summary.bytesRead).toBeLessThan(256 * MiB);

    const restore = await runCli(['restore', 'latest', '--target', `${tmp.path}/out`], { env, timeoutMs: 60_000 });
    expect(restore.code, restore.stderr).toBe(0);
    checkRestored(`${tmp.path}/out${file}`);
  }, 200_000);

  it('keeps data written into a hole since the last backup', async () => {
    writeRegion(700 * GiB, randomBytes(3 * MiB));
    const backup = await runCli(['backup', 'files', `${tmp.path}/src`, '--json'], { env, timeoutMs: 60_000 });
    expect(backup.code, backup.stderr).toBe(0);
    expect(jsonResult<{ summary: { filesChanged: number } }>(backup).summary.filesChanged).toBe(1);
    const restore = await runCli(['restore', 'latest', '--target', `${tmp.path}/out2`, '--verify'], { env, timeoutMs: 60_000 });
    expect(restore.code, restore.stderr).toBe(0);
    checkRestored(`${tmp.path}/out2${file}`);
  }, 200_000);
});
