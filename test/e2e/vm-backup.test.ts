// Issue "Live, consistent VM backup": live backups of a real guest (qemu-guest-agent, fsfreeze hook,
// a writer appending checksummed records) through the real CLI.
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QgaClient } from '../../src/protocols/qga/client.js';
import { QmpClient, type QmpEvent } from '../../src/protocols/qmp/client.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { ensureGuestBuilt, makeDataDisk, readFileFromExt4Image, readHookLog, startGuest, verifyWriterLog, type RunningGuest } from '../guest/guest.js';

const HOOK = '/usr/bin/bulwark-fsfreeze-hook';
let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
const guests: RunningGuest[] = [];

interface VmBackupJson {
  results: { vm: string; snapshot?: string; error?: string; consistency?: string; freezeMs?: number; frozen?: { from: number; to: number }; snapshotAt?: number; warnings: string[]; disks: { name: string; read: string; bytesRead: number }[] }[];
}

async function boot(name: string, opts: { agent?: boolean; writerKiB?: number } = {}): Promise<{ guest: RunningGuest; connect: string }> {
  const img = await ensureGuestBuilt();
  const disk = `${tmp.path}/${name}.qcow2`;
  await makeDataDisk(disk, { sizeMiB: 128, format: 'qcow2', fill: img.sampleDir });
  const guest = await startGuest({ dir: `${tmp.path}/${name}`, name, disks: [{ path: disk, format: 'qcow2' }], writer: { kibPerSec: opts.writerKiB ?? 256 } });
  guests.push(guest);
  const connect = `qmp:${guest.qmpSocket},name=${name},hooks=${HOOK}${opts.agent === false ? '' : `,qga=${guest.qgaSocket}`}`;
  return { guest, connect };
}

async function frozenStatus(guest: RunningGuest): Promise<string> {
  const qga = await QgaClient.connect(guest.qgaSocket, { timeoutMs: 10_000 });
  try {
    return await qga.fsfreezeStatus();
  } finally {
    await qga.close();
  }
}

async function restoredDisk(snapshot: string, dir: string): Promise<string> {
  const r = await runCli(['restore', 'vm', snapshot, '--target', dir], { env });
  expect(r.code, r.stderr).toBe(0);
  return `${dir}/vda.raw`;
}

beforeAll(async () => {
  tmp = await tempDir('bw-vm-');
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'vm test' };
  await mkdir(`${tmp.path}/scratch`);
  expect((await runCli(['init'], { env })).code).toBe(0);
}, 120_000);

afterAll(async () => {
  for (const g of guests) await g.stop().catch(() => undefined);
  await tmp.cleanup();
});

