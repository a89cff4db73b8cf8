// Instant restore's QEMU side (docs/architecture.md, "Instant restore"): the VM a restore point
// recorded, started at once on one qcow2 overlay per disk whose backing file is the disk's NBD export
// (restore/export.ts), then each overlay filled from its backing while the guest runs (QEMU's
// block-stream). When a stream completes QEMU drops the backing file from the overlay's header and
// graph in one step: the disk is local, whole, and no longer reads the export. A stream that fails
// leaves the overlay with its backing: the VM keeps running on the export — never on a half-copied
// disk — and the caller is told.
//
// The export may go away mid-copy (this process killed, the host's Bulwark upgraded). QEMU's NBD
// client then holds requests for RECONNECT_DELAY_S and keeps reconnecting after; a copy that could
// not read pauses (on-error=stop) and so does a guest (rerror=stop), instead of failing. Serving the
// export again on the same socket and attaching to the VM (attachInstant) resumes both.
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../protocols/qmp/client.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import { processAlive } from '../../util/process-temp.js';
import { createOverlays, type CopyOptions, type InstantDisk, type InstantMachine } from '../instant-vm.js';
import { fileNameOf, qemuArgs } from './command-line.js';

export interface InstantVm extends InstantMachine {
  pid: number;
  qmp: string;
  qga: string;
  console: string;
  /** Ends the VM (QMP quit) and waits for QEMU to exit. */
  quit(): Promise<void>;
  /** Whether QEMU still runs, now. */
  alive(): boolean;
}

