// Live VM backup: the requestor of the consistency protocol (docs/architecture.md, "The VM path").
//
//   prepare  (per VM: clean leftovers of a killed run, inspect, pick the incremental base, set up
//             fleecing — everything slow happens here, before anything is frozen)
//   freeze → snapshot (one QMP transaction per VM) → thaw     (the quiescer; the only part inside
//             the freeze window; for a group, one window covers every VM)
//   transfer (read each disk's point-in-time image over NBD; dirty blocks only for incrementals)
//   commit   (snapshot record written last) → cleanup (the new bitmap becomes the base on success;
//             on failure it is merged back so no change is ever missed)
//
// The snapshot provider and the quiescer are passed in, so the job reads as the protocol and each
// part is tested on its own against a real guest.
import { hostname as osHostname, userInfo } from 'node:os';
import { statfs } from 'node:fs/promises';
import type { QemuDisk } from '../hypervisors/qemu/inspect.js';
import type { RunPhase } from '../hypervisors/qemu/run-guardian.js';
import type { VmEndpoint } from '../hypervisors/registry.js';
import type { ConsistencyPolicy, QuiesceOutcome, QuiesceTarget } from '../quiesce/protocol.js';
import { NbdClient } from '../protocols/nbd/client.js';
import { QmpClient } from '../protocols/qmp/client.js';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { listSnapshots, type Consistency, type DiskRecord, type Snapshot, type SnapshotWithId, type VmConfig } from '../repository/snapshot.js';

export type { ConsistencyPolicy } from '../quiesce/protocol.js';
import type { ProgressSink } from '../sources/progress.js';
import { readDiskOverNbd } from '../sources/vm/nbd-reader.js';
import { BulwarkError } from '../util/errors.js';
import { RateLimiter } from '../util/rate-limit.js';
import { expectedWrites, newBitmapName, qemuCanFleece, scratchNeeded } from './vms.js';

export type BackupMode = 'snapshot' | 'suspend' | 'stop';

/** A disk as the provider reports it: name in the snapshot (vda…), node, format, size, bitmaps. */
export type ProviderDisk = QemuDisk;

/** What must happen to a VM if this process dies now: the provider's watchdog acts on the phase. */
export interface RunGuard {
  phase(p: RunPhase): void;
  /** The VM runs as before: the watchdog ends without acting. */
  release(): Promise<void>;
}

export interface ProviderSession {
  /**
   * The point in time, taken inside the freeze window; `paused` when the caller has stopped the
   * vCPUs. `onPause` is told when the provider itself pauses and resumes them.
   */
  takePoint(opts: { paused: boolean; onPause?: (paused: boolean) => void }): Promise<void>;
  /** takePoint pauses the vCPUs itself (several disks switched at one instant) unless already paused. */
  readonly pausesVcpus: boolean;
  /** After the transaction: serve the point-in-time disks over NBD. */
  export(previousBitmap: string | undefined): Promise<{ socket: string; disks: { name: string; exportName: string; dirtyContext?: string }[] }>;
  /** After a failed read: the provider's explanation, when it has one (scratch space ran out). */
  diagnose(): Promise<string | undefined>;
  /** Tear everything down; `ok` decides what happens to the bitmaps. */
  finish(ok: boolean): Promise<void>;
}

export interface SnapshotProvider {
  cleanupLeftovers(qmp: QmpClient, scratchDir: string): Promise<void>;
  /** Our bitmaps on a disk other than the incremental base (left by a killed run): merged into the base and removed. */
  dropStaleBitmaps(qmp: QmpClient, disk: ProviderDisk, base: string | undefined): Promise<void>;
  inspect(qmp: QmpClient): Promise<{ disks: ProviderDisk[]; config: VmConfig }>;
  prepare(qmp: QmpClient, disks: ProviderDisk[], opts: { scratchDir: string; newBitmap: string }): Promise<ProviderSession>;
  /** A watchdog that keeps the VM running if this process dies while it is paused or shut down. */
  guard(qmp: QmpClient, opts: { qmpSocket: string; qgaSocket?: string; stopTimeoutMs: number }): Promise<RunGuard>;
  /** --mode stop: a clean shutdown of the guest, the VM kept paused; resolves with how it was asked. */
  shutdown(qmp: QmpClient, opts: { qmpSocket: string; qgaSocket?: string; timeoutMs: number }): Promise<string>;
  /** --mode stop: the guest boots again; `settled` when the VM's own settings are back as they were. */
  startAgain(qmp: QmpClient, opts: { qgaSocket?: string }): Promise<{ settled: Promise<void> }>;
}


