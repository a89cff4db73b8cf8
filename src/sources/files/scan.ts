// A metadata-only walk that runs alongside a backup to learn how much there is, so progress can show
// a percentage and an ETA. It reads no file contents and gives up quietly on anything it cannot list.
import { promises as fsp } from 'node:fs';
import { displayName } from '../../repository/tree.js';
import { DirHandle } from '../../util/dirhandle.js';
import type { Matcher } from '../../util/glob.js';

export interface ScanTotals {
  files: number;
  bytes: number;
  done: boolean;
}

export async function scanTotals(paths: string[], excluded: Matcher, totals: ScanTotals, stopped: () => boolean): Promise<void> {
  const visit = async (path: Buffer, logical: Buffer): Promise<void> => {
    if (stopped()) return;
    const st = await fsp.lstat(path).catch(() => undefined);
    if (!st) return;
    if (st.isFile()) {
      totals.files++;
      totals.bytes += st.size;
      return;
    }
    if (!st.isDirectory()) {
      totals.files++;
      return;
    }
    const h = await DirHandle.open(path).catch(() => undefined);
    if (!h) return;
    try {
      const names = await fsp.readdir(h.path, { encoding: 'buffer' }).catch(() => [] as Buffer[]);
      for (const name of names) {
        const l = Buffer.concat([logical, Buffer.from('/'), name]);
        if (!excluded(displayName(l))) await visit(h.child(name), l);
      }
    } finally {
      await h.close();
    }
  };
  for (const p of paths) await visit(Buffer.from(p), Buffer.from(p));
  totals.done = true;
}
