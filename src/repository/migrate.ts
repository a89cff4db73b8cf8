// `bulwark migrate`: upgrades a format 1 repository to format 2 in place. Every blob is sealed again
// (format 2 binds each blob to its type and id), so every pack is rewritten; snapshots and index files
// are sealed again too. Crash safety: the repository stays a whole format 1 repository until one atomic
// step, replacing the config; before it, format 2 objects are written beside the old ones (readers of
// either format recognise the other's objects and skip them quietly); after it, the old objects are
// removed. Killed at any point, running `migrate` again resumes where it stopped:
//
//   1. packs: each format 1 pack with a blob the format 2 index lacks is read, its blobs checked and
//      stored again through a format 2 view; index files are written as packs fill (the resume points);
//   2. snapshots: format 2 copies of every format 1 snapshot (copies from an earlier, interrupted run
//      are removed first, so each snapshot is copied exactly once);
//   3. the config is replaced (the commit), holding an exclusive lock of each format;
//   4. cleanup: format 1 index files, snapshots, locks and packs are removed (a pack only once every
//      blob in it is in the format 2 index), and the key file that opened is replaced by one of format
//      2. `migrate` on a format 2 repository runs this step alone, so it also finishes an interrupted one.
import { readNotes, saveNote } from './notes.js';
import { BulwarkError } from '../util/errors.js';
import { maxBlobBytes, packIndexFile, type DocType, type Repository } from './repository.js';
import { writeKey } from './keys.js';
import { Lock } from './lock.js';
import { readPackHeader } from './pack.js';
import { OtherFormatObjectError, sealDocument, sealerFor } from './sealer.js';
import { readSnapshots, type Snapshot } from './snapshot.js';
import { decompressBounded } from './zstd.js';
import type { ScryptParams } from './crypto.js';

export interface MigrateOptions {
  /** Scrypt parameters of the new key file (tests); calibrated when absent. */
  kdf?: ScryptParams;
  onProgress?: (phase: 'packs' | 'snapshots' | 'cleanup', done: number, total: number) => void;
}

export interface MigrateSummary {
  /** Format before this run (2 when only the cleanup of an earlier run was left). */
  from: 1 | 2;
  packsConverted: number;
  blobsConverted: number;
  snapshotsConverted: number;
  removed: { packs: number; index: number; snapshots: number; notes: number; locks: number; keys: number };
  /** Key files of other passwords still in the format 1 layout (details in clear). */
  oldKeyFiles: number;
}

/** Index files are written at least this often (in converted packs): how much work a kill can lose. */
const FLUSH_EVERY_PACKS = 8;

export async function migrate(repo: Repository, password: string, opts: MigrateOptions = {}): Promise<MigrateSummary> {
  const summary: MigrateSummary = {
    from: repo.config.version,
    packsConverted: 0,
    blobsConverted: 0,
    snapshotsConverted: 0,
    removed: { packs: 0, index: 0, snapshots: 0, notes: 0, locks: 0, keys: 0 },
    oldKeyFiles: 0,
  };
  repo.assertMayDelete('upgrade the repository format (it replaces every pack)');
  if (repo.config.version === 1) {
    await Lock.run(repo, true, 'migrate', async () => {
      const v2 = repo.withFormat(2);
      try {
        await convertPacks(repo, v2, summary, opts);
        await convertSnapshots(repo, v2, summary, opts);
        // The commit, holding an exclusive lock of each format: processes of either format wait.
        await Lock.run(v2, true, 'migrate', async () => {
          await repo.backend.save({ type: 'config', name: '' }, sealDocument(sealerFor(2, repo.key), 'config', { ...repo.config, version: 2 }));
          await cleanup(v2, repo.keyId, repo.keyFileVersion, password, summary, opts);
        });
      } finally {
        await v2.close();
      }
    });
  } else {
    await Lock.run(repo, true, 'migrate', () => cleanup(repo, repo.keyId, repo.keyFileVersion, password, summary, opts));
  }
  return summary;
}

