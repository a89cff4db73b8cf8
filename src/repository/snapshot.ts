// Snapshot records: the restore points. Written last, after everything they reference is durable.
import { BulwarkError } from '../util/errors.js';
import type { Repository } from './repository.js';

export type Consistency = 'application' | 'filesystem' | 'crash';

export interface DiskRecord {
  /** The disk's name in the snapshot, e.g. "vda" or an image's base name. */
  name: string;
  size: number;
  blockSize: number;
  /** Tree blobs holding the fixed index, FIXED_INDEX_PAGE_ENTRIES block ids per page. */
  pages: string[];
  /** Where it was read from and in what container format. */
  source: string;
  format: string;
  /** File identity at backup time, so an unchanged image can be skipped next time. */
  fileIdentity?: { size: number; mtimeNs: string; ctimeNs: string; ino: number; dev: number };
  /** VM disks: the dirty bitmap started at this snapshot's point in time; the next incremental reads what it marks. */
  bitmap?: string;
  /** How this disk was read: 'full' or 'incremental' (dirty blocks only). */
  read?: 'full' | 'incremental';
}

/** What is needed to bring a VM back: enough to define it again. */
export interface VmConfig {
  name: string;
  uuid?: string;
  machine?: string;
  memoryBytes?: number;
  cpus?: number;
  /** QEMU's CPU model, e.g. host, max, Skylake-Server. */
  cpuModel?: string;
  disks: { name: string; device: string; format: string; size: number; file: string }[];
  nics?: { id: string; mac?: string; model?: string }[];
  qemuVersion?: string;
}

export interface SnapshotSummary {
  filesNew?: number;
  filesChanged?: number;
  filesUnmodified?: number;
  dirs?: number;
  bytesRead: number;
  bytesNew: number;
  blobsNew: number;
  /** Logical size of what the snapshot holds. */
  totalSize: number;
  durationMs: number;
  warnings: string[];
}

export interface Snapshot {
  version: 1;
  time: string;
  hostname: string;
  username: string;
  /** "files", "disk:<name>", or "vm:<name>" */
  source: string;
  paths: string[];
  tags: string[];
  parent?: string;
  /** Root tree of a file backup. */
  tree?: string;
  disks?: DiskRecord[];
  consistency?: Consistency;
  /** VM snapshots: the VM's configuration and how long its I/O was held (ms). */
  vm?: VmConfig;
  freezeMs?: number;
  /** How a VM snapshot was taken: live (snapshot), vCPUs paused (suspend), guest shut down (stop). */
  mode?: 'snapshot' | 'suspend' | 'stop';
  summary: SnapshotSummary;
}

export interface SnapshotWithId extends Snapshot {
  id: string;
}

export interface SnapshotFilter {
  hostname?: string;
  tags?: string[];
  source?: string;
}

export async function listSnapshots(repo: Pick<Repository, 'backend' | 'loadDocument'>, filter: SnapshotFilter = {}): Promise<SnapshotWithId[]> {
  const out: SnapshotWithId[] = [];
  for await (const f of repo.backend.list('snapshots')) {
    const sn = await repo.loadDocument<Snapshot>('snapshots', f.name);
    out.push({ ...sn, id: f.name });
  }
  return out.filter((s) => matches(s, filter)).sort((a, b) => a.time.localeCompare(b.time) || a.id.localeCompare(b.id));
}

function matches(s: Snapshot, f: SnapshotFilter): boolean {
  if (f.hostname !== undefined && s.hostname !== f.hostname) return false;
  if (f.source !== undefined && s.source !== f.source) return false;
  if (f.tags && f.tags.length > 0 && !f.tags.every((t) => s.tags.includes(t))) return false;
  return true;
}

/** Resolves `latest`, a full id, or a unique prefix of at least 8 hex digits. */
export async function findSnapshot(repo: Pick<Repository, 'backend' | 'loadDocument'>, ref: string, filter: SnapshotFilter = {}): Promise<SnapshotWithId> {
  const all = await listSnapshots(repo, ref === 'latest' ? filter : {});
  if (ref === 'latest') {
    const last = all[all.length - 1];
    if (!last) throw new BulwarkError('not-found', 'no snapshot matches', { hint: "list restore points with 'bulwark snapshots'" });
    return last;
  }
  if (!/^[0-9a-f]{8,64}$/.test(ref)) {
    throw new BulwarkError('usage', `'${ref}' is not a snapshot reference`, { hint: "use 'latest', a full id, or a unique prefix of at least 8 hex digits" });
  }
  const found = all.filter((s) => s.id.startsWith(ref));
  if (found.length === 0) throw new BulwarkError('not-found', `no snapshot '${ref}'`, { hint: "list restore points with 'bulwark snapshots'" });
  if (found.length > 1) throw new BulwarkError('usage', `snapshot prefix '${ref}' is ambiguous (${found.length} match)`, { hint: 'give more digits' });
  return found[0]!;
}
