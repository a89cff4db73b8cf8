// The state of `bulwark serve` in one SQLite file: jobs, their runs and what each run did, an event
// log, users, API tokens, sessions and the repository passwords given to the server (encrypted).
// The repositories stay the source of truth for what was backed up: a lost catalog is rebuilt from
// their restore points (rebuildFromSnapshots), only jobs, users and secrets must be entered again.
//
// better-sqlite3 is a native module built for one Node version, and the CLI runs on others; it is
// loaded by open(), not by importing this file, so only `serve` ever needs it. Its API is
// synchronous, which suits a catalog: every call is a short local transaction, and there is no
// interleaving to reason about between a read and the write that depends on it.
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';
import type { Consistency, SnapshotSummary } from '../../repository/snapshot.js';
import { systemClock, type Clock } from '../../util/clock.js';
import { errnoCode } from '../../util/errors.js';
import { DEFAULT_SCRYPT, hashPassword, randomSecret, sameBytes, sha256, verifyPassword, type ScryptParams } from './auth.js';
import { jobDefinitionProblem, type JobDefinition } from './definition.js';
import { isJsonObject, jsonProblem, type JsonObject } from './json.js';
import { CatalogError, MIGRATIONS, migrate, schemaVersion, type Migration } from './schema.js';
import { ephemeralSecretBox, loadOrCreateKeyFile, type SecretBox } from './secrets.js';

export { CatalogError } from './schema.js';
export type { CatalogErrorReason } from './schema.js';
export type { JobDefinition } from './definition.js';
export type { JsonObject, JsonValue } from './json.js';

export type RunTrigger = 'scheduled' | 'manual' | 'catch-up' | 'rebuilt';
export type RunStatus = 'queued' | 'running' | 'success' | 'warning' | 'failure' | 'interrupted';
export type FinalRunStatus = 'success' | 'warning' | 'failure' | 'interrupted';
export type ItemStatus = 'pending' | 'running' | 'success' | 'warning' | 'failure' | 'interrupted';
export type EventLevel = 'debug' | 'info' | 'warning' | 'error';
export type Role = 'admin' | 'operator' | 'viewer';

export interface CatalogOptions {
  clock?: Clock;
  /** Cost of new password hashes; tests lower it. Existing hashes keep the parameters stored with them. */
  scrypt?: ScryptParams;
  /** How long a write waits for another connection's lock. Default 5 s. */
  busyTimeoutMs?: number;
  /** Events kept per run; later ones are counted, not stored, so a looping job cannot fill the disk. Default 10 000. */
  maxEventsPerRun?: number;
  /** The secrets key file; default `<database>.key`. */
  keyPath?: string;
  /** For tests of the migration machinery. */
  migrations?: readonly Migration[];
}

export interface Job {
  id: number;
  name: string;
  definition: JobDefinition;
  enabled: boolean;
  createdAt: Date;
  updatedAt: Date;
}

export interface Run {
  id: string;
  /** null once the job was deleted, or for a rebuilt run of a job the catalog does not know. */
  jobId: number | null;
  jobName: string;
  trigger: RunTrigger;
  status: RunStatus;
  queuedAt: Date;
  startedAt: Date | null;
  endedAt: Date | null;
  summary: JsonObject | null;
  /** Events beyond maxEventsPerRun, not stored. */
  eventsDropped: number;
}

export interface RunItem {
  id: number;
  runId: string;
  /** The VM's or folder's name. */
  name: string;
  status: ItemStatus;
  consistency: Consistency | null;
  bytesRead: number | null;
  bytesStored: number | null;
  durationMs: number | null;
  error: string | null;
  hint: string | null;
  snapshotId: string | null;
}

export type RunItemFields = Partial<Omit<RunItem, 'id' | 'runId' | 'name'>>;

export interface InterruptedRun {
  run: Run;
  /** All the run's items; those that were pending or running are now `interrupted`. */
  items: RunItem[];
}

export interface DashboardRow {
  /** null for runs whose job the catalog does not know (deleted, or rebuilt from restore points). */
  job: Job | null;
  jobName: string;
  lastRun: Run | null;
}

export interface CatalogEvent {
  id: number;
  runId: string | null;
  time: Date;
  level: EventLevel;
  message: string;
}

export interface EventPage {
  events: CatalogEvent[];
  /** Pass as `after` for the next page (also when following a live log: it never goes back). */
  cursor: number;
  /** More events exist after this page right now. */
  more: boolean;
}

export interface User {
  id: number;
  name: string;
  role: Role;
  createdAt: Date;
  updatedAt: Date;
}

export interface ApiTokenInfo {
  id: string;
  userId: number;
  name: string;
  createdAt: Date;
  expiresAt: Date | null;
  lastUsedAt: Date | null;
}

export interface NewSession {
  /** For the cookie; the catalog keeps only its hash. */
  sessionId: string;
  csrfToken: string;
  expiresAt: Date;
}

export interface Session {
  user: User;
  csrfToken: string;
  createdAt: Date;
  expiresAt: Date;
}

/** What rebuildFromSnapshots needs of a restore point (SnapshotWithId fits). */
export interface RestorePoint {
  id: string;
  time: string | Date;
  hostname: string;
  /** "files", "disk:<name>" or "vm:<name>". */
  source: string;
  tags: string[];
  summary: Pick<SnapshotSummary, 'bytesRead' | 'bytesNew' | 'durationMs'> & { warnings?: string[] };
  consistency?: Consistency;
}

