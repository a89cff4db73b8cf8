// Issue "libvirt domains …": live backups of the test guest defined as a libvirt domain, through a
// real libvirtd and the real CLI (--connect qemu:///system). The witnesses are libvirt's own view
// (virsh), the guest (its agent, its hook log, its writer's records) and the restored images.
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli, startCli } from '../helpers/cli.js';
import { ensureLibvirtd, frozenStatus, guestDomainXml, removeDomain, virsh, waitForAgent } from '../helpers/libvirtd.js';
import { tempDir } from '../helpers/repo.js';
import { ensureGuestBuilt, makeDataDisk, readFileFromExt4Image, readHookLog, verifyWriterLog } from '../guest/guest.js';

const HOOK = '/usr/bin/bulwark-fsfreeze-hook';
const DOMAIN = 'bw-lv-web';
const CONNECT = `qemu:///system,hooks=${HOOK}`;

interface Result {
  vm: string;
  snapshot?: string;
  error?: string;
  hint?: string;
  consistency?: string;
  freezeMs?: number;
  warnings: string[];
  disks: { name: string; read: string; bytesRead: number; reason?: string }[];
}

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let daemon: { stop(): Promise<void> };
let scratch: string;

async function backup(...extra: string[]): Promise<{ code: number; result: Result; stderr: string }> {
  const r = await runCli(['backup', 'vm', DOMAIN, '--connect', CONNECT, '--scratch-dir', scratch, '--scratch-min', '0', '--json', ...extra], { env });
  return { code: r.code, result: jsonResult<{ results: Result[] }>(r).results[0]!, stderr: r.stderr };
}

async function restoredDisk(snapshot: string, dir: string): Promise<string> {
  const r = await runCli(['restore', 'vm', snapshot, '--target', dir], { env });
  expect(r.code, r.stderr).toBe(0);
  return `${dir}/vda.raw`;
}

/** The guest's own kernel log: no I/O error, no file system error, ever. */
async function expectGuestHealthy(): Promise<void> {
  expect(await readFile(`${tmp.path}/console.log`, 'utf8')).not.toMatch(/I\/O error|EXT4-fs error|Buffer I\/O/);
}

async function ourCheckpoints(domain = DOMAIN): Promise<string[]> {
  return (await virsh('checkpoint-list', domain, '--name')).split('\n').map((s) => s.trim()).filter((s) => s.startsWith('bulwark-'));
}

