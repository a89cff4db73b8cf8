// Live VM backup: the requestor of the consistency protocol (docs/architecture.md, "The VM path"), as
// a sequence of steps over the hypervisor seam (hypervisors/session.ts); no wire protocol here.
//
//   prepare  (per VM: a session opened, an interrupted run's leftovers cleaned, disks inspected, the
//             incremental base chosen, scratch space checked, the point prepared, the guardian
//             started — everything slow happens here, before anything is frozen)
//   freeze → point → thaw    (the only part inside the freeze window; for a group, one window covers
//             every VM; mode stop: shutdown → point → start instead)
//   transfer (each disk of the point read over NBD; dirty blocks only for incrementals)
//   commit   (the restore point written last) → cleanup (the new bitmap becomes the base on success;
//             on failure it is merged back so no change is ever missed; sessions closed)
//
// The drivers are passed in: QEMU's and libvirt's in production, a fake in the job's own tests.
import { hostname as osHostname, userInfo } from 'node:os';
import { statfs } from 'node:fs/promises';
import { labelOf, type VmEndpoint } from '../hypervisors/registry.js';
import type { DriverFor } from '../hypervisors/drivers.js';
import { isImageExport, type PointExport, type PointInTime, type VmDisk, type VmSession } from '../hypervisors/session.js';
import { quiesceAndSnapshot, type ConsistencyPolicy, type QuiesceOutcome } from '../quiesce/protocol.js';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { listSnapshots, type Consistency, type DiskRecord, type Snapshot, type SnapshotWithId, type VmConfig } from '../repository/snapshot.js';
import type { ProgressSink } from '../sources/progress.js';
import { readImage } from '../sources/disk/reader.js';
import { storeConfigFiles } from '../sources/vm/config-files.js';
import { readDiskFromNbd } from '../sources/vm/nbd-reader.js';
import { BulwarkError, type ErrorCode } from '../util/errors.js';
import { RateLimiter } from '../util/rate-limit.js';
import { expectedWrites, newBitmapName, scratchNeeded } from './vms.js';

export type { ConsistencyPolicy } from '../quiesce/protocol.js';

export type BackupMode = 'snapshot' | 'suspend' | 'stop';

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
  /** How long a freeze may last before the guardian thaws on its own (default 10 s). */
  freezeDeadlineMs?: number;
  tags?: string[];
  host?: string;
  onProgress?: ProgressSink;
  /** Steps and what guardians did, as they happen. */
  onEvent?: (e: { vm: string; phase: string; message: string }) => void;
}

export interface VmBackupResult {
  vm: string;
  snapshot?: SnapshotWithId;
  error?: string;
  /** The error's code (exit codes follow it) and what to do about it. */
  code?: ErrorCode;
  hint?: string;
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
  session: VmSession;
  name: string;
  disks: VmDisk[];
  config: VmConfig;
  parent?: SnapshotWithId;
  /** Per disk: the parent's record when its bitmap can be trusted as the incremental base. */
  bases: Map<string, DiskRecord>;
  reasons: Map<string, string>;
  point: PointInTime;
  newBitmap: string;
  snapshotAt?: number;
  /** --mode stop: done once the restarted guest's settings are put back (awaited before closing). */
  settling?: Promise<void>;
  /** What the session's guardians did (this run's, and an interrupted run's found in its log). */
  notes: string[];
}

