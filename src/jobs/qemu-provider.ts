// The QEMU snapshot provider for the VM backup job: inspection and image fleecing from hypervisors/qemu.
import { cleanupLeftovers, dropStaleBitmaps, isOurNode, prepareFleece } from '../hypervisors/qemu/fleece.js';
import { inspectQemu } from '../hypervisors/qemu/inspect.js';
import type { SnapshotProvider } from './backup-vm.js';

export const qemuProvider: SnapshotProvider = {
  cleanupLeftovers: (qmp, scratchDir) => cleanupLeftovers(qmp, scratchDir),
  dropStaleBitmaps: (qmp, disk, base) =>
    dropStaleBitmaps(
      qmp,
      disk.bitmapNode,
      disk.bitmaps.map((b) => b.name),
      base,
    ),
  inspect: (qmp) => inspectQemu(qmp, isOurNode),
  prepare: (qmp, disks, opts) => prepareFleece(qmp, disks, opts),
};
