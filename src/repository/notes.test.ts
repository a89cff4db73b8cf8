import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestRepository, type TestRepository } from '../../test/helpers/repo.js';
import { latestVerifyBoot, readNotes, removeNotesOf, saveNote, type VerifyBootNote } from './notes.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

function bootNote(snapshot: string, ok: boolean, time: string): VerifyBootNote {
  return { version: 1, kind: 'verify-boot', snapshot, time, hostname: 'h', ok, booted: ok, durationMs: 5, checks: [{ check: 'command: true', ok }] };
}

describe('notes on snapshots', () => {
  let t: TestRepository;
  beforeEach(async () => {
    t = await createTestRepository();
  });
  afterEach(async () => {
    await t.cleanup();
  });

  it('are sealed documents in notes/: read back by another opener, the newest verify-boot per snapshot wins', async () => {
    await saveNote(t.repo, bootNote(A, false, '2026-11-28T08:00:00.000Z'));
    await saveNote(t.repo, bootNote(A, true, '2026-11-28T09:00:00.000Z'));
    await saveNote(t.repo, bootNote(B, false, '2026-11-28T08:30:00.000Z'));
    const other = await t.reopen();
    const { notes, damaged } = await readNotes(other);
    expect(damaged).toEqual([]);
    expect(notes.map((n) => n.note.time)).toEqual(['2026-11-28T08:00:00.000Z', '2026-11-28T08:30:00.000Z', '2026-11-28T09:00:00.000Z']);
    const latest = latestVerifyBoot(notes);
    expect(latest.get(A)?.ok).toBe(true);
    expect(latest.get(B)?.ok).toBe(false);
  });

  it('a kind a newer version writes is skipped; a malformed or damaged note is named, never fatal', async () => {
    await t.repo.saveDocument('notes', { version: 1, snapshot: A, time: '2026-11-28T08:00:00.000Z', kind: 'replicated-to' });
    const malformed = await t.repo.saveDocument('notes', { version: 1, snapshot: 'not hex', time: 'x', kind: 'verify-boot' });
    const good = await saveNote(t.repo, bootNote(A, true, '2026-11-28T09:00:00.000Z'));
    const { notes, damaged } = await readNotes(t.repo);
    expect(notes.map((n) => n.id)).toEqual([good]);
    expect(damaged).toEqual([{ id: malformed, reason: expect.stringMatching(/is malformed: no snapshot id/) }]);
    // A note whose bytes no longer match its name.
    await writeFile(join(t.path, 'notes', good), 'garbage');
    expect((await readNotes(t.repo)).damaged.map((d) => d.id)).toContain(good);
  });

  it('go with their snapshot (forget), and a repository made before notes/ existed takes them', async () => {
    await rm(join(t.path, 'notes'), { recursive: true });
    expect((await readNotes(t.repo)).notes).toEqual([]);
    await saveNote(t.repo, bootNote(A, true, '2026-11-28T09:00:00.000Z'));
    await saveNote(t.repo, bootNote(B, true, '2026-11-28T09:00:00.000Z'));
    expect(await removeNotesOf(t.repo, new Set([A]))).toBe(1);
    expect((await readNotes(t.repo)).notes.map((n) => n.note.snapshot)).toEqual([B]);
  });
});