/** Stage 1: every blob of every format 1 pack, stored again through the format 2 view. */
async function convertPacks(v1: Repository, v2: Repository, summary: MigrateSummary, opts: MigrateOptions): Promise<void> {
  await v1.loadIndex();
  await v2.loadIndexFiles();
  const byPack = new Map<string, number>();
  for (const [id, e] of v1.index.allEntries()) if (!v2.index.has(id)) byPack.set(e.pack, (byPack.get(e.pack) ?? 0) + 1);
  const todo = [...byPack.keys()].sort();
  const unreadable: string[] = [];
  let sinceFlush = 0;
  for (const [i, pack] of todo.entries()) {
    opts.onProgress?.('packs', i, todo.length);
    let bytes: Buffer;
    try {
      bytes = await v1.backend.load({ type: 'data', name: pack });
    } catch (err) {
      if (!(err instanceof BulwarkError) && !v1.backend.isNotFound(err)) throw err;
      unreadable.push(`pack ${pack}: ${(err as Error).message}`);
      continue;
    }
    let entries;
    try {
      entries = readPackHeader(v1.sealer, bytes, pack);
    } catch (err) {
      if (!(err instanceof BulwarkError)) throw err;
      unreadable.push(err.message);
      continue;
    }
    for (const e of entries) {
      if (v2.hasBlob(e.id)) continue;
      const what = `${e.type} blob ${e.id}`;
      try {
        const body = v1.sealer.open(e.type, bytes.subarray(e.offset, e.offset + e.length), what);
        const plain = e.ulen > 0 ? decompressBounded(body, maxBlobBytes(e.type), what, e.ulen) : body;
        if (v1.blobId(plain) !== e.id) throw new BulwarkError('repository-corrupt', `${what} has wrong content`);
        await v2.saveBlob(e.type, plain, e.id);
        summary.blobsConverted++;
      } catch (err) {
        if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
        unreadable.push(err.message);
      }
    }
    summary.packsConverted++;
    if (++sinceFlush >= FLUSH_EVERY_PACKS) {
      await v2.flush();
      sinceFlush = 0;
    }
  }
  await v2.flush();
  opts.onProgress?.('packs', todo.length, todo.length);
  // Nothing is committed while a blob of the old format has no copy in the new one: the old packs go
  // in the cleanup, and a blob lost there would be lost for good.
  const missing = [...v1.index.entries()].filter(([id]) => !v2.index.has(id)).length;
  if (missing > 0) {
    throw new BulwarkError('repository-corrupt', `${missing} blob(s) could not be read for the upgrade, which was stopped before changing the format: ${unreadable.slice(0, 3).join('; ')}${unreadable.length > 3 ? '; …' : ''}`, {
      hint: "run 'bulwark check --read-data' and 'bulwark repair snapshots', then 'bulwark migrate' again (it resumes)",
    });
  }
}

/** Stage 2: a format 2 copy of every readable format 1 snapshot. */
async function convertSnapshots(v1: Repository, v2: Repository, summary: MigrateSummary, opts: MigrateOptions): Promise<void> {
  // Copies made by an interrupted run go first: the snapshots may have changed since (a backup or a
  // forget in between), and each one must be copied exactly once.
  for (const type of ['snapshots', 'notes'] as const) {
    for (const name of await listNames(v2, type)) {
      if (await opensAs(v2, type, name)) await v2.backend.remove({ type, name });
    }
  }
  const { snapshots, damaged } = await readSnapshots(v1);
  for (const d of damaged) v1.onWarning(`snapshot ${d.id.slice(0, 8)} cannot be read and is not carried over: ${d.reason}`);
  const renamed = new Map<string, string>();
  for (const [i, s] of snapshots.entries()) {
    opts.onProgress?.('snapshots', i, snapshots.length);
    const { id, ...record } = s;
    renamed.set(id, await v2.saveDocument('snapshots', record satisfies Snapshot));
    summary.snapshotsConverted++;
  }
  // A snapshot's name is its sealed bytes' hash: its notes follow it to its new name.
  for (const { note } of (await readNotes(v1)).notes) {
    const to = renamed.get(note.snapshot);
    if (to !== undefined) await saveNote(v2, { ...note, snapshot: to });
  }
}

