// vm list and doctor through the CLI against a real running guest with a qcow2 and a raw disk.
import { execFileSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { ensureGuestBuilt, makeDataDisk, startGuest, type RunningGuest } from '../guest/guest.js';

let tmp: { path: string; cleanup(): Promise<void> };
let guest: RunningGuest;
let connect: string;
let smallScratch: string;

beforeAll(async () => {
  tmp = await tempDir('bw-doc-');
  const img = await ensureGuestBuilt();
  await makeDataDisk(`${tmp.path}/data.qcow2`, { sizeMiB: 64, format: 'qcow2', fill: img.sampleDir });
  await makeDataDisk(`${tmp.path}/logs.raw`, { sizeMiB: 16, format: 'raw' });
  guest = await startGuest({ dir: `${tmp.path}/g`, name: 'doc01', disks: [{ path: `${tmp.path}/data.qcow2`, format: 'qcow2' }, { path: `${tmp.path}/logs.raw`, format: 'raw' }], writer: false });
  connect = `qmp:${guest.qmpSocket},qga=${guest.qgaSocket}`;
  smallScratch = `${tmp.path}/scratch`;
  await mkdir(smallScratch);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', smallScratch]);
}, 180_000);

afterAll(async () => {
  await guest?.stop();
  execFileSync('umount', ['-l', smallScratch]);
  await tmp.cleanup();
});

describe('vm list and doctor', () => {
  it('lists the VM with its disks and a responding agent', async () => {
    const r = await runCli(['vm', 'list', '--connect', connect, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const [vm] = JSON.parse(r.stdout) as { name: string; status: string; disks: { format: string; size: number }[]; agent: { state: string; version?: string } }[];
    expect(vm!.status).toBe('running');
    expect(vm!.disks.map((d) => [d.format, d.size])).toEqual([
      ['qcow2', 64 * 1024 * 1024],
      ['raw', 16 * 1024 * 1024],
    ]);
    expect(vm!.agent.state).toBe('responding');
    const text = await runCli(['vm', 'list', '--connect', connect]);
    expect(text.stdout).toMatch(/vda qcow2 64\.0 MiB \(incremental\), vdb raw 16\.0 MiB \(full reads\)/);
    expect(vm!.agent.version).toMatch(/^\d+\.\d+/);
  });

  it('finds the raw disk and too little scratch space, with fixes, and exits 1', async () => {
    const r = await runCli(['doctor', '--connect', connect, '--scratch-dir', smallScratch, '--json']);
    expect(r.code).toBe(1);
    const f = JSON.parse(r.stdout) as { findings: { severity: string; check: string; message: string; fix?: string }[] };
    expect(f.findings).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ severity: 'error', check: 'scratch' }),
        expect.objectContaining({ severity: 'warning', check: 'bitmaps', message: expect.stringMatching(/raw disk/) }),
      ]),
    );
    expect(f.findings.every((x) => x.fix)).toBe(true);
  });

  it('finds the guest agent through QEMU when qga= is not given', async () => {
    const r = await runCli(['vm', 'list', '--connect', `qmp:${guest.qmpSocket}`, '--json']);
    const [vm] = JSON.parse(r.stdout) as { qga?: string; agent: { state: string } }[];
    expect(vm).toMatchObject({ qga: guest.qgaSocket, agent: { state: 'responding' } });
  });

  it('passes (exit 0) with enough scratch space; warns without an agent; fails on an unreachable VM', async () => {
    const ok = await runCli(['doctor', '--connect', connect, '--scratch-dir', '/var/tmp']);
    expect(ok.code, ok.stdout).toBe(0);
    expect(ok.stdout).toMatch(/WARNING .*raw disk/);
    const noAgent = jsonResult<{ findings: { check: string }[] }>(await runCli(['doctor', '--connect', `qmp:${guest.qmpSocket},qga=off`, '--scratch-dir', '/var/tmp', '--json']));
    expect(noAgent.findings.map((x) => x.check)).toContain('agent');
    const gone = await runCli(['doctor', '--connect', `qmp:${tmp.path}/nope.sock`, '--scratch-dir', '/var/tmp']);
    expect(gone.code).toBe(1);
    expect(gone.stdout).toMatch(/cannot reach QEMU/);
  });
});