function username(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

/** The error as a result keeps it: message, code and hint. */
function failure(vm: string, err: unknown, extra: Partial<VmBackupResult> = {}): VmBackupResult {
  const e = err instanceof BulwarkError ? err : undefined;
  return { vm, warnings: [], disks: [], ...extra, error: (err as Error).message, code: e?.code ?? 'failed', ...(e?.hint ? { hint: e.hint } : {}) };
}

/**
 * Suspend mode, and crash-consistent groups: the vCPUs are paused around the point so it is one
 * instant for all VMs; they run on right after.
 */
function batchPauses(opts: VmBackupOptions): boolean {
  return opts.mode === 'suspend' || (opts.group && opts.policy === 'crash');
}

/** Per disk: the parent's record when its bitmap can be trusted as the incremental base, else why not. */
function incrementalBases(repo: Repository, disks: VmDisk[], config: VmConfig, parent: SnapshotWithId | undefined, full: boolean): { bases: Map<string, DiskRecord>; reasons: Map<string, string> } {
  const bases = new Map<string, DiskRecord>();
  const reasons = new Map<string, string>();
  for (const d of disks) {
    const prev = parent?.disks?.find((x) => x.name === d.name);
    // A bitmap is trusted only while the restore point it is relative to still exists unchanged and
    // the bitmap itself is on the disk and consistent; otherwise read everything (dedup keeps it cheap).
    const onDisk = prev?.bitmap ? d.bitmaps.find((b) => b.name === prev.bitmap) : undefined;
    if (full) reasons.set(d.name, 'full backup requested');
    else if (parent?.vm?.uuid && config.uuid && parent.vm.uuid !== config.uuid) reasons.set(d.name, `the VM was redefined since the last backup (its UUID changed from ${parent.vm.uuid})`);
    else if (d.format !== 'qcow2') reasons.set(d.name, `${d.format} disk has no persistent dirty bitmap`);
    else if (!prev) reasons.set(d.name, 'no earlier backup of this disk');
    else if (!onDisk) reasons.set(d.name, `the last backup's incremental base ${prev.bitmap ?? '(none)'} is gone (its dirty bitmap or checkpoint was deleted)`);
    else if (onDisk.inconsistent) reasons.set(d.name, `bitmap ${onDisk.name} is inconsistent`);
    else if (prev.size !== d.size) reasons.set(d.name, 'disk size changed');
    else if (!prev.pages.every((p) => repo.hasBlob(p))) reasons.set(d.name, 'the last backup of this disk is incomplete in the repository');
    else bases.set(d.name, prev);
  }
  return { bases, reasons };
}

/** The fleecing images take the old data of every block the guest writes: running out must not be found mid-backup. */
async function checkScratch(session: VmSession, disks: VmDisk[], opts: VmBackupOptions): Promise<void> {
  const name = session.name;
  const total = disks.reduce((n, d) => n + d.size, 0);
  const { bavail, bsize } = await statfs(opts.scratchDir).catch((err: unknown) => {
    throw new BulwarkError('usage', `scratch folder '${opts.scratchDir}' is not usable: ${(err as Error).message}`, { hint: 'create it, or pass --scratch-dir' });
  });
  const need = opts.scratchMin ?? (session.scratchRule === 'full' ? total : scratchNeeded(total, expectedWrites(disks).bytes));
  if (bavail * bsize < need) {
    const why = session.scratchRule === 'full' ? " (the disks' whole size is reserved before the point in time)" : '';
    throw new BulwarkError('failed', `not enough scratch space for VM ${name}: ${((bavail * bsize) / 2 ** 30).toFixed(1)} GiB free in '${opts.scratchDir}', ${(need / 2 ** 30).toFixed(1)} GiB needed${why}`, {
      hint: "free space there or pass another --scratch-dir ('bulwark doctor' shows the rule); --scratch-min sets the requirement",
    });
  }
}

/** Step 1, per VM, everything slow, before anything is frozen: leftovers, inspection, base, scratch, point prepared, guardian. */
async function prepareVm(repo: Repository, drivers: DriverFor, endpoint: VmEndpoint, opts: VmBackupOptions, host: string): Promise<Prepared> {
  const notes: string[] = [];
  let label = labelOf(endpoint);
  const driver = drivers(endpoint);
  const session = await driver.open(endpoint, {
    log: (message) => {
      notes.push(message);
      opts.onEvent?.({ vm: label, phase: 'guardian', message });
    },
  });
  label = session.name;
  let point: PointInTime | undefined;
  try {
    for (const m of await session.cleanupLeftovers(opts.scratchDir)) {
      notes.push(m);
      opts.onEvent?.({ vm: label, phase: 'prepare', message: m });
    }
    let { disks, config } = await session.inspect();
    const offline = session.offline !== undefined;
    const can = offline ? ({ ok: true } as const) : driver.canFleece(config.qemuVersion);
    if (!can.ok) throw new BulwarkError('failed', can.why, { hint: can.fix });
    // The parent is looked up even for --full: its bitmap is the one to keep (and to replace on success).
    const parent = (await listSnapshots(repo, { hostname: host, source: `vm:${session.name}` })).pop();
    if (!offline) {
      for (const d of disks) await session.dropStaleBitmaps(d, parent?.disks?.find((x) => x.name === d.name)?.bitmap);
      ({ disks, config } = await session.inspect());
    }
    const { bases, reasons } = incrementalBases(repo, disks, config, parent, opts.full);
    if (!offline) await checkScratch(session, disks, opts);
    const newBitmap = newBitmapName();
    const previousBitmap = [...bases.values()][0]?.bitmap;
    point = await session.preparePoint(disks, { scratchDir: opts.scratchDir, newBitmap, ...(previousBitmap ? { previousBitmap } : {}) });
    // The guardian is started now, not inside the freeze window; a stopped VM needs none.
    if (offline) return { endpoint, session, name: session.name, disks, config, ...(parent ? { parent } : {}), bases: new Map(), reasons: new Map(), point, newBitmap, notes };
    const freezes = opts.policy !== 'crash' && opts.mode !== 'stop' && session.hasAgent;
    const pauses = opts.mode === 'stop' || batchPauses(opts) || point.pausesVcpus;
    await session.guard({ agent: freezes, power: pauses, stopTimeoutMs: opts.stopTimeoutMs ?? 300_000, logDir: opts.scratchDir, ...(opts.freezeDeadlineMs ? { freezeDeadlineMs: opts.freezeDeadlineMs } : {}) });
    return { endpoint, session, name: session.name, disks, config, ...(parent ? { parent } : {}), bases, reasons, point, newBitmap, notes };
  } catch (err) {
    await point?.finish(false).catch(() => undefined);
    await session.close();
    throw err;
  }
}

/** Step 2 (snapshot and suspend modes): freeze → point → thaw, one window for the whole batch. */
function freezeAndPoint(prepared: Prepared[], opts: VmBackupOptions): Promise<QuiesceOutcome[]> {
  const pause = batchPauses(opts);
  const targets = prepared.map((p) => {
    const agent = p.session.agent();
    return { name: p.name, ...(agent ? { agent } : {}), ...(p.endpoint.hookPaths ? { hookPaths: p.endpoint.hookPaths } : {}) };
  });
  return quiesceAndSnapshot(targets, opts.policy, async () => {
    const paused: Prepared[] = [];
    try {
      if (pause) {
        for (const p of prepared) {
          await p.session.pause();
          paused.push(p);
        }
      }
      for (const p of prepared) {
        await p.point.take({ paused: pause });
        p.snapshotAt = Date.now();
      }
    } finally {
      for (const p of paused) await p.session.resume().catch(() => undefined);
    }
  });
}

/**
 * Step 2 for VMs that are not running: nothing to freeze or stop; the point is the disks as they lie,
 * as consistent as the VM was left (a clean shutdown: application). In a group they join the common
 * point trivially: they do not change while it is taken.
 */
async function offlinePoints(prepared: Prepared[], opts: VmBackupOptions): Promise<QuiesceOutcome[]> {
  const outcomes: QuiesceOutcome[] = [];
  for (const p of prepared) {
    const off = p.session.offline!;
    const o: QuiesceOutcome = { name: p.name, consistency: off.consistency, freezeMs: 0, warnings: [off.why] };
    outcomes.push(o);
    if (opts.policy === 'application' && off.consistency !== 'application') {
      o.error = new BulwarkError('failed', `VM ${p.name} is not running and was not shut down cleanly (${off.why}): its disks are only crash-consistent, and --consistency application was asked`, {
        hint: 'boot it and shut it down cleanly, or pass --consistency auto',
      });
      continue;
    }
    try {
      await p.point.take({ paused: true });
      p.snapshotAt = Date.now();
    } catch (err) {
      o.error = err instanceof BulwarkError ? err : new BulwarkError('failed', (err as Error).message, { cause: err });
    }
  }
  return outcomes;
}

/**
 * Step 2 (mode stop): every VM of the batch shut down cleanly, the points taken while all are down,
 * every VM started again whatever failed. The consistency is `application`: every application was stopped.
 */
async function stopAndPoint(prepared: Prepared[], opts: VmBackupOptions): Promise<QuiesceOutcome[]> {
  const outcomes: QuiesceOutcome[] = prepared.map((p) => ({ name: p.name, consistency: 'application', freezeMs: 0, warnings: [] }));
  const down: { p: Prepared; o: QuiesceOutcome; t0: number }[] = [];
  try {
    for (const [i, p] of prepared.entries()) {
      const o = outcomes[i]!;
      const t0 = performance.now();
      o.frozenFrom = Date.now();
      try {
        const via = await p.session.shutdown(opts.stopTimeoutMs ?? 300_000);
        down.push({ p, o, t0 });
        o.warnings.push(`shut down for the backup (through the ${via === 'agent' ? 'guest agent' : 'ACPI power button'}) and started again`);
      } catch (err) {
        o.error = err instanceof BulwarkError ? err : new BulwarkError('failed', (err as Error).message);
        // A group's point is common to all: one VM that cannot stop fails the group.
        if (opts.group) break;
      }
    }
    const failed = outcomes.find((o) => o.error);
    for (const d of down) {
      if (opts.group && failed) {
        d.o.error = new BulwarkError('failed', `VM ${failed.name} of the group could not be shut down: ${failed.error!.message}`, failed.error!.hint ? { hint: failed.error!.hint } : {});
        continue;
      }
      try {
        await d.p.point.take({ paused: true });
        d.p.snapshotAt = Date.now();
      } catch (err) {
        d.o.error = new BulwarkError('failed', `cannot take the point in time: ${(err as Error).message}`, { cause: err });
      }
    }
  } finally {
    for (const d of down) {
      try {
        d.p.settling = (await d.p.session.start()).settled;
      } catch (err) {
        d.o.error ??= new BulwarkError('failed', `VM ${d.p.name} was shut down for the backup and could not be started again: ${(err as Error).message}`, { hint: 'start it again by hand (virsh start; for a bare QEMU, QMP system_reset then cont)' });
      }
      d.o.freezeMs = Math.round(performance.now() - d.t0);
      d.o.frozenTo = Date.now();
    }
  }
  return outcomes;
}

/** One disk of the point: over NBD (dirty blocks only where the base allows), or a stopped VM's image read whole. */
async function readPointDisk(repo: Repository, exp: PointExport, p: Prepared, d: VmDisk, base: DiskRecord | undefined, opts: VmBackupOptions, limiter: RateLimiter | undefined): Promise<{ read: 'full' | 'incremental'; size: number; pages: string[]; bytesRead: number; bytesNew: number; blobsNew: number }> {
  const progress = opts.onProgress ? { onProgress: opts.onProgress } : {};
  if (isImageExport(exp)) {
    const e = exp.images.find((x) => x.name === d.name);
    if (!e) throw new BulwarkError('failed', `disk ${d.name} of VM ${p.name} has no image to read`);
    const img = await e.open();
    try {
      return { read: 'full', ...(await readImage(repo, img, { ...progress, ...(limiter ? { limiter } : {}) })) };
    } finally {
      await img.close();
    }
  }
  const e = exp.disks.find((x) => x.name === d.name);
  if (!e) throw new BulwarkError('failed', `disk ${d.name} of VM ${p.name} was not exported`);
  return readDiskFromNbd(repo, { socket: exp.socket, ...e }, {
    blockSize: repo.config.blockSize,
    ...(base ? { incremental: { parentPages: base.pages, parentSize: base.size } } : {}),
    ...progress,
    ...(limiter ? { limiter } : {}),
  });
}

/** Steps 3 and 4: every disk read at the point (dirty blocks only where the base allows), then the restore point written. */
async function transferAndCommit(repo: Repository, p: Prepared, outcome: QuiesceOutcome, opts: VmBackupOptions, host: string, started: number): Promise<VmBackupResult> {
  const result: VmBackupResult = {
    vm: p.name,
    warnings: [...outcome.warnings],
    consistency: outcome.consistency,
    freezeMs: outcome.freezeMs,
    ...(outcome.frozenFrom !== undefined && outcome.frozenTo !== undefined ? { frozen: { from: outcome.frozenFrom, to: outcome.frozenTo } } : {}),
    ...(p.snapshotAt !== undefined ? { snapshotAt: p.snapshotAt } : {}),
    disks: [],
  };
  const exp = await p.point.export();
  const limiter = opts.limitRead ? new RateLimiter(opts.limitRead) : undefined;
  const records: DiskRecord[] = [];
  let bytesRead = 0;
  let bytesNew = 0;
  let blobsNew = 0;
  let totalSize = 0;
  for (const d of p.disks) {
    const base = p.bases.get(d.name);
    const r = await readPointDisk(repo, exp, p, d, base, opts, limiter);
    const reason = r.read === 'full' ? (p.reasons.get(d.name) ?? (base ? 'the point in time carries no record of changes' : undefined)) : undefined;
    result.disks.push({ name: d.name, read: r.read, bytesRead: r.bytesRead, bytesNew: r.bytesNew, ...(reason ? { reason } : {}) });
    if (r.read === 'full' && reason && p.parent) result.warnings.push(`${d.name}: full read (${reason})`);
    records.push({ name: d.name, size: r.size, blockSize: repo.config.blockSize, pages: r.pages, source: d.file, format: d.format, read: r.read, ...(d.format === 'qcow2' && !p.session.offline ? { bitmap: p.newBitmap } : {}) });
    bytesRead += r.bytesRead;
    bytesNew += r.bytesNew;
    blobsNew += r.blobsNew;
    totalSize += r.size;
  }
  if (p.session.configFiles && p.config.folder) p.config.folder.files = await storeConfigFiles(repo, await p.session.configFiles());
  await p.point.verify?.();
  result.warnings.push(...p.notes);
  const sn: Snapshot = {
    version: 1,
    time: new Date(started).toISOString(),
    hostname: host,
    username: username(),
    source: `vm:${p.name}`,
    paths: [p.session.address],
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

/** Backs up VMs one after another (default) or as one group (one point in time for all). */
export async function backupVms(repo: Repository, drivers: DriverFor, opts: VmBackupOptions): Promise<VmBackupResult[]> {
  const lock = await Lock.acquire(repo, false, 'backup');
  try {
    await repo.loadIndex();
    await repo.resumeUploads();
    const host = opts.host ?? osHostname();
    const batches = opts.group ? [opts.endpoints] : opts.endpoints.map((e) => [e]);
    const results: VmBackupResult[] = [];
    for (const batch of batches) results.push(...(await backupBatch(repo, drivers, batch, opts, host)));
    return results;
  } finally {
    await lock.release();
  }
}

async function backupBatch(repo: Repository, drivers: DriverFor, batch: VmEndpoint[], opts: VmBackupOptions, host: string): Promise<VmBackupResult[]> {
  const prepared: Prepared[] = [];
  const results: VmBackupResult[] = [];
  const finished = new Set<Prepared>();
  const finish = async (p: Prepared, ok: boolean): Promise<void> => {
    finished.add(p);
    await p.point.finish(ok);
  };
  try {
    for (const e of batch) {
      try {
        prepared.push(await prepareVm(repo, drivers, e, opts, host));
      } catch (err) {
        // In a group every VM must reach the common point: one that cannot be prepared fails the group.
        if (opts.group) throw err;
        results.push(failure(labelOf(e), err));
      }
    }
    if (prepared.length === 0) return results;
    const started = Date.now();
    const live = prepared.filter((p) => !p.session.offline);
    const outcomes = [...(await offlinePoints(prepared.filter((p) => p.session.offline), opts)), ...(live.length === 0 ? [] : opts.mode === 'stop' ? await stopAndPoint(live, opts) : await freezeAndPoint(live, opts))];
    for (const p of prepared) {
      const outcome = outcomes.find((o) => o.name === p.name)!;
      if (outcome.error) {
        results.push(failure(p.name, outcome.error, { warnings: [...outcome.warnings, ...p.notes] }));
        await finish(p, false).catch(() => undefined);
        continue;
      }
      try {
        const r = await transferAndCommit(repo, p, outcome, opts, host, started);
        await finish(p, true);
        results.push(r);
      } catch (err) {
        const why = await p.point.diagnose().catch(() => undefined);
        await finish(p, false).catch(() => undefined);
        const extra = { warnings: [...outcome.warnings, ...p.notes], consistency: outcome.consistency, freezeMs: outcome.freezeMs };
        results.push(
          why
            ? failure(p.name, new BulwarkError('failed', `${why}; the next backup still catches every change (${(err as Error).message})`, { hint: 'free space in the scratch folder or pass a larger --scratch-dir' }), extra)
            : failure(p.name, err, extra),
        );
      }
    }
    return results;
  } finally {
    // Whatever failed on the way (a group member that could not be prepared, the quiescer), nothing
    // of ours stays in the hypervisor and every new bitmap is merged back.
    for (const p of prepared) {
      if (!finished.has(p)) await p.point.finish(false).catch(() => undefined);
      await p.settling?.catch(() => undefined);
      await p.session.close().catch(() => undefined);
    }
  }
}
