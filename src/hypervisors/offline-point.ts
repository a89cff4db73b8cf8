// The point in time of a VM that is not running: its disk images as they lie, read through the
// format readers (formats/). Nothing is prepared, frozen or left behind. The one risk is the VM
// starting (or a tool writing its images) while they are read, which would make a torn image: every
// image's identity is taken at the point and checked again after the read, with the driver's own
// "is it still down?", and a change fails the backup.
import { promises as fsp, type BigIntStats } from 'node:fs';
import type { DiskImage } from '../formats/image.js';
import { openImage } from '../formats/open.js';
import { BulwarkError } from '../util/errors.js';
import type { PointExport, PointInTime } from './session.js';

export interface OfflineDisk {
  name: string;
  /** The image the VM writes (the top of a chain; its parents are read through it). */
  file: string;
  /** qcow2, raw, vmdk, vdi, vhd, vhdx. */
  format: string;
  /** For raw block devices, whose length fstat does not tell. */
  size?: number;
  /** Where a VDI's parent is, by its UUID (a VirtualBox machine's media registry says). */
  parentOf?: (uuid: string) => Promise<string | undefined>;
}

function identity(st: BigIntStats): string {
  return st.isBlockDevice() ? `dev:${st.rdev}` : `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

export class OfflinePoint implements PointInTime {
  readonly pausesVcpus = false;
  private taken = new Map<string, string>();

  constructor(
    private readonly vm: string,
    private readonly disks: OfflineDisk[],
    /** Why the VM is no longer down, or undefined while it is. */
    private readonly stillDown: () => Promise<string | undefined>,
  ) {}

  async take(): Promise<void> {
    const up = await this.stillDown();
    if (up) throw new BulwarkError('failed', `VM ${this.vm} ${up}`, { hint: 'run the backup again; a running VM is backed up live' });
    for (const d of this.disks) this.taken.set(d.file, identity(await this.stat(d.file)));
  }

  async export(): Promise<PointExport> {
    return {
      images: this.disks.map((d) => ({
        name: d.name,
        open: (): Promise<DiskImage> => openImage(d.file, d.format, { ...(d.size !== undefined ? { size: d.size } : {}), ...(d.parentOf ? { parentOf: d.parentOf } : {}) }),
      })),
    };
  }

  async verify(): Promise<void> {
    const up = await this.stillDown();
    if (up) throw new BulwarkError('failed', `VM ${this.vm} ${up} while its disks were read: the copy may be torn, so no restore point was written`, { hint: 'run the backup again (a running VM is backed up live)' });
    for (const d of this.disks) {
      if (identity(await this.stat(d.file)) !== this.taken.get(d.file)) {
        throw new BulwarkError('failed', `disk ${d.name} of VM ${this.vm} ('${d.file}') changed while it was read: the copy may be torn, so no restore point was written`, { hint: 'make sure nothing else writes the image during the backup, then run it again' });
      }
    }
  }

  async diagnose(): Promise<string | undefined> {
    return undefined;
  }

  async finish(): Promise<void> {}

  private stat(file: string): Promise<BigIntStats> {
    return fsp.stat(file, { bigint: true }).catch((err: unknown) => {
      throw new BulwarkError('not-found', `disk image '${file}' of VM ${this.vm} cannot be read: ${(err as Error).message}`, { cause: err });
    });
  }
}
