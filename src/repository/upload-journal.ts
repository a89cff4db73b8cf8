// Packs this host has saved but not yet listed in an index file, so that an interrupted upload resumes
// without sending them again.
//
// A writer lists its packs in an index file every INDEX_PACKS_PER_FILE packs (1 GiB at the default
// pack size) or INDEX_BLOBS_PER_FILE blobs, and at the end. Cut off before that (a network gone for
// good, the process killed), the packs it sent sit in storage in no index: a later prune removes them,
// and the next backup would send their data again. So each writing process keeps, in its own small file under the host's state
// folder, the names and sizes of the packs it saved that no index file lists yet. The next writer to
// the same repository adopts the packs of journals whose process is gone: each must still be in
// storage with the recorded size, and what it holds is read from its own header, which is sealed with
// the repository's key (a journal can make Bulwark look at a pack, never trust one).
//
// The journal is rewritten whole (temporary file + rename) after every pack: it is at most
// INDEX_PACKS_PER_FILE lines. Losing it (another host, a cleared state folder) costs only the resend.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { processAlive } from '../util/process-temp.js';

export interface JournalPack {
  id: string;
  size: number;
}

/** Packs left by an earlier writer, and the journal files they came from (removed once adopted). */
export interface Leftovers {
  packs: JournalPack[];
  files: string[];
}

const HEX_ID = /^[0-9a-f]{64}$/;
const FILE_NAME = /^(\d+)-[0-9a-f]{16}\.json$/;

export class UploadJournal {
  private readonly dir: string;
  private readonly file: string;
  private written = false;

  /** `stateDir` as in freshness.ts (defaultStateDir); one folder per repository id inside it. */
  constructor(stateDir: string, repositoryId: string) {
    if (!HEX_ID.test(repositoryId)) throw new Error(`invalid repository id '${repositoryId}'`);
    this.dir = join(stateDir, 'uploads', repositoryId);
    this.file = join(this.dir, `${process.pid}-${randomBytes(8).toString('hex')}.json`);
  }

  /** Records the packs saved and not yet in an index file (all of them: the file is replaced). */
  set(packs: readonly JournalPack[]): void {
    if (packs.length === 0) {
      if (this.written) rmSync(this.file, { force: true });
      this.written = false;
      return;
    }
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ version: 1, packs }), { mode: 0o600 });
    renameSync(tmp, this.file);
    this.written = true;
  }

  /**
   * Packs in the journals of processes that are gone. A journal whose owner still runs is another
   * writer's (a backup running at the same time): left alone. Unreadable journals are removed.
   */
  leftovers(): Leftovers {
    const out: Leftovers = { packs: [], files: [] };
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return out; // no journal was ever written for this repository here
    }
    const seen = new Set<string>();
    for (const name of names) {
      const m = FILE_NAME.exec(name);
      const path = join(this.dir, name);
      if (!m) {
        // A temporary file whose rename never happened: its owner died mid-write or still writes.
        continue;
      }
      if (path === this.file || processAlive(Number(m[1]))) continue;
      out.files.push(path);
      for (const p of readJournal(path)) {
        if (seen.has(p.id)) continue;
        seen.add(p.id);
        out.packs.push(p);
      }
    }
    return out;
  }

  /** Removes journals whose packs are now this writer's to index (or were found useless). */
  static discard(files: readonly string[]): void {
    for (const f of files) {
      rmSync(f, { force: true });
      rmSync(`${f}.tmp`, { force: true });
    }
  }
}

function readJournal(path: string): JournalPack[] {
  try {
    const doc = JSON.parse(readFileSync(path, 'utf8')) as { version?: unknown; packs?: unknown };
    if (doc.version !== 1 || !Array.isArray(doc.packs)) return [];
    return doc.packs.filter((p): p is JournalPack => {
      const q = p as Partial<JournalPack>;
      return typeof q.id === 'string' && HEX_ID.test(q.id) && Number.isSafeInteger(q.size) && (q.size ?? 0) > 0;
    });
  } catch {
    return []; // cut off mid-write before the rename cannot happen; anything else is not ours to trust
  }
}