export interface RebuildOptions {
  /** The job a restore point belongs to; default its `bulwark-job=<name>` tag, else `<source>@<hostname>`. */
  jobFor?: (point: RestorePoint) => string;
}

export interface RebuildResult {
  runsAdded: number;
  itemsAdded: number;
  /** Restore points the catalog already knew. */
  known: number;
}

/** Tags `serve` puts on the restore points it writes, so a rebuild can regroup them into runs. */
export const JOB_TAG = 'bulwark-job=';
export const RUN_TAG = 'bulwark-run=';

const MAX_EVENT_PAGE = 1000;
const MAX_MESSAGE_CHARS = 8192;
const TOKEN_PREFIX = 'bwk_';

// ---------------------------------------------------------------------------------------------------

type Db = BetterSqlite3.Database;

interface JobRow { id: number; name: string; definition: string; enabled: number; created_at: number; updated_at: number }
interface RunRow { id: string; job_id: number | null; job_name: string; trigger: RunTrigger; status: RunStatus; queued_at: number; started_at: number | null; ended_at: number | null; summary: string | null; events_dropped: number }
interface ItemRow { id: number; run_id: string; name: string; status: ItemStatus; consistency: Consistency | null; bytes_read: number | null; bytes_stored: number | null; duration_ms: number | null; error: string | null; hint: string | null; snapshot_id: string | null }
interface EventRow { id: number; run_id: string | null; time: number; level: EventLevel; message: string }
interface UserRow { id: number; name: string; password_hash: string; role: Role; created_at: number; updated_at: number }
interface TokenRow { id: string; user_id: number; name: string; secret_hash: Buffer; created_at: number; expires_at: number | null; last_used_at: number | null }
interface SessionRow { user_id: number; csrf_token: string; created_at: number; expires_at: number }

let sqlite: typeof BetterSqlite3 | undefined;

function loadSqlite(): typeof BetterSqlite3 {
  if (sqlite) return sqlite;
  try {
    sqlite = createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
    return sqlite;
  } catch (err) {
    throw sqliteUnavailable(err);
  }
}

function sqliteUnavailable(err: unknown): CatalogError {
  return new CatalogError('unavailable', `cannot load SQLite (better-sqlite3) on Node ${process.versions.node}: ${err instanceof Error ? err.message : String(err)}`, {
    hint: "run serve with the Node version Bulwark was installed with, or rebuild the module for this one: 'npm rebuild better-sqlite3'",
    cause: err,
  });
}

export class Catalog {
  readonly path: string;
  private readonly db: Db;
  private readonly clock: Clock;
  private readonly scrypt: ScryptParams;
  private readonly maxEventsPerRun: number;
  private readonly keyPath: string | undefined;
  private secretBox: SecretBox | undefined;
  private readonly statements = new Map<string, BetterSqlite3.Statement>();

  private constructor(path: string, db: Db, options: CatalogOptions, keyPath: string | undefined) {
    this.path = path;
    this.db = db;
    this.clock = options.clock ?? systemClock;
    this.scrypt = options.scrypt ?? DEFAULT_SCRYPT;
    this.maxEventsPerRun = options.maxEventsPerRun ?? 10_000;
    this.keyPath = keyPath;
  }

  /** Opens (creating if need be) the catalog at `path` and brings its schema up to date. */
  static open(path: string, options: CatalogOptions = {}): Catalog {
    return Catalog.connect(path, options, options.keyPath ?? `${path}.key`);
  }

  /** A throwaway catalog in memory with a key that dies with it: for tests and `serve --self-test`. */
  static openInMemory(options: CatalogOptions = {}): Catalog {
    const catalog = Catalog.connect(':memory:', options, undefined);
    catalog.secretBox = ephemeralSecretBox();
    return catalog;
  }

  private static connect(path: string, options: CatalogOptions, keyPath: string | undefined): Catalog {
    const Database = loadSqlite();
    let db: Db;
    try {
      db = new Database(path, { timeout: options.busyTimeoutMs ?? 5000 });
    } catch (err) {
      // The binding itself is loaded by the first constructor call, so a build for another Node shows up here.
      if (errnoCode(err) === 'ERR_DLOPEN_FAILED') throw sqliteUnavailable(err);
      throw new CatalogError('unavailable', `cannot open the catalog '${path}': ${err instanceof Error ? err.message : String(err)}`, {
        hint: errnoCode(err) === 'SQLITE_CANTOPEN' || /directory does not exist/.test(String(err)) ? 'check that its folder exists and the server may write there' : undefined,
        cause: err,
      });
    }
    try {
      // Version first: a newer schema is refused before this code changes anything in the file.
      const version = schemaVersion(db);
      const known = (options.migrations ?? MIGRATIONS).length;
      if (version > known) migrate(db, options.migrations ?? MIGRATIONS);
      if (path !== ':memory:') {
        // WAL: readers (the web UI) never wait for the writer (a run logging events) nor it for them.
        const mode = db.pragma('journal_mode = WAL', { simple: true }) as string;
        if (mode !== 'wal') {
          throw new CatalogError('unavailable', `the catalog '${path}' cannot use write-ahead logging (journal mode '${mode}')`, {
            hint: 'keep the catalog on a local file system, not a network share',
          });
        }
        // NORMAL is durable against a process crash in WAL mode; a power cut may lose the last
        // transactions, which the repositories (the source of truth) can give back.
        db.pragma('synchronous = NORMAL');
      }
      db.pragma('foreign_keys = ON');
      migrate(db, options.migrations ?? MIGRATIONS);
    } catch (err) {
      db.close();
      if (err instanceof CatalogError) throw err;
      throw new CatalogError('corrupt', `cannot use the catalog '${path}': ${err instanceof Error ? err.message : String(err)}`, {
        hint: 'move the damaged file aside; a new catalog is rebuilt from the repositories (jobs, users and passwords are entered again)',
        cause: err,
      });
    }
    return new Catalog(path, db, options, keyPath);
  }

