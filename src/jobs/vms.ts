// What Bulwark sees of VMs (vm list) and the pre-flight checks that catch what breaks VM backups
// before it does (doctor, and before every VM job). Each finding has a severity and a fix.
import { randomBytes } from 'node:crypto';
import { statfs } from 'node:fs/promises';
import { freemem } from 'node:os';
import { labelOf, type VmEndpoint } from '../hypervisors/registry.js';
import type { DriverFor } from '../hypervisors/drivers.js';
import type { VmDisk, VmDriver, VmInfo } from '../hypervisors/session.js';
import type { BulwarkError } from '../util/errors.js';

export type { VmInfo } from '../hypervisors/session.js';

export type Severity = 'error' | 'warning' | 'info';

export interface Finding {
  severity: Severity;
  check: string;
  /** The VM, disk or path the finding is about. */
  object: string;
  message: string;
  fix?: string;
}

const GiB = 1024 ** 3;
/** File systems the guest agent cannot freeze (no freeze_fs in the kernel driver). */
const UNFREEZABLE = new Set(['vfat', 'msdos', 'exfat', 'fuseblk', 'ntfs', 'ntfs3', 'iso9660', 'squashfs']);

/** Free bytes of the file system holding `dir`. */
async function freeBytes(dir: string): Promise<{ free: number; total: number }> {
  const s = await statfs(dir);
  return { free: s.bavail * s.bsize, total: s.blocks * s.bsize };
}

/** The scratch space a VM's backup may need for its fleecing images (the shadow-storage rule of thumb). */
export function scratchNeeded(diskBytes: number, expectedWrites = 0): number {
  return Math.max(10 * GiB, 0.15 * diskBytes) + 2 * expectedWrites;
}

/** Name of a new incremental base bitmap: it carries its creation time, so its dirty count gives a rate. */
export function newBitmapName(now = Date.now()): string {
  return `bulwark-${Math.floor(now / 1000).toString(16)}-${randomBytes(4).toString('hex')}`;
}

/** Reading speed assumed when estimating how long a backup keeps its point-in-time image open. */
const ASSUMED_READ_BYTES_PER_S = 100 * 1024 ** 2;

/**
 * Bytes the guest is expected to write while a backup of these disks runs: each disk's change rate,
 * measured by Bulwark's dirty bitmap (bytes dirty since the bitmap's creation time), times the time a
 * full read of the disk takes at a modest 100 MiB/s. 0 when no disk has such a bitmap yet.
 */
export function expectedWrites(disks: VmDisk[], now = Date.now()): { bytes: number; bytesPerSecond: number } {
  let bytes = 0;
  let rate = 0;
  for (const d of disks) {
    let best = 0;
    for (const b of d.bitmaps) {
      const m = /^bulwark-([0-9a-f]{8,})-[0-9a-f]+$/.exec(b.name);
      const age = m ? now / 1000 - parseInt(m[1]!, 16) : 0;
      if (b.recording && age >= 60) best = Math.max(best, b.count / age);
    }
    rate += best;
    bytes += best * (d.size / ASSUMED_READ_BYTES_PER_S);
  }
  return { bytes: Math.round(bytes), bytesPerSecond: rate };
}

export interface DoctorOptions {
  scratchDir: string;
  /** Bytes the VM is expected to write during a backup (default: from its measured change rate, see expectedWrites). */
  expectedWrites?: number;
}

