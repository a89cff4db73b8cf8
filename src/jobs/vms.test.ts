import { describe, expect, it } from 'vitest';
import type { VmDisk } from '../hypervisors/session.js';
import { qemuCanFleece, qemuDriver } from '../hypervisors/qemu/session.js';
import { checkVm, expectedWrites, newBitmapName, type VmInfo } from './vms.js';

const GiB = 1024 ** 3;
const now = Date.UTC(2026, 10, 25, 12);

function disk(size: number, bitmaps: { name: string; count: number; recording?: boolean }[]): VmDisk {
  return {
    name: 'vda', format: 'qcow2', size, file: '/img/a.qcow2', layered: false,
    bitmaps: bitmaps.map((b) => ({ recording: b.recording ?? true, inconsistent: false, ...b })),
  };
}

describe('expectedWrites', () => {
  it('is the change rate since the base bitmap was made times a full read of the disk', () => {
    const made = newBitmapName(now - 3600_000); // an hour ago
    // 3.6 GiB dirty in an hour = 1 MiB/s; a 100 GiB disk reads in 1024 s at 100 MiB/s.
    const e = expectedWrites([disk(100 * GiB, [{ name: made, count: 3.6 * GiB }])], now);
    expect(e.bytesPerSecond).toBeCloseTo(1.024 * 1024 ** 2, -2);
    expect(e.bytes / GiB).toBeCloseTo(1.024, 2);
  });
  it('is 0 without a timed bitmap of ours, or with one too young to measure', () => {
    expect(expectedWrites([disk(GiB, [{ name: 'bulwark-0123456789abcdef', count: GiB }, { name: 'user-bitmap', count: GiB }])], now).bytes).toBe(0);
    expect(expectedWrites([disk(GiB, [{ name: newBitmapName(now - 10_000), count: GiB }])], now).bytes).toBe(0);
  });
});

describe('checkVm scratch rule', () => {
  const vm = (disks: VmDisk[]): VmInfo => ({ name: 'web01', address: '/q', status: 'running', qemuVersion: '7.2.0', disks, scratchRule: 'shadow', agent: { state: 'responding', version: '7.2.0' } });
  it('adds twice the expected writes to max(10 GiB, 15 %) and names the measured rate', () => {
    const busy = disk(100 * GiB, [{ name: newBitmapName(Date.now() - 3600_000), count: 36 * GiB }]); // ~10 MiB/s
    const findings = checkVm(qemuDriver, vm([busy]), { free: 16 * GiB }, { scratchDir: '/var/tmp' });
    const f = findings.find((x) => x.check === 'scratch');
    expect(f?.message).toMatch(/35\.\d GiB needed \(max.*\+ 2 × 10\.\d GiB expected writes, measured change rate 10\.\d+ MiB\/s\)/);
    expect(checkVm(qemuDriver, vm([disk(100 * GiB, [])]), { free: 16 * GiB }, { scratchDir: '/var/tmp' }).some((x) => x.check === 'scratch')).toBe(false);
  });
  it('reports a fleecing filter an interrupted backup left in the write path', () => {
    const left = { ...disk(GiB, []), layered: true };
    const f = checkVm(qemuDriver, vm([left]), { free: 100 * GiB }, { scratchDir: '/var/tmp' }).find((x) => x.check === 'leftovers');
    expect(f?.fix).toMatch(/bulwark backup vm web01/);
  });
  it('refuses QEMU older than 7.1, which cannot break the snapshot instead of the guest', () => {
    expect(qemuCanFleece('7.2.22')).toBe(true);
    expect(qemuCanFleece('8.0.0')).toBe(true);
    expect(qemuCanFleece('7.0.0')).toBe(false);
    expect(qemuCanFleece('6.2.0')).toBe(false);
    const old = { ...vm([disk(GiB, [])]), qemuVersion: '6.2.0' };
    expect(checkVm(qemuDriver, old, { free: 100 * GiB }, { scratchDir: '/var/tmp' }).find((x) => x.check === 'qemu-version')?.severity).toBe('error');
    expect(checkVm(qemuDriver, vm([disk(GiB, [])]), { free: 100 * GiB }, { scratchDir: '/var/tmp' }).some((x) => x.check === 'qemu-version')).toBe(false);
  });
});
