// Notes: what was learnt about a snapshot after it was written (docs/repository-format.md, "Notes").
// A snapshot is never rewritten, so a later fact about it — a boot proven by verify-boot — is a
// document of its own in notes/, sealed like a snapshot and naming the snapshot it is about. A reader
// ignores kinds it does not know; forget removes a snapshot's notes with it.
import { BulwarkError } from '../util/errors.js';
import type { Repository } from './repository.js';
import { OtherFormatObjectError } from './sealer.js';

export interface NoteBase {
  version: 1;
  /** The id of the snapshot the note is about. */
  snapshot: string;
  time: string;
  hostname: string;
}

/** verify-boot's result: whether the restore point booted and passed its checks. */
export interface VerifyBootNote extends NoteBase {
  kind: 'verify-boot';
  ok: boolean;
  booted: boolean;
  reason?: string;
  agentMs?: number;
  durationMs: number;
  checks: { check: string; ok: boolean; detail?: string }[];
}

export type Note = VerifyBootNote;

export interface NoteWithId {
  id: string;
  note: Note;
}

export type NoteReader = Pick<Repository, 'backend' | 'loadDocument'>;

const HEX64 = /^[0-9a-f]{64}$/;

/** Why a document read from notes/ is not a note this version understands, or undefined when it is. */
function noteProblem(n: unknown): string | undefined {
  if (typeof n !== 'object' || n === null) return 'not an object';
  const r = n as Record<string, unknown>;
  if (r['version'] !== 1) return `unknown note version ${JSON.stringify(r['version'])}`;
  if (typeof r['snapshot'] !== 'string' || !HEX64.test(r['snapshot'])) return 'no snapshot id';
  if (typeof r['time'] !== 'string' || Number.isNaN(Date.parse(r['time']))) return 'no time';
  if (r['kind'] !== 'verify-boot') return `kind ${JSON.stringify(r['kind'])} is not known to this version`;
  if (typeof r['ok'] !== 'boolean' || typeof r['booted'] !== 'boolean' || !Array.isArray(r['checks'])) return 'a verify-boot note without its result';
  return undefined;
}

export async function saveNote(repo: Pick<Repository, 'saveDocument'>, note: Note): Promise<string> {
  return repo.saveDocument('notes', note);
}

/**
 * Every note this version understands, oldest first. Damaged ones are named in `damaged`; notes of
 * unknown kinds (a newer version's) and of the other format version are skipped, never fatal.
 */
export async function readNotes(repo: NoteReader): Promise<{ notes: NoteWithId[]; damaged: { id: string; reason: string }[] }> {
  const notes: NoteWithId[] = [];
  const damaged: { id: string; reason: string }[] = [];
  for await (const f of repo.backend.list('notes')) {
    let doc: unknown;
    try {
      doc = await repo.loadDocument<unknown>('notes', f.name);
    } catch (err) {
      if (repo.backend.isNotFound(err) || err instanceof OtherFormatObjectError) continue;
      if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
      damaged.push({ id: f.name, reason: err.message });
      continue;
    }
    const problem = noteProblem(doc);
    if (problem === undefined) notes.push({ id: f.name, note: doc as Note });
    else if (!/not known to this version/.test(problem)) damaged.push({ id: f.name, reason: `note ${f.name.slice(0, 8)} is malformed: ${problem}` });
  }
  return { notes: notes.sort((a, b) => a.note.time.localeCompare(b.note.time)), damaged };
}

/** The newest verify-boot note of each snapshot. */
export function latestVerifyBoot(notes: NoteWithId[]): Map<string, VerifyBootNote> {
  const out = new Map<string, VerifyBootNote>();
  for (const { note } of notes) if (note.kind === 'verify-boot') out.set(note.snapshot, note);
  return out;
}

/** Removes the notes about these snapshots (forget); a note removed meanwhile is fine. */
export async function removeNotesOf(repo: Pick<Repository, 'backend' | 'loadDocument'>, snapshots: Set<string>): Promise<number> {
  if (snapshots.size === 0) return 0;
  let removed = 0;
  for (const { id, note } of (await readNotes(repo)).notes) {
    if (!snapshots.has(note.snapshot)) continue;
    try {
      await repo.backend.remove({ type: 'notes', name: id });
      removed++;
    } catch (err) {
      if (!repo.backend.isNotFound(err)) throw err;
    }
  }
  return removed;
}
