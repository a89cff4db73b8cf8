// The disks of a restore point served over NBD, straight from the repository (docs/architecture.md, "Serving restore points: export"):
// each disk is an export named after it. Read-only unless writable, when writes go to an overlay file
// per disk (never to the repository).
import { join } from 'node:path';
import { NbdServer, type NbdBackend, type NbdListen } from '../protocols/nbd/server.js';
import type { Repository } from '../repository/repository.js';
import type { DiskRecord } from '../repository/snapshot.js';
import { BulwarkError } from '../util/errors.js';
import { safeDiskName } from './disk.js';
import { OverlayDisk } from './overlay.js';
import { RepositoryDisk } from './repo-disk.js';

export interface ExportedDisk {
  name: string;
  size: number;
  /** An NBD URI QEMU and qemu-img open (nbd+unix:///vda?socket=… or nbd://host:port/vda). */
  uri: string;
  /** --writable: where its writes are kept. */
  overlay?: string;
}

export interface DiskExport {
  disks: ExportedDisk[];
  address: string;
  /** Data blocks fetched from the repository so far, all disks. */
  blocksFetched(): number;
  close(): Promise<void>;
}

/** `unix:PATH` or `tcp:HOST:PORT` (HOST defaults to 127.0.0.1: nothing listens beyond this host unless told). */
export function parseListen(spec: string): NbdListen {
  if (spec.startsWith('unix:') && spec.length > 5) return { path: spec.slice(5) };
  const m = /^tcp:(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(spec);
  if (m && Number(m[2]) < 65536) return { host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  throw new BulwarkError('usage', `--listen '${spec}' is neither unix:PATH nor tcp:[HOST:]PORT`, { hint: 'e.g. --listen unix:/run/bulwark/web01.nbd or --listen tcp:127.0.0.1:10809' });
}

export async function exportDisks(repo: Pick<Repository, 'loadBlob'>, disks: DiskRecord[], opts: { listen: NbdListen; writable?: { overlayDir: string }; log?: (message: string) => void }): Promise<DiskExport> {
  const backends = new Map<string, NbdBackend>();
  const repoDisks: RepositoryDisk[] = [];
  const overlays: OverlayDisk[] = [];
  const out: ExportedDisk[] = [];
  try {
    for (const d of disks) {
      const name = safeDiskName(d.name);
      const base = new RepositoryDisk(repo, d);
      repoDisks.push(base);
      if (opts.writable) {
        const o = await OverlayDisk.create(base, join(opts.writable.overlayDir, `${name}.overlay`));
        overlays.push(o);
        backends.set(name, o);
      } else backends.set(name, base);
    }
    const server = await NbdServer.listen(opts.listen, backends, opts.log ? { log: opts.log } : {});
    for (const [name, b] of backends) {
      const uri = 'path' in opts.listen ? `nbd+unix:///${name}?socket=${opts.listen.path}` : `nbd://${opts.listen.host.includes(':') ? `[${opts.listen.host}]` : opts.listen.host}:${server.port}/${name}`;
      const o = overlays.find((x) => x === b);
      out.push({ name, size: b.size, uri, ...(o ? { overlay: o.file } : {}) });
    }
    return {
      disks: out,
      address: server.address,
      blocksFetched: () => repoDisks.reduce((n, d) => n + d.blocksFetched, 0),
      close: async () => {
        await server.close();
        for (const o of overlays) await o.close().catch(() => undefined);
      },
    };
  } catch (err) {
    for (const o of overlays) await o.close().catch(() => undefined);
    throw err;
  }
}