export function checkVm(driver: VmDriver, vm: VmInfo, scratch: { free: number }, opts: DoctorOptions): Finding[] {
  const f: Finding[] = [];
  const obj = vm.name;
  if (vm.status !== 'running' && vm.status !== 'paused') {
    f.push({ severity: 'warning', check: 'vm-state', object: obj, message: `VM is ${vm.status}`, fix: 'a VM that is not running is backed up crash-consistent, without the agent' });
  }
  const can = driver.canFleece(vm.qemuVersion);
  if (!can.ok) f.push({ severity: 'error', check: 'qemu-version', object: obj, message: can.why, fix: can.fix });
  if (vm.agent.state === 'not configured') {
    f.push({ severity: 'warning', check: 'agent', object: obj, message: `no guest agent: backups will be crash-consistent (${vm.agent.error ?? 'none given'})`, fix: 'install qemu-guest-agent in the guest, add a virtio-serial port named org.qemu.guest_agent.0 on a unix socket chardev (it is found from there), or pass qga=<socket>' });
  } else if (vm.agent.state === 'not responding') {
    f.push({ severity: 'error', check: 'agent', object: obj, message: `guest agent does not answer: ${vm.agent.error ?? 'no reply'}`, fix: 'start qemu-guest-agent in the guest (systemctl start qemu-guest-agent), or back up with --consistency crash' });
  } else if (vm.agent.version) {
    const guestMajor = Number(vm.agent.version.split('.')[0]);
    const hostMajor = Number(vm.qemuVersion.split('.')[0]);
    if (Number.isFinite(guestMajor) && hostMajor - guestMajor >= 3) {
      f.push({ severity: 'warning', check: 'agent-version', object: obj, message: `guest agent ${vm.agent.version} is much older than the host's QEMU ${vm.qemuVersion}`, fix: 'update qemu-guest-agent in the guest' });
    }
    for (const fs of vm.agent.filesystems ?? []) {
      if (UNFREEZABLE.has(fs.type)) {
        f.push({ severity: 'warning', check: 'freeze', object: `${obj}:${fs.mountpoint}`, message: `${fs.type} file system cannot be frozen; its data will be crash-consistent`, fix: 'keep application data on ext4/xfs/btrfs, or unmount it during backups' });
      }
    }
  }
  let total = 0;
  for (const d of vm.disks) {
    total += d.size;
    if (d.layered) {
      f.push({ severity: 'warning', check: 'leftovers', object: `${obj}/${d.name}`, message: 'a fleecing filter of an interrupted backup is still in the guest\'s write path (harmless, but it keeps copying old data to the scratch folder)', fix: `run 'bulwark backup vm ${obj}' (it removes the filter first)` });
    }
    if (d.format === 'raw') {
      f.push({ severity: 'warning', check: 'bitmaps', object: `${obj}/${d.name}`, message: 'raw disk: no persistent dirty bitmap, every backup reads the whole disk (changed data is still deduplicated)', fix: `convert to qcow2 (qemu-img convert -O qcow2 '${d.file}' …) for incrementals that read only what changed` });
    }
    for (const b of d.bitmaps) {
      if (b.inconsistent) {
        f.push({ severity: 'error', check: 'bitmaps', object: `${obj}/${d.name}`, message: `dirty bitmap '${b.name}' is inconsistent (not stored properly, e.g. after a host crash)`, fix: `remove it (QMP block-dirty-bitmap-remove name=${b.name} on the disk's format node); the next backup reads the whole disk` });
      }
    }
  }
  if (vm.scratchRule === 'full') {
    if (scratch.free < total) {
      f.push({ severity: 'error', check: 'scratch', object: opts.scratchDir, message: `scratch space: ${(scratch.free / GiB).toFixed(1)} GiB free, ${(total / GiB).toFixed(1)} GiB needed (a libvirt backup reserves the disks' whole size before the point in time, so that running out can never pause the guest)`, fix: 'free space there or choose another --scratch-dir on a large file system that supports fallocate (ext4, xfs)' });
    }
    return f;
  }
  const measured = expectedWrites(vm.disks);
  const writes = opts.expectedWrites ?? measured.bytes;
  const need = scratchNeeded(total, writes);
  if (scratch.free < need) {
    const rate = opts.expectedWrites === undefined && measured.bytesPerSecond > 0 ? `, measured change rate ${(measured.bytesPerSecond / 1024 ** 2).toFixed(2)} MiB/s` : '';
    f.push({ severity: 'error', check: 'scratch', object: opts.scratchDir, message: `scratch space for fleecing images: ${(scratch.free / GiB).toFixed(1)} GiB free, ${(need / GiB).toFixed(1)} GiB needed (max(10 GiB, 15% of ${(total / GiB).toFixed(1)} GiB of disks) + 2 × ${(writes / GiB).toFixed(1)} GiB expected writes${rate})`, fix: 'free space there or choose another --scratch-dir on a large, fast file system' });
  }
  return f;
}

export async function doctor(drivers: DriverFor, endpoints: VmEndpoint[], opts: DoctorOptions & { repository?: string }): Promise<{ vms: VmInfo[]; findings: Finding[] }> {
  const findings: Finding[] = [];
  const vms: VmInfo[] = [];
  let scratch = { free: 0, total: 0 };
  try {
    scratch = await freeBytes(opts.scratchDir);
  } catch (err) {
    findings.push({ severity: 'error', check: 'scratch', object: opts.scratchDir, message: `scratch folder is not usable: ${(err as Error).message}`, fix: 'create it, or pass --scratch-dir' });
  }
  if (opts.repository && !/^[a-z0-9]+:/i.test(opts.repository)) {
    try {
      const repo = await freeBytes(opts.repository);
      if (repo.free < Math.max(GiB, 0.05 * repo.total)) {
        findings.push({ severity: 'warning', check: 'repository-space', object: opts.repository, message: `repository disk has ${(repo.free / GiB).toFixed(1)} GiB free`, fix: 'free space, or prune old restore points (forget --prune)' });
      }
    } catch {
      // a missing local repository is reported by the commands that need it
    }
  }
  if (freemem() < 256 * 1024 * 1024) {
    findings.push({ severity: 'warning', check: 'memory', object: 'host', message: `only ${Math.round(freemem() / 1048576)} MiB of host memory free`, fix: 'backups need about 400 MiB; free memory or run fewer jobs at once' });
  }
  for (const e of endpoints) {
    try {
      const vm = await drivers(e).describe(e);
      vms.push(vm);
      findings.push(...checkVm(drivers(e), vm, scratch, opts));
    } catch (err) {
      findings.push({ severity: 'error', check: 'qmp', object: labelOf(e), message: (err as Error).message, ...((err as BulwarkError).hint ? { fix: (err as BulwarkError).hint! } : {}) });
    }
  }
  return { vms, findings };
}