  get schemaVersion(): number {
    return schemaVersion(this.db);
  }

  close(): void {
    this.statements.clear();
    if (this.db.open) this.db.close();
  }

  // ---- jobs -----------------------------------------------------------------------------------------

  createJob(name: string, definition: JobDefinition, options: { enabled?: boolean } = {}): Job {
    checkName('job', name);
    const text = definitionText(definition);
    const now = this.now();
    try {
      const id = this.q('INSERT INTO jobs (name, definition, enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?)').run(name, text, options.enabled === false ? 0 : 1, now, now).lastInsertRowid;
      return this.getJob(Number(id))!;
    } catch (err) {
      throw uniqueConflict(err, `a job named '${name}' already exists`);
    }
  }

  getJob(idOrName: number | string): Job | undefined {
    const row = (typeof idOrName === 'number'
      ? this.q('SELECT * FROM jobs WHERE id = ?').get(idOrName)
      : this.q('SELECT * FROM jobs WHERE name = ?').get(idOrName)) as JobRow | undefined;
    return row ? toJob(row) : undefined;
  }

  listJobs(): Job[] {
    return (this.q('SELECT * FROM jobs ORDER BY name').all() as JobRow[]).map(toJob);
  }

  updateJob(id: number, changes: { name?: string; definition?: JobDefinition; enabled?: boolean }): Job {
    const current = this.getJob(id);
    if (!current) throw notFound('job', String(id));
    if (changes.name !== undefined) checkName('job', changes.name);
    const name = changes.name ?? current.name;
    const text = definitionText(changes.definition ?? current.definition);
    const enabled = changes.enabled ?? current.enabled;
    try {
      this.db.transaction(() => {
        this.q('UPDATE jobs SET name = ?, definition = ?, enabled = ?, updated_at = ? WHERE id = ?').run(name, text, enabled ? 1 : 0, this.now(), id);
        // History follows a renamed job, so the dashboard and catch-up keep seeing it as one.
        if (name !== current.name) this.q('UPDATE runs SET job_name = ? WHERE job_id = ?').run(name, id);
      })();
    } catch (err) {
      throw uniqueConflict(err, `a job named '${name}' already exists`);
    }
    return this.getJob(id)!;
  }

  /** Deletes the job; its runs stay as history (job id null). */
  deleteJob(id: number): boolean {
    return this.q('DELETE FROM jobs WHERE id = ?').run(id).changes > 0;
  }

  // ---- runs and their items ----------------------------------------------------------------------------