describe('live VM backup', () => {
  let web: { guest: RunningGuest; connect: string };
  let first: VmBackupJson['results'][number];

  it('backs up a running, writing guest at an application-consistent point', async () => {
    web = await boot('web01');
    await new Promise((r) => setTimeout(r, 3000));
    const r = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    first = jsonResult<VmBackupJson>(r).results[0]!;
    expect(first.consistency).toBe('application');
    expect(first.freezeMs).toBeGreaterThan(0);
    expect(first.freezeMs).toBeLessThan(1000);
    console.log(`freeze window: ${first.freezeMs} ms`);
    expect(await frozenStatus(web.guest)).toBe('thawed');

    // The record holds what a restore needs to define the VM again, and the next incremental's base.
    const records = jsonResult<{ id: string; mode?: string; vm?: { machine?: string; memoryBytes?: number; cpus?: number; cpuModel?: string; disks: { name: string; format: string }[] }; disks: { bitmap?: string }[] }[]>(await runCli(['snapshots', '--source', 'vm:web01', '--json'], { env }));
    const rec = records.find((x) => x.id === first.snapshot)!;
    expect(rec.mode).toBe('snapshot');
    expect(rec.vm).toMatchObject({ memoryBytes: 256 * 1024 * 1024, cpus: 1, cpuModel: 'max', disks: [{ name: 'vda', format: 'qcow2' }] });
    expect(rec.vm!.machine).toMatch(/q35/);
    expect(rec.disks[0]!.bitmap).toMatch(/^bulwark-[0-9a-f]{8,}-[0-9a-f]+$/);

    // restore vm --define: the recorded machine, defined again on the restored disk, starts in QEMU.
    const def = `${tmp.path}/r-define`;
    const dr = jsonResult<{ definition: string; disks: { path: string }[] }>(await runCli(['restore', 'vm', first.snapshot!, '--target', def, '--format', 'qcow2', '--define', '--json'], { env }));
    expect(dr.definition).toBe(`${def}/web01.qemu.sh`);
    const qemu = spawn('sh', [dr.definition, '-S', '-display', 'none'], { env: { ...process.env, ACCEL: 'tcg' }, stdio: 'ignore' });
    try {
      let qmp: QmpClient | undefined;
      for (let i = 0; i < 100 && !qmp; i++) {
        qmp = await QmpClient.connect(`${def}/web01.qmp`, { timeoutMs: 1000 }).catch(() => undefined);
        if (!qmp) await new Promise((w) => setTimeout(w, 100));
      }
      expect(qmp, 'the defined VM did not start').toBeDefined();
      const blocks = await qmp!.execute<{ qdev?: string; inserted?: { file: string } }[]>('query-block');
      expect(blocks.map((b) => b.inserted?.file)).toContain(`${def}/vda.qcow2`);
      expect(blocks.some((b) => b.qdev?.includes('vd0'))).toBe(true);
      expect((await qmp!.execute<{ 'base-memory': number }>('query-memory-size-summary'))['base-memory']).toBe(256 * 1024 * 1024);
      expect(await qmp!.execute<string>('qom-get', { path: '/machine', property: 'type' })).toMatch(/q35/);
      await qmp!.execute('quit').catch(() => undefined);
      await qmp!.close().catch(() => undefined);
    } finally {
      qemu.kill('SIGKILL');
    }

    const raw = await restoredDisk(first.snapshot!, `${tmp.path}/r1`);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    const hooks = readHookLog(await readFileFromExt4Image(raw, '/hooks.log'));
    expect(hooks.last).toBe('freeze');
    const log = verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt'));
    expect(log.records).toBeGreaterThan(10);
    expect(log.torn, log.firstBad).toBe(0);
    expect(log.seqBreaks).toBe(0);
  });

  it('incremental: reads about what the guest wrote, and restores the same point as a full read', async () => {
    await new Promise((r) => setTimeout(r, 8000)); // the writer adds ~2 MiB
    const inc = jsonResult<VmBackupJson>(await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env })).results[0]!;
    expect(inc.disks[0]!.read).toBe('incremental');
    const written = 8 * 256 * 1024;
    // Blocks are 1 MiB: each dirty 64 KiB granule costs at most one block read.
    expect(inc.disks[0]!.bytesRead).toBeLessThan(2 * written + 16 * 1024 * 1024);
    expect(inc.disks[0]!.bytesRead).toBeLessThan(128 * 1024 * 1024 / 4);
    const raw = await restoredDisk(inc.snapshot!, `${tmp.path}/r2`);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    expect(verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt')).torn).toBe(0);

    // The same point in time read both ways: with the vCPUs stopped nothing changes between an
    // incremental and a full read, so their restores must be identical to the byte.
    await new Promise((r) => setTimeout(r, 4000));
    // The harness's own monitor: qmp.sock serves one client, and Bulwark needs it.
    const qmp = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
    await qmp.execute('stop');
    try {
      const args = ['backup', 'vm', 'web01', '--connect', web.connect, '--consistency', 'crash', '--scratch-dir', `${tmp.path}/scratch`, '--json'];
      const i2 = jsonResult<VmBackupJson>(await runCli(args, { env })).results[0]!;
      const f2 = jsonResult<VmBackupJson>(await runCli([...args, '--full'], { env })).results[0]!;
      expect(i2.error, i2.error).toBeUndefined();
      expect(f2.error, f2.error).toBeUndefined();
      expect(i2.disks[0]!.read).toBe('incremental');
      expect(f2.disks[0]!.read).toBe('full');
      expect(i2.disks[0]!.bytesRead).toBeLessThan(f2.disks[0]!.bytesRead);
      const a = await restoredDisk(i2.snapshot!, `${tmp.path}/same-inc`);
      const b = await restoredDisk(f2.snapshot!, `${tmp.path}/same-full`);
      execFileSync('cmp', [a, b]);
    } finally {
      await qmp.execute('cont');
      await qmp.close();
    }
  });

  it('the agent is found through QEMU when qga= is not given', async () => {
    const found = web.connect.replace(/,qga=[^,]+/, '');
    expect(found).not.toMatch(/qga=/);
    const r = await runCli(['backup', 'vm', 'web01', '--connect', found, '--consistency', 'application', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(jsonResult<VmBackupJson>(r).results[0]!.consistency).toBe('application');
  });

  it('without an agent: auto gives crash consistency with a warning, application fails the VM; never frozen', async () => {
    const noAgent = web.connect.replace(/,qga=[^,]+/, ',qga=off');
    const auto = jsonResult<VmBackupJson>(await runCli(['backup', 'vm', 'web01', '--connect', noAgent, '--consistency', 'auto', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env })).results[0]!;
    expect(auto.consistency).toBe('crash');
    expect(auto.warnings.join(' ')).toMatch(/agent/);
    const app = await runCli(['backup', 'vm', 'web01', '--connect', noAgent, '--consistency', 'application', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(app.code).toBe(1);
    expect(jsonResult<VmBackupJson>(app).results[0]!.error).toMatch(/agent/);
    expect(await frozenStatus(web.guest)).toBe('thawed');
  });

  it('with a hanging agent (vCPUs stopped): auto gives crash consistency with a warning; the guest is not left frozen', async () => {
    const harness = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
    await harness.execute('stop');
    let r;
    try {
      r = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--consistency', 'auto', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    } finally {
      await harness.execute('cont');
    }
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const res = jsonResult<VmBackupJson>(r).results[0]!;
    expect(res.consistency).toBe('crash');
    expect(res.warnings.join(' ')).toMatch(/agent/);
    await harness.execute('stop');
    let app;
    try {
      app = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--consistency', 'application', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    } finally {
      await harness.execute('cont');
    }
    expect(app.code).toBe(1);
    expect(jsonResult<VmBackupJson>(app).results[0]!.error).toMatch(/cannot be backed up application-consistent: guest agent does not answer/);
    await harness.close();
    await new Promise((w) => setTimeout(w, 2000));
    expect(await frozenStatus(web.guest)).toBe('thawed');
  });

  it('--mode suspend pauses the vCPUs around the point in time only, and the VM runs on', async () => {
    const harness = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
    const events: { event: string; at: number }[] = [];
    harness.on('event', (e: QmpEvent) => events.push({ event: e.event, at: e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000 }));
    try {
      const r = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--mode', 'suspend', '--consistency', 'crash', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
      expect(r.code, r.stdout + r.stderr).toBe(0);
      const res = jsonResult<VmBackupJson>(r).results[0]!;
      const stops = events.filter((e) => e.event === 'STOP');
      const resumes = events.filter((e) => e.event === 'RESUME');
      expect(stops).toHaveLength(1);
      expect(resumes).toHaveLength(1);
      expect(stops[0]!.at).toBeLessThanOrEqual(res.snapshotAt!);
      expect(res.snapshotAt!).toBeLessThanOrEqual(resumes[0]!.at + 1);
      console.log(`suspend mode: vCPUs paused ${(resumes[0]!.at - stops[0]!.at).toFixed(1)} ms`);
      expect((await harness.execute('query-status')).status).toBe('running');
    } finally {
      await harness.close();
    }
  });

  it('fails clearly, before freezing, when another tool runs QEMU\'s NBD server; leaves nothing behind', async () => {
    const harness = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
    await harness.execute('nbd-server-start', { addr: { type: 'unix', data: { path: `${tmp.path}/other.nbd` } } });
    try {
      const r = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
      expect(r.code).toBe(1);
      const res = jsonResult<VmBackupJson>(r).results[0]!;
      expect(res.error).toMatch(/QEMU already runs an NBD server that Bulwark did not start/);
      expect(res.freezeMs).toBeUndefined();
      const nodes = await harness.execute<{ 'node-name': string }[]>('query-named-block-nodes');
      expect(nodes.filter((n) => n['node-name'].startsWith('bulwark'))).toEqual([]);
    } finally {
      await harness.execute('nbd-server-stop');
      await harness.close();
    }
  });

  it('refuses to start when the scratch space is too small, before anything is frozen or changed', async () => {
    const small = `${tmp.path}/small-scratch`;
    await mkdir(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', small]);
    try {
      const r = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--scratch-dir', small, '--json'], { env });
      expect(r.code).toBe(1);
      expect(jsonResult<VmBackupJson>(r).results[0]!.error).toMatch(/not enough scratch space for VM web01/);
      expect(await frozenStatus(web.guest)).toBe('thawed');
    } finally {
      execFileSync('umount', ['-l', small]);
    }
  });

  it('a killed backup leaves the guest thawed and running; the next run cleans up and is correct', async () => {
    // A full read at 4 MiB/s takes seconds: killed at 0.6 s (around the point in time), and once the
    // device runs through the fleecing filter (mid-read; polled, since start-up time varies with load).
    for (const when of ['around the point', 'mid-read'] as const) {
      let pid = 0;
      const run = runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--full', '--limit-read', '4M', '--scratch-dir', `${tmp.path}/scratch`], { env, onSpawn: (p) => (pid = p) });
      if (when === 'around the point') await new Promise((r) => setTimeout(r, 600));
      else {
        const h = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
        try {
          const end = Date.now() + 60_000;
          for (;;) {
            const roots = (await h.execute<{ inserted?: { 'node-name': string } }[]>('query-block')).map((b) => b.inserted?.['node-name'] ?? '');
            if (roots.some((n) => n.startsWith('bulwark-cbw-'))) break;
            expect(Date.now(), 'the backup reached its read phase (the device runs through the fleecing filter)').toBeLessThan(end);
            await new Promise((r) => setTimeout(r, 50));
          }
        } finally {
          await h.close();
        }
        await new Promise((r) => setTimeout(r, 500));
      }
      process.kill(pid, 'SIGKILL');
      expect((await run).code, 'killed before it finished').toBe(128);
      await new Promise((r) => setTimeout(r, 2500));
      expect(await frozenStatus(web.guest)).toBe('thawed');
      const qmp = await QmpClient.connect(web.guest.qmpSocket);
      expect((await qmp.execute('query-status')).status).toBe('running');
      await qmp.close();
    }
    expect((await runCli(['unlock'], { env })).code).toBe(0);
    const next = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(next.code, next.stderr).toBe(0);
    const qmp = await QmpClient.connect(web.guest.qmpSocket);
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes');
    expect(nodes.filter((n) => n['node-name'].startsWith('bulwark'))).toEqual([]);
    expect(await qmp.execute<unknown[]>('query-block-exports')).toEqual([]);
    await qmp.close();
    const raw = await restoredDisk(jsonResult<VmBackupJson>(next).results[0]!.snapshot!, `${tmp.path}/r3`);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
  });

  it('scratch space running out mid-backup fails the backup, never the guest; the next backup is correct', async () => {
    // A disk holding 256 MiB of data, so reading it takes a while, and a guest overwriting it hard.
    const img = await ensureGuestBuilt();
    const fill = `${tmp.path}/bulk-fill`;
    await mkdir(fill);
    execFileSync('cp', ['-a', `${img.sampleDir}/.`, fill]);
    execFileSync('dd', ['if=/dev/urandom', `of=${fill}/big.bin`, 'bs=1M', 'count=256', 'status=none']);
    const disk = `${tmp.path}/bulk01.qcow2`;
    await makeDataDisk(disk, { sizeMiB: 512, format: 'qcow2', fill });
    const guest = await startGuest({ dir: `${tmp.path}/bulk01`, name: 'bulk01', disks: [{ path: disk, format: 'qcow2' }], writer: { kibPerSec: 256 } });
    guests.push(guest);
    const connect = `qmp:${guest.qmpSocket},name=bulk01,hooks=${HOOK},qga=${guest.qgaSocket}`;
    const qga = await QgaClient.connect(guest.qgaSocket, { timeoutMs: 10_000 });
    const loop = 'while :; do if dd if=/dev/zero of=/data/big.bin bs=1M count=64 oflag=direct conv=notrunc 2>>/data/dd.err; then echo ok >>/data/dd.log; else echo FAIL >>/data/dd.log; fi; done';
    const { pid: loopPid } = await qga.execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', loop] });
    await qga.close();

    // Scratch on a small file system with 3 MiB left: the first few MiB of old data fill it.
    const small = `${tmp.path}/full-scratch`;
    await mkdir(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', small]);
    let r;
    try {
      execFileSync('dd', ['if=/dev/zero', `of=${small}/filler`, 'bs=1M', 'count=29', 'status=none']);
      // At 32 MiB/s the read lasts seconds, well past the moment the guest's overwrites fill the scratch.
      r = await runCli(['backup', 'vm', 'bulk01', '--connect', connect, '--scratch-dir', small, '--scratch-min', '0', '--limit-read', '32M', '--json'], { env });
    } finally {
      execFileSync('umount', ['-l', small]);
    }
    expect(r.code, r.stdout + r.stderr).toBe(1);
    const failed = jsonResult<VmBackupJson>(r).results[0]!;
    expect(failed.snapshot).toBeUndefined();
    expect(failed.error).toMatch(/scratch space in '.*full-scratch' ran out/);
    expect(failed.error).toMatch(/guest's own writes were not affected/);

    // The guest never saw an error: still running, no I/O error on its disk, its writes all succeeded.
    const harness = await QmpClient.connect(`${guest.dir}/harness.sock`);
    try {
      expect((await harness.execute('query-status')).status).toBe('running');
      const blocks = await harness.execute<{ 'io-status'?: string }[]>('query-block');
      expect(blocks.map((b) => b['io-status'] ?? 'ok')).toEqual(blocks.map(() => 'ok'));
      const nodes = await harness.execute<{ 'node-name': string }[]>('query-named-block-nodes');
      expect(nodes.filter((n) => n['node-name'].startsWith('bulwark'))).toEqual([]);
    } finally {
      await harness.close();
    }
    const qga2 = await QgaClient.connect(guest.qgaSocket, { timeoutMs: 10_000 });
    try {
      expect(await qga2.fsfreezeStatus()).toBe('thawed');
      const ddLog = (await qga2.readFile('/data/dd.log')).toString();
      expect(ddLog).toMatch(/ok/);
      expect(ddLog).not.toMatch(/FAIL/);
      await qga2.execute('guest-exec', { path: '/bin/sh', arg: ['-c', `kill ${loopPid}; killall dd; true`] });
    } finally {
      await qga2.close();
    }
    const kernelLog = await readFile(guest.consoleLog, 'utf8');
    expect(kernelLog).not.toMatch(/I\/O error|EXT4-fs error|Buffer I\/O/);

    // The next backup, with room to work, is complete and clean.
    const next = await runCli(['backup', 'vm', 'bulk01', '--connect', connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(next.code, next.stdout + next.stderr).toBe(0);
    const raw = await restoredDisk(jsonResult<VmBackupJson>(next).results[0]!.snapshot!, `${tmp.path}/r-bulk`);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    const log = verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt'));
    expect(log.torn).toBe(0);
    expect(log.seqBreaks).toBe(0);
  });

  it('--mode stop: a clean shutdown, the point while the guest is down, the guest started again', async () => {
    const r = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--mode', 'stop', '--stop-timeout', '60', '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const res = jsonResult<VmBackupJson>(r).results[0]!;
    expect(res.consistency).toBe('application');
    expect(res.warnings.join(' ')).toMatch(/shut down for the backup \(through the guest agent\) and started again/);
    console.log(`stop mode: guest down ${res.freezeMs} ms`);
    const harness = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
    try {
      expect((await harness.execute('query-status')).status).toBe('running');
    } finally {
      await harness.close();
    }
    // The guest boots again in the same QEMU process: its agent answers.
    let answered = false;
    for (let i = 0; i < 60 && !answered; i++) {
      answered = await frozenStatus(web.guest).then((s) => s === 'thawed', () => false);
      if (!answered) await new Promise((w) => setTimeout(w, 1000));
    }
    expect(answered).toBe(true);
    // A clean point: the file system needs no journal recovery.
    const raw = await restoredDisk(res.snapshot!, `${tmp.path}/r-stop`);
    const header = execFileSync('dumpe2fs', ['-h', raw], { stdio: 'pipe' }).toString();
    expect(header).toMatch(/Filesystem state:\s+clean/);
    expect(header).not.toMatch(/needs_recovery/);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    expect(verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt')).torn).toBe(0);
  });

  it('--mode stop with Bulwark killed while the guest powers off: the VM starts again by itself', async () => {
    const boots = async (): Promise<number> => (await readFile(web.guest.consoleLog, 'utf8')).split('starting qemu-ga').length;
    const offs = async (): Promise<number> => (await readFile(web.guest.consoleLog, 'utf8')).split('powering off').length;
    const [boots0, offs0] = [await boots(), await offs()];
    let pid = 0;
    const run = runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--mode', 'stop', '--scratch-dir', `${tmp.path}/scratch`], { env, onSpawn: (p) => (pid = p) });
    // The moment the guest starts to power off, Bulwark is waiting for the shutdown: kill it there.
    for (let i = 0; i < 1000 && (await offs()) === offs0; i++) await new Promise((w) => setTimeout(w, 10));
    process.kill(pid, 'SIGKILL');
    expect((await run).code, 'killed before it finished').toBe(128);
    expect(await offs()).toBe(offs0 + 1);
    // The run guardian holds the QMP connection now: it waits for the shutdown, then boots the guest.
    for (let i = 0; i < 60 && (await boots()) === boots0; i++) await new Promise((w) => setTimeout(w, 1000));
    expect(await boots()).toBe(boots0 + 1);
    let answered = false;
    for (let i = 0; i < 60 && !answered; i++) {
      answered = await frozenStatus(web.guest).then((st) => st === 'thawed', () => false);
      if (!answered) await new Promise((w) => setTimeout(w, 1000));
    }
    expect(answered).toBe(true);
    const harness = await QmpClient.connect(`${web.guest.dir}/harness.sock`);
    try {
      expect((await harness.execute('query-status')).status).toBe('running');
    } finally {
      await harness.close();
    }
    expect((await runCli(['unlock'], { env })).code).toBe(0);
    const next = await runCli(['backup', 'vm', 'web01', '--connect', web.connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(next.code, next.stdout + next.stderr).toBe(0);
    // What the guardian did on its own reaches the user: the next run's output and its restore point.
    const result = jsonResult<VmBackupJson>(next).results[0]!;
    expect(result.warnings.join('\n')).toMatch(/an interrupted run's guardian: .*VM web01: started the VM again/);
    const points = jsonResult<{ id: string; summary: { warnings: string[] } }[]>(await runCli(['snapshots', '--source', 'vm:web01', '--json'], { env }));
    expect(points.find((p) => p.id === result.snapshot)!.summary.warnings.join('\n')).toMatch(/started the VM again/);
  });

  it('a VM with two disks (qcow2 and raw): one instant for both, each restored', async () => {
    const img = await ensureGuestBuilt();
    const d0 = `${tmp.path}/multi-a.qcow2`;
    const d1 = `${tmp.path}/multi-b.raw`;
    await makeDataDisk(d0, { sizeMiB: 64, format: 'qcow2', fill: img.sampleDir });
    await makeDataDisk(d1, { sizeMiB: 32, format: 'raw', fill: img.sampleDir });
    const guest = await startGuest({ dir: `${tmp.path}/multi01`, name: 'multi01', disks: [{ path: d0, format: 'qcow2' }, { path: d1, format: 'raw' }] });
    guests.push(guest);
    const connect = `qmp:${guest.qmpSocket},name=multi01,hooks=${HOOK},qga=${guest.qgaSocket}`;
    const harness = await QmpClient.connect(`${guest.dir}/harness.sock`);
    const events: string[] = [];
    harness.on('event', (e: QmpEvent) => events.push(e.event));
    let r;
    try {
      r = await runCli(['backup', 'vm', 'multi01', '--connect', connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
      expect((await harness.execute('query-status')).status).toBe('running');
    } finally {
      await harness.close();
    }
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const res = jsonResult<VmBackupJson>(r).results[0]!;
    expect(res.consistency).toBe('application');
    expect(res.disks.map((d) => d.name)).toEqual(['vda', 'vdb']);
    // The disks are switched onto their filters with the vCPUs paused: one instant for both.
    expect(events.filter((e) => e === 'STOP' || e === 'RESUME')).toEqual(['STOP', 'RESUME']);
    const out = `${tmp.path}/r-multi`;
    expect((await runCli(['restore', 'vm', res.snapshot!, '--target', out], { env })).code).toBe(0);
    execFileSync('e2fsck', ['-fn', `${out}/vda.raw`], { stdio: 'pipe' });
    // vdb is not mounted in the guest: its restore is the image itself, byte for byte.
    execFileSync('cmp', [`${out}/vdb.raw`, d1]);
  });

  it('a group of two VMs shares one freeze window', async () => {
    const db = await boot('db01');
    const r = await runCli(['backup', 'vm', 'web01', 'db01', '--group', '--connect', web.connect, '--connect', db.connect, '--scratch-dir', `${tmp.path}/scratch`, '--json'], { env });
    expect(r.code, r.stderr).toBe(0);
    const results = jsonResult<VmBackupJson>(r).results;
    expect(results.map((x) => x.consistency)).toEqual(['application', 'application']);
    // One window: both guests were frozen before either snapshot transaction and thawed after both.
    const [w, d] = results;
    const lastFreeze = Math.max(w!.frozen!.from, d!.frozen!.from);
    const firstThaw = Math.min(w!.frozen!.to, d!.frozen!.to);
    expect(lastFreeze).toBeLessThanOrEqual(Math.min(w!.snapshotAt!, d!.snapshotAt!));
    expect(Math.max(w!.snapshotAt!, d!.snapshotAt!)).toBeLessThanOrEqual(firstThaw);
    console.log(`group freeze windows: ${w!.freezeMs} ms and ${d!.freezeMs} ms`);
    // Both guests froze before either snapshot and thawed after both: every freeze precedes every thaw.
    const a = readHookLog(await readFileFromExt4Image(await restoredDisk(results[0]!.snapshot!, `${tmp.path}/g1`), '/hooks.log'));
    const b = readHookLog(await readFileFromExt4Image(await restoredDisk(results[1]!.snapshot!, `${tmp.path}/g2`), '/hooks.log'));
    expect(a.last).toBe('freeze');
    expect(b.last).toBe('freeze');
    // A second TCG guest to boot, two backups and two restores: on a busy two-core machine this has
    // taken just over the default two minutes.
  }, 300_000);
});
