// A QEMU command line that defines a restored VM again from the configuration its snapshot recorded:
// machine type, memory, CPUs, NICs (model and MAC; the network behind them is the host's to choose),
// and the restored disk images as virtio disks in the recorded order. Written as a shell script next
// to the images by `restore vm --define`.
import type { VmConfig } from '../../repository/snapshot.js';

export interface RestoredDisk {
  name: string;
  path: string;
  /** QEMU's block driver name: raw, qcow2, vmdk, vhdx, vdi, vpc. */
  format: string;
  /**
   * What the guest sees when a read fails: 'report' (an I/O error, QEMU's default) or 'stop' (the VM
   * pauses until `cont`). Instant restore stops, so a lost export pauses the guest instead of failing it.
   */
  readError?: 'report' | 'stop';
}

/** Single-quoted for the shell: safe whatever the characters. */
function sh(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** A QEMU option value: commas are doubled (QEMU's escape inside option lists). */
function opt(s: string): string {
  return s.replace(/,/g, ',,');
}

/** The device id a disk had (vd0 from /machine/peripheral/vd0/virtio-backend), or its snapshot name. */
function deviceId(device: string, fallback: string): string {
  const m = /^\/machine\/peripheral\/([^/]+)/.exec(device) ?? /^([A-Za-z][A-Za-z0-9_.-]*)$/.exec(device);
  return m?.[1] ?? fallback;
}

/** The VM's name as a file name: it comes from the repository, so nothing but plain characters. */
export function fileNameOf(vmName: string): string {
  const safe = vmName.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  return safe.length > 0 ? safe.slice(0, 100) : 'vm';
}

/** QEMU's arguments for the VM on `disks`, with a QMP and a guest agent socket at <dir>/<name>.qmp and .qga. */
export function qemuArgs(vm: VmConfig, disks: RestoredDisk[], opts: { dir: string }): string[] {
  const args: string[] = ['-name', opt(`guest=${vm.name}`)];
  if (vm.machine) args.push('-machine', opt(vm.machine));
  args.push('-cpu', opt(vm.cpuModel ?? 'max'));
  if (vm.memoryBytes) args.push('-m', `${Math.max(1, Math.round(vm.memoryBytes / 1048576))}M`);
  if (vm.cpus) args.push('-smp', String(vm.cpus));
  if (vm.uuid) args.push('-uuid', vm.uuid);
  if (vm.boot?.kernel) args.push('-kernel', vm.boot.kernel);
  if (vm.boot?.initrd) args.push('-initrd', vm.boot.initrd);
  if (vm.boot?.append) args.push('-append', vm.boot.append);
  disks.forEach((d, i) => {
    const id = deviceId(vm.disks.find((x) => x.name === d.name)?.device ?? '', d.name);
    args.push('-blockdev', JSON.stringify({ driver: 'file', filename: d.path, 'node-name': `file${i}` }));
    args.push('-blockdev', JSON.stringify({ driver: d.format, file: `file${i}`, 'node-name': `disk${i}` }));
    args.push('-device', JSON.stringify({ driver: 'virtio-blk-pci', drive: `disk${i}`, id, ...(d.readError ? { rerror: d.readError } : {}) }));
  });
  for (const [i, n] of (vm.nics ?? []).entries()) {
    // The recorded NIC, on user-mode networking until the admin puts it on its bridge.
    args.push('-netdev', `user,id=net${i}`, '-device', `${opt(n.model ?? 'virtio-net-pci')},netdev=net${i},id=${opt(n.id)}${n.mac ? `,mac=${opt(n.mac)}` : ''}`);
  }
  const base = `${opts.dir}/${fileNameOf(vm.name)}`;
  args.push('-qmp', `unix:${opt(`${base}.qmp`)},server=on,wait=off`);
  args.push('-device', 'virtio-serial-pci,id=bulwark-vser0');
  args.push('-chardev', `socket,id=bulwark-qga0,path=${opt(`${base}.qga`)},server=on,wait=off`);
  args.push('-device', 'virtserialport,bus=bulwark-vser0.0,chardev=bulwark-qga0,name=org.qemu.guest_agent.0');
  return args;
}

export function qemuScript(vm: VmConfig, disks: RestoredDisk[], opts: { dir: string }): string {
  const args = qemuArgs(vm, disks, opts);
  return [
    '#!/bin/sh',
    `# VM ${vm.name} as its Bulwark snapshot recorded it${vm.qemuVersion ? ` (QEMU ${vm.qemuVersion})` : ''}, on the restored disks.`,
    '# Review before use: networking is user-mode, the display is QEMU\'s default. Extra arguments are',
    '# passed to QEMU, e.g. -display none -daemonize. ACCEL=tcg runs it without KVM.',
    `exec qemu-system-x86_64 \\`,
    // KVM where it works, software emulation otherwise; ACCEL=tcg forces the latter.
    '  -accel "${ACCEL:-kvm:tcg}" \\',
    // Every option here takes one value: one line per pair.
    ...args.flatMap((a, i) => (i % 2 === 0 ? [`  ${a} ${sh(args[i + 1]!)} \\`] : [])),
    '  "$@"',
    '',
  ].join('\n');
}