  createRun(jobId: number, trigger: Exclude<RunTrigger, 'rebuilt'>, options: { status?: 'queued' | 'running'; id?: string } = {}): Run {
    const job = this.getJob(jobId);
    if (!job) throw notFound('job', String(jobId));
    const id = options.id ?? randomUUID();
    const now = this.now();
    const status = options.status ?? 'queued';
    try {
      this.q('INSERT INTO runs (id, job_id, job_name, trigger, status, queued_at, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(id, jobId, job.name, trigger, status, now, status === 'running' ? now : null);
    } catch (err) {
      throw uniqueConflict(err, `a run with id '${id}' already exists`);
    }
    return this.getRun(id)!;
  }

  startRun(id: string): Run {
    const changed = this.q("UPDATE runs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'").run(this.now(), id).changes;
    if (changed === 0) throw this.badTransition(id, 'start');
    return this.getRun(id)!;
  }

  /** Ends a queued or running run; ending it twice is refused, so a late writer cannot overwrite `interrupted`. */
  finishRun(id: string, status: FinalRunStatus, summary?: JsonObject): Run {
    if (!['success', 'warning', 'failure', 'interrupted'].includes(status)) throw invalid(`'${String(status)}' is not a final run status`);
    const text = summary === undefined ? null : jsonText('run summary', summary);
    const changed = this.q("UPDATE runs SET status = ?, ended_at = ?, summary = coalesce(?, summary) WHERE id = ? AND status IN ('queued', 'running')").run(status, this.now(), text, id).changes;
    if (changed === 0) throw this.badTransition(id, 'finish');
    return this.getRun(id)!;
  }

  getRun(id: string): Run | undefined {
    const row = this.q('SELECT * FROM runs WHERE id = ?').get(id) as RunRow | undefined;
    return row ? toRun(row) : undefined;
  }

  /** Newest first; `before` pages back by queue time. */
  listRuns(options: { jobId?: number; limit?: number; before?: Date } = {}): Run[] {
    const limit = clampLimit(options.limit, 100);
    const before = options.before?.getTime() ?? Number.MAX_SAFE_INTEGER;
    const rows = (options.jobId === undefined
      ? this.q('SELECT * FROM runs WHERE queued_at < ? ORDER BY queued_at DESC, rowid DESC LIMIT ?').all(before, limit)
      : this.q('SELECT * FROM runs WHERE job_id = ? AND queued_at < ? ORDER BY queued_at DESC, rowid DESC LIMIT ?').all(options.jobId, before, limit)) as RunRow[];
    return rows.map(toRun);
  }

  addItem(runId: string, name: string, fields: RunItemFields = {}): RunItem {
    if (!this.getRun(runId)) throw notFound('run', runId);
    checkName('item', name);
    checkItemFields(fields);
    try {
      const id = this.q(`INSERT INTO run_items (run_id, name, status, consistency, bytes_read, bytes_stored, duration_ms, error, hint, snapshot_id)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(runId, name, fields.status ?? 'pending', fields.consistency ?? null, fields.bytesRead ?? null, fields.bytesStored ?? null,
        fields.durationMs ?? null, fields.error ?? null, fields.hint ?? null, fields.snapshotId ?? null).lastInsertRowid;
      return this.getItem(Number(id))!;
    } catch (err) {
      throw uniqueConflict(err, `restore point '${fields.snapshotId}' is already recorded for another item`);
    }
  }

  updateItem(id: number, fields: RunItemFields): RunItem {
    checkItemFields(fields);
    const current = this.getItem(id);
    if (!current) throw notFound('run item', String(id));
    const next = { ...current, ...fields };
    try {
      this.q(`UPDATE run_items SET status = ?, consistency = ?, bytes_read = ?, bytes_stored = ?, duration_ms = ?, error = ?, hint = ?, snapshot_id = ? WHERE id = ?`)
        .run(next.status, next.consistency, next.bytesRead, next.bytesStored, next.durationMs, next.error, next.hint, next.snapshotId, id);
    } catch (err) {
      throw uniqueConflict(err, `restore point '${fields.snapshotId}' is already recorded for another item`);
    }
    return this.getItem(id)!;
  }

  getItem(id: number): RunItem | undefined {
    const row = this.q('SELECT * FROM run_items WHERE id = ?').get(id) as ItemRow | undefined;
    return row ? toItem(row) : undefined;
  }

  listItems(runId: string): RunItem[] {
    return (this.q('SELECT * FROM run_items WHERE run_id = ? ORDER BY id').all(runId) as ItemRow[]).map(toItem);
  }

  /**
   * Called once at server start: a run still `queued` or `running` belongs to a server that died, so
   * it becomes `interrupted` (with its unfinished items), and is returned so the caller can clean up
   * what it left behind on those VMs (a snapshot, a frozen guest, an NBD export).
   */
  markInterrupted(): InterruptedRun[] {
    const now = this.now();
    return this.db.transaction(() => {
      const rows = this.q("SELECT * FROM runs WHERE status IN ('queued', 'running') ORDER BY queued_at, rowid").all() as RunRow[];
      const out: InterruptedRun[] = [];
      for (const row of rows) {
        this.q("UPDATE runs SET status = 'interrupted', ended_at = ? WHERE id = ?").run(now, row.id);
        this.q("UPDATE run_items SET status = 'interrupted' WHERE run_id = ? AND status IN ('pending', 'running')").run(row.id);
        this.appendEventIn(row.id, now, 'warning', `run ${row.status === 'queued' ? 'was queued' : 'was running'} when the server stopped; marked interrupted`);
        out.push({ run: this.getRun(row.id)!, items: this.listItems(row.id) });
      }
      return out;
    }).immediate();
  }

  /**
   * When each job last started, by job name, for the scheduler's catch-up. Manual runs are left out
   * by default: one taken by hand between slots does not stand for the scheduled slot it did not fill.
   */
  lastStartTimes(options: { includeManual?: boolean } = {}): Map<string, Date> {
    const rows = this.q(`SELECT job_name, max(started_at) AS t FROM runs WHERE started_at IS NOT NULL AND (? OR trigger != 'manual') GROUP BY job_name`)
      .all(options.includeManual ? 1 : 0) as { job_name: string; t: number }[];
    return new Map(rows.map((r) => [r.job_name, new Date(r.t)]));
  }

  /** Each job's latest run, the ones that need attention first (failure, interrupted, warning), then by name. */
  dashboard(): DashboardRow[] {
    const jobs = new Map(this.listJobs().map((j) => [j.name, j]));
    const rows = this.q(`SELECT r.* FROM runs r WHERE r.rowid = (
        SELECT r2.rowid FROM runs r2 WHERE r2.job_name = r.job_name ORDER BY r2.queued_at DESC, r2.rowid DESC LIMIT 1)`).all() as RunRow[];
    const last = new Map(rows.map((r) => [r.job_name, toRun(r)]));
    const names = new Set([...jobs.keys(), ...last.keys()]);
    const rank: Record<RunStatus | 'none', number> = { failure: 0, interrupted: 1, warning: 2, running: 3, queued: 4, success: 5, none: 6 };
    return [...names]
      .map((name) => ({ job: jobs.get(name) ?? null, jobName: name, lastRun: last.get(name) ?? null }))
      .sort((a, b) => rank[a.lastRun?.status ?? 'none'] - rank[b.lastRun?.status ?? 'none'] || (a.jobName < b.jobName ? -1 : a.jobName > b.jobName ? 1 : 0));
  }

  /**
   * Adds runs and items for restore points the catalog does not know (by snapshot id), so running it
   * again, or on a catalog that recorded the runs itself, adds nothing twice. Points tagged with the
   * same run (RUN_TAG) become one run with an item each; others get a run of their own.
   */
  rebuildFromSnapshots(points: readonly RestorePoint[], options: RebuildOptions = {}): RebuildResult {
    const jobFor = options.jobFor ?? defaultJobFor;
    const result: RebuildResult = { runsAdded: 0, itemsAdded: 0, known: 0 };
    const sorted = [...points].sort((a, b) => timeOf(a) - timeOf(b));
    this.db.transaction(() => {
      for (const point of sorted) {
        if (this.q('SELECT 1 FROM run_items WHERE snapshot_id = ?').get(point.id)) {
          result.known++;
          continue;
        }
        const started = timeOf(point);
        if (!Number.isFinite(started)) throw invalid(`restore point '${point.id}' has no valid time`);
        // Restore points come from repositories written by any version: a missing summary is tolerated.
        const summary: Partial<RestorePoint['summary']> = point.summary ?? {};
        const ended = started + Math.max(0, summary.durationMs || 0);
        const warned = (summary.warnings?.length ?? 0) > 0;
        const runTag = point.tags.find((t) => t.startsWith(RUN_TAG))?.slice(RUN_TAG.length);
        const runId = runTag || `rebuilt-${point.id}`;
        const existing = this.q('SELECT * FROM runs WHERE id = ?').get(runId) as RunRow | undefined;
        if (!existing) {
          const jobName = jobFor(point);
          const job = this.getJob(jobName);
          this.q(`INSERT INTO runs (id, job_id, job_name, trigger, status, queued_at, started_at, ended_at) VALUES (?, ?, ?, 'rebuilt', ?, ?, ?, ?)`)
            .run(runId, job?.id ?? null, jobName, warned ? 'warning' : 'success', started, started, ended);
          result.runsAdded++;
        } else if (existing.trigger === 'rebuilt') {
          // A run regrouped from several points spans all of them, and warns if any of them did.
          this.q(`UPDATE runs SET started_at = min(started_at, ?), queued_at = min(queued_at, ?), ended_at = max(ended_at, ?),
            status = CASE WHEN ? THEN 'warning' ELSE status END WHERE id = ?`).run(started, started, ended, warned ? 1 : 0, runId);
        }
        this.q(`INSERT INTO run_items (run_id, name, status, consistency, bytes_read, bytes_stored, duration_ms, snapshot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
          .run(runId, itemName(point), warned ? 'warning' : 'success', point.consistency ?? null, summary.bytesRead ?? null, summary.bytesNew ?? null, summary.durationMs ?? null, point.id);
        result.itemsAdded++;
      }
    }).immediate();
    return result;
  }

  // ---- events ------------------------------------------------------------------------------------

  /** Appends an event; returns its id, or undefined when the run's quota was used up and it was only counted. */
  appendEvent(event: { runId?: string | null; level: EventLevel; message: string; time?: Date }): number | undefined {
    if (!['debug', 'info', 'warning', 'error'].includes(event.level)) throw invalid(`'${String(event.level)}' is not an event level`);
    if (typeof event.message !== 'string') throw invalid('an event message must be a string');
    const time = event.time?.getTime() ?? this.now();
    return this.db.transaction(() => this.appendEventIn(event.runId ?? null, time, event.level, event.message))();
  }

  private appendEventIn(runId: string | null, time: number, level: EventLevel, message: string): number | undefined {
    if (runId !== null) {
      const counted = this.q('UPDATE runs SET event_count = event_count + 1 WHERE id = ? AND event_count < ?').run(runId, this.maxEventsPerRun).changes;
      if (counted === 0) {
        const dropped = this.q('UPDATE runs SET events_dropped = events_dropped + 1 WHERE id = ?').run(runId).changes;
        if (dropped === 0) throw notFound('run', runId);
        return undefined;
      }
    }
    const text = message.length > MAX_MESSAGE_CHARS ? `${message.slice(0, MAX_MESSAGE_CHARS)}…` : message;
    return Number(this.q('INSERT INTO events (run_id, time, level, message) VALUES (?, ?, ?, ?)').run(runId, time, level, text).lastInsertRowid);
  }

  /** Events in order, after the cursor; a page holds at most 1000. */
  listEvents(options: { runId?: string; after?: number; limit?: number } = {}): EventPage {
    const limit = clampLimit(options.limit, 100);
    const after = options.after ?? 0;
    const rows = (options.runId === undefined
      ? this.q('SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?').all(after, limit + 1)
      : this.q('SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?').all(options.runId, after, limit + 1)) as EventRow[];
    const more = rows.length > limit;
    const events = rows.slice(0, limit).map(toEvent);
    return { events, cursor: events.at(-1)?.id ?? after, more };
  }

  /** Deletes events older than `before`; returns how many. */
  pruneEvents(before: Date): number {
    return this.q('DELETE FROM events WHERE time < ?').run(before.getTime()).changes;
  }

  // ---- users, tokens, sessions -------------------------------------------------------------------

  async createUser(name: string, password: string, role: Role): Promise<User> {
    checkName('user', name);
    checkPassword(password);
    checkRole(role);
    const hash = await hashPassword(password, this.scrypt);
    const now = this.now();
    try {
      const id = this.q('INSERT INTO users (name, password_hash, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?)').run(name, hash, role, now, now).lastInsertRowid;
      return this.getUser(Number(id))!;
    } catch (err) {
      throw uniqueConflict(err, `a user named '${name}' already exists`);
    }
  }

  getUser(idOrName: number | string): User | undefined {
    const row = this.userRow(idOrName);
    return row ? toUser(row) : undefined;
  }

  listUsers(): User[] {
    return (this.q('SELECT * FROM users ORDER BY name').all() as UserRow[]).map(toUser);
  }

  /** The user when name and password match; an unknown name costs the same time as a wrong password. */
  async verifyLogin(name: string, password: string): Promise<User | undefined> {
    const row = this.userRow(name);
    const ok = await verifyPassword(password, row?.password_hash, this.scrypt);
    return ok && row ? toUser(row) : undefined;
  }

  async setPassword(userId: number, password: string): Promise<void> {
    checkPassword(password);
    const hash = await hashPassword(password, this.scrypt);
    // A new password ends every session: whoever knew the old one may be logged in.
    this.db.transaction(() => {
      if (this.q('UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?').run(hash, this.now(), userId).changes === 0) throw notFound('user', String(userId));
      this.q('DELETE FROM sessions WHERE user_id = ?').run(userId);
    })();
  }

  setRole(userId: number, role: Role): User {
    checkRole(role);
    if (this.q('UPDATE users SET role = ?, updated_at = ? WHERE id = ?').run(role, this.now(), userId).changes === 0) throw notFound('user', String(userId));
    return this.getUser(userId)!;
  }

  /** Deletes the user with their tokens and sessions. */
  deleteUser(userId: number): boolean {
    return this.q('DELETE FROM users WHERE id = ?').run(userId).changes > 0;
  }

  /** Creates an API token; `token` is shown to the user once and never stored. */
  createToken(userId: number, name: string, options: { expiresAt?: Date } = {}): { token: string; info: ApiTokenInfo } {
    if (!this.getUser(userId)) throw notFound('user', String(userId));
    checkName('token', name);
    const id = randomSecret().slice(0, 16).replace(/[-_]/g, 'x');
    const secret = randomSecret();
    this.q('INSERT INTO api_tokens (id, user_id, name, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, userId, name, sha256(secret), this.now(), options.expiresAt?.getTime() ?? null);
    return { token: `${TOKEN_PREFIX}${id}_${secret}`, info: this.listTokens(userId).find((t) => t.id === id)! };
  }

  /** The token's user when the token is known, unexpired and its secret matches. */
  verifyToken(token: string): { user: User; token: ApiTokenInfo } | undefined {
    const match = /^bwk_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{43})$/.exec(token);
    const row = match ? (this.q('SELECT * FROM api_tokens WHERE id = ?').get(match[1]) as TokenRow | undefined) : undefined;
    // Compared even when nothing was found, so a known id with a wrong secret takes no longer than an unknown one.
    const same = sameBytes(sha256(match?.[2] ?? ''), row?.secret_hash ?? Buffer.alloc(32));
    if (!row || !same) return undefined;
    const now = this.now();
    if (row.expires_at !== null && row.expires_at <= now) return undefined;
    this.q('UPDATE api_tokens SET last_used_at = ? WHERE id = ?').run(now, row.id);
    const user = this.getUser(row.user_id);
    return user ? { user, token: toToken({ ...row, last_used_at: now }) } : undefined;
  }

  listTokens(userId: number): ApiTokenInfo[] {
    return (this.q('SELECT * FROM api_tokens WHERE user_id = ? ORDER BY created_at, id').all(userId) as TokenRow[]).map(toToken);
  }

  revokeToken(id: string): boolean {
    return this.q('DELETE FROM api_tokens WHERE id = ?').run(id).changes > 0;
  }

  createSession(userId: number, ttlMs: number): NewSession {
    if (!this.getUser(userId)) throw notFound('user', String(userId));
    if (!(ttlMs > 0)) throw invalid('a session lifetime must be positive');
    const sessionId = randomSecret();
    const csrfToken = randomSecret();
    const now = this.now();
    const expiresAt = now + ttlMs;
    this.q('INSERT INTO sessions (id_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)').run(sha256(sessionId), userId, csrfToken, now, expiresAt);
    return { sessionId, csrfToken, expiresAt: new Date(expiresAt) };
  }

  /** The live session for a cookie's id; an expired one is deleted and not returned. */
  getSession(sessionId: string): Session | undefined {
    const idHash = sha256(sessionId);
    const row = this.q('SELECT user_id, csrf_token, created_at, expires_at FROM sessions WHERE id_hash = ?').get(idHash) as SessionRow | undefined;
    if (!row) return undefined;
    if (row.expires_at <= this.now()) {
      this.q('DELETE FROM sessions WHERE id_hash = ?').run(idHash);
      return undefined;
    }
    const user = this.getUser(row.user_id);
    return user ? { user, csrfToken: row.csrf_token, createdAt: new Date(row.created_at), expiresAt: new Date(row.expires_at) } : undefined;
  }

  /** Whether a request's CSRF token is the session's, compared in constant time. */
  checkCsrf(session: Session, token: string): boolean {
    return sameBytes(sha256(session.csrfToken), sha256(token));
  }

  deleteSession(sessionId: string): boolean {
    return this.q('DELETE FROM sessions WHERE id_hash = ?').run(sha256(sessionId)).changes > 0;
  }

  purgeExpiredSessions(): number {
    return this.q('DELETE FROM sessions WHERE expires_at <= ?').run(this.now()).changes;
  }

  // ---- repository passwords ----------------------------------------------------------------------

  setRepositoryPassword(repository: string, password: string): void {
    checkName('repository', repository);
    const box = this.box();
    this.q(`INSERT INTO repository_secrets (name, ciphertext, updated_at) VALUES (?, ?, ?)
      ON CONFLICT (name) DO UPDATE SET ciphertext = excluded.ciphertext, updated_at = excluded.updated_at`).run(repository, box.encrypt(password, repository), this.now());
  }

  /** The stored password, or undefined; throws CatalogError('tampered') when it fails its integrity check. */
  getRepositoryPassword(repository: string): string | undefined {
    const row = this.q('SELECT ciphertext FROM repository_secrets WHERE name = ?').get(repository) as { ciphertext: Buffer } | undefined;
    return row ? this.box().decrypt(row.ciphertext, repository) : undefined;
  }

  deleteRepositoryPassword(repository: string): boolean {
    return this.q('DELETE FROM repository_secrets WHERE name = ?').run(repository).changes > 0;
  }

  listRepositorySecrets(): string[] {
    return (this.q('SELECT name FROM repository_secrets ORDER BY name').all() as { name: string }[]).map((r) => r.name);
  }

  /** The key, loaded (or created) on first use and checked against the one the catalog was first used with. */
  private box(): SecretBox {
    if (this.secretBox) return this.secretBox;
    if (!this.keyPath) throw new Error('catalog has neither a key file nor an ephemeral key');
    const box = loadOrCreateKeyFile(this.keyPath);
    const stored = this.q("SELECT value FROM meta WHERE key = 'secret_key_id'").get() as { value: string } | undefined;
    if (stored && stored.value !== box.keyId) {
      throw new CatalogError('tampered', `the key file '${this.keyPath}' is not the one this catalog's secrets were stored with`, {
        hint: 'restore the original key file; without it, delete the stored repository passwords and enter them again',
      });
    }
    if (!stored) this.q("INSERT INTO meta (key, value) VALUES ('secret_key_id', ?)").run(box.keyId);
    this.secretBox = box;
    return box;
  }

  // ---- helpers -----------------------------------------------------------------------------------

  private now(): number {
    return this.clock.now().getTime();
  }

  private q(sql: string): BetterSqlite3.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  private userRow(idOrName: number | string): UserRow | undefined {
    return (typeof idOrName === 'number'
      ? this.q('SELECT * FROM users WHERE id = ?').get(idOrName)
      : this.q('SELECT * FROM users WHERE name = ?').get(idOrName)) as UserRow | undefined;
  }

  private badTransition(id: string, verb: string): CatalogError {
    const run = this.getRun(id);
    if (!run) return notFound('run', id);
    return new CatalogError('conflict', `cannot ${verb} run '${id}': it is ${run.status}`);
  }
}

/**
 * Opens a throwaway catalog and exercises each table once: proves the native module loads on this
 * Node and the schema applies. Returns one line per check; throws on the first failure.
 */
export async function catalogSelfTest(): Promise<string[]> {
  const lines: string[] = [];
  const c = Catalog.openInMemory({ scrypt: { N: 2 ** 10, r: 8, p: 1 } });
  try {
    lines.push(`sqlite loaded, schema version ${c.schemaVersion}`);
    const job = c.createJob('self-test', { kind: 'folder', sources: ['/tmp'], repository: '/tmp/repo' });
    const run = c.createRun(job.id, 'manual', { status: 'running' });
    c.addItem(run.id, '/tmp', { status: 'running' });
    c.appendEvent({ runId: run.id, level: 'info', message: 'self-test' });
    if (c.markInterrupted().length !== 1) throw new Error('markInterrupted did not find the running run');
    lines.push('jobs, runs, items, events');
    const user = await c.createUser('self-test', 'a long enough password', 'admin');
    if (!(await c.verifyLogin('self-test', 'a long enough password')) || (await c.verifyLogin('self-test', 'wrong password!'))) throw new Error('password check failed');
    const { token } = c.createToken(user.id, 'self-test');
    if (!c.verifyToken(token)) throw new Error('token check failed');
    lines.push('users, tokens');
    c.setRepositoryPassword('self-test', 'secret');
    if (c.getRepositoryPassword('self-test') !== 'secret') throw new Error('secret round trip failed');
    lines.push('secrets');
  } finally {
    c.close();
  }
  return lines;
}

// ---- row mapping and validation ------------------------------------------------------------------

function toJob(row: JobRow): Job {
  let definition: unknown;
  try {
    definition = JSON.parse(row.definition);
  } catch (err) {
    throw corruptRow(`job '${row.name}'`, 'its definition is not JSON', err);
  }
  const problem = jobDefinitionProblem(definition);
  if (problem) throw corruptRow(`job '${row.name}'`, `its definition is invalid: ${problem}`);
  return { id: row.id, name: row.name, definition: definition as JobDefinition, enabled: row.enabled === 1, createdAt: new Date(row.created_at), updatedAt: new Date(row.updated_at) };
}

function toRun(row: RunRow): Run {
  let summary: JsonObject | null = null;
  if (row.summary !== null) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(row.summary);
    } catch (err) {
      throw corruptRow(`run '${row.id}'`, 'its summary is not JSON', err);
    }
    if (!isJsonObject(parsed)) throw corruptRow(`run '${row.id}'`, 'its summary is not an object');
    summary = parsed;
  }
  return {
    id: row.id, jobId: row.job_id, jobName: row.job_name, trigger: row.trigger, status: row.status, queuedAt: new Date(row.queued_at),
    startedAt: dateOrNull(row.started_at), endedAt: dateOrNull(row.ended_at), summary, eventsDropped: row.events_dropped,
  };
}

