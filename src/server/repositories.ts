// The repositories the server reads for the restore-point browser: opened once with the password the
// catalog keeps sealed, and opened afresh after a run wrote to them (an open repository knows the
// index files and restore points of the moment it was opened; the run's child process wrote new ones).
import { defaultCacheDir } from '../repository/index-cache.js';
import { Repository } from '../repository/repository.js';
import { listSnapshots, type SnapshotWithId } from '../repository/snapshot.js';
import { RestorePointDrive } from '../restore/drive.js';
import { openBackend } from '../storage/open.js';
import { BulwarkError } from '../util/errors.js';

interface Opened {
  repo: Repository;
  drive: RestorePointDrive;
  snapshots: SnapshotWithId[];
}

export class RepositoryPool {
  private readonly open = new Map<string, Promise<Opened>>();

  constructor(private readonly passwordFor: (location: string) => string | undefined) {}

  /** The repository with its restore points and a drive over them. */
  get(location: string): Promise<Opened> {
    let p = this.open.get(location);
    if (!p) {
      p = this.openOne(location);
      this.open.set(location, p);
      // A failed open is not kept: the next request tries again (the store may be back).
      p.catch(() => this.open.delete(location));
    }
    return p;
  }

  /** Forget what is open for `location`: the next request sees what a run just wrote. */
  async invalidate(location: string): Promise<void> {
    const p = this.open.get(location);
    this.open.delete(location);
    const o = await p?.catch(() => undefined);
    await o?.repo.close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.open.keys()].map((l) => this.invalidate(l)));
  }

  /** Opens and closes the repository with `password`: throws what is wrong (not found, wrong password …). */
  async check(location: string, password: string): Promise<void> {
    const o = await this.openWith(location, password);
    await o.repo.close();
  }

  private async openOne(location: string): Promise<Opened> {
    const password = this.passwordFor(location);
    if (password === undefined) {
      throw new BulwarkError('not-found', `the server has no password for the repository '${location}'`, { hint: 'start the server with -r and the password of that repository, or give it with POST /api/v1/repositories' });
    }
    return this.openWith(location, password);
  }

  private async openWith(location: string, password: string): Promise<Opened> {
    const backend = openBackend(location, {});
    try {
      await Repository.assertExists(backend);
    } catch (err) {
      await backend.close();
      throw err;
    }
    const repo = await Repository.open(backend, password, { indexCache: defaultCacheDir() });
    try {
      await repo.loadIndex();
      const snapshots = await listSnapshots(repo);
      return { repo, drive: new RestorePointDrive(repo), snapshots };
    } catch (err) {
      await repo.close();
      throw err;
    }
  }
}
