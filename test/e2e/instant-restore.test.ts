// restore vm --instant: the test guest's restore point boots at once from the repository (QEMU on
// qcow2 overlays backed by Bulwark's NBD export), its disk is copied locally while it runs, and the
// command returns when the VM no longer reads the repository. Witnesses: the restored guest's own
// agent, qemu-img (no backing file left), e2fsck and the guest writer's records on the copied disk.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QgaClient } from '../../src/protocols/qga/client.js';
import { jsonResult, runCli, startCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { ensureGuestBuilt, makeDataDisk, readFileFromExt4Image, startGuest, verifyWriterLog, type RunningGuest } from '../guest/guest.js';

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let guest: RunningGuest | undefined;
let restoredPid = 0;

beforeAll(async () => {
  tmp = await tempDir('bw-inst-');
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'instant' };
  expect((await runCli(['init'], { env })).code).toBe(0);
}, 120_000);

afterAll(async () => {
  await guest?.stop().catch(() => undefined);
  if (restoredPid) {
    try {
      process.kill(restoredPid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await tmp?.cleanup();
});

async function agentAnswers(socket: string, deadline: number): Promise<void> {
  for (;;) {
    try {
      const qga = await QgaClient.connect(socket, { timeoutMs: 2000 });
      try {
        await qga.ping();
        return;
      } finally {
        await qga.close();
      }
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe('instant restore', () => {
  it('boots the restore point at once, copies its disk while it runs, and leaves it running on the local copy', async () => {
    const img = await ensureGuestBuilt();
    const disk = `${tmp.path}/web.qcow2`;
    await makeDataDisk(disk, { sizeMiB: 128, format: 'qcow2', fill: img.sampleDir });
    guest = await startGuest({ dir: `${tmp.path}/g`, name: 'inst01', disks: [{ path: disk, format: 'qcow2' }], accel: 'tcg', writer: { kibPerSec: 64 } });
    const originalBootMs = guest.bootToAgentMs;
    await new Promise((r) => setTimeout(r, 2000));
    const b = await runCli(['backup', 'vm', 'inst01', '--connect', `qmp:${guest.qmpSocket},qga=${guest.qgaSocket},name=inst01`, '--scratch-dir', tmp.path, '--scratch-min', '0', '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const snapshot = jsonResult<{ results: { snapshot: string }[] }>(b).results[0]!.snapshot;
    const backedUp = verifyWriterLog(await readFileFromExt4Image(await restoredRaw(snapshot), '/log.txt')).records;
    await guest.stop();
    guest = undefined;

    const target = `${tmp.path}/r`;
    const t0 = performance.now();
    const run = await startCli<{ phase: string; pid: number; qga: string; qmp: string }>(['restore', 'vm', snapshot, '--instant', '--target', target, '--accel', 'tcg'], { env, readyTimeoutMs: 120_000 });
    expect(run.ready.phase).toBe('booted');
    restoredPid = run.ready.pid;
    await agentAnswers(run.ready.qga, Date.now() + 120_000);
    const toAgentMs = performance.now() - t0;
    expect(await run.exited, run.output().stderr).toBe(0);
    const summary = jsonResult<{ bootedMs: number; copiedMs: number; disks: { name: string; path: string }[] }>({ code: 0, ...run.output() });
    console.log(`instant restore: agent answered ${(toAgentMs / 1000).toFixed(1)} s after the command (original image: ${(originalBootMs / 1000).toFixed(1)} s from QEMU start); disk local after ${(summary.copiedMs / 1000).toFixed(1)} s`);
    const local = summary.disks[0]!.path;
    expect(local).toBe(`${target}/vda.qcow2`);
    // QEMU's own view of the file: no backing file any more, and the repository's export is gone.
    expect(JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', local]).toString())['backing-filename']).toBeUndefined();
    // The VM runs on: its agent still answers with the export closed.
    await agentAnswers(run.ready.qga, Date.now() + 30_000);

    // Shut it down through its agent, then the copied disk is checked whole.
    const qga = await QgaClient.connect(run.ready.qga, { timeoutMs: 5000 });
    // QEMU may exit before the agent's connection has closed cleanly: the process ending below is the witness.
    await qga.requestShutdown().catch(() => undefined);
    await qga.close().catch(() => undefined);
    const gone = Date.now() + 120_000;
    while (alive(restoredPid)) {
      expect(Date.now(), 'the restored VM shut down').toBeLessThan(gone);
      await new Promise((r) => setTimeout(r, 250));
    }
    restoredPid = 0;
    const raw = `${tmp.path}/local.raw`;
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', local, raw]);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    const log = verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt'));
    expect(log.torn, log.firstBad).toBe(0);
    // The backup's records, then the restored guest's own.
    expect(log.records).toBeGreaterThan(backedUp);
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function restoredRaw(snapshot: string): Promise<string> {
  const dir = `${tmp.path}/full`;
  const r = await runCli(['restore', 'vm', snapshot, '--target', dir], { env });
  expect(r.code, r.stderr).toBe(0);
  return `${dir}/vda.raw`;
}