function toItem(row: ItemRow): RunItem {
  return {
    id: row.id, runId: row.run_id, name: row.name, status: row.status, consistency: row.consistency, bytesRead: row.bytes_read, bytesStored: row.bytes_stored,
    durationMs: row.duration_ms, error: row.error, hint: row.hint, snapshotId: row.snapshot_id,
  };
}

function toEvent(row: EventRow): CatalogEvent {
  return { id: row.id, runId: row.run_id, time: new Date(row.time), level: row.level, message: row.message };
}

function toUser(row: UserRow): User {
  return { id: row.id, name: row.name, role: row.role, createdAt: new Date(row.created_at), updatedAt: new Date(row.updated_at) };
}

function toToken(row: TokenRow): ApiTokenInfo {
  return { id: row.id, userId: row.user_id, name: row.name, createdAt: new Date(row.created_at), expiresAt: dateOrNull(row.expires_at), lastUsedAt: dateOrNull(row.last_used_at) };
}

function dateOrNull(ms: number | null): Date | null {
  return ms === null ? null : new Date(ms);
}

function definitionText(definition: JobDefinition): string {
  const problem = jsonProblem(definition) ?? jobDefinitionProblem(definition);
  if (problem) throw invalid(`invalid job definition: ${problem}`);
  return JSON.stringify(definition);
}

