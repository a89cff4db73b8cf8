// The QEMU snapshot provider for the VM backup job: inspection and image fleecing from hypervisors/qemu.
import { cleanupLeftovers, dropStaleBitmaps, isOurNode, prepareFleece } from '../hypervisors/qemu/fleece.js';
import { inspectQemu } from '../hypervisors/qemu/inspect.js';
import { powerActionsOf, shutdownGuest, startGuestAgain, type PowerActions } from '../hypervisors/qemu/power.js';
import { RunGuardian } from '../hypervisors/qemu/run-guardian.js';
import type { QmpClient } from '../protocols/qmp/client.js';
import type { SnapshotProvider } from './backup-vm.js';

// The power actions in force before a stop-mode shutdown, to put back when the guest runs again.
const actionsBefore = new WeakMap<QmpClient, PowerActions>();

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
  guard: async (qmp, opts) => {
    const actions = await powerActionsOf(opts.qmpSocket);
    actionsBefore.set(qmp, actions);
    return RunGuardian.start(qmp, actions, opts);
  },
  shutdown: (qmp, opts) => shutdownGuest(qmp, { ...opts, actions: actionsBefore.get(qmp) ?? { shutdown: 'poweroff', reboot: 'reset' } }),
  startAgain: (qmp, opts) => startGuestAgain(qmp, actionsBefore.get(qmp) ?? { shutdown: 'poweroff', reboot: 'reset' }, { ...opts, settleMs: opts.qgaSocket ? 120_000 : 30_000 }),
};
