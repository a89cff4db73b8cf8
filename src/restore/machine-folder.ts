// A VirtualBox, VMware or Hyper-V machine folder restored as a folder its hypervisor opens: the
// configuration files as they were, each disk (its snapshot chain flattened) at the path and in the
// format the configuration expects, and the configuration rewritten where it must match them
// (VirtualBox: snapshots dropped, the media registry flattened, each VDI carrying the UUID the .vbox
// attaches; VMware: the .vmx names the restored files, no suspended state). docs/vm-folders.md.
import { constants, promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { restoredVbox } from '../hypervisors/folder/virtualbox.js';
import { restoredVmx } from '../hypervisors/folder/vmware.js';
import type { Repository } from '../repository/repository.js';
import type { DiskRecord, VmConfig } from '../repository/snapshot.js';
import type { ProgressSink } from '../sources/progress.js';
import { BulwarkError, unable } from '../util/errors.js';
import { restoreDisk, type DiskRestoreResult, type RestoreFormat } from './disk.js';

type Folder = NonNullable<VmConfig['folder']>;

/** A path from the repository, to be written under the target: relative, plain, no way out. */
function safeRelative(path: string): string {
  const parts = path.split('/');
  if (path.length > 1024 || path.startsWith('/') || path.includes('\\') || path.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new BulwarkError('repository-corrupt', `the machine folder in this restore point names an unsafe path '${path}'`);
  }
  return path;
}

/** VirtualBox's UUID bytes: the first three fields little-endian (RTUUID), the rest as written. */
function vdiUuidBytes(uuid: string): Buffer {
  const h = uuid.replace(/[{}-]/g, '');
  if (!/^[0-9a-f]{32}$/i.test(h)) throw new BulwarkError('repository-corrupt', `'${uuid}' is not a UUID`);
  const b = Buffer.from(h, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

/** Gives a VDI qemu-img wrote the UUID VirtualBox's registry expects, and no parent. */
async function setVdiUuid(file: string, uuid: string): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  try {
    const id = vdiUuidBytes(uuid);
    await fh.write(id, 0, 16, 0x188); // uuidCreate
    await fh.write(Buffer.alloc(32), 0, 32, 0x1a8); // uuidLinkage, uuidParentModify: no parent
  } finally {
    await fh.close();
  }
}

async function writeNew(path: string, write: (fh: fsp.FileHandle) => Promise<void>): Promise<void> {
  await fsp.mkdir(dirname(path), { recursive: true });
  const fh = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new BulwarkError('failed', `'${path}' already exists; restore never overwrites`, { hint: 'restore into an empty --target' });
    throw unable('create', 'file', path, err);
  });
  try {
    await write(fh);
  } finally {
    await fh.close();
  }
}

export async function restoreMachineFolder(
  repo: Pick<Repository, 'loadBlob'>,
  folder: Folder,
  records: DiskRecord[],
  opts: { target: string; onProgress?: ProgressSink },
): Promise<{ disks: DiskRestoreResult[]; config: string }> {
  const staging = join(opts.target, '.bulwark-restoring');
  await fsp.mkdir(staging, { recursive: true });
  const disks: DiskRestoreResult[] = [];
  try {
    for (const f of folder.files) {
      if (f.path === folder.config) continue;
      await writeNew(join(opts.target, safeRelative(f.path)), async (fh) => {
        for (const id of f.blobs) await fh.write(await repo.loadBlob('data', id));
      });
    }
    for (const d of folder.disks) {
      const record = records.find((r) => r.name === d.name);
      if (!record) throw new BulwarkError('repository-corrupt', `the restore point has no disk ${d.name}, which its machine folder names`);
      const final = join(opts.target, safeRelative(d.path));
      if (await fsp.lstat(final).then(() => true, () => false)) throw new BulwarkError('failed', `'${final}' already exists; restore never overwrites a disk`, { hint: 'restore into an empty --target' });
      const r = await restoreDisk(repo, record, { targetDir: staging, format: d.format as RestoreFormat, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) });
      if (d.format === 'vdi' && d.uuid) await setVdiUuid(r.path, d.uuid);
      await fsp.mkdir(dirname(final), { recursive: true });
      await fsp.rename(r.path, final);
      disks.push({ ...r, path: final });
    }
    const main = folder.files.find((f) => f.path === folder.config);
    const config = join(opts.target, safeRelative(folder.config));
    if (main) {
      const parts: Buffer[] = [];
      for (const id of main.blobs) parts.push(await repo.loadBlob('data', id));
      let content: Buffer = Buffer.concat(parts);
      if (folder.hypervisor === 'virtualbox') content = Buffer.from(restoredVbox(content.toString('utf8'), folder.disks.map((d) => ({ uuid: d.uuid!, path: d.path }))));
      if (folder.hypervisor === 'vmware') content = Buffer.from(restoredVmx(content.toString('utf8'), folder.disks.filter((d) => d.key).map((d) => ({ key: d.key!, path: d.path }))));
      await writeNew(config, (fh) => fh.write(content).then(() => undefined));
    }
    return { disks, config };
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
}
