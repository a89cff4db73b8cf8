// Restore jobs: pick what to restore from a snapshot and hand it to the restorers.
import { createReadStream } from 'node:fs';
import { lstat, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { VmEndpoint } from '../hypervisors/registry.js';
import type { VmDriver } from '../hypervisors/session.js';
import { defineDomain, restoredDomainXml } from '../hypervisors/libvirt/define.js';
import { fileNameOf, qemuScript } from '../hypervisors/qemu/command-line.js';
import type { Repository } from '../repository/repository.js';
import { findSnapshot, type SnapshotFilter, type SnapshotWithId } from '../repository/snapshot.js';
import type { TreeNode } from '../repository/tree.js';
import { loadTree, lookupPath } from '../repository/walk.js';
import { restoreFromDisk, SnapshotDisks } from '../restore/disk-files.js';
import { restoreMachineFolder } from '../restore/machine-folder.js';
import { restoreDisk, type DiskRestoreResult, type RestoreFormat } from '../restore/disk.js';

/** QEMU's (and libvirt's) driver name of a restore format. */
const driverOf = (f: RestoreFormat): string => (f === 'vhd' ? 'vpc' : f);
import { FilesRestorer, prepareTarget, type FilesRestoreResult } from '../restore/files.js';
import { verifyRestored } from '../restore/verify.js';
import type { ProgressSink } from '../sources/progress.js';
import { BulwarkError } from '../util/errors.js';

export interface RestoreFilesJobOptions {
  ref: string;
  path?: string;
  target: string;
  includes?: string[];
  verify?: boolean;
  filter?: SnapshotFilter;
  onProgress?: ProgressSink;
}

export interface RestoreFilesJobResult extends FilesRestoreResult {
  snapshot: string;
  /** From inside a disk: its blocks fetched from the repository. */
  blocksFetched?: number;
  verified?: { files: number; mismatches: string[] };
}

export async function restoreFiles(repo: Repository, opts: RestoreFilesJobOptions): Promise<RestoreFilesJobResult> {
  await repo.loadIndex();
  const sn = await findSnapshot(repo, opts.ref, opts.filter);
  if (!sn.tree) {
    if (!opts.path || opts.path === '/') {
      throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} holds disks (${sn.source}), not files: name what to restore from inside one (/<disk>/<part>/<path>)`, {
        hint: `see 'bulwark ls ${sn.id.slice(0, 8)}:/', or restore whole disks with 'bulwark restore vm ${sn.id.slice(0, 8)} --target <dir>'`,
      });
    }
    // Single files out of a disk, read through its file system (restore/disk-files.ts).
    const target = await prepareTarget(opts.target);
    const r = await restoreFromDisk(new SnapshotDisks(repo, sn), opts.path, target);
    return { files: r.files, dirs: r.dirs, bytes: r.bytes, errors: r.errors, snapshot: sn.id, blocksFetched: r.blocksFetched };
  }
  let nodes: TreeNode[];
  let logicalDir = '';
  if (opts.path && opts.path !== '/') {
    const found = await lookupPath(repo, sn.tree, opts.path);
    if (!found?.node) throw new BulwarkError('not-found', `'${opts.path}' is not in snapshot ${sn.id.slice(0, 8)}`, { hint: `list it with 'bulwark ls ${sn.id.slice(0, 8)}'` });
    nodes = [found.node];
    logicalDir = opts.path.replace(/\/+$/, '').split('/').slice(0, -1).join('/');
  } else {
    nodes = (await loadTree(repo, sn.tree)).nodes;
  }
  const restorer = new FilesRestorer(repo, { target: opts.target, ...(opts.includes ? { includes: opts.includes } : {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
  const r = await restorer.restore(nodes, logicalDir);
  const result: RestoreFilesJobResult = { ...r, snapshot: sn.id };
  if (opts.verify) {
    const failed = new Set(r.errors.map((e) => e.path));
    result.verified = await verifyRestored(repo, nodes, opts.target, logicalDir, failed, opts.includes);
  }
  return result;
}

export interface RestoreToGuestOptions {
  ref: string;
  path?: string;
  filter?: SnapshotFilter;
  includes?: string[];
  driver: VmDriver;
  endpoint: VmEndpoint;
  /** Where in the guest: a folder (ending in '/', or the restored item goes inside it by name) or a file name. */
  guestPath: string;
  overwrite: boolean;
}

/**
 * restore --to-guest: what `restoreFiles` would write, restored into a private temporary folder, then
 * written into the running guest through its agent, file by file, and the temporary folder removed.
 */
export async function restoreFilesToGuest(repo: Repository, opts: RestoreToGuestOptions): Promise<{ snapshot: string; files: number; dirs: number; bytes: number; errors: { path: string; message: string }[] }> {
  if (!opts.driver.guestFiles) throw new BulwarkError('usage', `--to-guest is not available for ${opts.driver.name} VMs yet`, { hint: 'restore with --target and copy the files in' });
  const tmp = await mkdtemp(join(tmpdir(), 'bulwark-to-guest-'));
  try {
    const local = await restoreFiles(repo, { ref: opts.ref, target: tmp, ...(opts.path ? { path: opts.path } : {}), ...(opts.filter ? { filter: opts.filter } : {}), ...(opts.includes ? { includes: opts.includes } : {}) });
    const out = { snapshot: local.snapshot, files: 0, dirs: 0, bytes: 0, errors: [...local.errors] };
    const guest = await opts.driver.guestFiles(opts.endpoint);
    try {
      const top = await readdir(tmp);
      const intoFolder = opts.guestPath.endsWith('/') || top.length !== 1;
      if (intoFolder) await guest.mkdir(opts.guestPath.replace(/\/+$/, '') || '/');
      const push = async (local: string, remote: string): Promise<void> => {
        const st = await lstat(local);
        try {
          if (st.isDirectory()) {
            await guest.mkdir(remote);
            out.dirs++;
            for (const n of await readdir(local)) await push(join(local, n), `${remote}/${n}`);
          } else if (st.isFile()) {
            await guest.write(remote, createReadStream(local), { overwrite: opts.overwrite });
            out.files++;
            out.bytes += st.size;
          } else out.errors.push({ path: remote, message: 'not a file or folder: not written into the guest' });
        } catch (err) {
          out.errors.push({ path: remote, message: (err as Error).message });
        }
      };
      for (const n of top) await push(join(tmp, n), intoFolder ? `${opts.guestPath.replace(/\/+$/, '')}/${n}` : opts.guestPath);
    } finally {
      await guest.close();
    }
    return out;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

export interface RestoreDisksJobOptions {
  ref: string;
  target: string;
  format?: RestoreFormat;
  disks?: string[];
  filter?: SnapshotFilter;
  onProgress?: ProgressSink;
  /**
   * VM snapshots: a QEMU VM gets <target>/<vm>.qemu.sh, a QEMU command line on the restored disks; a
   * libvirt domain is defined again (on its recorded connection, or `connect`).
   */
  define?: boolean;
  /** libvirt: the restored domain's definition is written to <target>/<name>.xml (and returned) without defining it. */
  printXml?: boolean;
  /** libvirt: the restored domain's name (default <name>-restored, or the original's with keepIdentity). */
  name?: string;
  /** libvirt: keep the original's name, UUID and MAC addresses (to replace a lost VM, not run beside it). */
  keepIdentity?: boolean;
  /** libvirt: define on this connection instead of the recorded one. */
  connect?: string;
}

export interface RestoredDomain {
  uri: string;
  name: string;
  uuid?: string;
  xml: string;
  xmlFile: string;
  defined: boolean;
}

export async function restoreDisks(repo: Repository, opts: RestoreDisksJobOptions): Promise<{ snapshot: SnapshotWithId; disks: DiskRestoreResult[]; definition?: string; domain?: RestoredDomain; folder?: { hypervisor: string; config: string } }> {
  await repo.loadIndex();
  const sn = await findSnapshot(repo, opts.ref, opts.filter);
  if (!sn.disks || sn.disks.length === 0) {
    throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} holds files, not disks`, { hint: `restore files with 'bulwark restore ${sn.id.slice(0, 8)} --target <dir>'` });
  }
  const wanted = opts.disks && opts.disks.length > 0 ? sn.disks.filter((d) => opts.disks!.includes(d.name)) : sn.disks;
  if (wanted.length === 0) throw new BulwarkError('not-found', `snapshot ${sn.id.slice(0, 8)} has no disk named ${opts.disks!.join(', ')}`, { hint: `its disks: ${sn.disks.map((d) => d.name).join(', ')}` });
  if ((opts.printXml || opts.keepIdentity || opts.name || opts.connect) && !sn.vm?.libvirt) {
    throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is not of a libvirt domain: --print-xml, --name, --keep-identity and --connect apply to libvirt domains`, { hint: 'leave them out; --define writes a QEMU command line for a QEMU VM' });
  }
  if (opts.define && !sn.vm) {
    throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is not a VM snapshot: there is no configuration to define`, { hint: 'leave out --define' });
  }
  const target = await prepareTarget(opts.target);
  // A machine folder comes back as a folder its hypervisor opens, unless disks or a format were asked for.
  if (sn.vm?.folder && opts.format === undefined && !opts.disks?.length && !opts.define) {
    const r = await restoreMachineFolder(repo, sn.vm.folder, sn.disks, { target, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
    return { snapshot: sn, disks: r.disks, folder: { hypervisor: sn.vm.folder.hypervisor, config: r.config } };
  }
  const disks: DiskRestoreResult[] = [];
  for (const d of wanted) {
    disks.push(await restoreDisk(repo, d, { targetDir: target, format: opts.format ?? 'raw', ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) }));
  }
  const dir = resolve(target);
  if (sn.vm?.libvirt && (opts.define || opts.printXml)) {
    const name = opts.name ?? (opts.keepIdentity ? sn.vm.name : `${sn.vm.name}-restored`);
    const restored = new Map(wanted.map((d, i) => [d.name, { path: resolve(disks[i]!.path), format: driverOf(opts.format ?? 'raw') }]));
    const xml = restoredDomainXml(sn.vm.libvirt.xml, { name, keepIdentity: opts.keepIdentity ?? false, disks: restored, logDir: dir });
    const xmlFile = join(dir, `${fileNameOf(name)}.xml`);
    await writeFile(xmlFile, xml + '\n', { mode: 0o644 });
    const uri = opts.connect ?? sn.vm.libvirt.uri;
    if (!opts.define) return { snapshot: sn, disks, domain: { uri, name, xml, xmlFile, defined: false } };
    const defined = await defineDomain(uri, xml);
    return { snapshot: sn, disks, domain: { uri, name: defined.name, uuid: defined.uuid, xml, xmlFile, defined: true } };
  }
  if (!opts.define || !sn.vm) return { snapshot: sn, disks };
  const definition = join(dir, `${fileNameOf(sn.vm.name)}.qemu.sh`);
  const restored = wanted.map((d, i) => ({ name: d.name, path: resolve(disks[i]!.path), format: driverOf(opts.format ?? 'raw') }));
  await writeFile(definition, qemuScript(sn.vm, restored, { dir }), { mode: 0o755 });
  return { snapshot: sn, disks, definition };
}
