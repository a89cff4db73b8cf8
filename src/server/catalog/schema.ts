// The catalog's schema as an ordered list of migrations; `PRAGMA user_version` records how many have
// run. A migration is only ever appended, never edited: a catalog in the field has run the old text.
import type BetterSqlite3 from 'better-sqlite3';
import { BulwarkError } from '../../util/errors.js';

export type Migration = (db: BetterSqlite3.Database) => void;

/** Why a catalog could not be used; `code` stays one of BulwarkError's, `reason` says which case. */
export type CatalogErrorReason = 'schema-too-new' | 'invalid' | 'conflict' | 'not-found' | 'corrupt' | 'tampered' | 'unavailable';

export class CatalogError extends BulwarkError {
  readonly reason: CatalogErrorReason;

  constructor(reason: CatalogErrorReason, message: string, options: { hint?: string; cause?: unknown } = {}) {
    const code = reason === 'invalid' || reason === 'conflict' ? 'usage' : reason === 'not-found' ? 'not-found' : 'failed';
    super(code, message, options);
    this.reason = reason;
  }
}

// Times are INTEGER milliseconds since the epoch: they sort and compare as numbers, and no time zone
// or string format can drift between writers.
const V1 = `
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  definition TEXT NOT NULL,
  enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

-- job_id is SET NULL on delete and job_name kept, so history outlives a deleted job, and runs rebuilt
-- from restore points of a job the catalog no longer knows still have a name.
CREATE TABLE runs (
  id TEXT PRIMARY KEY,
  job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
  job_name TEXT NOT NULL,
  trigger TEXT NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'catch-up', 'rebuilt')),
  status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'success', 'warning', 'failure', 'interrupted')),
  queued_at INTEGER NOT NULL,
  started_at INTEGER,
  ended_at INTEGER,
  summary TEXT,
  event_count INTEGER NOT NULL DEFAULT 0,
  events_dropped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_job_started ON runs (job_id, started_at);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE run_items (
  id INTEGER PRIMARY KEY,
  run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'success', 'warning', 'failure', 'interrupted')),
  consistency TEXT CHECK (consistency IN ('application', 'filesystem', 'crash')),
  bytes_read INTEGER,
  bytes_stored INTEGER,
  duration_ms INTEGER,
  error TEXT,
  hint TEXT,
  snapshot_id TEXT UNIQUE
);
CREATE INDEX run_items_run ON run_items (run_id);

CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  run_id TEXT REFERENCES runs(id) ON DELETE CASCADE,
  time INTEGER NOT NULL,
  level TEXT NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error')),
  message TEXT NOT NULL
);
CREATE INDEX events_run ON events (run_id, id);

CREATE TABLE users (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE api_tokens (
  id TEXT PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  secret_hash BLOB NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER,
  last_used_at INTEGER
);

CREATE TABLE sessions (
  id_hash BLOB PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  csrf_token TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE repository_secrets (
  name TEXT PRIMARY KEY,
  ciphertext BLOB NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
`;

export const MIGRATIONS: readonly Migration[] = [(db) => db.exec(V1)];

export function schemaVersion(db: BetterSqlite3.Database): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Brings the schema up to `migrations.length`, each step in its own transaction with its version
 * bump, so a crash or a failing step leaves the catalog at the last complete version.
 */
export function migrate(db: BetterSqlite3.Database, migrations: readonly Migration[] = MIGRATIONS): { from: number; to: number } {
  const from = schemaVersion(db);
  refuseNewer(from, migrations.length);
  // The version is read again inside each write transaction: two processes opening a fresh file at
  // once would otherwise both run the same step.
  const step = db.transaction((): boolean => {
    const v = schemaVersion(db);
    refuseNewer(v, migrations.length);
    if (v === migrations.length) return false;
    migrations[v]!(db);
    // user_version takes no bound parameter; v is a number we computed.
    db.pragma(`user_version = ${v + 1}`);
    return true;
  });
  while (step.immediate()) {
    // one step per transaction
  }
  return { from, to: migrations.length };
}

function refuseNewer(version: number, known: number): void {
  if (version <= known) return;
  throw new CatalogError('schema-too-new', `the catalog has schema version ${version}, newer than this Bulwark knows (${known})`, {
    hint: 'run the Bulwark version that wrote it or a newer one; or move the catalog aside and rebuild it from the repositories',
  });
}
