// VirtualBox machine folders: <name>.vbox (XML) beside the disks, differencing images of snapshots in
// Snapshots/. The media registry in the .vbox is the only record of which image is whose parent
// (a VDI names its parent by UUID alone); the current state's attachments name the images the VM
// writes now. Restored, each chain comes back as one VDI carrying the attached image's UUID, and the
// .vbox is rewritten to match: snapshots dropped, the registry flattened (VirtualBox checks both).
import { promises as fsp } from 'node:fs';
import type * as FastXml from 'fast-xml-parser';
import { dirname, join } from 'node:path';
import { lazyRequire } from '../../util/lazy-require.js';
import { BulwarkError } from '../../util/errors.js';
import { diskName, localPath, restorePath, type Machine, type MachineDisk } from './machine.js';

type Node = Record<string, unknown>;

const fastXml = lazyRequire<typeof FastXml>('fast-xml-parser');
const parserOptions: FastXml.X2jOptions = { ignoreAttributes: false, attributeNamePrefix: '@', parseAttributeValue: false, parseTagValue: false, isArray: (name) => ['HardDisk', 'StorageController', 'AttachedDevice', 'Snapshot'].includes(name) };
const ordered = { ignoreAttributes: false, attributeNamePrefix: '@', preserveOrder: true, parseAttributeValue: false, parseTagValue: false, trimValues: false } as const;

const FORMATS: Record<string, MachineDisk['format']> = { vdi: 'vdi', vmdk: 'vmdk', vhd: 'vhd' };

const bare = (uuid: string): string => uuid.replace(/[{}]/g, '').toLowerCase();
const arr = (v: unknown): Node[] => (Array.isArray(v) ? (v as Node[]) : v ? [v as Node] : []);

interface Medium {
  uuid: string;
  location: string;
  format: string;
  parent?: string;
}

/** Every hard disk of the media registry, with its parent (nesting is parenthood). */
function registry(machine: Node): Map<string, Medium> {
  const out = new Map<string, Medium>();
  const walk = (list: Node[], parent: string | undefined): void => {
    for (const hd of list) {
      const uuid = bare(String(hd['@uuid'] ?? ''));
      out.set(uuid, { uuid, location: String(hd['@location'] ?? ''), format: String(hd['@format'] ?? '').toLowerCase(), ...(parent ? { parent } : {}) });
      walk(arr(hd['HardDisk']), uuid);
    }
  };
  walk(arr((machine['MediaRegistry'] as Node | undefined)?.['HardDisks'] && ((machine['MediaRegistry'] as Node)['HardDisks'] as Node)['HardDisk']), undefined);
  return out;
}