/**
 * Stage 4, on a repository whose config says format 2: removes what format 1 left, indexes or removes
 * packs no index lists, and gives the opening password a format 2 key file.
 */
async function cleanup(v2: Repository, keyId: string, keyVersion: 1 | 2, password: string, summary: MigrateSummary, opts: MigrateOptions): Promise<void> {
  const v1 = v2.withFormat(1);
  try {
    for (const type of ['index', 'snapshots', 'notes', 'locks'] as const) {
      for (const name of await listNames(v2, type)) {
        if (!(await opensAs(v1, type, name))) continue;
        await v2.backend.remove({ type, name });
        summary.removed[type]++;
      }
    }
    await v2.loadIndexFiles();
    const unlisted: { name: string; size: number }[] = [];
    for await (const f of v2.backend.list('data')) if (!v2.index.hasPack(f.name)) unlisted.push(f);
    for (const [i, f] of unlisted.entries()) {
      opts.onProgress?.('cleanup', i, unlisted.length);
      let entries;
      let old = false;
      try {
        entries = await v2.readPackEntries(f.name, f.size);
      } catch (err) {
        if (!(err instanceof OtherFormatObjectError)) {
          if (err instanceof BulwarkError && err.code === 'repository-corrupt') continue; // damage: left for check to report
          throw err;
        }
        old = true;
        entries = readPackHeader(v1.sealer, await v1.backend.load({ type: 'data', name: f.name }), f.name);
      }
      if (entries.every((e) => v2.index.has(e.id))) {
        // Every blob has its format 2 copy, listed in an index file: this pack holds nothing else.
        await v2.backend.remove({ type: 'data', name: f.name });
        summary.removed.packs++;
      } else if (!old) {
        // A format 2 pack whose index file a kill prevented: listed now instead of converted again.
        await v2.saveDocument('index', packIndexFile(f.name, entries));
        v2.index.addFile(packIndexFile(f.name, entries));
      } else {
        v2.onWarning(`format 1 pack ${f.name.slice(0, 8)} holds blobs with no format 2 copy and was kept; run 'bulwark check'`);
      }
    }
    opts.onProgress?.('cleanup', unlisted.length, unlisted.length);
    if (keyVersion === 1) {
      // The new key file is durable before the old one goes: a kill in between leaves both working.
      await writeKey(v2.backend, v2.key, password, v2.clock, opts.kdf, 2);
      await v2.backend.remove({ type: 'keys', name: keyId });
      summary.removed.keys++;
    }
    for await (const f of v2.backend.list('keys')) {
      if (f.size > 16 * 1024) continue;
      try {
        const k = JSON.parse((await v2.backend.load({ type: 'keys', name: f.name })).toString('utf8')) as { version?: unknown };
        if (k.version === 1) summary.oldKeyFiles++;
      } catch {
        // damaged or gone: 'key list' reports it
      }
    }
  } finally {
    await v1.close();
  }
}

async function listNames(repo: Repository, type: DocType): Promise<string[]> {
  const names: string[] = [];
  for await (const f of repo.backend.list(type)) names.push(f.name);
  return names;
}

/** Whether the named document opens as this view's format (damaged and other-format ones do not). */
async function opensAs(repo: Repository, type: DocType, name: string): Promise<boolean> {
  try {
    await repo.loadDocument(type, name);
    return true;
  } catch (err) {
    if (err instanceof BulwarkError && err.code === 'repository-corrupt') return false;
    if (repo.backend.isNotFound(err)) return false;
    throw err;
  }
}