interface Job {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

interface BlockJob {
  device: string;
  'io-status'?: string;
}

interface BlockDevice {
  inserted?: { 'node-name'?: string; backing_file?: string };
}

const JOB_PREFIX = 'bulwark-copy';

function paths(vm: VmConfig, dir: string): { base: string; qmp: string; qga: string; console: string } {
  const base = join(dir, fileNameOf(vm.name));
  return { base, qmp: `${base}.qmp`, qga: `${base}.qga`, console: `${base}-console.log` };
}

export async function bootOnExport(vm: VmConfig, disks: InstantDisk[], opts: { dir: string; accel: string; /** verify-boot: no network device at all. */ isolated?: boolean }): Promise<InstantVm> {
  await createOverlays(disks);
  const p = paths(vm, opts.dir);
  const args = [
    '-accel', opts.accel,
    ...qemuArgs(opts.isolated ? { ...vm, nics: [] } : vm, disks.map((d) => ({ name: d.name, path: d.path, format: 'qcow2', readError: 'stop' as const })), { dir: opts.dir }),
    ...(opts.isolated ? ['-nic', 'none'] : []),
    '-display', 'none',
    '-serial', `file:${p.console}`,
    '-pidfile', `${p.base}.pid`,
  ];
  // The VM outlives this process: its own session, its output in a log beside the disks.
  const log = openSync(`${p.base}-qemu.log`, 'a');
  const child = spawn('qemu-system-x86_64', args, { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  child.unref();
  const qmp = await Promise.race([
    QmpClient.connect(p.qmp, { retryForMs: 30_000, commandTimeoutMs: 30_000 }),
    exited.then((code) => {
      throw new BulwarkError('failed', `QEMU exited (${code}) before the VM started: ${readFileSync(`${p.base}-qemu.log`, 'utf8').trim().split('\n').slice(-3).join(' ') || 'no message'}`);
    }),
  ]);
  return instantVm(qmp, child.pid!, vm, disks, opts.dir);
}

/** The VM an earlier instant restore started (its QEMU still running), to go on copying its disks. */
export async function attachInstant(vm: VmConfig, pid: number, disks: InstantDisk[], dir: string): Promise<InstantVm> {
  const p = paths(vm, dir);
  if (!processAlive(pid)) throw new BulwarkError('failed', `the restored VM (QEMU pid ${pid}) is no longer running`, { hint: `its disks in ${dir} still need the export: remove them and run the instant restore again` });
  const qmp = await QmpClient.connect(p.qmp, { timeoutMs: 10_000, commandTimeoutMs: 30_000 }).catch((err: Error) => {
    throw new BulwarkError('failed', `cannot reach the restored VM's monitor ${p.qmp}: ${err.message}`);
  });
  return instantVm(qmp, pid, vm, disks, dir);
}

function instantVm(qmp: QmpClient, pid: number, vm: VmConfig, disks: InstantDisk[], dir: string): InstantVm {
  const p = paths(vm, dir);
  const jobs = async (): Promise<Job[]> => (await qmp.execute<Job[]>('query-jobs')).filter((j) => j.id.startsWith(JOB_PREFIX));
  return {
    pid,
    qmp: p.qmp,
    qga: p.qga,
    console: p.console,
    where: { pid, qmp: p.qmp, qga: p.qga, console: p.console },
    async copy(opts: CopyOptions = {}) {
      const speed = opts.speed ?? 0;
      const devices = await qmp.execute<BlockDevice[]>('query-block');
      const existing = await jobs();
      // Node names disk0, disk1, … are qemuArgs'.
      for (const [i] of disks.entries()) {
        const id = `${JOB_PREFIX}${i}`;
        const job = existing.find((j) => j.id === id);
        if (job?.status === 'concluded') await qmp.execute('job-dismiss', { id });
        if (job && job.status !== 'concluded') {
          await qmp.execute('block-job-set-speed', { device: id, speed });
          continue;
        }
        // Already local (an earlier copy finished): nothing to stream.
        if (!devices.find((d) => d.inserted?.['node-name'] === `disk${i}`)?.inserted?.backing_file) continue;
        await qmp.execute('block-stream', { 'job-id': id, device: `disk${i}`, 'auto-finalize': true, 'auto-dismiss': false, 'on-error': 'stop', speed });
      }
      const failed: string[] = [];
      const giveUpAfter = opts.giveUpAfterMs ?? 120_000;
      let stalledSince: number | undefined;
      let nextRetry = 0;
      for (;;) {
        const current = await jobs();
        const total = current.reduce((n, j) => n + j['total-progress'], 0);
        opts.onProgress?.(current.reduce((n, j) => n + j['current-progress'], 0), total);
        const concluded = current.filter((j) => j.status === 'concluded');
        for (const j of concluded) {
          if (j.error) failed.push(`${disks[Number(j.id.slice(JOB_PREFIX.length))]!.name}: ${j.error}`);
          await qmp.execute('job-dismiss', { id: j.id });
        }
        if (concluded.length === current.length) break;
        // A job paused by a read error, or a guest paused by one: the export was out of reach.
        const errored = (await qmp.execute<BlockJob[]>('query-block-jobs')).filter((j) => j.device.startsWith(JOB_PREFIX) && j['io-status'] !== undefined && j['io-status'] !== 'ok');
        const status = (await qmp.execute<{ status: string }>('query-status')).status;
        if (errored.length > 0 || status === 'io-error') {
          const now = Date.now();
          if (stalledSince === undefined) {
            stalledSince = now;
            opts.onStall?.(`${errored.length > 0 ? 'the copy' : 'the guest'} could not read the export and is paused; retrying`);
          }
          if (now - stalledSince > giveUpAfter) {
            for (const j of errored) await qmp.execute('block-job-cancel', { device: j.device, force: true }).catch(() => undefined);
            failed.push(`the export could not be read for ${Math.round(giveUpAfter / 1000)} s`);
            // Cancelled jobs conclude; the loop dismisses them and ends.
          } else if (now >= nextRetry) {
            for (const j of errored) await qmp.execute('job-resume', { id: j.device }).catch(() => undefined);
            if (status === 'io-error') await qmp.execute('cont').catch(() => undefined);
            nextRetry = now + 2000;
          }
        } else stalledSince = undefined;
        await new Promise((r) => setTimeout(r, 200));
      }
      if (failed.length > 0) {
        throw new BulwarkError('failed', `copying the disks failed (${failed.join('; ')}); the VM keeps running on the export, whose disks are whole`, {
          hint: `keep this command running until the VM is shut down, or fix the cause and go on copying with 'bulwark restore vm --instant --resume --target ${dir}'`,
        });
      }
    },
    async quit() {
      if (!processAlive(pid)) return;
      await qmp.execute('quit').catch(() => undefined);
      const end = Date.now() + 10_000;
      while (processAlive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      if (processAlive(pid)) process.kill(pid, 'SIGKILL');
      while (processAlive(pid)) await new Promise((r) => setTimeout(r, 20));
    },
    alive: () => processAlive(pid),
    running: () => Promise.resolve(processAlive(pid)),
    async close() {
      await qmp.close();
    },
  };
}
