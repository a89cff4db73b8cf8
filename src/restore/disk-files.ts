// Files inside the disks of a VM or disk snapshot (granular restore, docs/file-level-restore.md),
// addressed as /<disk>/<part>/<path>: the disk read from the repository block by block as the file
// system readers ask (restore/repo-disk.ts), so a lookup and a file's restore fetch only what they need.
import { constants, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Repository } from '../repository/repository.js';
import type { SnapshotWithId } from '../repository/snapshot.js';
import { partsOf, type DiskPart } from '../filesystems/probe.js';
import { FsNotFoundError, type FileSystem, type FsEntry } from '../filesystems/types.js';
import { BulwarkError } from '../util/errors.js';
import { RepositoryDisk } from './repo-disk.js';

export type Located =
  | { level: 'root' }
  | { level: 'disk'; disk: string; parts: DiskPart[] }
  | { level: 'fs'; disk: string; part: DiskPart; fs: FileSystem; path: string; entry: FsEntry };

export class SnapshotDisks {
  private readonly volumes = new Map<string, RepositoryDisk>();
  private readonly parts = new Map<string, Promise<DiskPart[]>>();

  constructor(
    private readonly repo: Pick<Repository, 'loadBlob'>,
    readonly snapshot: SnapshotWithId,
  ) {}

  /** Blocks fetched from the repository so far, all disks. */
  get blocksFetched(): number {
    let n = 0;
    for (const v of this.volumes.values()) n += v.blocksFetched;
    return n;
  }

  get diskNames(): string[] {
    return (this.snapshot.disks ?? []).map((d) => d.name);
  }

  partsOf(disk: string): Promise<DiskPart[]> {
    let p = this.parts.get(disk);
    if (!p) {
      const record = this.snapshot.disks?.find((d) => d.name === disk);
      if (!record) throw new FsNotFoundError(`/${disk}`, `snapshot ${this.snapshot.id.slice(0, 8)} has no disk '${disk}' (its disks: ${this.diskNames.join(', ')})`);
      const vol = new RepositoryDisk(this.repo, record, { readAhead: 2 });
      this.volumes.set(disk, vol);
      p = partsOf(vol);
      this.parts.set(disk, p);
    }
    return p;
  }

  /** '/', '/vda', '/vda/p1', '/vda/p1/etc/hosts'. */
  async locate(path: string): Promise<Located> {
    const segs = path.split('/').filter((s) => s !== '' && s !== '.');
    if (segs.includes('..')) throw new BulwarkError('usage', `'${path}': '..' is not allowed in a path inside a snapshot`);
    if (segs.length === 0) return { level: 'root' };
    const disk = segs[0]!;
    const parts = await this.partsOf(disk);
    if (segs.length === 1) return { level: 'disk', disk, parts };
    const part = parts.find((p) => p.name === segs[1]);
    if (!part) throw new FsNotFoundError(`/${disk}/${segs[1]}`, `disk ${disk} has no part '${segs[1]}' (it has: ${parts.map((p) => p.name).join(', ') || 'none'})`);
    if (!part.fs) throw new BulwarkError('usage', `/${disk}/${part.name} cannot be browsed: ${part.why ?? 'no file system'}`);
    const fsPath = `/${segs.slice(2).join('/')}`;
    return { level: 'fs', disk, part, fs: part.fs, path: fsPath, entry: await part.fs.stat(fsPath) };
  }

  /** Entries under a file system directory, depth first; `recursive` false: its own entries only. */
  async *walk(fs: FileSystem, dir: string, recursive: boolean, depth = 0): AsyncGenerator<{ path: string; entry: FsEntry }> {
    if (depth > 256) throw new BulwarkError('failed', `'${dir}' is nested more than 256 levels deep`);
    for (const e of await fs.list(dir)) {
      if (e.name === '' || e.name === '.' || e.name === '..' || e.name.includes('/') || e.name.includes('\0')) continue;
      const p = dir === '/' ? `/${e.name}` : `${dir}/${e.name}`;
      yield { path: p, entry: e };
      if (recursive && e.type === 'dir') yield* this.walk(fs, p, true, depth + 1);
    }
  }
}