function jsonText(what: string, value: unknown): string {
  const problem = typeof value !== 'object' || value === null || Array.isArray(value) ? 'it is not an object' : jsonProblem(value);
  if (problem) throw invalid(`invalid ${what}: ${problem}`);
  return JSON.stringify(value);
}

function checkName(what: string, name: string): void {
  if (typeof name !== 'string' || name.trim() === '' || name.length > 200 || /[\p{Cc}]/u.test(name)) {
    throw invalid(`invalid ${what} name '${String(name)}': it must be 1 to 200 printable characters`);
  }
}

function checkPassword(password: string): void {
  if (typeof password !== 'string' || password.length < 8) throw invalid('a password must have at least 8 characters');
  if (password.length > 1024) throw invalid('a password must have at most 1024 characters');
}

function checkRole(role: string): void {
  if (role !== 'admin' && role !== 'operator' && role !== 'viewer') throw invalid(`'${role}' is not a role (admin, operator, viewer)`);
}

const ITEM_STATUSES = new Set<string>(['pending', 'running', 'success', 'warning', 'failure', 'interrupted']);
const CONSISTENCIES = new Set<string>(['application', 'filesystem', 'crash']);

function checkItemFields(f: RunItemFields): void {
  if (f.status !== undefined && !ITEM_STATUSES.has(f.status)) throw invalid(`'${String(f.status)}' is not an item status`);
  if (f.consistency != null && !CONSISTENCIES.has(f.consistency)) throw invalid(`'${String(f.consistency)}' is not a consistency level`);
  for (const key of ['bytesRead', 'bytesStored', 'durationMs'] as const) {
    const v = f[key];
    if (v != null && !(Number.isSafeInteger(v) && v >= 0)) throw invalid(`${key} must be a non-negative integer`);
  }
}

