// verify-boot: a restore point proven by booting it. Its disks are served from the repository
// (restore/export.ts) to a QEMU with no network device, on throwaway overlays, with the recorded
// machine; the guest agent must answer, then the checks given run inside the guest through it. The VM
// is stopped and everything but a failed boot's console log removed. The result is recorded on the
// snapshot as a note in the repository (repository/notes.ts), where `snapshots` reads it.
import { promises as fsp } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileNameOf } from '../hypervisors/qemu/command-line.js';
import { bootOnExport } from '../hypervisors/qemu/instant.js';
import { runGuestChecks, waitForAgent, type CheckResult, type GuestCheck } from '../hypervisors/qemu/guest-checks.js';
import { saveNote, type VerifyBootNote } from '../repository/notes.js';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { findSnapshot, type SnapshotFilter } from '../repository/snapshot.js';
import { safeDiskName } from '../restore/disk.js';
import { exportDisks } from '../restore/export.js';
import { BulwarkError } from '../util/errors.js';

export type { GuestCheck } from '../hypervisors/qemu/guest-checks.js';

export interface VerifyBootOptions {
  ref: string;
  filter?: SnapshotFilter;
  checks: GuestCheck[];
  accel: string;
  /** Until the guest agent answers (default 5 minutes). */
  bootTimeoutMs?: number;
  /** Boot this kernel instead of the recorded one (direct kernel boot). */
  kernel?: string;
  /** Where the throwaway overlays and sockets live (default the system's temporary folder). */
  workDir?: string;
}

export interface VerifyBootResult {
  snapshot: string;
  vm: string;
  ok: boolean;
  booted: boolean;
  /** Why it failed, when it did. */
  reason?: string;
  /** From QEMU's start to the guest agent's first answer. */
  agentMs?: number;
  durationMs: number;
  checks: CheckResult[];
  /** A failed boot's console log, kept. */
  console?: string;
  time: string;
  /** The note recording this result on the snapshot (notes/<id>). */
  note?: string;
}

/** The result as a note on the snapshot: the console log's path is this host's, and stays out. */
function asNote(r: VerifyBootResult): VerifyBootNote {
  return {
    version: 1,
    kind: 'verify-boot',
    snapshot: r.snapshot,
    time: r.time,
    hostname: hostname(),
    ok: r.ok,
    booted: r.booted,
    ...(r.reason ? { reason: r.reason } : {}),
    ...(r.agentMs !== undefined ? { agentMs: r.agentMs } : {}),
    durationMs: r.durationMs,
    checks: r.checks.map((c) => ({ check: c.check, ok: c.ok, ...(c.detail ? { detail: c.detail } : {}) })),
  };
}

export async function verifyBoot(repo: Repository, opts: VerifyBootOptions): Promise<VerifyBootResult> {
  const t0 = performance.now();
  const lock = await Lock.acquire(repo, false, 'verify-boot');
  try {
    await repo.loadIndex();
    const sn = await findSnapshot(repo, opts.ref, opts.filter);
    if (!sn.vm || !sn.disks?.length || sn.vm.folder) throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is not of a QEMU or libvirt VM: there is no machine to boot`, { hint: "see 'bulwark snapshots' for vm: sources" });
    const dir = await fsp.mkdtemp(join(opts.workDir ?? tmpdir(), 'bulwark-verify-'));
    let keepConsole = false;
    const name = `${sn.vm.name}-verify`;
    const result: VerifyBootResult = { snapshot: sn.id, vm: sn.vm.name, ok: false, booted: false, durationMs: 0, checks: [], time: new Date().toISOString() };
    try {
      const socket = join(dir, 'nbd.sock');
      const exported = await exportDisks(repo, sn.disks, { listen: { path: socket } });
      try {
        const { uuid: _uuid, ...machine } = sn.vm;
        const boot = opts.kernel ? { ...sn.vm.boot, kernel: opts.kernel } : sn.vm.boot;
        const disks = sn.disks.map((d) => ({ name: safeDiskName(d.name), size: d.size, path: join(dir, `${safeDiskName(d.name)}.qcow2`), socket, exportName: safeDiskName(d.name) }));
        let vm;
        try {
          vm = await bootOnExport({ ...machine, name, ...(boot ? { boot } : {}) }, disks, { dir, accel: opts.accel, isolated: true });
        } catch (err) {
          result.reason = `QEMU did not start: ${(err as Error).message}`;
          keepConsole = true;
          return result;
        }
        try {
          const agentMs = await waitForAgent(vm.qga, Date.now() + (opts.bootTimeoutMs ?? 300_000), () => vm.alive());
          if (agentMs === undefined) {
            result.reason = vm.alive() ? `the guest agent did not answer within ${Math.round((opts.bootTimeoutMs ?? 300_000) / 1000)} s` : 'the VM stopped before its guest agent answered';
            keepConsole = true;
            return result;
          }
          result.booted = true;
          result.agentMs = Math.round(agentMs);
          result.checks = await runGuestChecks(vm.qga, opts.checks, 60_000);
          const bad = result.checks.filter((c) => !c.ok);
          result.ok = bad.length === 0;
          if (!result.ok) result.reason = `${bad.length} check(s) failed: ${bad.map((c) => `${c.check} (${c.detail})`).join('; ')}`;
          return result;
        } finally {
          await vm.quit();
          await vm.close();
        }
      } finally {
        await exported.close();
      }
    } finally {
      result.durationMs = Math.round(performance.now() - t0);
      if (keepConsole) {
        result.console = join(dir, `${fileNameOf(name)}-console.log`);
        for (const f of await fsp.readdir(dir)) if (!f.endsWith('-console.log') && !f.endsWith('-qemu.log')) await fsp.rm(join(dir, f), { force: true });
      } else await fsp.rm(dir, { recursive: true, force: true });
      // Recorded on the snapshot whatever the outcome: a restore point that does not boot is news.
      result.note = await saveNote(repo, asNote(result));
    }
  } finally {
    await lock.release();
  }
}
