// Locks are sealed documents in locks/. Backups, forget and prune take shared locks (prune needs no
// exclusive one, see prune.ts); repair index and migrate take the exclusive one.
//
// | held \ wanted | shared | exclusive |
// | shared        | ok     | wait/fail |
// | exclusive     | fail   | fail      |
//
// A lock is a lease: its holder re-writes it (new file, then removes the old one: files are never
// modified) every REFRESH interval. A lock older than STALE without refresh, or one whose process is
// gone on this same host, is stale: it no longer blocks anyone, and `unlock` removes it.
import { hostname, userInfo } from 'node:os';
import { BulwarkError } from '../util/errors.js';
import { processAlive } from '../util/process-temp.js';
import type { IndexWatcher } from './index.js';
import type { Repository } from './repository.js';

export const LOCK_REFRESH_MS = 5 * 60 * 1000;
export const LOCK_STALE_MS = 30 * 60 * 1000;

export interface LockDocument {
  time: string;
  exclusive: boolean;
  hostname: string;
  username: string;
  pid: number;
  /** What holds it, for messages: "backup", "prune", … */
  purpose: string;
  /** When the holder took it (kept across refreshes). */
  started?: string;
  /**
   * The prune generation of the index the holder loaded (absent until it loaded one). Prune removes a
   * pack condemned at generation g only when every live lock says g or more: see prune.ts.
   */
  indexGeneration?: number;
}


export interface LockInfo extends LockDocument {
  id: string;
  stale: boolean;
}

export class RepositoryLockedError extends BulwarkError {
  constructor(holder: LockInfo, wanted: string) {
    const age = Math.round((Date.now() - Date.parse(holder.time)) / 1000);
    super('repository-locked', `repository is locked ${holder.exclusive ? 'exclusively' : 'shared'} by ${holder.purpose} (pid ${holder.pid} on ${holder.hostname}, refreshed ${age}s ago); cannot ${wanted}`, {
      hint: "wait for it to finish; if that process is gone, 'bulwark unlock' removes stale locks",
    });
  }
}

type LockRepo = Pick<Repository, 'saveDocument' | 'loadDocument' | 'backend' | 'clock'> & { heldLocks?: Set<IndexWatcher> };

/** A lock claiming a time further ahead than this is not believed (clocks differ by seconds, not days). */
const MAX_CLOCK_AHEAD_MS = 24 * 60 * 60 * 1000;

export function isStale(doc: LockDocument, nowMs: number): boolean {
  const t = Date.parse(doc.time);
  if (!Number.isFinite(t) || t - nowMs > MAX_CLOCK_AHEAD_MS || nowMs - t > LOCK_STALE_MS) return true;
  if (typeof doc.pid !== 'number' || typeof doc.hostname !== 'string') return true;
  return doc.hostname === hostname() && doc.pid !== process.pid && !processAlive(doc.pid);
}

export async function listLocks(repo: LockRepo): Promise<LockInfo[]> {
  const out: LockInfo[] = [];
  const now = repo.clock.now().getTime();
  for await (const f of repo.backend.list('locks')) {
    try {
      const doc = await repo.loadDocument<LockDocument>('locks', f.name);
      out.push({ ...doc, id: f.name, stale: isStale(doc, now) });
    } catch (err) {
      if (repo.backend.isNotFound(err)) continue; // removed meanwhile: its holder finished
      if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
      // A damaged lock blocks nobody (else one bad file would stop every backup); unlock removes it.
      out.push({ time: new Date(0).toISOString(), exclusive: false, hostname: '?', username: '?', pid: 0, purpose: 'damaged lock file', id: f.name, stale: true });
    }
  }
  return out;
}

export class Lock implements IndexWatcher {
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> = Promise.resolve();
  /** When the lock file was last written (the repository's clock, ms). */
  private refreshedAt: number;

  private constructor(
    private readonly repo: LockRepo,
    private id: string,
    private readonly doc: LockDocument,
  ) {
    this.refreshedAt = Date.parse(doc.time);
  }

