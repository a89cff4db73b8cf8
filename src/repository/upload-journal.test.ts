import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/repo.js';
import { UploadJournal } from './upload-journal.js';

const REPO = 'ab'.repeat(32);
const pack = (n: number): string => n.toString(16).padStart(64, '0');

/** The pid of a process that has ended. */
function deadPid(): number {
  return Number(spawnSync("sh", ["-c", "echo $$"], { encoding: "utf8" }).stdout.trim());
}

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir('bw-journal-');
});
afterAll(async () => {
  await tmp.cleanup();
});

describe('upload journal', () => {
  it('hands over the packs of writers that are gone, never of one still running or its own', () => {
    const dir = join(tmp.path, 'a');
    const mine = new UploadJournal(dir, REPO);
    mine.set([{ id: pack(1), size: 10 }]);
    const folder = join(dir, 'uploads', REPO);
    const dead = deadPid();
    writeFileSync(join(folder, `${dead}-${'0'.repeat(16)}.json`), JSON.stringify({ version: 1, packs: [{ id: pack(2), size: 20 }, { id: pack(3), size: 30 }] }));
    writeFileSync(join(folder, `${process.ppid}-${'1'.repeat(16)}.json`), JSON.stringify({ version: 1, packs: [{ id: pack(4), size: 40 }] }));
    // Not ours to trust: a bad name, bad fields, and a file that is not JSON.
    writeFileSync(join(folder, `${dead}-${'2'.repeat(16)}.json`), JSON.stringify({ version: 1, packs: [{ id: '../x', size: 1 }, { id: pack(5), size: -1 }] }));
    writeFileSync(join(folder, `${dead}-${'3'.repeat(16)}.json`), '{"version":1,"pac');
    const left = new UploadJournal(dir, REPO).leftovers();
    expect(left.packs).toEqual([{ id: pack(2), size: 20 }, { id: pack(3), size: 30 }]);
    expect(left.files).toHaveLength(3);
    UploadJournal.discard(left.files);
    expect(readdirSync(folder).length).toBe(2); // the running writers' journals stay
  });

  it('is removed when nothing is left unindexed, and absent folders are no error', () => {
    const dir = join(tmp.path, 'b');
    const j = new UploadJournal(dir, REPO);
    expect(j.leftovers()).toEqual({ packs: [], files: [] });
    j.set([{ id: pack(1), size: 1 }]);
    mkdirSync(join(dir, 'uploads', REPO), { recursive: true });
    expect(readdirSync(join(dir, 'uploads', REPO))).toHaveLength(1);
    j.set([]);
    expect(readdirSync(join(dir, 'uploads', REPO))).toHaveLength(0);
    expect(() => new UploadJournal(dir, '../etc')).toThrow(/invalid repository id/);
  });
});
