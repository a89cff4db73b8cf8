// A VM's configuration files kept whole with its restore point (a machine folder's .vbox, .vmx,
// .nvram, .vmcx, …): each stored as data blobs of up to 1 MiB, in order, deduplicated like the rest.
import { promises as fsp } from 'node:fs';
import type { Repository } from '../../repository/repository.js';
import { unable } from '../../util/errors.js';

const PIECE = 1024 * 1024;

export async function storeConfigFiles(repo: Pick<Repository, 'saveBlob'>, files: { path: string; file: string }[]): Promise<{ path: string; size: number; blobs: string[] }[]> {
  const out: { path: string; size: number; blobs: string[] }[] = [];
  const buf = Buffer.allocUnsafe(PIECE);
  for (const f of files) {
    const fh = await fsp.open(f.file, 'r').catch((err: unknown) => {
      throw unable('read', 'configuration file', f.file, err);
    });
    try {
      const blobs: string[] = [];
      let size = 0;
      for (;;) {
        let n = 0;
        while (n < PIECE) {
          const { bytesRead } = await fh.read(buf, n, PIECE - n, size + n);
          if (bytesRead === 0) break;
          n += bytesRead;
        }
        if (n === 0) break;
        blobs.push((await repo.saveBlob('data', Buffer.from(buf.subarray(0, n)))).id);
        size += n;
        if (n < PIECE) break;
      }
      out.push({ path: f.path, size, blobs });
    } finally {
      await fh.close();
    }
  }
  return out;
}
