// restore vm --instant: the VM of a restore point boots at once from the repository and its disks
// are copied into the target while it runs (restore/export.ts serves them; hypervisors/qemu/instant.ts
// boots QEMU on overlays backed by the export and streams them). The command returns once every disk
// is local; the VM runs on. The repository is locked shared meanwhile.
import { join, resolve } from 'node:path';
import { bootOnExport } from '../hypervisors/qemu/instant.js';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { findSnapshot, type SnapshotFilter } from '../repository/snapshot.js';
import { safeDiskName } from '../restore/disk.js';
import { exportDisks } from '../restore/export.js';
import { prepareTarget } from '../restore/files.js';
import { BulwarkError } from '../util/errors.js';
import { promises as fsp } from 'node:fs';

export interface InstantRestoreOptions {
  ref: string;
  filter?: SnapshotFilter;
  target: string;
  /** QEMU's -accel: kvm, tcg, or kvm:tcg (KVM where it works). */
  accel: string;
  onEvent?: (e: { phase: 'booted' | 'copying' | 'copied' | 'copy-failed'; message: string; [k: string]: unknown }) => void;
  /** After a failed copy the VM still reads the export: served until this resolves (Ctrl-C, or the VM gone). */
  keepServing: (vmPid: number) => Promise<void>;
}

export interface InstantRestoreResult {
  snapshot: string;
  vm: string;
  pid: number;
  qmp: string;
  qga: string;
  disks: { name: string; path: string; size: number }[];
  /** From the command's start to QEMU running the guest. */
  bootedMs: number;
  /** From the start until every disk was local. */
  copiedMs: number;
  blocksFetched: number;
}

export async function instantRestore(repo: Repository, opts: InstantRestoreOptions): Promise<InstantRestoreResult> {
  const t0 = performance.now();
  const lock = await Lock.acquire(repo, false, 'instant restore');
  try {
    await repo.loadIndex();
    const sn = await findSnapshot(repo, opts.ref, opts.filter);
    if (!sn.vm || !sn.disks?.length) throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is not of a VM: there is no machine to boot`, { hint: "restore disks with 'bulwark restore vm', or serve them with 'bulwark export'" });
    if (sn.vm.folder) throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is a ${sn.vm.folder.hypervisor} machine, which QEMU does not boot here`, { hint: "restore it as a folder with 'bulwark restore vm'" });
    const target = resolve(await prepareTarget(opts.target));
    const disks = sn.disks.map((d) => ({ name: safeDiskName(d.name), size: d.size, path: join(target, `${safeDiskName(d.name)}.qcow2`) }));
    for (const d of disks) {
      if (await fsp.lstat(d.path).then(() => true, () => false)) throw new BulwarkError('failed', `'${d.path}' already exists; restore never overwrites a disk`, { hint: 'choose an empty --target' });
    }
    const socket = join(target, '.bulwark-instant.nbd');
    await fsp.rm(socket, { force: true });
    const exported = await exportDisks(repo, sn.disks, { listen: { path: socket } });
    try {
      // Beside the original: its own name, no UUID of the original's.
      const { uuid: _uuid, ...machine } = sn.vm;
      const vm = await bootOnExport(
        { ...machine, name: `${sn.vm.name}-restored` },
        disks.map((d) => ({ ...d, uri: exported.disks.find((e) => e.name === d.name)!.uri })),
        { dir: target, accel: opts.accel },
      );
      const bootedMs = performance.now() - t0;
      opts.onEvent?.({ phase: 'booted', message: `VM ${sn.vm.name}-restored runs (QEMU pid ${vm.pid}) on disks served from the repository; copying them into ${target}`, pid: vm.pid, qmp: vm.qmp, qga: vm.qga, bootedMs: Math.round(bootedMs) });
      try {
        await vm.copy((done, total) => opts.onEvent?.({ phase: 'copying', message: `copied ${done} of ${total} bytes`, done, total }));
      } catch (err) {
        opts.onEvent?.({ phase: 'copy-failed', message: `${(err as Error).message}; serving the disks until the VM is shut down or this command is stopped` });
        await opts.keepServing(vm.pid);
        throw err;
      } finally {
        await vm.close();
      }
      const copiedMs = performance.now() - t0;
      opts.onEvent?.({ phase: 'copied', message: 'every disk is local: the VM no longer reads the repository' });
      return { snapshot: sn.id, vm: `${sn.vm.name}-restored`, pid: vm.pid, qmp: vm.qmp, qga: vm.qga, disks: disks.map(({ name, path, size }) => ({ name, path, size })), bootedMs: Math.round(bootedMs), copiedMs: Math.round(copiedMs), blocksFetched: exported.blocksFetched() };
    } finally {
      await exported.close();
    }
  } finally {
    await lock.release();
  }
}