export type Quiescer = (targets: QuiesceTarget[], policy: ConsistencyPolicy, snapshot: () => Promise<void>) => Promise<QuiesceOutcome[]>;

export interface VmBackupOptions {
  endpoints: VmEndpoint[];
  group: boolean;
  policy: ConsistencyPolicy;
  mode: BackupMode;
  /** --mode stop: how long a guest may take to shut down. */
  stopTimeoutMs?: number;
  full: boolean;
  scratchDir: string;
  /** Bytes per second read from the VMs' disks at most. */
  limitRead?: number;
  /** Free scratch space required before starting (default: scratchNeeded of the VM's disks). */
  scratchMin?: number;
  tags?: string[];
  host?: string;
  onProgress?: ProgressSink;
  onEvent?: (e: { vm: string; phase: string; message: string }) => void;
}

export interface VmBackupResult {
  vm: string;
  snapshot?: SnapshotWithId;
  error?: string;
  warnings: string[];
  consistency?: Consistency;
  freezeMs?: number;
  /** Wall-clock interval the guest's file systems were frozen (absent for crash consistency). */
  frozen?: { from: number; to: number };
  /** When the VM's snapshot transaction ran. */
  snapshotAt?: number;
  disks: { name: string; read: 'full' | 'incremental'; bytesRead: number; bytesNew: number; reason?: string }[];
}

interface Prepared {
  endpoint: VmEndpoint;
  name: string;
  qmp: QmpClient;
  disks: ProviderDisk[];
  config: VmConfig;
  parent?: SnapshotWithId;
  /** Per disk: the parent's record when its bitmap can be trusted as the incremental base. */
  bases: Map<string, DiskRecord>;
  reasons: Map<string, string>;
  session: ProviderSession;
  newBitmap: string;
  snapshotAt?: number;
  /** --mode stop: done once the restarted guest's settings are put back (awaited before disconnecting). */
  settling?: Promise<void>;
  guard: RunGuard;
}

