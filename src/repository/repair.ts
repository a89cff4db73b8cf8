// repair index: rebuilds the index from the packs' own headers, for when index files are damaged or
// lost. Crash safe by order: the new index files are durable before any old one is removed, so an
// interruption leaves both (readers take the union) and a second run finishes the job.
import { BulwarkError } from '../util/errors.js';
import { validateIndexFile, type IndexFile } from './index.js';
import type { Repository } from './repository.js';

export interface RepairIndexResult {
  packs: number;
  blobs: number;
  /** Packs whose header cannot be read: their blobs are lost to the index. */
  unreadablePacks: { pack: string; reason: string }[];
  indexFilesWritten: number;
  indexFilesRemoved: number;
}

const PACKS_PER_FILE = 64;

type RepairRepo = Pick<Repository, 'backend' | 'loadDocument' | 'saveDocument' | 'readPackEntries'>;

export async function repairIndex(repo: RepairRepo, onProgress?: (done: number, total: number) => void): Promise<RepairIndexResult> {
  const oldFiles: string[] = [];
  for await (const f of repo.backend.list('index')) oldFiles.push(f.name);
  // Damage recorded by check stays recorded (for packs that still exist): the blobs it names must
  // still be stored again by the next backup.
  const damaged = new Map<string, { id: string; pack: string }>();
  for (const name of oldFiles) {
    try {
      const file = await repo.loadDocument<IndexFile>('index', name);
      validateIndexFile(file, name);
      for (const d of file.damaged ?? []) damaged.set(`${d.id}/${d.pack}`, d);
    } catch (err) {
      if (!(err instanceof BulwarkError) && !repo.backend.isNotFound(err)) throw err;
    }
  }
  const packs: { name: string; size: number }[] = [];
  for await (const f of repo.backend.list('data')) packs.push({ name: f.name, size: f.size });
  const result: RepairIndexResult = { packs: 0, blobs: 0, unreadablePacks: [], indexFilesWritten: 0, indexFilesRemoved: 0 };
  const present = new Set<string>();
  let pending: IndexFile['packs'] = [];
  const write = async (extra: Partial<IndexFile> = {}): Promise<void> => {
    if (pending.length === 0 && !extra.damaged?.length) return;
    await repo.saveDocument('index', { version: 1, packs: pending, ...extra } satisfies IndexFile);
    result.indexFilesWritten++;
    pending = [];
  };
  let done = 0;
  for (const p of packs) {
    onProgress?.(done++, packs.length);
    try {
      const entries = await repo.readPackEntries(p.name, p.size);
      if (entries.length === 0) continue;
      const type = entries[0]!.type;
      if (entries.some((e) => e.type !== type)) throw new BulwarkError('repository-corrupt', 'its header mixes blob types');
      pending.push({ id: p.name, type, blobs: entries.map(({ id, offset, length, ulen }) => ({ id, offset, length, ulen })) });
      present.add(p.name);
      result.packs++;
      result.blobs += entries.length;
    } catch (err) {
      if (!(err instanceof BulwarkError) || (err.code !== 'repository-corrupt' && !repo.backend.isNotFound(err))) throw err;
      result.unreadablePacks.push({ pack: p.name, reason: err.message });
    }
    if (pending.length >= PACKS_PER_FILE) await write();
  }
  await write({ damaged: [...damaged.values()].filter((d) => present.has(d.pack)) });
  for (const name of oldFiles) {
    try {
      await repo.backend.remove({ type: 'index', name });
      result.indexFilesRemoved++;
    } catch (err) {
      if (!repo.backend.isNotFound(err)) throw err;
    }
  }
  return result;
}
