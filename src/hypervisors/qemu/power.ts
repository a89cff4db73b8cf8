// Backup mode `stop` (docs/architecture.md, "The VM path"): a clean shutdown of the guest, the point in time taken while it is
// down, and the same QEMU process starting it again, so nothing outside Bulwark has to restart it.
//
// QEMU normally exits when its guest powers off. `set-action shutdown=pause` (QEMU 6.0+) makes it
// stop the vCPUs instead, keeping the process, its sockets and its devices; `system_reset` + `cont`
// then boot the guest again (with `reboot=reset`: under -no-reboot a reset would be a shutdown).
// QMP cannot tell the actions in force, so they are read from QEMU's command line (/proc), and put
// back as they were once the guest runs.
import { readdir, readFile } from 'node:fs/promises';
import type { QmpClient } from '../../protocols/qmp/client.js';
import { QgaClient } from '../../protocols/qga/client.js';
import { BulwarkError } from '../../util/errors.js';

export interface PowerActions {
  shutdown: 'poweroff' | 'pause';
  reboot: 'reset' | 'shutdown';
}

/** The shutdown/reboot actions of a QEMU command line (-no-shutdown, -no-reboot, -action). */
export function actionsOfCommandLine(args: string[]): PowerActions {
  const a: PowerActions = { shutdown: 'poweroff', reboot: 'reset' };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!.replace(/^--/, '-');
    if (arg === '-no-shutdown') a.shutdown = 'pause';
    else if (arg === '-no-reboot') a.reboot = 'shutdown';
    else if (arg === '-action' && args[i + 1]) {
      for (const kv of args[++i]!.split(',')) {
        const [k, v] = kv.split('=');
        if (k === 'shutdown' && (v === 'poweroff' || v === 'pause')) a.shutdown = v;
        if (k === 'reboot' && (v === 'reset' || v === 'shutdown')) a.reboot = v;
      }
    }
  }
  return a;
}

/** The actions of the QEMU process serving `qmpSocket`, from its command line; defaults when not found. */
export async function powerActionsOf(qmpSocket: string): Promise<PowerActions> {
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const raw = await readFile(`/proc/${pid}/cmdline`).catch(() => undefined);
    if (!raw || !raw.includes(qmpSocket)) continue;
    const args = raw.toString('utf8').split('\0');
    if (!/qemu/.test(args[0] ?? '') && !args.some((a) => /qemu-system/.test(a))) continue;
    return actionsOfCommandLine(args);
  }
  return { shutdown: 'poweroff', reboot: 'reset' };
}

export interface ShutdownOptions {
  /** The actions to put back afterwards (powerActionsOf). */
  actions: PowerActions;
  /** The guest agent's socket: guest-shutdown is asked for first, ACPI power button otherwise. */
  qgaSocket?: string;
  timeoutMs: number;
}

async function status(qmp: QmpClient): Promise<string> {
  return (await qmp.execute<{ status: string }>('query-status')).status;
}

/** Shuts the guest down cleanly and leaves QEMU paused in the `shutdown` state; resolves with how it was asked. */
export async function shutdownGuest(qmp: QmpClient, opts: ShutdownOptions): Promise<'agent' | 'acpi'> {
  if ((await status(qmp)) !== 'running') throw new BulwarkError('failed', `the VM is ${await status(qmp)}, not running: --mode stop shuts down running VMs only`);
  await qmp.execute('set-action', { shutdown: 'pause' });
  let via: 'agent' | 'acpi' = 'acpi';
  try {
    if (opts.qgaSocket) {
      const qga = await QgaClient.connect(opts.qgaSocket, { timeoutMs: 5000, commandTimeoutMs: 5000 }).catch(() => undefined);
      if (qga) {
        try {
          await qga.requestShutdown('powerdown');
          via = 'agent';
        } catch {
          // disabled or failing in the guest: the power button below
        } finally {
          await qga.close().catch(() => undefined);
        }
      }
    }
    if (via === 'acpi') await qmp.execute('system_powerdown');
    const end = Date.now() + opts.timeoutMs;
    for (;;) {
      const s = await status(qmp);
      if (s === 'shutdown') return via;
      if (Date.now() > end) {
        throw new BulwarkError('timeout', `the guest did not shut down within ${Math.round(opts.timeoutMs / 1000)} s (asked through the ${via === 'agent' ? 'guest agent' : 'ACPI power button'}); it is ${s}`, {
          hint: 'make the guest act on guest-shutdown or the power button, raise --stop-timeout, or use --mode snapshot. If it finishes shutting down later, QEMU exits as usual',
        });
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (err) {
    await qmp.execute('set-action', { shutdown: opts.actions.shutdown }).catch(() => undefined);
    throw err;
  }
}

/**
 * Boots a shut-down guest again in the same QEMU process (after shutdownGuest, or a guardian taking
 * over): reset and continue, with the VM's own shutdown action put back whatever happens. Reboot
 * stays `reset` until settleRebootAction.
 */
export async function restartGuest(qmp: QmpClient, actions: PowerActions): Promise<void> {
  try {
    await qmp.execute('set-action', { reboot: 'reset' });
    await qmp.execute('system_reset');
    // The reset is carried out by QEMU's main loop after the command returns: until then `cont`
    // is refused ("Resetting the Virtual Machine is required").
    for (let i = 0; ; i++) {
      try {
        await qmp.execute('cont');
        break;
      } catch (err) {
        if (i >= 100 || !/reset/i.test((err as Error).message)) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  } finally {
    await qmp.execute('set-action', { shutdown: actions.shutdown }).catch(() => undefined);
  }
}

/**
 * Puts the VM's reboot action back once the restarted guest is up (its agent answers, or after
 * `settleMs` without one): firmware may reset the machine while it starts, and under -no-reboot that
 * reset would end QEMU.
 */
export async function settleRebootAction(qmp: QmpClient, actions: PowerActions, opts: { qgaSocket?: string; settleMs?: number } = {}): Promise<void> {
  if (actions.reboot === 'reset') return;
  const end = Date.now() + (opts.settleMs ?? 120_000);
  while (Date.now() < end) {
    if (opts.qgaSocket) {
      const qga = await QgaClient.connect(opts.qgaSocket, { timeoutMs: 2000, commandTimeoutMs: 2000 }).catch(() => undefined);
      const up = qga ? await qga.ping().then(() => true, () => false) : false;
      await qga?.close().catch(() => undefined);
      if (up) break;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  await qmp.execute('set-action', { reboot: actions.reboot }).catch(() => undefined);
}