function clampLimit(limit: number | undefined, fallback: number): number {
  if (limit === undefined) return fallback;
  if (!Number.isFinite(limit) || limit < 1) throw invalid('a page limit must be at least 1');
  return Math.min(Math.floor(limit), MAX_EVENT_PAGE);
}

function defaultJobFor(point: RestorePoint): string {
  return point.tags.find((t) => t.startsWith(JOB_TAG))?.slice(JOB_TAG.length) || `${point.source}@${point.hostname}`;
}

function itemName(point: RestorePoint): string {
  const colon = point.source.indexOf(':');
  return colon >= 0 ? point.source.slice(colon + 1) : point.source;
}

function timeOf(point: RestorePoint): number {
  return point.time instanceof Date ? point.time.getTime() : Date.parse(point.time);
}

function invalid(message: string): CatalogError {
  return new CatalogError('invalid', message);
}

function notFound(what: string, id: string): CatalogError {
  return new CatalogError('not-found', `no ${what} '${id}' in the catalog`);
}

function uniqueConflict(err: unknown, message: string): unknown {
  if (errnoCode(err) === 'SQLITE_CONSTRAINT_UNIQUE' || errnoCode(err) === 'SQLITE_CONSTRAINT_PRIMARYKEY') return new CatalogError('conflict', message, { cause: err });
  return err;
}

function corruptRow(what: string, problem: string, cause?: unknown): CatalogError {
  return new CatalogError('corrupt', `the catalog's ${what} cannot be read: ${problem}`, {
    hint: 'fix or re-enter it; the file may have been edited by hand or written by another version',
    ...(cause === undefined ? {} : { cause }),
  });
}
