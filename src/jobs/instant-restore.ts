// restore vm --instant: the VM of a restore point boots at once from the repository and its disks
// are copied into the target while it runs (restore/export.ts serves them; hypervisors/qemu/instant.ts
// boots QEMU on overlays backed by the export and streams them). The command returns once every disk
// is local; the VM runs on. The repository is locked shared meanwhile.
//
// What a later `--resume` needs is kept in <target>/.bulwark-instant.json from the boot until the copy
// is done: if this process dies mid-copy, the VM pauses on what it cannot read instead of failing, and
// `--resume` serves the export again on the same socket and finishes the copy.
import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import type { InstantDisk, InstantMachine, InstantWhere } from '../hypervisors/instant-vm.js';
import { bootDomainOnExport } from '../hypervisors/libvirt/instant.js';
import { attachInstant, bootOnExport } from '../hypervisors/qemu/instant.js';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { findSnapshot, type SnapshotFilter, type SnapshotWithId, type VmConfig } from '../repository/snapshot.js';
import { safeDiskName } from '../restore/disk.js';
import { exportDisks, type DiskExport } from '../restore/export.js';
import { prepareTarget } from '../restore/files.js';
import { BulwarkError } from '../util/errors.js';

export type InstantEvent = { phase: 'booted' | 'attached' | 'copying' | 'stalled' | 'copied' | 'copy-failed'; message: string; [k: string]: unknown };

export interface InstantRestoreOptions {
  ref: string;
  filter?: SnapshotFilter;
  target: string;
  /** QEMU's -accel: kvm, tcg, or kvm:tcg (KVM where it works). */
  accel: string;
  /** Bytes per second for the background copy (absent: as fast as the repository serves). */
  copySpeed?: number;
  /** libvirt restore points: the domain's name (default <name>-restored) and connection (default the recorded one). */
  name?: string;
  connect?: string;
  onEvent?: (e: InstantEvent) => void;
  /** After a failed copy the VM still reads the export: served until this resolves (Ctrl-C, or the VM gone). */
  keepServing: (running: () => Promise<boolean>) => Promise<void>;
}

export interface InstantResumeOptions {
  target: string;
  /** When given, the state in the target must be of this snapshot (id or unique prefix). */
  ref?: string;
  copySpeed?: number;
  onEvent?: (e: InstantEvent) => void;
  keepServing: (running: () => Promise<boolean>) => Promise<void>;
}

export interface InstantRestoreResult extends InstantWhere {
  snapshot: string;
  vm: string;
  disks: { name: string; path: string; size: number }[];
  /** From the command's start to QEMU running the guest (a resume: to the VM attached again). */
  bootedMs: number;
  /** From the start until every disk was local. */
  copiedMs: number;
  blocksFetched: number;
  resumed?: boolean;
}

/** <target>/.bulwark-instant.json: the running instant restore, for --resume. */
interface InstantState {
  version: 1;
  repository: string;
  snapshot: string;
  vm: VmConfig;
  pid: number;
  socket: string;
  disks: InstantDisk[];
}

const STATE_FILE = '.bulwark-instant.json';
const SOCKET_FILE = '.bulwark-instant.nbd';

export async function instantRestore(repo: Repository, opts: InstantRestoreOptions): Promise<InstantRestoreResult> {
  const t0 = performance.now();
  const lock = await Lock.acquire(repo, false, 'instant restore');
  try {
    await repo.loadIndex();
    const sn = await findSnapshot(repo, opts.ref, opts.filter);
    if (!sn.vm || !sn.disks?.length) throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is not of a VM: there is no machine to boot`, { hint: "restore disks with 'bulwark restore vm', or serve them with 'bulwark export'" });
    if (sn.vm.folder) throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is a ${sn.vm.folder.hypervisor} machine, which QEMU does not boot here`, { hint: "restore it as a folder with 'bulwark restore vm'" });
    const target = resolve(await prepareTarget(opts.target));
    const socket = join(target, SOCKET_FILE);
    const disks: InstantDisk[] = sn.disks.map((d) => ({ name: safeDiskName(d.name), size: d.size, socket, exportName: safeDiskName(d.name), path: join(target, `${safeDiskName(d.name)}.qcow2`) }));
    for (const d of disks) {
      if (await fsp.lstat(d.path).then(() => true, () => false)) throw new BulwarkError('failed', `'${d.path}' already exists; restore never overwrites a disk`, { hint: 'choose an empty --target' });
    }
    await fsp.rm(socket, { force: true });
    const exported = await exportDisks(repo, sn.disks, { listen: { path: socket } });
    try {
      // Beside the original: its own name, no UUID of the original's.
      const { uuid: _uuid, ...machine } = sn.vm;
      const vmConfig: VmConfig = { ...machine, name: opts.name ?? `${sn.vm.name}-restored` };
      let vm: InstantMachine;
      if (sn.vm.libvirt) {
        const byName = new Map(sn.disks.map((d) => [safeDiskName(d.name), d.name]));
        vm = await bootDomainOnExport({ uri: opts.connect ?? sn.vm.libvirt.uri, xml: sn.vm.libvirt.xml, name: vmConfig.name, disks: disks.map((d) => ({ ...d, target: byName.get(d.name)! })), dir: target });
      } else {
        const q = await bootOnExport(vmConfig, disks, { dir: target, accel: opts.accel });
        // A QEMU command line rides out this process ending: --resume finds it through this file.
        await writeState(target, { version: 1, repository: repo.config.id, snapshot: sn.id, vm: vmConfig, pid: q.pid, socket, disks });
        vm = q;
      }
      const bootedMs = performance.now() - t0;
      const at = vm.where.domain ? `libvirt domain ${vm.where.domain.name} on ${vm.where.domain.uri}` : `QEMU pid ${vm.where.pid}`;
      opts.onEvent?.({ phase: 'booted', message: `VM ${vmConfig.name} runs (${at}) on disks served from the repository; copying them into ${target}`, ...vm.where, bootedMs: Math.round(bootedMs) });
      return await finishCopy(vm, sn, vmConfig, disks, exported, target, { ...opts, t0, bootedMs });
    } finally {
      await exported.close();
    }
  } finally {
    await lock.release();
  }
}

