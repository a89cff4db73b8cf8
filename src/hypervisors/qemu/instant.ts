// Instant restore's QEMU side (docs/architecture.md, "Instant restore"): the VM a restore point
// recorded, started at once on one qcow2 overlay per disk whose backing file is the disk's NBD export
// (restore/export.ts), then each overlay filled from its backing while the guest runs (QEMU's
// block-stream). When a stream completes QEMU drops the backing file from the overlay's header and
// graph in one step: the disk is local, whole, and no longer reads the export. A stream that fails
// leaves the overlay with its backing: the VM keeps running on the export — never on a half-copied
// disk — and the caller is told.
import { execFile, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { QmpClient } from '../../protocols/qmp/client.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import { fileNameOf, qemuArgs } from './command-line.js';

const run = promisify(execFile);

export interface InstantDisk {
  name: string;
  size: number;
  /** The disk's NBD export (nbd+unix:///vda?socket=…). */
  uri: string;
  /** The local qcow2 image the VM runs on, filled while it runs. */
  path: string;
}

export interface InstantVm {
  pid: number;
  qmp: string;
  qga: string;
  console: string;
  /** Copies every disk into its local image; resolves when none reads the export any more. */
  copy(onProgress?: (done: number, total: number) => void): Promise<void>;
  /** Ends the VM (QMP quit) and waits for QEMU to exit. */
  quit(): Promise<void>;
  /** Whether QEMU still runs. */
  running(): boolean;
  close(): Promise<void>;
}

interface Job {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

export async function bootOnExport(vm: VmConfig, disks: InstantDisk[], opts: { dir: string; accel: string; /** verify-boot: no network device at all. */ isolated?: boolean }): Promise<InstantVm> {
  for (const d of disks) {
    // -u: the export is not opened here; QEMU opens it when the VM starts.
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', d.uri, '-F', 'raw', d.path, String(d.size)]).catch((err: { stderr?: string }) => {
      throw new BulwarkError('failed', `cannot create '${d.path}': ${err.stderr?.trim() ?? String(err)}`);
    });
  }
  const base = join(opts.dir, fileNameOf(vm.name));
  const args = [
    '-accel', opts.accel,
    ...qemuArgs(opts.isolated ? { ...vm, nics: [] } : vm, disks.map((d) => ({ name: d.name, path: d.path, format: 'qcow2' })), { dir: opts.dir }),
    ...(opts.isolated ? ['-nic', 'none'] : []),
    '-display', 'none',
    '-serial', `file:${base}-console.log`,
    '-pidfile', `${base}.pid`,
  ];
  // The VM outlives this process: its own session, its output in a log beside the disks.
  const log = openSync(`${base}-qemu.log`, 'a');
  const child = spawn('qemu-system-x86_64', args, { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  let alive = true;
  const exited = new Promise<number>((resolve) =>
    child.on('exit', (code) => {
      alive = false;
      resolve(code ?? 1);
    }),
  );
  child.unref();
  const qmp = await Promise.race([
    QmpClient.connect(`${base}.qmp`, { retryForMs: 30_000, commandTimeoutMs: 30_000 }),
    exited.then((code) => {
      throw new BulwarkError('failed', `QEMU exited (${code}) before the VM started: ${readFileSync(`${base}-qemu.log`, 'utf8').trim().split('\n').slice(-3).join(' ') || 'no message'}`);
    }),
  ]);
  return {
    pid: child.pid!,
    qmp: `${base}.qmp`,
    qga: `${base}.qga`,
    console: `${base}-console.log`,
    async copy(onProgress) {
      // Node names disk0, disk1, … are qemuArgs'.
      for (const [i] of disks.entries()) {
        await qmp.execute('block-stream', { 'job-id': `bulwark-copy${i}`, device: `disk${i}`, 'auto-finalize': true, 'auto-dismiss': false });
      }
      const failed: string[] = [];
      for (;;) {
        const jobs = (await qmp.execute<Job[]>('query-jobs')).filter((j) => j.id.startsWith('bulwark-copy'));
        const total = jobs.reduce((n, j) => n + j['total-progress'], 0);
        onProgress?.(jobs.reduce((n, j) => n + j['current-progress'], 0), total);
        const concluded = jobs.filter((j) => j.status === 'concluded');
        for (const j of concluded) {
          if (j.error) failed.push(`${disks[Number(j.id.slice('bulwark-copy'.length))]!.name}: ${j.error}`);
          await qmp.execute('job-dismiss', { id: j.id });
        }
        if (concluded.length === jobs.length) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      if (failed.length > 0) {
        throw new BulwarkError('failed', `copying the disks failed (${failed.join('; ')}); the VM keeps running on the export, whose disks are whole`, {
          hint: 'keep this command running until the VM is shut down, or fix the cause and copy again with the VM running',
        });
      }
    },
    async quit() {
      if (!alive) return;
      await qmp.execute('quit').catch(() => undefined);
      const end = Date.now() + 10_000;
      while (alive && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      if (alive) child.kill('SIGKILL');
      await exited;
    },
    running: () => alive,
    async close() {
      await qmp.close();
    },
  };
}
