// verify-boot: a restore point proven by booting it. Its disks are served from the repository
// (restore/export.ts) to a QEMU with no network device, on throwaway overlays, with the recorded
// machine; the guest agent must answer, then the checks given run inside the guest through it. The VM
// is stopped and everything but a failed boot's console log removed. The result is recorded in this
// host's state folder (BULWARK_STATE_DIR/verify-boot/<repository id>.json), where `snapshots` reads it.
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileNameOf } from '../hypervisors/qemu/command-line.js';
import { bootOnExport } from '../hypervisors/qemu/instant.js';
import { runGuestChecks, waitForAgent, type CheckResult, type GuestCheck } from '../hypervisors/qemu/guest-checks.js';
import { defaultStateDir } from '../repository/freshness.js';
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
}

/** The verify-boot results this host has recorded for a repository, by snapshot id. */
export async function verificationsOf(repositoryId: string): Promise<Map<string, VerifyBootResult>> {
  const file = join(defaultStateDir(), 'verify-boot', `${repositoryId}.json`);
  const doc = await fsp.readFile(file, 'utf8').then((t) => JSON.parse(t) as Record<string, VerifyBootResult>, () => ({}) as Record<string, VerifyBootResult>);
  return new Map(Object.entries(doc));
}

async function record(repositoryId: string, r: VerifyBootResult): Promise<void> {
  const dir = join(defaultStateDir(), 'verify-boot');
  await fsp.mkdir(dir, { recursive: true });
  const all = Object.fromEntries(await verificationsOf(repositoryId));
  all[r.snapshot] = r;
  const tmp = join(dir, `.${repositoryId}.${process.pid}.tmp`);
  await fsp.writeFile(tmp, JSON.stringify(all, null, 1));
  await fsp.rename(tmp, join(dir, `${repositoryId}.json`));
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
      await record(repo.config.id, result).catch(() => undefined);
    }
  } finally {
    await lock.release();
  }
}
