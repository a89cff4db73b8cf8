// What a running QEMU VM is made of, from QMP: its writable disks (named vda, vdb, … in the order
// QEMU lists them) with their bitmaps, and the configuration needed to define it again.
import type { QmpBlockInfo, QmpClient } from '../../protocols/qmp/client.js';
import type { VmConfig } from '../../repository/snapshot.js';

export interface QemuDisk {
  name: string;
  device: string;
  node: string;
  format: string;
  size: number;
  file: string;
  bitmaps: { name: string; recording: boolean; persistent: boolean; inconsistent: boolean; busy: boolean; granularity: number }[];
}

/** The configuration recorded with a VM snapshot. */
export type QemuVmConfig = VmConfig;

export function disksOf(blocks: QmpBlockInfo[]): QemuDisk[] {
  return blocks
    .filter((b) => b.inserted && !b.inserted.ro)
    .map((b, i) => {
      const ins = b.inserted!;
      const bitmaps = ((b['dirty-bitmaps'] ?? ins['dirty-bitmaps'] ?? []) as Record<string, unknown>[]).map((m) => ({
        name: String(m['name']),
        recording: Boolean(m['recording']),
        persistent: Boolean(m['persistent']),
        inconsistent: Boolean(m['inconsistent']),
        busy: Boolean(m['busy']),
        granularity: Number(m['granularity'] ?? 0),
      }));
      return { name: `vd${String.fromCharCode(97 + i)}`, device: b.qdev ?? b.device, node: ins['node-name'], format: ins.image.format, size: ins.image['virtual-size'], file: ins.image.filename, bitmaps };
    });
}

async function optional<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch {
    return undefined;
  }
}

export async function inspectQemu(qmp: QmpClient): Promise<{ disks: QemuDisk[]; config: QemuVmConfig }> {
  const disks = disksOf(await qmp.execute('query-block'));
  const [named, version, uuid, mem, cpus, machine] = await Promise.all([
    qmp.execute('query-name'),
    qmp.execute('query-version'),
    optional(qmp.execute<{ UUID: string }>('query-uuid')),
    optional(qmp.execute<{ 'base-memory': number }>('query-memory-size-summary')),
    optional(qmp.execute<unknown[]>('query-cpus-fast')),
    optional(qmp.execute<string>('qom-get', { path: '/machine', property: 'type' })),
  ]);
  const config: QemuVmConfig = {
    name: named.name ?? 'unnamed',
    ...(uuid && uuid.UUID !== '00000000-0000-0000-0000-000000000000' ? { uuid: uuid.UUID } : {}),
    ...(machine ? { machine } : {}),
    ...(mem ? { memoryBytes: mem['base-memory'] } : {}),
    ...(cpus ? { cpus: cpus.length } : {}),
    disks: disks.map(({ name, device, format, size, file }) => ({ name, device, format, size, file })),
    qemuVersion: `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}`,
  };
  return { disks, config };
}