  static async acquire(repo: LockRepo, exclusive: boolean, purpose: string): Promise<Lock> {
    const conflict = (l: LockInfo): boolean => !l.stale && (exclusive || l.exclusive);
    const before = (await listLocks(repo)).find(conflict);
    if (before) throw new RepositoryLockedError(before, purpose);
    let username = 'unknown';
    try {
      username = userInfo().username;
    } catch {
      // keep 'unknown'
    }
    const now = repo.clock.now().toISOString();
    const doc: LockDocument = { time: now, started: now, exclusive, hostname: hostname(), username, pid: process.pid, purpose };
    const id = await repo.saveDocument('locks', doc);
    // Two writers may pass the first check at once; looking again after writing our own lock means at
    // least one of them sees the other and backs off.
    const after = (await listLocks(repo)).find((l) => l.id !== id && conflict(l));
    if (after) {
      await repo.backend.remove({ type: 'locks', name: id });
      throw new RepositoryLockedError(after, purpose);
    }
    const lock = new Lock(repo, id, doc);
    lock.timer = setInterval(() => {
      lock.refreshing = lock.refresh().catch(() => undefined);
    }, LOCK_REFRESH_MS);
    lock.timer.unref();
    repo.heldLocks?.add(lock);
    return lock;
  }

  /** Records the prune generation of the index this process loaded, in a new lock file. */
  async sawIndex(generation: number): Promise<void> {
    this.doc.indexGeneration = generation;
    await this.refreshing;
    this.refreshing = this.refresh();
    await this.refreshing;
  }

  /** Runs fn holding the lock, and releases it however fn ends. */
  static async run<T>(repo: LockRepo, exclusive: boolean, purpose: string, fn: () => Promise<T>): Promise<T> {
    const lock = await Lock.acquire(repo, exclusive, purpose);
    let result: T;
    try {
      result = await fn();
    } catch (err) {
      // Tried all the same, but what failed the command is what the user must read: when the store
      // went away, the lock's removal fails too, and its message would hide the real one.
      await lock.release().catch(() => undefined);
      throw err;
    }
    await lock.release();
    return result;
  }

  /**
   * A lock that could not be refreshed for longer than the refresh interval short of the stale period
   * may look stale to another host soon: prune may then remove packs this process reuses. So the
   * snapshot is not written (Repository.saveDocument asks); the next backup simply runs again.
   */
  assertFresh(): void {
    const age = this.repo.clock.now().getTime() - this.refreshedAt;
    if (age > LOCK_STALE_MS - LOCK_REFRESH_MS) {
      throw new BulwarkError('failed', `this process could not refresh its lock for ${Math.round(age / 60_000)} minutes (others treat a lock as stale after ${LOCK_STALE_MS / 60_000}); the snapshot was not written`, {
        hint: 'check the connection to the repository and run the command again',
      });
    }
  }

  private async refresh(): Promise<void> {
    const old = this.id;
    const time = this.repo.clock.now();
    this.id = await this.repo.saveDocument('locks', { ...this.doc, time: time.toISOString() });
    this.refreshedAt = time.getTime();
    await this.repo.backend.remove({ type: 'locks', name: old }).catch(() => undefined);
  }

  async release(): Promise<void> {
    this.repo.heldLocks?.delete(this);
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.refreshing;
    try {
      await this.repo.backend.remove({ type: 'locks', name: this.id });
    } catch (err) {
      if (!this.repo.backend.isNotFound(err)) throw err;
    }
  }
}

/** Removes stale locks (or all locks with `all`); returns the ids removed. */
export async function removeLocks(repo: LockRepo, all = false): Promise<LockInfo[]> {
  const removed: LockInfo[] = [];
  for (const l of await listLocks(repo)) {
    if (!all && !l.stale) continue;
    await repo.backend.remove({ type: 'locks', name: l.id });
    removed.push(l);
  }
  return removed;
}
