// Directory handles: an O_PATH fd per open directory, reached as /proc/self/fd/N. Paths built from a
// handle stay short however deep the tree is, so trees deeper than PATH_MAX (4096 bytes) work without
// chdir or openat (which Node lacks).
import { closeSync, constants, openSync, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

export const O_PATH = 0o10000000;

const FLAGS = O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW;

export class DirHandle {
  private constructor(
    private readonly fh: FileHandle | number,
    /** Short path that names this directory for any fs call. */
    readonly path: Buffer,
  ) {}

  /** Opens a directory without following a symlink in its last component (fails with ENOTDIR then). */
  static async open(path: Buffer | string): Promise<DirHandle> {
    const fh = await fsp.open(path, FLAGS);
    return new DirHandle(fh, Buffer.from(`/proc/self/fd/${fh.fd}`));
  }

  /** The same, synchronously: for walks that do many small metadata calls in a row. */
  static openSync(path: Buffer | string): DirHandle {
    const fd = openSync(path, FLAGS);
    return new DirHandle(fd, Buffer.from(`/proc/self/fd/${fd}`));
  }

  child(name: Buffer): Buffer {
    return Buffer.concat([this.path, Buffer.from('/'), name]);
  }

  async close(): Promise<void> {
    if (typeof this.fh === 'number') closeSync(this.fh);
    else await this.fh.close();
  }

  closeSync(): void {
    if (typeof this.fh !== 'number') throw new Error('closeSync on an async DirHandle');
    closeSync(this.fh);
  }
}
