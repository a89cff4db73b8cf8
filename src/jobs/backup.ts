// Backup jobs: lock, find the parent, read the source, flush, then write the snapshot record last.
import { hostname as osHostname, userInfo } from 'node:os';
import { resolve } from 'node:path';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { listSnapshots, type Snapshot, type SnapshotWithId } from '../repository/snapshot.js';
import { FilesArchiver, type ItemError } from '../sources/files/archiver.js';
import { backupDisk, diskNameFor } from '../sources/disk/reader.js';
import type { ProgressSink } from '../sources/progress.js';

export interface CommonBackupOptions {
  tags?: string[];
  host?: string;
  onProgress?: ProgressSink;
}

export interface FilesBackupJobOptions extends CommonBackupOptions {
  paths: string[];
  excludes?: string[];
  oneFileSystem?: boolean;
  /** Ignore the parent: read every file (the "--force" of other tools). */
  noParent?: boolean;
  /** Scan ahead for totals (for a progress bar with ETA). */
  estimate?: boolean;
  /** Read every file and check every blob shared with earlier snapshots; damaged ones are stored again. */
  verifyReused?: boolean;
}

export interface BackupJobResult {
  snapshot: SnapshotWithId;
  parent?: string;
  errors: ItemError[];
  changed: string[];
  warnings?: string[];
}

function username(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

async function commit(repo: Repository, sn: Snapshot): Promise<SnapshotWithId> {
  // Order matters: every blob the snapshot references is durable and indexed before it is written.
  await repo.flush();
  const id = await repo.saveDocument('snapshots', sn);
  return { ...sn, id };
}

export async function backupFiles(repo: Repository, opts: FilesBackupJobOptions): Promise<BackupJobResult> {
  // The walk, the chunker and the blob ids run on this thread: it needs a core of its own.
  repo.leaveCoreForCaller();
  return Lock.run(repo, false, 'backup', async () => {
    const started = Date.now();
    await repo.loadIndex();
    await repo.resumeUploads();
    const host = opts.host ?? osHostname();
    const paths = opts.paths.map((p) => resolve(p)).sort();
    const candidates = opts.noParent ? [] : await listSnapshots(repo, { hostname: host, source: 'files' });
    const parent = candidates.filter((s) => JSON.stringify([...s.paths].sort()) === JSON.stringify(paths)).pop();
    const archiver = new FilesArchiver(repo, {
      paths,
      excludes: opts.excludes ?? [],
      oneFileSystem: opts.oneFileSystem ?? false,
      ...(parent?.tree ? { parentTree: parent.tree } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      estimate: opts.estimate ?? false,
      verifyReused: opts.verifyReused ?? false,
    });
    repo.verifyReused = opts.verifyReused ?? false;
    const r = await archiver.run();
    const sn: Snapshot = {
      version: 1,
      time: repo.clock.now().toISOString(),
      hostname: host,
      username: username(),
      source: 'files',
      paths,
      tags: opts.tags ?? [],
      ...(parent ? { parent: parent.id } : {}),
      tree: r.tree,
      summary: { ...r.summary, durationMs: Date.now() - started },
    };
    return { snapshot: await commit(repo, sn), ...(parent ? { parent: parent.id } : {}), errors: r.errors, changed: r.changed, warnings: r.warnings };
  });
}

export interface DiskBackupJobOptions extends CommonBackupOptions {
  path: string;
  name?: string;
  noParent?: boolean;
}

/** One restore point per disk image or device, with source "disk:<name>". */
export async function backupDiskImage(repo: Repository, opts: DiskBackupJobOptions): Promise<BackupJobResult & { reused: boolean }> {
  return Lock.run(repo, false, 'backup', async () => {
    const started = Date.now();
    await repo.loadIndex();
    await repo.resumeUploads();
    const host = opts.host ?? osHostname();
    const name = opts.name ?? diskNameFor(opts.path);
    const source = `disk:${name}`;
    const parent = opts.noParent ? undefined : (await listSnapshots(repo, { hostname: host, source })).pop();
    const parentDisk = parent?.disks?.find((d) => d.name === name);
    const r = await backupDisk(repo, { path: opts.path, name, ...(parentDisk ? { parent: parentDisk } : {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
    const sn: Snapshot = {
      version: 1,
      time: repo.clock.now().toISOString(),
      hostname: host,
      username: username(),
      source,
      paths: [resolve(opts.path)],
      tags: opts.tags ?? [],
      ...(parent ? { parent: parent.id } : {}),
      disks: [r.disk],
      consistency: 'crash',
      summary: { ...r.summary, durationMs: Date.now() - started },
    };
    return { snapshot: await commit(repo, sn), ...(parent ? { parent: parent.id } : {}), errors: [], changed: [], reused: r.reused };
  });
}
