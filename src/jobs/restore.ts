// Restore jobs: pick what to restore from a snapshot and hand it to the restorers.
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileNameOf, qemuScript } from '../hypervisors/qemu/command-line.js';
import type { Repository } from '../repository/repository.js';
import { findSnapshot, type SnapshotFilter, type SnapshotWithId } from '../repository/snapshot.js';
import type { TreeNode } from '../repository/tree.js';
import { loadTree, lookupPath } from '../repository/walk.js';
import { restoreDisk, type DiskRestoreResult } from '../restore/disk.js';
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
  verified?: { files: number; mismatches: string[] };
}

export async function restoreFiles(repo: Repository, opts: RestoreFilesJobOptions): Promise<RestoreFilesJobResult> {
  await repo.loadIndex();
  const sn = await findSnapshot(repo, opts.ref, opts.filter);
  if (!sn.tree) {
    throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} holds disks (${sn.source}), not files`, {
      hint: `restore its disks with 'bulwark restore vm ${sn.id.slice(0, 8)} --target <dir>'`,
    });
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

export interface RestoreDisksJobOptions {
  ref: string;
  target: string;
  format?: 'raw' | 'qcow2';
  disks?: string[];
  filter?: SnapshotFilter;
  onProgress?: ProgressSink;
  /** VM snapshots: also write <target>/<vm>.qemu.sh, a QEMU command line on the restored disks. */
  define?: boolean;
}

export async function restoreDisks(repo: Repository, opts: RestoreDisksJobOptions): Promise<{ snapshot: SnapshotWithId; disks: DiskRestoreResult[]; definition?: string }> {
  await repo.loadIndex();
  const sn = await findSnapshot(repo, opts.ref, opts.filter);
  if (!sn.disks || sn.disks.length === 0) {
    throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} holds files, not disks`, { hint: `restore files with 'bulwark restore ${sn.id.slice(0, 8)} --target <dir>'` });
  }
  const wanted = opts.disks && opts.disks.length > 0 ? sn.disks.filter((d) => opts.disks!.includes(d.name)) : sn.disks;
  if (wanted.length === 0) throw new BulwarkError('not-found', `snapshot ${sn.id.slice(0, 8)} has no disk named ${opts.disks!.join(', ')}`, { hint: `its disks: ${sn.disks.map((d) => d.name).join(', ')}` });
  if (opts.define && !sn.vm) {
    throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} is not a VM snapshot: there is no configuration to define`, { hint: 'leave out --define' });
  }
  const target = await prepareTarget(opts.target);
  const disks: DiskRestoreResult[] = [];
  for (const d of wanted) {
    disks.push(await restoreDisk(repo, d, { targetDir: target, format: opts.format ?? 'raw', ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) }));
  }
  if (!opts.define || !sn.vm) return { snapshot: sn, disks };
  const dir = resolve(target);
  const definition = join(dir, `${fileNameOf(sn.vm.name)}.qemu.sh`);
  const restored = wanted.map((d, i) => ({ name: d.name, path: resolve(disks[i]!.path), format: opts.format ?? 'raw' }));
  await writeFile(definition, qemuScript(sn.vm, restored, { dir }), { mode: 0o755 });
  return { snapshot: sn, disks, definition };
}