export interface DiskFilesRestoreResult {
  files: number;
  dirs: number;
  bytes: number;
  errors: { path: string; message: string }[];
  /** Disk blocks fetched from the repository for it, lookups included. */
  blocksFetched: number;
}

/**
 * Restores a file or folder from inside a snapshot's disk into `target` (as target/<its name>): data
 * streamed from the file system reader, mode, owner (as root) and mtime set; never overwrites, never
 * follows a link it did not make. A file that cannot be read is listed in `errors` and removed.
 */
export async function restoreFromDisk(disks: SnapshotDisks, path: string, target: string): Promise<DiskFilesRestoreResult> {
  const loc = await disks.locate(path);
  if (loc.level !== 'fs') throw new BulwarkError('usage', `'${path}' is ${loc.level === 'root' ? 'the list of disks' : 'a disk'}; name a file system and a path in it: /<disk>/<part>/<path>`, { hint: `see 'bulwark ls ${disks.snapshot.id.slice(0, 8)}:${path}'` });
  const result: DiskFilesRestoreResult = { files: 0, dirs: 0, bytes: 0, errors: [], blocksFetched: 0 };
  const buf = Buffer.alloc(1024 * 1024);
  const setMeta = async (out: string, e: FsEntry, link: boolean): Promise<void> => {
    if (process.getuid?.() === 0 && e.uid !== undefined && e.gid !== undefined) await fsp.lchown(out, e.uid, e.gid).catch(() => undefined);
    if (!link && e.mode !== undefined) await fsp.chmod(out, e.mode & 0o7777).catch(() => undefined);
    if (e.mtimeMs !== undefined) await (link ? fsp.lutimes : fsp.utimes)(out, new Date(e.mtimeMs), new Date(e.mtimeMs)).catch(() => undefined);
  };
  const one = async (fsPath: string, e: FsEntry, out: string): Promise<void> => {
    try {
      if (e.type === 'dir') {
        await fsp.mkdir(out);
        result.dirs++;
        for (const child of await loc.fs.list(fsPath)) {
          if (child.name === '' || child.name === '.' || child.name === '..' || child.name.includes('/') || child.name.includes('\0')) {
            result.errors.push({ path: `${fsPath}/${child.name}`, message: 'a name no file may have here; skipped' });
            continue;
          }
          await one(fsPath === '/' ? `/${child.name}` : `${fsPath}/${child.name}`, child, join(out, child.name));
        }
        await setMeta(out, e, false);
      } else if (e.type === 'symlink') {
        await fsp.symlink(await loc.fs.readlink(fsPath), out);
        await setMeta(out, e, true);
        result.files++;
      } else if (e.type === 'file') {
        const f = await loc.fs.open(fsPath);
        const fh = await fsp.open(out, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
        try {
          let at = 0;
          while (at < f.size) {
            const n = await f.read(buf, at);
            if (n === 0) throw new BulwarkError('failed', `ended at ${at} of ${f.size} bytes`);
            // Runs of zeros are left as holes.
            if (buf.subarray(0, n).some((b) => b !== 0)) await fh.write(buf, 0, n, at);
            at += n;
          }
          await fh.truncate(f.size);
        } catch (err) {
          await fh.close();
          await fsp.rm(out, { force: true });
          throw err;
        }
        await fh.close();
        await setMeta(out, e, false);
        result.files++;
        result.bytes += f.size;
      } else result.errors.push({ path: fsPath, message: 'not a file, folder or symlink; skipped' });
    } catch (err) {
      result.errors.push({ path: fsPath, message: (err as NodeJS.ErrnoException).code === 'EEXIST' ? `'${out}' already exists; restore never overwrites` : (err as Error).message });
    }
  };
  const name = loc.path === '/' ? loc.part.name : loc.path.split('/').pop()!;
  await one(loc.path, loc.entry, join(target, name));
  // Everything this restore fetched: the partition table, the file system's metadata, the data.
  result.blocksFetched = disks.blocksFetched;
  return result;
}
