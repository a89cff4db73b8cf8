// Hyper-V machine folders, copied off a Windows host (Hyper-V does not run here): the configuration in
// "Virtual Machines/<GUID>.vmcx" (Windows Server 2016 and later; a binary format Microsoft does not
// document) or "<GUID>.xml" (before), disks in "Virtual Hard Disks/" as VHDX (checkpoints add AVHDX
// children that name their parents). From a .vmcx only the disk paths are read — they are stored as
// UTF-16 text — and the VM is named after its folder; the .vmcx itself is kept whole with the restore
// point. Restored, each chain comes back as one VHDX under the name the configuration gives it;
// Hyper-V's Import Virtual Machine ("register in place" or "copy") then finds it.
import { promises as fsp } from 'node:fs';
import { basename, join } from 'node:path';
import { BulwarkError } from '../../util/errors.js';
import { findByName, restorePath, type Machine, type MachineDisk } from './machine.js';

const DISK_PATH = /[A-Za-z]:\\[^\0<>"|?*\r\n]{1,400}?\.a?vhdx?(?![A-Za-z0-9])/gi;
const MAX_CONFIG = 64 * 1024 * 1024;

/** Windows paths of virtual disks named in a configuration file, in order, once each. */
export function diskPathsIn(config: Buffer, isXml: boolean): string[] {
  const text = isXml ? config.toString(config[0] === 0xff && config[1] === 0xfe ? 'utf16le' : 'utf8') : config.toString('utf16le');
  const seen = new Set<string>();
  const out: string[] = [];
  for (const m of text.matchAll(DISK_PATH)) {
    const k = m[0].toLowerCase();
    if (!seen.has(k)) {
      seen.add(k);
      out.push(m[0]);
    }
  }
  return out;
}

export async function readHyperV(dir: string, config: string): Promise<Machine> {
  const file = join(dir, config);
  const st = await fsp.stat(file);
  if (st.size > MAX_CONFIG) throw new BulwarkError('usage', `'${file}' is ${st.size} bytes: too large for a Hyper-V configuration file`);
  const raw = await fsp.readFile(file);
  const isXml = /\.xml$/i.test(config);
  const disks: MachineDisk[] = [];
  for (const named of diskPathsIn(raw, isXml)) {
    const local = await findByName(dir, named);
    if (!local) throw new BulwarkError('not-found', `'${file}' names the disk '${named}', which is not in the machine folder '${dir}'`, { hint: 'copy the VM\'s disks with its folder (Hyper-V\'s Export does), then back it up again' });
    const format = /\.a?vhdx$/i.test(local) ? 'vhdx' : 'vhd';
    disks.push({ name: `disk${disks.length}`, file: local, format, restoreAs: { path: restorePath(dir, local), format } });
  }
  if (disks.length === 0) throw new BulwarkError('usage', `'${file}' names no virtual disk (.vhdx, .avhdx, .vhd)`);
  let name = basename(dir);
  if (isXml) {
    const m = /<properties>[\s\S]*?<name[^>]*>([^<]{1,200})<\/name>/.exec(raw.toString('utf8'));
    if (m) name = m[1]!.trim();
  }
  // A saved VM keeps its memory in a large .vmrs (or .bin) beside the configuration.
  const stem = join(dir, config.replace(/\.(vmcx|xml)$/i, ''));
  const state = await fsp.stat(`${stem}.vmrs`).catch(() => fsp.stat(`${stem}.VMRS`)).catch(() => undefined);
  return {
    hypervisor: 'hyperv',
    name,
    uuid: basename(config).replace(/\.(vmcx|xml)$/i, '').toLowerCase(),
    dir,
    config,
    disks,
    ...(state && state.size > 16 * 1024 * 1024 ? { saved: `it appears to be saved with its memory (${basename(stem)}.vmrs, ${Math.round(state.size / 2 ** 20)} MiB)` } : {}),
    // Hyper-V does not run on this host: a folder here is a copy.
    running: async () => undefined,
  };
}
