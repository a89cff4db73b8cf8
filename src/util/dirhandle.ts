// Directory handles: an O_PATH fd per open directory, reached as /proc/self/fd/N. Paths built from a
// handle stay short however deep the tree is, so trees deeper than PATH_MAX (4096 bytes) work without
// chdir or openat (which Node lacks).
import { constants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

export const O_PATH = 0o10000000;

export class DirHandle {
  private constructor(
    private readonly fh: FileHandle,
    /** Short path that names this directory for any fs call. */
    readonly path: Buffer,
  ) {}

  /** Opens a directory without following a symlink in its last component (fails with ENOTDIR then). */
  static async open(path: Buffer | string): Promise<DirHandle> {
    const fh = await fsp.open(path, O_PATH | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    return new DirHandle(fh, Buffer.from(`/proc/self/fd/${fh.fd}`));
  }

  child(name: Buffer): Buffer {
    return Buffer.concat([this.path, Buffer.from('/'), name]);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
