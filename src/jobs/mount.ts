// `bulwark mount`: every restore point of the repository as a read-only folder (restore/drive.ts over
// FUSE, restore/drive-fuse.ts) until stopped. The repository is locked shared meanwhile, so prune
// cannot take away what is being read.
import { promises as fsp } from 'node:fs';
import { resolve } from 'node:path';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { RestorePointDrive } from '../restore/drive.js';
import { mountDrive, type MountedDrive } from '../restore/drive-fuse.js';
import { BulwarkError } from '../util/errors.js';

export async function startMount(repo: Repository, mountpoint: string): Promise<{ mountpoint: string; mounted: MountedDrive; stop(): Promise<void> }> {
  const at = resolve(mountpoint);
  const st = await fsp.stat(at).catch(() => undefined);
  if (!st?.isDirectory()) throw new BulwarkError('usage', `'${at}' is not a folder`, { hint: 'create an empty folder to mount on, e.g. mkdir /mnt/restore' });
  if ((await fsp.readdir(at)).length > 0) throw new BulwarkError('usage', `'${at}' is not empty`, { hint: 'mount on an empty folder: what is in it would be hidden' });
  if (process.getuid?.() !== 0) throw new BulwarkError('usage', 'mount needs root here (it mounts /dev/fuse itself)', { hint: 'run it as root, or browse with ls/restore instead' });
  const lock = await Lock.acquire(repo, false, 'mount');
  try {
    await repo.loadIndex();
    const mounted = await mountDrive(new RestorePointDrive(repo), at);
    return {
      mountpoint: at,
      mounted,
      stop: async () => {
        await mounted.unmount().catch(() => undefined);
        await lock.release();
      },
    };
  } catch (err) {
    await lock.release();
    throw err;
  }
}
