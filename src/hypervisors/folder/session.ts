// The machine-folder driver (--connect dir:PATH): VirtualBox, VMware Workstation and Hyper-V VMs kept
// as folders, backed up offline through the format readers while the VM is not running. A running VM
// is refused: live backup of these hypervisors is not available on Linux (docs/vm-folders.md).
import { promises as fsp } from 'node:fs';
import { basename, join } from 'node:path';
import { openImage } from '../../formats/open.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import { OfflinePoint } from '../offline-point.js';
import { isFolder, type FolderEndpoint, type VmEndpoint } from '../registry.js';
import type { GuestAgent, PointInTime, VmDisk, VmDriver, VmInfo, VmSession } from '../session.js';
import { readHyperV } from './hyperv.js';
import { configFiles, type Machine } from './machine.js';
import { readVirtualBox } from './virtualbox.js';
import { readVmware } from './vmware.js';

const LABEL = { virtualbox: 'VirtualBox', vmware: 'VMware Workstation', hyperv: 'Hyper-V' } as const;

function asFolder(e: VmEndpoint): FolderEndpoint {
  if (!isFolder(e)) throw new Error('the machine-folder driver was handed another endpoint');
  return e;
}

/** The machine's configuration file in `dir`, relative, or undefined when `dir` holds none. */
async function findConfig(dir: string): Promise<{ kind: Machine['hypervisor']; config: string } | undefined> {
  const names = await fsp.readdir(dir).catch((err: unknown) => {
    throw new BulwarkError('not-found', `cannot read the machine folder '${dir}': ${(err as Error).message}`, { cause: err });
  });
  const found: { kind: Machine['hypervisor']; config: string }[] = [];
  for (const n of names) {
    if (/\.vbox$/i.test(n)) found.push({ kind: 'virtualbox', config: n });
    else if (/\.vmx$/i.test(n)) found.push({ kind: 'vmware', config: n });
    else if (/\.vmcx$/i.test(n)) found.push({ kind: 'hyperv', config: n });
  }
  const vms = names.find((n) => n.toLowerCase() === 'virtual machines');
  if (vms) {
    for (const n of await fsp.readdir(join(dir, vms)).catch(() => [] as string[])) {
      if (/^[0-9a-f-]{36}\.(vmcx|xml)$/i.test(n)) found.push({ kind: 'hyperv', config: `${vms}/${n}` });
    }
  }
  if (found.length > 1 && !found.every((f) => f.kind === 'hyperv' && f.config.replace(/\.\w+$/, '') === found[0]!.config.replace(/\.\w+$/, ''))) {
    throw new BulwarkError('usage', `'${dir}' holds more than one machine configuration (${found.map((f) => f.config).join(', ')})`, { hint: 'point dir: at the folder of one machine' });
  }
  // Hyper-V 2016+ keeps a .vmcx; an older .xml beside it is not the live one.
  return found.find((f) => /\.vmcx$/i.test(f.config)) ?? found[0];
}

export async function readMachine(dir: string): Promise<Machine> {
  const found = await findConfig(dir);
  if (!found) throw new BulwarkError('not-found', `'${dir}' holds no VirtualBox (.vbox), VMware (.vmx) or Hyper-V (Virtual Machines/*.vmcx) machine`, { hint: 'point dir: at the machine\'s folder' });
  if (found.kind === 'virtualbox') return readVirtualBox(dir, found.config);
  if (found.kind === 'vmware') return readVmware(dir, found.config);
  return readHyperV(dir, found.config);
}

class FolderSession implements VmSession {
  readonly hasAgent = false;
  readonly scratchRule = 'shadow';
  readonly offline: { consistency: 'application' | 'crash'; why: string };

  constructor(
    readonly name: string,
    private readonly m: Machine,
  ) {
    const kind = LABEL[m.hypervisor];
    this.offline = m.saved
      ? { consistency: 'crash', why: `${kind} VM ${name}: ${m.saved}; its disks alone are as after a power cut` }
      : { consistency: 'application', why: `${kind} VM ${name} is not running: its disks were read as they lie` };
  }

  get address(): string {
    return `dir:${this.m.dir}`;
  }