/** Goes on with an instant restore whose process ended mid-copy: the export again, then the copy. */
export async function resumeInstantRestore(repo: Repository, opts: InstantResumeOptions): Promise<InstantRestoreResult> {
  const t0 = performance.now();
  const target = resolve(opts.target);
  const state = await readState(target);
  if (state.repository !== repo.config.id) throw new BulwarkError('usage', `the instant restore in ${target} was started from another repository (${state.repository.slice(0, 8)})`, { hint: 'give that repository with -r' });
  if (opts.ref !== undefined && opts.ref !== 'latest' && !state.snapshot.startsWith(opts.ref)) throw new BulwarkError('usage', `the instant restore in ${target} is of snapshot ${state.snapshot.slice(0, 8)}, not ${opts.ref}`);
  const lock = await Lock.acquire(repo, false, 'instant restore');
  try {
    await repo.loadIndex();
    const sn = await findSnapshot(repo, state.snapshot);
    // Check before serving: a VM that is gone needs no export, and its overlays are useless alone.
    const vm = await attachInstant(state.vm, state.pid, state.disks, target);
    try {
      await fsp.rm(state.socket, { force: true });
      const exported = await exportDisks(repo, sn.disks ?? [], { listen: { path: state.socket } });
      try {
        const bootedMs = performance.now() - t0;
        opts.onEvent?.({ phase: 'attached', message: `serving the disks of VM ${state.vm.name} (QEMU pid ${vm.pid}) again; going on copying them into ${target}`, ...vm.where });
        return { ...(await finishCopy(vm, sn, state.vm, state.disks, exported, target, { ...opts, t0, bootedMs })), resumed: true };
      } finally {
        await exported.close();
      }
    } finally {
      await vm.close();
    }
  } finally {
    await lock.release();
  }
}

async function finishCopy(
  vm: InstantMachine,
  sn: SnapshotWithId,
  vmConfig: VmConfig,
  disks: InstantDisk[],
  exported: DiskExport,
  target: string,
  opts: { t0: number; bootedMs: number; copySpeed?: number; onEvent?: (e: InstantEvent) => void; keepServing: (running: () => Promise<boolean>) => Promise<void> },
): Promise<InstantRestoreResult> {
  try {
    await vm.copy({
      ...(opts.copySpeed ? { speed: opts.copySpeed } : {}),
      onProgress: (done, total) => opts.onEvent?.({ phase: 'copying', message: `copied ${done} of ${total} bytes`, done, total }),
      onStall: (message) => opts.onEvent?.({ phase: 'stalled', message }),
    });
  } catch (err) {
    opts.onEvent?.({ phase: 'copy-failed', message: `${(err as Error).message}; serving the disks until the VM is shut down or this command is stopped` });
    await opts.keepServing(() => vm.running());
    throw err;
  } finally {
    await vm.close();
  }
  await fsp.rm(join(target, STATE_FILE), { force: true });
  const copiedMs = performance.now() - opts.t0;
  opts.onEvent?.({ phase: 'copied', message: 'every disk is local: the VM no longer reads the repository' });
  return {
    snapshot: sn.id,
    vm: vmConfig.name,
    ...vm.where,
    disks: disks.map(({ name, path, size }) => ({ name, path, size })),
    bootedMs: Math.round(opts.bootedMs),
    copiedMs: Math.round(copiedMs),
    blocksFetched: exported.blocksFetched(),
  };
}

async function writeState(target: string, state: InstantState): Promise<void> {
  const file = join(target, STATE_FILE);
  await fsp.writeFile(`${file}.tmp`, JSON.stringify(state, null, 2) + '\n', { mode: 0o600 });
  await fsp.rename(`${file}.tmp`, file);
}

async function readState(target: string): Promise<InstantState> {
  const file = join(target, STATE_FILE);
  const text = await fsp.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new BulwarkError('not-found', `no instant restore to resume in ${target} (no ${STATE_FILE})`, { hint: 'its copy may have finished already; start one with restore vm <snapshot> --instant --target DIR' });
    throw err;
  });
  let s: InstantState;
  try {
    s = JSON.parse(text) as InstantState;
  } catch {
    throw new BulwarkError('failed', `${file} is damaged (not JSON)`);
  }
  // The file steers which sockets and files are used: everything in it must stay inside the target.
  const inside = (p: unknown): boolean => typeof p === 'string' && resolve(target, p).startsWith(target + '/') && resolve(target, p) === p;
  const ok =
    s.version === 1 &&
    typeof s.repository === 'string' &&
    typeof s.snapshot === 'string' &&
    /^[0-9a-f]{64}$/.test(s.snapshot) &&
    Number.isInteger(s.pid) && s.pid > 1 &&
    typeof s.vm?.name === 'string' &&
    inside(s.socket) &&
    Array.isArray(s.disks) && s.disks.length > 0 &&
    s.disks.every((d) => inside(d.path) && d.socket === s.socket && typeof d.exportName === 'string' && d.exportName === safeDiskName(d.exportName) && Number.isSafeInteger(d.size));
  if (!ok) throw new BulwarkError('failed', `${file} is damaged or not Bulwark's`, { hint: 'the VM still runs on its overlays: shut it down and restore again' });
  return s;
}
