// VMware Workstation machine folders: <name>.vmx (lines of key = "value") beside VMDK disks; a
// snapshot makes <disk>-000001.vmdk, a child that names its parent (parentFileNameHint), and the .vmx
// then names the child. A running VM holds .lck folders beside its files. Restored, each chain comes
// back as one monolithicSparse VMDK under the name the .vmx gives it, without the snapshot database.
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { BulwarkError } from '../../util/errors.js';
import { diskName, localPath, restorePath, type Machine, type MachineDisk } from './machine.js';

/** The .vmx as an ordered list of keys and values (keys are case-insensitive to VMware). */
export function parseVmx(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*([A-Za-z0-9_.:-]+)\s*=\s*"(.*)"\s*$/.exec(line);
    if (m) out.set(m[1]!.toLowerCase(), m[2]!.replace(/\|22/g, '"').replace(/\|7C/gi, '|'));
  }
  return out;
}

export async function readVmware(dir: string, config: string): Promise<Machine> {
  const file = join(dir, config);
  const vmx = parseVmx(await fsp.readFile(file, 'utf8'));
  const disks: MachineDisk[] = [];
  for (const [key, value] of vmx) {
    const m = /^((?:scsi|sata|ide|nvme)\d+:\d+)\.filename$/.exec(key);
    if (!m) continue;
    const dev = m[1]!;
    if (vmx.get(`${dev}.present`)?.toLowerCase() === 'false') continue;
    const type = vmx.get(`${dev}.devicetype`)?.toLowerCase() ?? 'disk';
    if (type.startsWith('cdrom') || type === 'atapi-cdrom' || !/\.vmdk$/i.test(value)) continue;
    const path = localPath(dirname(file), value);
    disks.push({ name: diskName(dev.replace(':', '-'), ''), file: path, format: 'vmdk', restoreAs: { path: restorePath(dir, path), format: 'vmdk' }, key: `${dev}.fileName` });
  }
  if (disks.length === 0) throw new BulwarkError('usage', `'${file}' names no virtual disk (scsiN:M.fileName = "….vmdk")`);
  const mem = Number(vmx.get('memsize'));
  const cpus = Number(vmx.get('numvcpus') ?? 1);
  const state = vmx.get('checkpoint.vmstate');
  const saved = state ? await fsp.stat(localPath(dirname(file), state)).then(() => `it is suspended with its memory (${state})`, () => undefined) : undefined;
  return {
    hypervisor: 'vmware',
    name: vmx.get('displayname') ?? config.replace(/\.vmx$/i, ''),
    ...(vmx.get('uuid.bios') ? { uuid: vmx.get('uuid.bios')!.replace(/[\s-]/g, '') } : {}),
    dir,
    config,
    ...(mem > 0 ? { memoryBytes: mem * 1024 * 1024 } : {}),
    ...(cpus > 0 ? { cpus } : {}),
    disks,
    ...(saved ? { saved } : {}),
    running: async () => {
      // VMware holds a <file>.lck folder beside the .vmx and each disk while the VM runs.
      for (const f of [file, ...disks.map((d) => d.file)]) {
        if (await fsp.stat(`${f}.lck`).then(() => true, () => false)) return `is running (VMware holds '${f}.lck')`;
      }
      return undefined;
    },
  };
}

/** The .vmx of a restored machine: every restored disk named where it now is, no suspended state. */
export function restoredVmx(text: string, disks: { key: string; path: string }[]): string {
  const lines = text.split(/\r?\n/).map((line) => {
    const m = /^\s*([A-Za-z0-9_.:-]+)\s*=/.exec(line);
    const key = m?.[1]?.toLowerCase();
    const d = disks.find((x) => x.key.toLowerCase() === key);
    if (d) return `${m![1]} = "${d.path.replace(/\|/g, '|7C').replace(/"/g, '|22')}"`;
    if (key === 'checkpoint.vmstate') return `${m![1]} = ""`;
    return line;
  });
  return lines.join('\n');
}
