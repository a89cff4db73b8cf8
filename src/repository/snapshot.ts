// Snapshot records: the restore points. Written last, after everything they reference is durable.
import { BulwarkError } from '../util/errors.js';
import type { FreshnessRecord } from './freshness.js';
import type { Repository } from './repository.js';
import { OtherFormatObjectError } from './sealer.js';

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
  /** Direct kernel boot (QEMU -kernel/-initrd/-append; libvirt <os><kernel>): host paths, as recorded. */
  boot?: { kernel?: string; initrd?: string; append?: string };
  disks: { name: string; device: string; format: string; size: number; file: string }[];
  nics?: { id: string; mac?: string; model?: string }[];
  qemuVersion?: string;
  /** A libvirt domain: its connection and its persistent definition (restore --define defines it again). */
  libvirt?: { uri: string; xml: string };
  /**
   * A VirtualBox, VMware or Hyper-V machine folder: its configuration files (stored as data blobs of
   * up to 1 MiB, in order) and where each disk goes back, as what (restore --target writes the folder).
   */
  folder?: {
    hypervisor: string;
    /** The main configuration file, relative to the folder. */
    config: string;
    files: { path: string; size: number; blobs: string[] }[];
    disks: { name: string; path: string; format: string; uuid?: string; key?: string }[];
  };
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
  /** A copy (`bulwark copy`): the id of the restore point in the repository it was first written to. */
  original?: string;
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

type SnapshotReader = Pick<Repository, 'backend' | 'loadDocument'> & {
  config?: { version: number }; onWarning?: (message: string) => void; freshness?: FreshnessRecord | undefined; forgotten?: ReadonlySet<string> };

const HEX_ID = /^[0-9a-f]{64}$/;

/** Why a snapshot record cannot be used, or undefined when it is well formed. */
export function snapshotProblem(s: Snapshot): string | undefined {
  if (typeof s !== 'object' || s === null) return 'it is not a record';
  if (typeof s.time !== 'string' || Number.isNaN(Date.parse(s.time))) return 'it has no valid time';
  if (typeof s.hostname !== 'string' || typeof s.source !== 'string') return 'it has no host or source';
  if (!Array.isArray(s.paths) || !s.paths.every((p) => typeof p === 'string')) return 'its paths are invalid';
  if (!Array.isArray(s.tags) || !s.tags.every((t) => typeof t === 'string')) return 'its tags are invalid';
  if (s.tree !== undefined && (typeof s.tree !== 'string' || !HEX_ID.test(s.tree))) return 'its root tree id is invalid';
  if (s.parent !== undefined && (typeof s.parent !== 'string' || !HEX_ID.test(s.parent))) return 'its parent id is invalid';
  if (s.original !== undefined && (typeof s.original !== 'string' || !HEX_ID.test(s.original))) return 'its original id is invalid';
  if (s.disks !== undefined) {
    if (!Array.isArray(s.disks)) return 'its disk list is invalid';
    for (const d of s.disks) {
      const ok =
        typeof d === 'object' && d !== null && typeof d.name === 'string' && Number.isSafeInteger(d.size) && d.size >= 0 && Number.isInteger(d.blockSize) && d.blockSize >= 512 && d.blockSize <= 64 * 1024 * 1024 && Array.isArray(d.pages) && d.pages.every((p) => typeof p === 'string' && HEX_ID.test(p));
      if (!ok) return 'a disk record is invalid';
    }
  }
  if (s.tree === undefined && s.disks === undefined) return 'it holds neither files nor disks';
  if (typeof s.summary !== 'object' || s.summary === null || typeof s.summary.totalSize !== 'number') return 'its summary is invalid';
  return undefined;
}

export interface SnapshotListing {
  snapshots: SnapshotWithId[];
  /** Snapshot files that could not be read or are malformed: named, never fatal. */
  damaged: { id: string; reason: string }[];
  /** Snapshot files of the other format version, made by an upgrade (`migrate`) that has not finished. */
  otherFormat: number;
}

/** Reads every snapshot record that can be read; the others are returned by name with the reason. */
export async function readSnapshots(repo: SnapshotReader): Promise<SnapshotListing> {
  const out: SnapshotListing = { snapshots: [], damaged: [], otherFormat: 0 };
  for await (const f of repo.backend.list('snapshots')) {
    let sn: Snapshot;
    try {
      sn = await repo.loadDocument<Snapshot>('snapshots', f.name);
    } catch (err) {
      if (repo.backend.isNotFound(err)) continue; // removed since it was listed
      if (err instanceof OtherFormatObjectError) {
        out.otherFormat++;
        continue;
      }
      if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
      out.damaged.push({ id: f.name, reason: err.message });
      continue;
    }
    const problem = snapshotProblem(sn);
    if (problem) out.damaged.push({ id: f.name, reason: `snapshot ${f.name.slice(0, 8)} is malformed: ${problem}` });
    else out.snapshots.push({ ...sn, id: f.name });
  }
  out.snapshots.sort((a, b) => Date.parse(a.time) - Date.parse(b.time) || a.id.localeCompare(b.id));
  if (repo.freshness) {
    // Damaged records are still there (not rolled back): they count as present, dated the epoch.
    const seen = [...out.snapshots.map((s) => ({ id: s.id, time: s.time })), ...out.damaged.map((d) => ({ id: d.id, time: new Date(0).toISOString() }))];
    for (const w of await repo.freshness.observe(seen, repo.forgotten, repo.config?.version)) repo.onWarning?.(w);
  }
  if (out.otherFormat > 0) repo.onWarning?.(`${out.otherFormat} snapshot file(s) belong to an unfinished upgrade of the repository's format; run 'bulwark migrate' to finish it`);
  return out;
}

/** The readable snapshots matching the filter, oldest first; damaged ones are reported as warnings. */
export async function listSnapshots(repo: SnapshotReader, filter: SnapshotFilter = {}): Promise<SnapshotWithId[]> {
  const { snapshots, damaged } = await readSnapshots(repo);
  for (const d of damaged) repo.onWarning?.(`snapshot ${d.id.slice(0, 8)} cannot be read and was skipped: ${d.reason}`);
  return snapshots.filter((s) => matchesFilter(s, filter));
}

/** Whether a snapshot passes a host / source / tags filter. */
export function matchesFilter(s: Snapshot, f: SnapshotFilter): boolean {
  if (f.hostname !== undefined && s.hostname !== f.hostname) return false;
  if (f.source !== undefined && s.source !== f.source) return false;
  if (f.tags && f.tags.length > 0 && !f.tags.every((t) => s.tags.includes(t))) return false;
  return true;
}

/** Resolves `latest`, a full id, or a unique prefix of at least 8 hex digits. */
export async function findSnapshot(repo: SnapshotReader, ref: string, filter: SnapshotFilter = {}): Promise<SnapshotWithId> {
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