function username(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

/**
 * Suspend mode, and crash-consistent groups: the vCPUs are paused around the snapshot so the point in
 * time is one instant for all VMs; they run on right after.
 */
function batchPauses(opts: VmBackupOptions): boolean {
  return opts.mode === 'suspend' || (opts.group && opts.policy === 'crash');
}

const NO_GUARD: RunGuard = { phase: () => undefined, release: async () => undefined };

async function prepareVm(repo: Repository, provider: SnapshotProvider, endpoint: VmEndpoint, opts: VmBackupOptions, host: string): Promise<Prepared> {
  // A monitor briefly held by another tool (QEMU serves one client at a time) must not fail a backup.
  const qmp = await QmpClient.connect(endpoint.qmp, { timeoutMs: 5000, retryForMs: 60_000 });
  let guard: RunGuard | undefined;
  let session: ProviderSession | undefined;
  try {
    await provider.cleanupLeftovers(qmp, opts.scratchDir);
    let { disks, config } = await provider.inspect(qmp);
    if (config.qemuVersion && !qemuCanFleece(config.qemuVersion)) {
      throw new BulwarkError('failed', `QEMU ${config.qemuVersion} is too old for safe live backups (copy-before-write with break-snapshot needs QEMU 7.1)`, {
        hint: "upgrade QEMU and restart the VM, or back its disks up offline with 'bulwark backup disk'",
      });
    }
    const name = endpoint.name ?? config.name;
    // The parent is looked up even for --full: its bitmap is the one to keep (and to replace on success).
    const parent = (await listSnapshots(repo, { hostname: host, source: `vm:${name}` })).pop();
    for (const d of disks) await provider.dropStaleBitmaps(qmp, d, parent?.disks?.find((x) => x.name === d.name)?.bitmap);
    ({ disks, config } = await provider.inspect(qmp));
    const bases = new Map<string, DiskRecord>();
    const reasons = new Map<string, string>();
    for (const d of disks) {
      const prev = parent?.disks?.find((x) => x.name === d.name);
      // A bitmap is trusted only while the restore point it is relative to still exists unchanged and
      // the bitmap itself is on the disk and consistent; otherwise read everything (dedup keeps it cheap).
      const onDisk = prev?.bitmap ? d.bitmaps.find((b) => b.name === prev.bitmap) : undefined;
      if (opts.full) reasons.set(d.name, 'full backup requested');
      else if (d.format !== 'qcow2') reasons.set(d.name, `${d.format} disk has no persistent dirty bitmap`);
      else if (!prev) reasons.set(d.name, 'no earlier backup of this disk');
      else if (!onDisk) reasons.set(d.name, `bitmap ${prev.bitmap ?? '(none)'} of the last backup is missing on the disk`);
      else if (onDisk.inconsistent) reasons.set(d.name, `bitmap ${onDisk.name} is inconsistent`);
      else if (prev.size !== d.size) reasons.set(d.name, 'disk size changed');
      else if (!prev.pages.every((p) => repo.hasBlob(p))) reasons.set(d.name, 'the last backup of this disk is incomplete in the repository');
      else bases.set(d.name, prev);
    }
    // The fleecing images take the old data of every block the guest writes during the backup. Running
    // out of that space must not be discovered mid-backup: check it first (rule in docs/architecture.md).
    const total = disks.reduce((n, d) => n + d.size, 0);
    const { bavail, bsize } = await statfs(opts.scratchDir).catch((err: unknown) => {
      throw new BulwarkError('usage', `scratch folder '${opts.scratchDir}' is not usable: ${(err as Error).message}`, { hint: 'create it, or pass --scratch-dir' });
    });
    const need = opts.scratchMin ?? scratchNeeded(total, expectedWrites(disks).bytes);
    if (bavail * bsize < need) {
      throw new BulwarkError('failed', `not enough scratch space for VM ${name}: ${(bavail * bsize / 2 ** 30).toFixed(1)} GiB free in '${opts.scratchDir}', ${(need / 2 ** 30).toFixed(1)} GiB needed`, {
        hint: "free space there or pass another --scratch-dir ('bulwark doctor' shows the rule); --scratch-min sets the requirement",
      });
    }
    const newBitmap = newBitmapName();
    session = await provider.prepare(qmp, disks, { scratchDir: opts.scratchDir, newBitmap });
    // A watchdog process only where this run pauses or shuts the VM down (it costs a process per VM):
    // started now, not inside the freeze window.
    const pauses = opts.mode === 'stop' || batchPauses(opts) || session.pausesVcpus;
    guard = pauses ? await provider.guard(qmp, { qmpSocket: endpoint.qmp, ...(endpoint.qga ? { qgaSocket: endpoint.qga } : {}), stopTimeoutMs: opts.stopTimeoutMs ?? 300_000 }) : NO_GUARD;
    return { endpoint, name, qmp, disks, config, ...(parent ? { parent } : {}), bases, reasons, session, newBitmap, guard };
  } catch (err) {
    await session?.finish(false).catch(() => undefined);
    await guard?.release();
    await qmp.close();
    throw err;
  }
}

async function transferVm(repo: Repository, p: Prepared, outcome: QuiesceOutcome, opts: VmBackupOptions, host: string, started: number): Promise<VmBackupResult> {
  const result: VmBackupResult = {
    vm: p.name,
    warnings: [...outcome.warnings],
    consistency: outcome.consistency,
    freezeMs: outcome.freezeMs,
    ...(outcome.frozenFrom !== undefined && outcome.frozenTo !== undefined ? { frozen: { from: outcome.frozenFrom, to: outcome.frozenTo } } : {}),
    ...(p.snapshotAt !== undefined ? { snapshotAt: p.snapshotAt } : {}),
    disks: [],
  };
  const incremental = [...p.bases.values()].length > 0;
  const previousBitmap = incremental ? [...p.bases.values()][0]!.bitmap : undefined;
  const exp = await p.session.export(previousBitmap);
  const limiter = opts.limitRead ? new RateLimiter(opts.limitRead) : undefined;
  const records: DiskRecord[] = [];
  let bytesRead = 0;
  let bytesNew = 0;
  let blobsNew = 0;
  let totalSize = 0;
  for (const d of p.disks) {
    const e = exp.disks.find((x) => x.name === d.name);
    if (!e) throw new BulwarkError('failed', `disk ${d.name} of VM ${p.name} was not exported`);
    const base = p.bases.get(d.name);
    const context = base && e.dirtyContext ? e.dirtyContext : undefined;
    const nbd = await NbdClient.connect({ path: exp.socket }, { exportName: e.exportName, metaContexts: ['base:allocation', ...(context ? [context] : [])] });
    try {
      const r = await readDiskOverNbd(repo, nbd, {
        blockSize: repo.config.blockSize,
        ...(base && context ? { incremental: { context, parentPages: base.pages, parentSize: base.size } } : {}),
        ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
        ...(limiter ? { limiter } : {}),
      });
      const read = base && context ? 'incremental' : 'full';
      const reason = p.reasons.get(d.name);
      result.disks.push({ name: d.name, read, bytesRead: r.bytesRead, bytesNew: r.bytesNew, ...(reason ? { reason } : {}) });
      if (read === 'full' && reason && p.parent) result.warnings.push(`${d.name}: full read (${reason})`);
      records.push({ name: d.name, size: r.size, blockSize: repo.config.blockSize, pages: r.pages, source: d.file, format: d.format, read, ...(d.format === 'qcow2' ? { bitmap: p.newBitmap } : {}) });
      bytesRead += r.bytesRead;
      bytesNew += r.bytesNew;
      blobsNew += r.blobsNew;
      totalSize += r.size;
    } finally {
      await nbd.disconnect().catch(() => nbd.destroy());
    }
  }
  const sn: Snapshot = {
    version: 1,
    time: new Date(started).toISOString(),
    hostname: host,
    username: username(),
    source: `vm:${p.name}`,
    paths: [p.endpoint.qmp],
    tags: opts.tags ?? [],
    ...(p.parent ? { parent: p.parent.id } : {}),
    disks: records,
    consistency: outcome.consistency,
    vm: p.config,
    freezeMs: outcome.freezeMs,
    mode: opts.mode,
    summary: { bytesRead, bytesNew, blobsNew, totalSize, durationMs: Date.now() - started, warnings: result.warnings },
  };
  await repo.flush();
  const id = await repo.saveDocument('snapshots', sn);
  result.snapshot = { ...sn, id };
  return result;
}

/**
 * Mode stop: every VM of the batch shut down cleanly, the points taken while all are down, every VM
 * started again whatever failed. The consistency is `application`: every application was stopped.
 */
async function stopAndSnapshot(provider: SnapshotProvider, prepared: Prepared[], opts: VmBackupOptions): Promise<QuiesceOutcome[]> {
  const outcomes: QuiesceOutcome[] = prepared.map((p) => ({ name: p.name, consistency: 'application', freezeMs: 0, warnings: [] }));
  const down: { p: Prepared; o: QuiesceOutcome; t0: number }[] = [];
  try {
    for (const [i, p] of prepared.entries()) {
      const o = outcomes[i]!;
      const t0 = performance.now();
      o.frozenFrom = Date.now();
      try {
        p.guard.phase('stopping');
        const via = await provider.shutdown(p.qmp, { qmpSocket: p.endpoint.qmp, ...(p.endpoint.qga ? { qgaSocket: p.endpoint.qga } : {}), timeoutMs: opts.stopTimeoutMs ?? 300_000 });
        p.guard.phase('down');
        down.push({ p, o, t0 });
        o.warnings.push(`shut down for the backup (through the ${via === 'agent' ? 'guest agent' : 'ACPI power button'}) and started again`);
      } catch (err) {
        // The shutdown action is the VM's own again: a guest still shutting down ends as it would anyway.
        p.guard.phase('none');
        o.error = err instanceof BulwarkError ? err : new BulwarkError('failed', (err as Error).message);
        // A group's point is common to all: one VM that cannot stop fails the group.
        if (opts.group) break;
      }
    }
    const failed = outcomes.find((o) => o.error);
    for (const d of down) {
      if (opts.group && failed) {
        d.o.error = new BulwarkError('failed', `VM ${failed.name} of the group could not be shut down: ${failed.error!.message}`);
        continue;
      }
      try {
        await d.p.session.takePoint({ paused: true });
        d.p.snapshotAt = Date.now();
      } catch (err) {
        d.o.error = new BulwarkError('failed', `cannot take the point in time: ${(err as Error).message}`, { cause: err });
      }
    }
  } finally {
    for (const d of down) {
      try {
        d.p.settling = (await provider.startAgain(d.p.qmp, d.p.endpoint.qga ? { qgaSocket: d.p.endpoint.qga } : {})).settled;
        d.p.guard.phase('restarted');
        const g = d.p.guard;
        void d.p.settling.then(() => g.phase('none'), () => undefined);
      } catch (err) {
        d.o.error ??= new BulwarkError('failed', `VM ${d.p.name} was shut down for the backup and could not be started again: ${(err as Error).message}`, { hint: "start it with QMP 'system_reset' then 'cont'" });
      }
      d.o.freezeMs = Math.round(performance.now() - d.t0);
      d.o.frozenTo = Date.now();
    }
  }
  return outcomes;
}

/** Backs up VMs one after another (default) or as one group (one point in time for all). */
export async function backupVms(repo: Repository, provider: SnapshotProvider, quiesce: Quiescer, opts: VmBackupOptions): Promise<VmBackupResult[]> {
  const lock = await Lock.acquire(repo, false, 'backup');
  try {
    await repo.loadIndex();
    const host = opts.host ?? osHostname();
    const batches = opts.group ? [opts.endpoints] : opts.endpoints.map((e) => [e]);
    const results: VmBackupResult[] = [];
    for (const batch of batches) results.push(...(await backupBatch(repo, provider, quiesce, batch, opts, host)));
    return results;
  } finally {
    await lock.release();
  }
}

async function backupBatch(repo: Repository, provider: SnapshotProvider, quiesce: Quiescer, batch: VmEndpoint[], opts: VmBackupOptions, host: string): Promise<VmBackupResult[]> {
  const prepared: Prepared[] = [];
  const results: VmBackupResult[] = [];
  const finished = new Set<Prepared>();
  const finish = async (p: Prepared, ok: boolean): Promise<void> => {
    finished.add(p);
    await p.session.finish(ok);
  };
  try {
    for (const e of batch) {
      try {
        prepared.push(await prepareVm(repo, provider, e, opts, host));
      } catch (err) {
        // In a group every VM must reach the common point: one that cannot be prepared fails the group.
        if (opts.group) throw err;
        results.push({ vm: e.name ?? e.qmp, error: (err as Error).message, warnings: [], disks: [] });
      }
    }
    if (prepared.length === 0) return results;
    const started = Date.now();
    const pause = batchPauses(opts);
    const outcomes = opts.mode === 'stop' ? await stopAndSnapshot(provider, prepared, opts) : await quiesce(
      prepared.map((p) => ({ name: p.name, ...(p.endpoint.qga ? { qgaSocket: p.endpoint.qga } : {}), ...(p.endpoint.hookPaths ? { hookPaths: p.endpoint.hookPaths } : {}) })),
      opts.policy,
      async () => {
        if (pause) {
          for (const p of prepared) {
            p.guard.phase('paused');
            await p.qmp.execute('stop');
          }
        }
        try {
          for (const p of prepared) {
            await p.session.takePoint({ paused: pause, onPause: (on) => p.guard.phase(on ? 'paused' : 'none') });
            p.snapshotAt = Date.now();
          }
        } finally {
          if (pause) {
            for (const p of prepared) {
              await p.qmp.execute('cont').catch(() => undefined);
              p.guard.phase('none');
            }
          }
        }
      },
    );
    for (const p of prepared) {
      const outcome = outcomes.find((o) => o.name === p.name)!;
      if (outcome.error) {
        results.push({ vm: p.name, error: outcome.error.message, warnings: outcome.warnings, disks: [] });
        await finish(p, false).catch(() => undefined);
        continue;
      }
      try {
        const r = await transferVm(repo, p, outcome, opts, host, started);
        await finish(p, true);
        results.push(r);
      } catch (err) {
        const why = await p.session.diagnose().catch(() => undefined);
        await finish(p, false).catch(() => undefined);
        results.push({ vm: p.name, error: why ? `${why}. Free space there or pass a larger --scratch-dir; the next backup still catches every change (${(err as Error).message})` : (err as Error).message, warnings: outcome.warnings, consistency: outcome.consistency, freezeMs: outcome.freezeMs, disks: [] });
      }
    }
    return results;
  } finally {
    // Whatever failed on the way (a group member that could not be prepared, the quiescer), nothing
    // of ours stays in QEMU and every new bitmap is merged back.
    for (const p of prepared) {
      if (!finished.has(p)) await p.session.finish(false).catch(() => undefined);
      await p.settling?.catch(() => undefined);
      await p.guard.release().catch(() => undefined);
      await p.qmp.close().catch(() => undefined);
    }
  }
}
