// A virtual machine kept as a folder by a desktop or Windows hypervisor — VirtualBox (.vbox),
// VMware Workstation (.vmx), Hyper-V (.vmcx, or .xml before Windows Server 2016) — read offline
// (docs/vm-folders.md). Each hypervisor's module reads its configuration into a Machine: the disks
// the VM writes now (the top of each snapshot chain; the readers follow the chain to its base), the
// configuration files kept with the restore point, and how to tell that the VM is running.
import { promises as fsp } from 'node:fs';
import { basename, join, relative, sep } from 'node:path';
import { BulwarkError } from '../../util/errors.js';

export type FolderHypervisor = 'virtualbox' | 'vmware' | 'hyperv';

export interface MachineDisk {
  /** Name in the restore point (from the controller and port: sata0-0, scsi0-1, …). */
  name: string;
  /** The image the VM writes now, absolute. */
  file: string;
  /** Its format as the readers know it. */
  format: 'vdi' | 'vmdk' | 'vhd' | 'vhdx';
  /** Where it is restored, relative to the machine folder, and as what (chains come back flattened). */
  restoreAs: { path: string; format: 'vdi' | 'vmdk' | 'vhd' | 'vhdx'; uuid?: string };
  /** VMware: the .vmx key that names the disk (rewritten when the restored file's name differs). */
  key?: string;
}

export interface Machine {
  hypervisor: FolderHypervisor;
  name: string;
  uuid?: string;
  /** The machine folder, absolute. */
  dir: string;
  /** The main configuration file, relative to `dir`. */
  config: string;
  memoryBytes?: number;
  cpus?: number;
  disks: MachineDisk[];
  /** The VM was suspended with its memory: its disks alone are as after a power cut. */
  saved?: string;
  /** Where a VDI's parent is, by its UUID (VirtualBox's media registry). */
  parentOf?: (uuid: string) => Promise<string | undefined>;
  /** Why the VM is running now, or undefined when it is not. */
  running(): Promise<string | undefined>;
}

/** Files a restore point keeps besides the disks: small configuration, not images, memory, logs or locks. */
const NOT_CONFIG = /\.(vdi|vmdk|vhd|vhdx|avhd|avhdx|qcow2|img|iso|raw|sav|vmem|vmss|vmsn|vmsd|vmrs|bin|log|lck|tmp)$|\.log\.\d+$|\.vbox-prev$/i;
export const MAX_CONFIG_FILE = 16 * 1024 * 1024;
const MAX_CONFIG_FILES = 500;

/** The configuration files of a machine folder, relative paths (a few levels deep, bounded). */
export async function configFiles(dir: string, skip: (rel: string) => boolean = () => false): Promise<string[]> {
  const out: string[] = [];
  const walk = async (at: string, depth: number): Promise<void> => {
    for (const e of await fsp.readdir(at, { withFileTypes: true })) {
      const full = join(at, e.name);
      const rel = relative(dir, full).split(sep).join('/');
      if (e.isDirectory()) {
        if (depth < 3 && !/^logs$/i.test(e.name) && !/\.lck$/i.test(e.name)) await walk(full, depth + 1);
        continue;
      }
      if (!e.isFile() || NOT_CONFIG.test(e.name) || skip(rel)) continue;
      if ((await fsp.stat(full)).size > MAX_CONFIG_FILE) continue;
      out.push(rel);
      if (out.length > MAX_CONFIG_FILES) throw new BulwarkError('usage', `'${dir}' holds more than ${MAX_CONFIG_FILES} small files: is it a machine folder?`, { hint: 'point dir: at the folder that holds the .vbox, .vmx or .vmcx file' });
    }
  };
  await walk(dir, 0);
  return out.sort();
}

/** A path named in a configuration file (Windows or POSIX), as a file inside the machine folder when it is one. */
export function localPath(dir: string, named: string): string {
  const p = named.replace(/\\/g, '/');
  if (p.startsWith('/')) return p;
  if (/^[A-Za-z]:\//.test(p)) return p; // a Windows path: the caller looks for the file by its name
  return join(dir, p);
}

/** A disk's name in the restore point: letters, digits and dashes only. */
export function diskName(controller: string, port: string | number): string {
  return `${controller}-${port}`.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '') || 'disk';
}

/** Where a disk is restored, relative to the machine folder: where it was, or beside the configuration when it lay outside. */
export function restorePath(dir: string, file: string): string {
  const rel = relative(dir, file).split(sep).join('/');
  return rel === '' || rel === '..' || rel.startsWith('../') || rel.startsWith('/') ? basename(file) : rel;
}

/** Finds a Windows-path file by its base name in the machine folder (a folder copied off a Hyper-V host). */
export async function findByName(dir: string, windowsPath: string): Promise<string | undefined> {
  const name = windowsPath.replace(/\\/g, '/').split('/').pop()!.toLowerCase();
  let found: string | undefined;
  const walk = async (at: string, depth: number): Promise<void> => {
    for (const e of await fsp.readdir(at, { withFileTypes: true })) {
      if (found) return;
      if (e.isDirectory() && depth < 3) await walk(join(at, e.name), depth + 1);
      else if (e.isFile() && e.name.toLowerCase() === name) found = join(at, e.name);
    }
  };
  await walk(dir, 0);
  return found;
}