/** A clean shutdown through the guest agent, waited for. */
async function shutDown(): Promise<void> {
  await waitForAgent(DOMAIN);
  await virsh('shutdown', DOMAIN, '--mode', 'agent');
  const down = Date.now() + 120_000;
  while (!/shut off/.test(await virsh('domstate', DOMAIN))) {
    expect(Date.now(), 'the guest shut down').toBeLessThan(down);
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function jobActive(domain = DOMAIN): Promise<boolean> {
  return !/Job type:\s+None/.test(await virsh('domjobinfo', domain));
}

beforeAll(async () => {
  daemon = await ensureLibvirtd();
  tmp = await tempDir('bw-lv-');
  // QEMU runs as libvirt-qemu under qemu:///system: it must be able to reach the images.
  await chmod(tmp.path, 0o755);
  scratch = `${tmp.path}/scratch`;
  await mkdir(scratch, { mode: 0o755 });
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'libvirt test' };
  expect((await runCli(['init'], { env })).code).toBe(0);
  const img = await ensureGuestBuilt();
  await removeDomain(DOMAIN);
  await removeDomain(`${DOMAIN}-restored`);
  const disk = `${tmp.path}/web.qcow2`;
  await makeDataDisk(disk, { sizeMiB: 128, format: 'qcow2', fill: img.sampleDir });
  const xml = `${tmp.path}/web.xml`;
  await writeFile(xml, await guestDomainXml({ name: DOMAIN, disk, format: 'qcow2', consoleLog: `${tmp.path}/console.log` }));
  await virsh('define', xml);
  await virsh('start', DOMAIN);
  await waitForAgent(DOMAIN);
}, 300_000);

afterAll(async () => {
  await removeDomain(DOMAIN);
  await removeDomain(`${DOMAIN}-restored`);
  await tmp?.cleanup();
  await daemon?.stop();
});

describe('libvirt domains', () => {
  let first: Result;

  it('lists the domain; backs it up live at an application-consistent point; restore --define gives a domain that boots', async () => {
    const list = jsonResult<{ name: string; status: string; disks: { name: string; format: string }[]; agent: { state: string } }[]>(await runCli(['vm', 'list', '--connect', 'qemu:///system', '--json'], { env }));
    expect(list.find((v) => v.name === DOMAIN)).toMatchObject({ status: 'running', disks: [{ name: 'vda', format: 'qcow2' }], agent: { state: 'responding' } });

    // doctor: the libvirt rule for scratch space is the disks' whole size (128 MiB here).
    const small = `${tmp.path}/doctor-small`;
    await mkdir(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', small]);
    let found;
    try {
      found = await runCli(['doctor', DOMAIN, '--connect', 'qemu:///system', '--scratch-dir', small, '--json'], { env });
    } finally {
      execFileSync('umount', ['-l', small]);
    }
    expect(found.code).toBe(1);
    expect(jsonResult<{ findings: { severity: string; check: string; message: string }[] }>(found).findings).toContainEqual(
      expect.objectContaining({ check: 'scratch', severity: 'error', message: expect.stringMatching(/0\.1 GiB needed \(a libvirt backup reserves the disks' whole size/) }),
    );
    const ok = await runCli(['doctor', DOMAIN, '--connect', 'qemu:///system', '--scratch-dir', scratch], { env });
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);

    await new Promise((r) => setTimeout(r, 3000));
    const r = await backup();
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    first = r.result;
    expect(first.consistency).toBe('application');
    expect(first.freezeMs).toBeGreaterThan(0);
    console.log(`libvirt freeze window: ${first.freezeMs} ms`);
    expect(await frozenStatus(DOMAIN)).toBe('thawed');
    expect(await jobActive()).toBe(false);
    expect(await ourCheckpoints()).toHaveLength(1);

    const raw = await restoredDisk(first.snapshot!, `${tmp.path}/r1`);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    expect(readHookLog(await readFileFromExt4Image(raw, '/hooks.log')).last).toBe('freeze');
    const log = verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt'));
    expect(log.records).toBeGreaterThan(10);
    expect(log.torn, log.firstBad).toBe(0);

    // restore vm --define: a new domain beside the original (new name, UUID and MAC) on the restored disk, and it boots.
    const target = `${tmp.path}/r-define`;
    await mkdir(target, { mode: 0o755 });
    const dr = await runCli(['restore', 'vm', first.snapshot!, '--target', target, '--format', 'qcow2', '--define', '--json'], { env });
    expect(dr.code, dr.stderr).toBe(0);
    const dom = jsonResult<{ domain: { name: string; uuid: string; defined: boolean } }>(dr).domain;
    expect(dom).toMatchObject({ name: `${DOMAIN}-restored`, defined: true });
    const xml = await virsh('dumpxml', dom.name);
    expect(xml).toContain(`${target}/vda.qcow2`);
    expect(xml).not.toContain('52:54:00:12:34:56');
    expect(xml).not.toContain((await virsh('domuuid', DOMAIN)).trim());
    await virsh('start', dom.name);
    try {
      await waitForAgent(dom.name);
    } finally {
      await removeDomain(dom.name);
    }
    // --print-xml only writes the definition.
    const px = await runCli(['restore', 'vm', first.snapshot!, '--target', `${tmp.path}/r-xml`, '--print-xml', '--name', 'bw-lv-other'], { env });
    expect(px.code, px.stderr).toBe(0);
    expect(px.stdout).toContain('<name>bw-lv-other</name>');
    await expect(virsh('dominfo', 'bw-lv-other')).rejects.toThrow();
    await expectGuestHealthy();
  });

  it('incremental: reads about what the guest wrote, and restores the same point as a full read', async () => {
    await new Promise((r) => setTimeout(r, 8000)); // the writer adds ~2 MiB
    const inc = (await backup()).result;
    expect(inc.error, inc.error).toBeUndefined();
    expect(inc.disks[0]!.read).toBe('incremental');
    expect(inc.disks[0]!.bytesRead).toBeLessThan(128 * 1024 * 1024 / 2);
    execFileSync('e2fsck', ['-fn', await restoredDisk(inc.snapshot!, `${tmp.path}/r2`)], { stdio: 'pipe' });
    expect(await ourCheckpoints()).toHaveLength(1);

    // The same point read both ways: with the domain suspended nothing changes between the two.
    await virsh('suspend', DOMAIN);
    try {
      const i2 = (await backup('--consistency', 'crash')).result;
      const f2 = (await backup('--consistency', 'crash', '--full')).result;
      expect(i2.error, i2.error).toBeUndefined();
      expect(f2.error, f2.error).toBeUndefined();
      expect(i2.disks[0]!.read).toBe('incremental');
      expect(f2.disks[0]!.read).toBe('full');
      expect(i2.disks[0]!.bytesRead).toBeLessThan(f2.disks[0]!.bytesRead);
      execFileSync('cmp', [await restoredDisk(i2.snapshot!, `${tmp.path}/same-inc`), await restoredDisk(f2.snapshot!, `${tmp.path}/same-full`)]);
    } finally {
      await virsh('resume', DOMAIN);
    }
    await expectGuestHealthy();
  });

  it('a checkpoint deleted outside Bulwark gives a full read with a warning, never a wrong incremental', async () => {
    const ours = await ourCheckpoints();
    expect(ours, 'one checkpoint of ours: the last backup\'s base').toHaveLength(1);
    await virsh('checkpoint-delete', DOMAIN, ours[0]!);
    const r = (await backup()).result;
    expect(r.error, r.error).toBeUndefined();
    expect(r.disks[0]!.read).toBe('full');
    expect(r.warnings.join('\n')).toMatch(new RegExp(`vda: full read \\(the last backup's incremental base ${ours[0]} is gone`));
    execFileSync('e2fsck', ['-fn', await restoredDisk(r.snapshot!, `${tmp.path}/r3`)], { stdio: 'pipe' });
  });

  it('a disk added or resized since the last backup is read in full, and says why; the others stay incremental, across a restart', async () => {
    const extra = `${tmp.path}/extra.qcow2`;
    await makeDataDisk(extra, { sizeMiB: 32, format: 'qcow2' });
    // Added to the definition and the guest restarted cleanly (this test guest does not survive a
    // PCIe hot-plug; a clean shutdown also stores the checkpoints' bitmaps in the images).
    await virsh('attach-disk', DOMAIN, extra, 'vdb', '--driver', 'qemu', '--subdriver', 'qcow2', '--targetbus', 'virtio', '--config');
    await shutDown();
    await virsh('start', DOMAIN);
    await waitForAgent(DOMAIN);
    const added = (await backup()).result;
    expect(added.error, added.error).toBeUndefined();
    expect(added.disks.map((d) => [d.name, d.read]), JSON.stringify(added.disks)).toEqual([['vda', 'incremental'], ['vdb', 'full']]);
    expect(added.disks[1]!.reason).toBe('no earlier backup of this disk');
    expect(added.warnings.join('\n')).toMatch(/vdb: full read \(no earlier backup of this disk\)/);

    await virsh('blockresize', DOMAIN, 'vdb', '48M');
    const resized = (await backup()).result;
    expect(resized.disks.map((d) => [d.name, d.read])).toEqual([['vda', 'incremental'], ['vdb', 'full']]);
    expect(resized.disks[1]!.reason).toBe('disk size changed');
    const r = await runCli(['restore', 'vm', resized.snapshot!, '--target', `${tmp.path}/r-resized`, '--disk', 'vdb'], { env });
    expect(r.code, r.stderr).toBe(0);
    execFileSync('e2fsck', ['-fn', `${tmp.path}/r-resized/vdb.raw`], { stdio: 'pipe' });
    expect(execFileSync('stat', ['-c', '%s', `${tmp.path}/r-resized/vdb.raw`]).toString().trim()).toBe(String(48 * 1024 * 1024));
    await expectGuestHealthy();
  });

  it('too little scratch space fails the backup before anything is frozen or begun, never the guest', async () => {
    const small = `${tmp.path}/small`;
    await mkdir(small, { mode: 0o755 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0755', 'tmpfs', small]);
    const before = await ourCheckpoints();
    let r;
    try {
      const out = await runCli(['backup', 'vm', DOMAIN, '--connect', CONNECT, '--scratch-dir', small, '--scratch-min', '0', '--json'], { env });
      r = { code: out.code, result: jsonResult<{ results: Result[] }>(out).results[0]! };
    } finally {
      execFileSync('umount', ['-l', small]);
    }
    expect(r.code).toBe(1);
    expect(r.result.error).toMatch(/not enough scratch space .* disk vda needs its whole size/);
    expect(r.result.hint).toMatch(/never pause the guest/);
    expect((await virsh('domstate', DOMAIN, '--reason')).trim()).toMatch(/^running/);
    expect(await virsh('domblkerror', DOMAIN)).toMatch(/No errors found/);
    expect(await jobActive()).toBe(false);
    expect(await ourCheckpoints()).toEqual(before);
    expect(await frozenStatus(DOMAIN)).toBe('thawed');
    await expectGuestHealthy();
  });

  it('a killed backup leaves the domain running; its guardian ends the job; the next run is clean and says what happened', async () => {
    let pid = 0;
    const run = runCli(['backup', 'vm', DOMAIN, '--connect', CONNECT, '--scratch-dir', scratch, '--scratch-min', '0', '--full', '--limit-read', '4M'], { env, onSpawn: (p) => (pid = p) });
    const end = Date.now() + 120_000;
    while (!(await jobActive())) {
      expect(Date.now(), 'the backup job began').toBeLessThan(end);
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 1000));
    process.kill(pid, 'SIGKILL');
    expect((await run).code, 'killed before it finished').toBe(128);
    const ended = Date.now() + 30_000;
    while (await jobActive()) {
      expect(Date.now(), "the guardian ended the run's backup job").toBeLessThan(ended);
      await new Promise((r) => setTimeout(r, 200));
    }
    expect((await virsh('domstate', DOMAIN)).trim()).toBe('running');
    expect(await frozenStatus(DOMAIN)).toBe('thawed');

    expect((await runCli(['unlock'], { env })).code).toBe(0);
    const next = await backup();
    expect(next.code, JSON.stringify(next.result)).toBe(0);
    expect(next.result.warnings.join('\n')).toMatch(/an interrupted run's guardian: .*ended the run's backup job/);
    expect(await ourCheckpoints()).toHaveLength(1);
    expect(await jobActive()).toBe(false);
    expect((await readdir(scratch)).filter((f) => f.startsWith('bulwark-'))).toEqual([]);
    const raw = await restoredDisk(next.result.snapshot!, `${tmp.path}/r4`);
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    expect(verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt')).torn).toBe(0);
    await expectGuestHealthy();
  });

  it('--mode stop: the guest is shut down cleanly, the point taken, the domain running again; the checkpoint keeps the next run incremental', async () => {
    const idBefore = (await virsh('domid', DOMAIN)).trim();
    const r = await backup('--mode', 'stop');
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    expect(r.result.consistency).toBe('application');
    expect(r.result.warnings.join('\n')).toMatch(/shut down for the backup \(through the guest agent\) and started again/);
    // libvirt's witness: a new QEMU process runs the domain; the guest booted again and its agent answers.
    expect((await virsh('domid', DOMAIN)).trim()).not.toBe(idBefore);
    await waitForAgent(DOMAIN);
    expect((await virsh('domstate', DOMAIN)).trim()).toBe('running');
    expect(await jobActive()).toBe(false);
    const raw = await restoredDisk(r.result.snapshot!, `${tmp.path}/r-stop`);
    // Cleanly unmounted: nothing for e2fsck to replay or repair.
    execFileSync('e2fsck', ['-fn', raw], { stdio: 'pipe' });
    expect(verifyWriterLog(await readFileFromExt4Image(raw, '/log.txt')).torn).toBe(0);
    const next = (await backup()).result;
    expect(next.error, next.error).toBeUndefined();
    expect(next.disks.map((d) => d.read)).toEqual(['incremental', 'incremental']);
    await expectGuestHealthy();
  });

  it('a shut-off domain is backed up through the image readers, holes unread, identical to its image; a destroyed one is only crash-consistent', async () => {
    await shutDown();
    const r = await backup();
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    expect(r.result.consistency).toBe('application');
    expect(r.result.freezeMs).toBe(0);
    expect(r.result.warnings.join('\n')).toMatch(/shut down \(cleanly\): its disks were read as they lie/);
    const vda = r.result.disks.find((d) => d.name === 'vda')!;
    expect(vda.read).toBe('full');
    expect(vda.bytesRead, 'holes are not read').toBeLessThan(128 * 1024 * 1024);
    expect((await virsh('domstate', DOMAIN)).trim()).toBe('shut off');
    const raw = await restoredDisk(r.result.snapshot!, `${tmp.path}/r-off`);
    // The outside witness: qemu-img reads the domain's own image the same.
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, `${tmp.path}/web.qcow2`], { stdio: 'pipe' });

    // Forced off: the disks are as after a power cut; --consistency application refuses, auto warns.
    await virsh('start', DOMAIN);
    await waitForAgent(DOMAIN);
    await virsh('destroy', DOMAIN);
    const strict = await backup('--consistency', 'application');
    expect(strict.code).not.toBe(0);
    expect(strict.result.error).toMatch(/not shut down cleanly .*--consistency application/);
    const auto = await backup();
    expect(auto.code, JSON.stringify(auto.result)).toBe(0);
    expect(auto.result.consistency).toBe('crash');
    expect(auto.result.warnings.join('\n')).toMatch(/forced off \(destroyed\)/);
    await virsh('start', DOMAIN);
    await waitForAgent(DOMAIN);
  });

  it('restore --to-guest writes a file from a restore point into the running domain through libvirt\'s agent passthrough', async () => {
    const r = await backup();
    expect(r.code, JSON.stringify(r.result)).toBe(0);
    const w = await runCli(['restore', `${r.result.snapshot}:/vda/fs/hooks.log`, '--to-guest', `${DOMAIN}:/data/back/`, '--connect', 'qemu:///system', '--json'], { env });
    expect(w.code, w.stdout + w.stderr).toBe(0);
    // The guest's agent, asked through virsh, reads back what the restore point holds.
    const open = JSON.parse(await virsh('qemu-agent-command', DOMAIN, JSON.stringify({ execute: 'guest-file-open', arguments: { path: '/data/back/hooks.log', mode: 'r' } }))) as { return: number };
    const read = JSON.parse(await virsh('qemu-agent-command', DOMAIN, JSON.stringify({ execute: 'guest-file-read', arguments: { handle: open.return, count: 65536 } }))) as { return: { 'buf-b64': string } };
    await virsh('qemu-agent-command', DOMAIN, JSON.stringify({ execute: 'guest-file-close', arguments: { handle: open.return } }));
    const out = `${tmp.path}/r-hooks`;
    expect((await runCli(['restore', `${r.result.snapshot}:/vda/fs/hooks.log`, '--target', out], { env })).code).toBe(0);
    expect(Buffer.from(read.return['buf-b64'], 'base64').equals(await readFile(`${out}/hooks.log`))).toBe(true);
  });

  it('restore vm --instant boots the restore point as a transient libvirt domain on the export, copies while it runs, and leaves it defined on local disks', async () => {
    const name = 'bw-lv-instant';
    await removeDomain(name);
    const target = `${tmp.path}/r-instant`;
    await mkdir(target, { mode: 0o755 });
    const run = await startCli<{ phase: string; domain: { name: string; uri: string } }>(['restore', 'vm', first.snapshot!, '--instant', '--target', target, '--name', name, '--copy-limit', '8M'], { env, readyTimeoutMs: 120_000 });
    try {
      expect(run.ready).toMatchObject({ phase: 'booted', domain: { name, uri: 'qemu:///system' } });
      // libvirt's view at the start: a transient domain whose disk is backed by the NBD export.
      const booted = await virsh('dumpxml', name);
      expect(booted).toContain(`${target}/vda.qcow2`);
      expect(booted).toMatch(/protocol='nbd'/);
      expect(/Persistent:\s+no/.test(await virsh('dominfo', name))).toBe(true);
      await waitForAgent(name);
      expect(await run.exited, run.output().stderr).toBe(0);
      // Afterwards: local disk only, persistent, and still answering.
      const after = await virsh('dumpxml', name);
      expect(after).not.toMatch(/protocol='nbd'/);
      expect(/Persistent:\s+yes/.test(await virsh('dominfo', name))).toBe(true);
      expect((JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', `${target}/vda.qcow2`]).toString()) as { 'backing-filename'?: string })['backing-filename']).toBeUndefined();
      await waitForAgent(name);
      expect(after).not.toContain((await virsh('domuuid', DOMAIN)).trim());
    } finally {
      await run.stop('SIGKILL').catch(() => undefined);
      await removeDomain(name);
    }
  });
});
