// For tests that break a server in the middle of a command: wait for a state with a deadline (never a
// fixed sleep), count what a server has stored so far, and make incompressible data to send.
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';

/** Polls `ready` until it holds; fails naming `what` once `timeoutMs` has passed. */
export async function waitUntil(what: string, timeoutMs: number, ready: () => boolean | Promise<boolean>, intervalMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (Date.now() > end) throw new Error(`${what}: still not so after ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Regular files below `dir` whose names pass `keep`; 0 for a folder that is not there (yet). */
export async function countFiles(dir: string, keep: (name: string) => boolean = () => true): Promise<number> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries.filter((e) => e.isFile() && keep(e.name)).length;
}

/** A file of random bytes, written a few MiB at a time so a large one never sits in memory whole. */
export async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const out = createWriteStream(path);
  const chunk = 4 * 1024 * 1024;
  for (let left = bytes; left > 0; left -= chunk) {
    if (!out.write(randomBytes(Math.min(chunk, left)))) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  out.end();
  await finished(out);
}

/** A folder of `files` random files of `bytes` each, for a backup with a lot to send. */
export async function makeRandomTree(dir: string, files: number, bytes: number): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const names = Array.from({ length: files }, (_, i) => join(dir, `random-${i}.bin`));
  for (const n of names) await writeRandomFile(n, bytes);
  return names;
}
