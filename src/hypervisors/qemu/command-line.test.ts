import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { fileNameOf, qemuScript } from './command-line.js';

describe('qemuScript', () => {
  const vm = {
    name: "web01's",
    uuid: '4b2a5f7e-8d4c-4f7e-9a43-0d2c6f1e9b11',
    machine: 'pc-q35-7.2',
    memoryBytes: 2 * 1024 ** 3,
    cpus: 2,
    cpuModel: 'host',
    disks: [{ name: 'vda', device: '/machine/peripheral/vd0/virtio-backend', format: 'qcow2', size: 1, file: '/img/a.qcow2' }],
    nics: [{ id: 'net0', mac: '52:54:00:12:34:56', model: 'virtio-net-pci' }],
    qemuVersion: '7.2.22',
  };
  const script = qemuScript(vm, [{ name: 'vda', path: '/restore/vd a.qcow2', format: 'qcow2' }], { dir: '/restore' });

  it('defines the machine as recorded, on the restored disks', () => {
    expect(script).toMatch(/^#!\/bin\/sh/);
    expect(script).toContain("-machine 'pc-q35-7.2'");
    expect(script).toContain("-m '2048M'");
    expect(script).toContain("-smp '2'");
    expect(script).toContain("-cpu 'host'");
    expect(script).toContain(`-uuid '${vm.uuid}'`);
    expect(script).toContain('"filename":"/restore/vd a.qcow2"');
    expect(script).toContain('"id":"vd0"');
    expect(script).toContain("-device 'virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:56'");
  });

  it('is valid shell whatever the names hold: the words reach QEMU intact', () => {
    // Run it with `exec` replaced by printing each argument on its own line.
    const words = execFileSync('sh', ['-c', script.replace('exec qemu-system-x86_64', 'printf "%s\\n"')], { encoding: 'utf8' }).trim().split('\n');
    expect(words).toContain("guest=web01's");
    expect(words).toContain('-qmp');
    expect(words[words.indexOf('-qmp') + 1]).toBe('unix:/restore/web01_s.qmp,server=on,wait=off');
  });

  it('keeps names from the repository out of other folders', () => {
    expect(fileNameOf('../../etc/x')).toBe('__.._etc_x');
    expect(fileNameOf('')).toBe('vm');
  });
});