  async inspect(): Promise<{ disks: VmDisk[]; config: VmConfig }> {
    const disks: VmDisk[] = [];
    for (const d of this.m.disks) {
      const img = await openImage(d.file, d.format, this.m.parentOf ? { parentOf: this.m.parentOf } : {});
      await img.close();
      disks.push({ name: d.name, format: d.format, size: img.size, file: d.file, bitmaps: [] });
    }
    const config: VmConfig = {
      name: this.name,
      ...(this.m.uuid ? { uuid: this.m.uuid } : {}),
      ...(this.m.memoryBytes ? { memoryBytes: this.m.memoryBytes } : {}),
      ...(this.m.cpus ? { cpus: this.m.cpus } : {}),
      disks: disks.map((d) => ({ name: d.name, device: d.name, format: d.format, size: d.size, file: d.file })),
      folder: {
        hypervisor: this.m.hypervisor,
        config: this.m.config,
        disks: this.m.disks.map((d) => ({ name: d.name, path: d.restoreAs.path, format: d.restoreAs.format, ...(d.restoreAs.uuid ? { uuid: d.restoreAs.uuid } : {}), ...(d.key ? { key: d.key } : {}) })),
        files: [],
      },
    };
    return { disks, config };
  }

  async configFiles(): Promise<{ path: string; file: string }[]> {
    return (await configFiles(this.m.dir)).map((path) => ({ path, file: join(this.m.dir, path) }));
  }

  async cleanupLeftovers(): Promise<string[]> {
    return [];
  }

  async dropStaleBitmaps(): Promise<void> {}

  async preparePoint(): Promise<PointInTime> {
    return new OfflinePoint(
      this.name,
      this.m.disks.map((d) => ({ name: d.name, file: d.file, format: d.format, ...(this.m.parentOf ? { parentOf: this.m.parentOf } : {}) })),
      () => this.m.running(),
    );
  }

  async guard(): Promise<void> {}

  agent(): GuestAgent | undefined {
    return undefined;
  }

  private notRunning(): never {
    throw new BulwarkError('usage', `VM ${this.name} is a ${LABEL[this.m.hypervisor]} machine folder read offline: it is not running, so it cannot be paused, stopped or started`, { hint: 'use the default --mode' });
  }

  async pause(): Promise<void> {
    this.notRunning();
  }

  async resume(): Promise<void> {}

  async shutdown(): Promise<'agent' | 'acpi'> {
    this.notRunning();
  }

  async start(): Promise<{ settled: Promise<void> }> {
    this.notRunning();
  }

  async close(): Promise<void> {}
}

export const folderDriver: VmDriver = {
  name: 'folder',

  async list(e) {
    const endpoint = asFolder(e);
    if (await findConfig(endpoint.dir)) return [{ ...endpoint, name: endpoint.name ?? (await readMachine(endpoint.dir)).name }];
    // A folder of machine folders (VirtualBox's "VirtualBox VMs", a Hyper-V export folder).
    const out: VmEndpoint[] = [];
    for (const d of await fsp.readdir(endpoint.dir, { withFileTypes: true })) {
      if (!d.isDirectory()) continue;
      const sub = join(endpoint.dir, d.name);
      if (await findConfig(sub).catch(() => undefined)) out.push({ ...endpoint, dir: sub, name: await readMachine(sub).then((m) => m.name, () => d.name) });
    }
    return out;
  },

  async open(e) {
    const endpoint = asFolder(e);
    const m = await readMachine(endpoint.dir);
    const name = endpoint.name ?? m.name;
    const up = await m.running();
    if (up) {
      throw new BulwarkError('failed', `${LABEL[m.hypervisor]} VM ${name} ${up}: its disks can only be read while it is not running`, {
        hint: 'shut it down (or suspend it) and run the backup again; live backup of this hypervisor is not available on Linux',
      });
    }
    return new FolderSession(name, m);
  },

  async describe(e): Promise<VmInfo> {
    const endpoint = asFolder(e);
    const m = await readMachine(endpoint.dir);
    const up = await m.running();
    const disks: VmDisk[] = [];
    for (const d of m.disks) {
      const size = await openImage(d.file, d.format, m.parentOf ? { parentOf: m.parentOf } : {}).then(
        async (img) => {
          await img.close();
          return img.size;
        },
        () => 0,
      );
      disks.push({ name: d.name, format: d.format, size, file: d.file, bitmaps: [] });
    }
    return {
      name: endpoint.name ?? m.name,
      address: `dir:${m.dir}`,
      status: up ? 'running' : m.saved ? 'saved' : 'shut off',
      qemuVersion: '',
      disks,
      scratchRule: 'shadow',
      agent: { state: 'not configured', error: `${LABEL[m.hypervisor]} machine folder, read offline: no guest agent` },
    };
  },

  async nameOf(e) {
    const endpoint = asFolder(e);
    return endpoint.name ?? (await readMachine(endpoint.dir).then((m) => m.name, () => basename(endpoint.dir)));
  },

  canFleece() {
    return { ok: true };
  },
};
