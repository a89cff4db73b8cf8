// restore vm --instant and verify-boot: the test guest's live restore point boots at once from the
// repository (QEMU on qcow2 overlays backed by Bulwark's NBD export), its disk is copied locally while
// it runs, and the command returns when the VM no longer reads the repository; verify-boot boots it
// isolated and runs checks inside. Witnesses: the restored guest's own agent, qemu-img (no backing file
// left), e2fsck and the guest writer's records on the copied disk, QEMU's and the guest's console.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QgaClient } from '../../src/protocols/qga/client.js';
import { QmpClient } from '../../src/protocols/qmp/client.js';
import { jsonResult, runCli, startCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { ensureGuestBuilt, makeDataDisk, readFileFromExt4Image, readHookLog, startGuest, verifyWriterLog, type RunningGuest } from '../guest/guest.js';

const MiB = 1024 * 1024;
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

let snapshot: string;
let backedUp: number;
let originalBootMs: number;

describe('booting restore points', () => {
  beforeAll(async () => {
    const img = await ensureGuestBuilt();
    const disk = `${tmp.path}/web.qcow2`;
    await makeDataDisk(disk, { sizeMiB: 128, format: 'qcow2', fill: img.sampleDir });
    // A second disk the guest never mounts: its copy must come back byte for byte, holes included.
    const extra = `${tmp.path}/extra.raw`;
    execFileSync('truncate', ['-s', '64M', extra]);
    for (const seek of [0, 7, 20, 63]) execFileSync('dd', ['if=/dev/urandom', `of=${extra}`, 'bs=1M', 'count=1', `seek=${seek}`, 'conv=notrunc'], { stdio: 'pipe' });
    guest = await startGuest({ dir: `${tmp.path}/g`, name: 'inst01', disks: [{ path: disk, format: 'qcow2' }, { path: extra, format: 'raw' }], accel: 'tcg', writer: { kibPerSec: 64 } });
    originalBootMs = guest.bootToAgentMs;
    await new Promise((r) => setTimeout(r, 2000));
    const b = await runCli(['backup', 'vm', 'inst01', '--connect', `qmp:${guest.qmpSocket},qga=${guest.qgaSocket},name=inst01`, '--scratch-dir', tmp.path, '--scratch-min', '0', '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    snapshot = jsonResult<{ results: { snapshot: string }[] }>(b).results[0]!.snapshot;
    backedUp = verifyWriterLog(await readFileFromExt4Image(await restoredRaw(snapshot), '/log.txt')).records;
  }, 300_000);

  it('a single file out of the live restore point is what the guest had at the freeze point; --to-guest writes it back into the running guest', async () => {
    // The witness: debugfs reading the same file out of the whole restored disk.
    const whole = await readFileFromExt4Image(`${tmp.path}/full/vda.raw`, '/log.txt');
    const out = `${tmp.path}/one`;
    const r = await runCli(['restore', `${snapshot}:/vda/fs/log.txt`, '--target', out, '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const single = await readFile(`${out}/log.txt`);
    expect(single.equals(whole)).toBe(true);
    expect(verifyWriterLog(single).torn).toBe(0);
    expect(readHookLog(await readFileFromExt4Image(`${tmp.path}/full/vda.raw`, '/hooks.log')).last).toBe('freeze');

    const connect = `qmp:${guest!.qmpSocket},qga=${guest!.qgaSocket},name=inst01`;
    const w = await runCli(['restore', `${snapshot}:/vda/fs/log.txt`, '--to-guest', 'inst01:/data/restored/', '--connect', connect, '--json'], { env });
    expect(w.code, w.stdout + w.stderr).toBe(0);
    // The guest's own agent reads it back.
    const qga = await QgaClient.connect(guest!.qgaSocket, { timeoutMs: 10_000 });
    try {
      expect((await qga.readFile('/data/restored/log.txt')).equals(whole)).toBe(true);
    } finally {
      await qga.close();
    }
    const again = await runCli(['restore', `${snapshot}:/vda/fs/log.txt`, '--to-guest', 'inst01:/data/restored/', '--connect', connect], { env });
    expect(again.code).toBe(3);
    expect(again.stdout + again.stderr).toMatch(/already exists in the guest; restore never overwrites without --overwrite/);
    expect((await runCli(['restore', `${snapshot}:/vda/fs/log.txt`, '--to-guest', 'inst01:/data/restored/', '--connect', connect, '--overwrite'], { env })).code).toBe(0);
    await guest!.stop();
    guest = undefined;
  });

  it('restore vm --instant boots the restore point at once, copies its disk while it runs, and leaves it running on the local copy', async () => {
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
    // QEMU's own view of the files: no backing file any more, and the repository's export is gone.
    for (const d of summary.disks) expect(backingOf(d.path)).toBeUndefined();
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
    // The disk the guest does not touch is what a plain restore gives (compared once QEMU has
    // written its image metadata out, at exit).
    execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', `${target}/vdb.qcow2`, `${tmp.path}/full/vdb.raw`]);
    const raw = `${tmp.path}/local.raw`;
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', local, raw]);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    const log = verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt'));
    expect(log.torn, log.firstBad).toBe(0);
    // The backup's records, then the restored guest's own.
    expect(log.records).toBeGreaterThan(backedUp);
  });

  it('an instant restore whose command is killed mid-copy pauses instead of failing, and --resume finishes it', async () => {
    const target = `${tmp.path}/k`;
    const run = await startCli<{ phase: string; pid: number; qga: string; qmp: string }>(['restore', 'vm', snapshot, '--instant', '--target', target, '--accel', 'tcg', '--copy-limit', '2M'], { env, readyTimeoutMs: 120_000 });
    restoredPid = run.ready.pid;
    // The copy is under way: the local image grows (QEMU's monitor takes one client, the command's).
    const start = allocated(`${target}/vdb.qcow2`);
    await until(async () => allocated(`${target}/vdb.qcow2`) > start + MiB, 60_000, 'the copy started');
    expect(await run.stop('SIGKILL')).not.toBe(0);
    const qmp = await QmpClient.connect(run.ready.qmp, { timeoutMs: 10_000 });
    try {
      // QEMU's view: after its reconnect delay the copy is paused on the lost export, not failed.
      await until(async () => (await qmp.execute<{ 'io-status'?: string }[]>('query-block-jobs')).some((j) => j['io-status'] === 'failed'), 90_000, 'the copy paused on the lost export');
      expect((await qmp.execute<{ status: string; error?: string }[]>('query-jobs')).every((j) => j.status !== 'concluded')).toBe(true);
      expect(backingOf(`${target}/vda.qcow2`)).toMatch(/nbd/);
    } finally {
      await qmp.close();
    }
    const resumed = await runCli(['restore', 'vm', '--instant', '--resume', '--target', target, '--json'], { env, timeoutMs: 300_000 });
    expect(resumed.code, resumed.stdout + resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/"phase":"attached"/);
    for (const d of ['vda', 'vdb']) expect(backingOf(`${target}/${d}.qcow2`)).toBeUndefined();
    await agentAnswers(run.ready.qga, Date.now() + 60_000);
    // Nothing left to resume.
    const again = await runCli(['restore', 'vm', '--instant', '--resume', '--target', target], { env });
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/no instant restore to resume/);
    // QEMU quits through its monitor, writing its image metadata out; then the untouched disk compares.
    const q = await QmpClient.connect(run.ready.qmp, { timeoutMs: 10_000 });
    await q.execute('quit').catch(() => undefined);
    await q.close().catch(() => undefined);
    await until(async () => !alive(restoredPid), 60_000, 'QEMU exited');
    restoredPid = 0;
    execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', `${target}/vdb.qcow2`, `${tmp.path}/full/vdb.raw`]);
  });

  it('verify-boot passes on the good restore point with its checks, fails a check that does not hold, and a damaged kernel with its console log', async () => {
    const good = await runCli(['verify-boot', snapshot, '--accel', 'tcg', '--check', 'test -s /data/log.txt', '--file', '/data/hooks.log', '--json'], { env, timeoutMs: 300_000 });
    expect(good.code, good.stdout + good.stderr).toBe(0);
    const r = jsonResult<{ ok: boolean; booted: boolean; agentMs: number; checks: { check: string; ok: boolean }[] }>(good);
    expect(r).toMatchObject({ ok: true, booted: true, checks: [{ check: 'command: test -s /data/log.txt', ok: true }, { check: 'file: /data/hooks.log', ok: true }] });
    console.log(`verify-boot: guest agent answered after ${(r.agentMs / 1000).toFixed(1)} s`);
    const listed = jsonResult<{ id: string; verifiedBoot?: { ok: boolean } }[]>(await runCli(['snapshots', '--json'], { env }));
    expect(listed.find((x) => x.id === snapshot)?.verifiedBoot?.ok).toBe(true);

    const port = await runCli(['verify-boot', snapshot, '--accel', 'tcg', '--port', '9', '--json'], { env, timeoutMs: 300_000 });
    expect(port.code).toBe(1);
    expect(port.stderr).toMatch(/check\(s\) failed: port: 9 \(nothing listens\)/);

    // The restore point's kernel, damaged on purpose: the same file with its middle overwritten.
    const img = await ensureGuestBuilt();
    const bad = `${tmp.path}/vmlinuz-damaged`;
    execFileSync('cp', [img.kernel, bad]);
    execFileSync('dd', ['if=/dev/urandom', `of=${bad}`, 'bs=4096', 'seek=64', 'count=256', 'conv=notrunc'], { stdio: 'pipe' });
    const broken = await runCli(['verify-boot', snapshot, '--accel', 'tcg', '--kernel', bad, '--boot-timeout', '40', '--json'], { env, timeoutMs: 300_000 });
    expect(broken.code).toBe(1);
    // The result is printed, then the failure: the summary line is the result.
    const br = broken.stdout.split('\n').filter((l) => l.includes('"type":"summary"')).map((l) => JSON.parse(l) as { ok: boolean; booted: boolean; reason: string; console: string })[0]!;
    expect(br).toMatchObject({ ok: false, booted: false });
    expect(br.reason).toMatch(/QEMU did not start|did not answer|stopped before/);
    expect(existsSync(br.console), `console log kept at ${br.console}`).toBe(true);
    const after = jsonResult<{ id: string; verifiedBoot?: { ok: boolean } }[]>(await runCli(['snapshots', '--json'], { env }));
    expect(after.find((x) => x.id === snapshot)?.verifiedBoot?.ok).toBe(false);
  });
});

async function until(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms / 1000} s waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Bytes the file holds on disk. */
function allocated(file: string): number {
  return existsSync(file) ? statSync(file).blocks * 512 : 0;
}

/** qemu-img's view of an image's backing file (undefined: none). */
function backingOf(image: string): string | undefined {
  return (JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', image]).toString()) as { 'backing-filename'?: string })['backing-filename'];
}

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
