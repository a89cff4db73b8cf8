// `bulwark export`: a restore point's disks served over NBD until stopped (restore/export.ts). The
// repository is locked shared meanwhile, so prune cannot take away what is being served.
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { findSnapshot, type SnapshotFilter, type SnapshotWithId } from '../repository/snapshot.js';
import { exportDisks, parseListen, type DiskExport } from '../restore/export.js';
import { BulwarkError } from '../util/errors.js';

export interface ExportJobOptions {
  ref: string;
  filter?: SnapshotFilter;
  disks?: string[];
  listen: string;
  /** Writes kept in overlay files in this folder. */
  overlayDir?: string;
  log?: (message: string) => void;
}

export async function startExport(repo: Repository, opts: ExportJobOptions): Promise<{ snapshot: SnapshotWithId; exported: DiskExport; stop(): Promise<void> }> {
  const listen = parseListen(opts.listen);
  const lock = await Lock.acquire(repo, false, 'export');
  try {
    await repo.loadIndex();
    const sn = await findSnapshot(repo, opts.ref, opts.filter);
    if (!sn.disks?.length) throw new BulwarkError('usage', `snapshot ${sn.id.slice(0, 8)} holds files, not disks: there is nothing to export`, { hint: "see 'bulwark snapshots' for VM and disk snapshots" });
    const wanted = opts.disks?.length ? sn.disks.filter((d) => opts.disks!.includes(d.name)) : sn.disks;
    if (wanted.length === 0) throw new BulwarkError('not-found', `snapshot ${sn.id.slice(0, 8)} has no disk named ${opts.disks!.join(', ')}`, { hint: `its disks: ${sn.disks.map((d) => d.name).join(', ')}` });
    const exported = await exportDisks(repo, wanted, { listen, ...(opts.overlayDir ? { writable: { overlayDir: opts.overlayDir } } : {}), ...(opts.log ? { log: opts.log } : {}) });
    return {
      snapshot: sn,
      exported,
      stop: async () => {
        await exported.close();
        await lock.release();
      },
    };
  } catch (err) {
    await lock.release();
    throw err;
  }
}