export async function readVirtualBox(dir: string, config: string): Promise<Machine> {
  const file = join(dir, config);
  let doc: Node;
  try {
    doc = new (fastXml().XMLParser)(parserOptions).parse(await fsp.readFile(file, 'utf8')) as Node;
  } catch (err) {
    throw new BulwarkError('usage', `'${file}' is not a readable VirtualBox machine file: ${(err as Error).message}`);
  }
  const machine = (doc['VirtualBox'] as Node | undefined)?.['Machine'] as Node | undefined;
  if (!machine) throw new BulwarkError('usage', `'${file}' has no <VirtualBox><Machine>: not a VirtualBox machine file`);
  const name = String(machine['@name'] ?? '');
  const uuid = bare(String(machine['@uuid'] ?? ''));
  const hardware = (machine['Hardware'] as Node | undefined) ?? {};
  // VirtualBox 6 keeps the controllers beside <Hardware>, 7 inside it; <Snapshot> subtrees (older states) are not the VM's now.
  const controllers = arr(((machine['StorageControllers'] ?? hardware['StorageControllers']) as Node | undefined)?.['StorageController']);
  const media = registry(machine);
  const disks: MachineDisk[] = [];
  for (const c of controllers) {
    for (const a of arr(c['AttachedDevice'])) {
      if (a['@type'] !== 'HardDisk') continue;
      const id = bare(String((a['Image'] as Node | undefined)?.['@uuid'] ?? ''));
      const m = media.get(id);
      if (!m) throw new BulwarkError('usage', `'${file}': a disk attached to ${String(c['@name'])} port ${String(a['@port'])} ({${id}}) is not in the media registry`);
      const format = FORMATS[m.format];
      if (!format) throw new BulwarkError('usage', `'${file}': disk ${m.location} is in VirtualBox's ${m.format} format, which Bulwark does not read`, { hint: 'VDI, VMDK and VHD disks are read' });
      const path = localPath(dirname(file), m.location);
      const rel = restorePath(dir, path);
      disks.push({
        name: diskName(String(c['@name'] ?? 'disk'), `${String(a['@port'] ?? 0)}-${String(a['@device'] ?? 0)}`),
        file: path,
        format,
        restoreAs: { path: rel.replace(/\.[^./]+$/, '') + '.vdi', format: 'vdi', uuid: id },
      });
    }
  }
  const ram = Number((hardware['Memory'] as Node | undefined)?.['@RAMSize']);
  const cpus = Number((hardware['CPU'] as Node | undefined)?.['@count'] ?? 1);
  const stateFile = machine['@stateFile'];
  return {
    hypervisor: 'virtualbox',
    name,
    uuid,
    dir,
    config,
    ...(ram > 0 ? { memoryBytes: ram * 1024 * 1024 } : {}),
    ...(cpus > 0 ? { cpus } : {}),
    disks,
    ...(typeof stateFile === 'string' && stateFile ? { saved: `it is saved with its memory (${stateFile})` } : {}),
    parentOf: async (id) => {
      const m = media.get(bare(id));
      return m ? localPath(dirname(file), m.location) : undefined;
    },
    running: () => runningVirtualBox(uuid, name, file),
  };
}

/** A VirtualBox VM runs in a process started for it by UUID or name (VirtualBoxVM, VBoxHeadless --startvm). */
async function runningVirtualBox(uuid: string, name: string, file: string): Promise<string | undefined> {
  for (const pid of await fsp.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue;
    const args = (await fsp.readFile(`/proc/${pid}/cmdline`, 'latin1').catch(() => '')).split('\0');
    const i = args.findIndex((a) => a === '--startvm' || a === '-startvm' || a === '-s');
    const vm = i >= 0 ? args[i + 1] : undefined;
    if ((vm && (bare(vm) === uuid || vm === name)) || args.includes(file)) return `is running (process ${pid}: ${args.filter(Boolean).join(' ').slice(0, 120)})`;
  }
  return undefined;
}

/**
 * The .vbox of a restored machine: its snapshots and saved state dropped, and each restored disk a
 * plain VDI of its own in the registry (same UUID as the image the VM wrote, so the attachments hold).
 */
export function restoredVbox(xml: string, disks: { uuid: string; path: string }[]): string {
  const tree = new (fastXml().XMLParser)(ordered).parse(xml) as Node[];
  const vbox = tree.find((n) => 'VirtualBox' in n);
  const machine = (vbox?.['VirtualBox'] as Node[] | undefined)?.find((n) => 'Machine' in n);
  if (!machine) throw new BulwarkError('repository-corrupt', 'the .vbox kept with this restore point has no <Machine>');
  const attrs = (machine[':@'] ?? {}) as Node;
  delete attrs['@currentSnapshot'];
  delete attrs['@stateFile'];
  const kept: Node[] = [];
  for (const c of machine['Machine'] as Node[]) {
    if ('Snapshot' in c) continue;
    if ('MediaRegistry' in c) {
      for (const r of c['MediaRegistry'] as Node[]) {
        if (!('HardDisks' in r)) continue;
        r['HardDisks'] = disks.map((d) => ({ HardDisk: [], ':@': { '@uuid': `{${d.uuid}}`, '@location': d.path, '@format': 'VDI', '@type': 'Normal' } }));
      }
    }
    kept.push(c);
  }
  machine['Machine'] = kept;
  return new (fastXml().XMLBuilder)({ ...ordered, format: false, suppressEmptyNode: true }).build(tree) as string;
}
