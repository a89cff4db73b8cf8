// What a running QEMU VM is made of, from QMP: its writable disks (named vda, vdb, … in the order
// QEMU lists them) with the node fleecing attaches to and the bitmaps incrementals rely on, and the
// configuration needed to define it again (machine type, memory, CPUs, NICs).
//
// Disks are found through the block graph, not query-block alone: a killed backup can leave its
// copy-before-write filter between a device and its disk, and the disk is the node below it.
import type { QmpClient } from '../../protocols/qmp/client.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { diskRootOf, formatNodeOf, readBlockGraph, type BitmapInfo, type BlockGraph } from './block-graph.js';

export interface QemuDisk {
  name: string;
  /** The device's id or QOM path (query-block `qdev`). */
  device: string;
  /** QOM path whose `drive` property attaches the device to a node. */
  qomPath: string;
  /** The device's own disk node, below any layer of ours: fleecing attaches above it. */
  node: string;
  /** The first non-filter node at or below `node` (qcow2, raw): where dirty bitmaps live. */
  bitmapNode: string;
  format: string;
  size: number;
  file: string;
  bitmaps: BitmapInfo[];
  /** The device is still attached to a layer of ours (a killed run's). */
  layered: boolean;
}

/** The configuration recorded with a VM snapshot. */
export type QemuVmConfig = VmConfig;

/** Writable disks of the graph; `isOurs` recognises layers Bulwark adds, to look through them. */
export function disksOfGraph(graph: BlockGraph, isOurs: (node: string) => boolean): QemuDisk[] {
  const disks: QemuDisk[] = [];
  for (const d of graph.devices) {
    const node = diskRootOf(graph, d.root, isOurs);
    const bitmapNode = formatNodeOf(graph, node);
    const top = graph.nodes.get(node);
    const fmt = graph.nodes.get(bitmapNode);
    if (!top || !fmt || top.readOnly) continue;
    disks.push({
      name: `vd${String.fromCharCode(97 + disks.length)}`,
      device: d.qdev,
      qomPath: d.qomPath,
      node,
      bitmapNode,
      format: fmt.driver,
      size: top.virtualSize,
      file: fmt.filename,
      bitmaps: fmt.bitmaps,
      layered: node !== d.root,
    });
  }
  return disks;
}

/** A QMP answer that may legitimately be missing (an older QEMU, a device without the property). */
export async function optional<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch {
    return undefined;
  }
}

export async function inspectDisks(qmp: QmpClient, isOurs: (node: string) => boolean): Promise<QemuDisk[]> {
  return disksOfGraph(await readBlockGraph(qmp), isOurs);
}

export async function inspectQemu(qmp: QmpClient, isOurs: (node: string) => boolean): Promise<{ disks: QemuDisk[]; config: QemuVmConfig }> {
  const disks = await inspectDisks(qmp, isOurs);
  const [named, version, uuid, mem, cpus, machine, peripherals, kernel, initrd, append] = await Promise.all([
    qmp.execute('query-name'),
    qmp.execute('query-version'),
    optional(qmp.execute<{ UUID: string }>('query-uuid')),
    optional(qmp.execute<{ 'base-memory': number; 'plugged-memory'?: number }>('query-memory-size-summary')),
    optional(qmp.execute<unknown[]>('query-cpus-fast')),
    optional(qmp.execute<string>('qom-get', { path: '/machine', property: 'type' })),
    optional(qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/machine/peripheral' })),
    // Direct kernel boot: the machine's own properties (empty when the guest boots from its disk).
    optional(qmp.execute<string>('qom-get', { path: '/machine', property: 'kernel' })),
    optional(qmp.execute<string>('qom-get', { path: '/machine', property: 'initrd' })),
    optional(qmp.execute<string>('qom-get', { path: '/machine', property: 'append' })),
  ]);
  const boot = { ...(kernel ? { kernel } : {}), ...(initrd ? { initrd } : {}), ...(append ? { append } : {}) };
  // A NIC is a device with a MAC address: asking each device is simpler than knowing every NIC model.
  const nics: NonNullable<VmConfig['nics']> = [];
  for (const p of peripherals ?? []) {
    const model = /^child<(.+)>$/.exec(p.type)?.[1];
    if (!model) continue;
    const mac = await optional(qmp.execute<string>('qom-get', { path: `/machine/peripheral/${p.name}`, property: 'mac' }));
    if (typeof mac === 'string') nics.push({ id: p.name, mac, model });
  }
  // QOM types of CPUs are '<model>-<arch>-cpu', e.g. max-x86_64-cpu, Skylake-Server-x86_64-cpu.
  const firstCpu = (cpus as { 'qom-path'?: string }[] | undefined)?.[0]?.['qom-path'];
  const cpuType = firstCpu ? await optional(qmp.execute<string>('qom-get', { path: firstCpu, property: 'type' })) : undefined;
  const cpuModel = cpuType?.replace(/-[a-z0-9_]+-cpu$/, '');
  const config: QemuVmConfig = {
    name: named.name ?? 'unnamed',
    ...(uuid && uuid.UUID !== '00000000-0000-0000-0000-000000000000' ? { uuid: uuid.UUID } : {}),
    ...(machine ? { machine: machine.replace(/-machine$/, '') } : {}),
    ...(mem ? { memoryBytes: mem['base-memory'] + (mem['plugged-memory'] ?? 0) } : {}),
    ...(cpus ? { cpus: cpus.length } : {}),
    ...(cpuModel ? { cpuModel } : {}),
    ...(boot.kernel ? { boot } : {}),
    disks: disks.map(({ name, device, format, size, file }) => ({ name, device, format, size, file })),
    ...(nics.length > 0 ? { nics } : {}),
    qemuVersion: `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}`,
  };
  return { disks, config };
}
