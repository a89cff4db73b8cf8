import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Clock } from '../../util/clock.js';
import { BulwarkError } from '../../util/errors.js';
import { hashPassword, needsRehash, verifyPassword } from './auth.js';
import { Catalog, CatalogError, RUN_TAG, JOB_TAG, catalogSelfTest, type JobDefinition, type RestorePoint } from './catalog.js';
import { MIGRATIONS, migrate, type Migration } from './schema.js';
import { thrown } from '../../../test/helpers/thrown.js';

const Database = createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
const FAST = { scrypt: { N: 2 ** 10, r: 8, p: 1 } };
const DEF: JobDefinition = { kind: 'vm', sources: ['web01', 'db01'], repository: '/srv/repo', schedule: { cron: '0 2 * * *', timeZone: 'Europe/Berlin' } };

class FakeClock implements Clock {
  constructor(public t = Date.parse('2026-03-01T10:00:00Z')) {}
  now(): Date {
    return new Date(this.t);
  }
}

let dir: string;
let open: Catalog[];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bulwark-catalog-'));
  open = [];
});
afterEach(() => {
  for (const c of open) c.close();
  rmSync(dir, { recursive: true, force: true });
});

function openCatalog(name = 'catalog.db', options: Parameters<typeof Catalog.open>[1] = {}): Catalog {
  const c = Catalog.open(join(dir, name), { ...FAST, ...options });
  open.push(c);
  return c;
}

describe('opening and migrations', () => {
  it('creates a fresh catalog in WAL mode with foreign keys on, and reopens it without migrating again', () => {
    const path = join(dir, 'catalog.db');
    const c = Catalog.open(path, FAST);
    expect(c.schemaVersion).toBe(MIGRATIONS.length);
    c.createJob('nightly', DEF);
    c.close();

    const raw = new Database(path);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(raw.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    raw.close();

    const again = openCatalog();
    expect(again.schemaVersion).toBe(MIGRATIONS.length);
    expect(again.listJobs().map((j) => j.name)).toEqual(['nightly']);
    // Foreign keys are enforced on this connection: an item for a run that does not exist is refused.
    expect(thrown(() => again.addItem('no-such-run', 'x'))).toMatchObject({ reason: 'not-found' });
  });

  it('refuses a catalog written by a newer schema, with a typed error and without touching the file', () => {
    const path = join(dir, 'catalog.db');
    Catalog.open(path, FAST).close();
    const raw = new Database(path);
    raw.pragma(`user_version = ${MIGRATIONS.length + 5}`);
    raw.close();

    const err = thrown(() => Catalog.open(path, FAST));
    expect(err).toBeInstanceOf(CatalogError);
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ reason: 'schema-too-new', code: 'failed' });
    expect((err as BulwarkError).hint).toMatch(/newer/);
    const check = new Database(path);
    expect(check.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length + 5);
    check.close();
  });

  it('runs only the missing steps, each atomically: a failing step leaves the previous version', () => {
    const path = join(dir, 'm.db');
    const ran: number[] = [];
    const steps: Migration[] = [
      (db) => { ran.push(1); db.exec('CREATE TABLE a (x)'); },
      (db) => { ran.push(2); db.exec('CREATE TABLE b (x)'); },
    ];
    const db = new Database(path);
    expect(migrate(db, steps.slice(0, 1))).toEqual({ from: 0, to: 1 });
    expect(migrate(db, steps)).toEqual({ from: 1, to: 2 });
    expect(migrate(db, steps)).toEqual({ from: 2, to: 2 });
    expect(ran).toEqual([1, 2]);

    const broken: Migration[] = [...steps, (d) => { d.exec('CREATE TABLE c (x)'); throw new Error('boom'); }];
    expect(() => migrate(db, broken)).toThrow('boom');
    expect(db.pragma('user_version', { simple: true })).toBe(2);
    expect(db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'c'").get()).toEqual({ n: 0 });
    db.close();
  });

  it('lets two processes create the same fresh catalog at once: the schema is applied once, both write', async () => {
    const path = join(dir, 'shared.db');
    const catalogModule = fileURLToPath(new URL('./catalog.ts', import.meta.url));
    const script = join(dir, 'writer.mts');
    writeFileSync(script, `
      import { Catalog } from ${JSON.stringify(catalogModule)};
      const c = Catalog.open(${JSON.stringify(path)});
      for (let i = 0; i < 50; i++) c.appendEvent({ level: 'info', message: process.argv[2] + ' ' + i });
      c.createJob('job-' + process.argv[2], { kind: 'folder', sources: ['/data'], repository: '/srv/repo' });
      c.close();
    `);
    const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
    const run = (tag: string) => new Promise<void>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', script, tag], { cwd: repoRoot }, (err, _out, stderr) => (err ? reject(new Error(stderr)) : resolve()));
    });
    await Promise.all([run('a'), run('b')]);
    const c = openCatalog('shared.db');
    expect(c.listJobs().map((j) => j.name)).toEqual(['job-a', 'job-b']);
    expect(c.listEvents({ limit: 1000 }).events).toHaveLength(100);
  });

  it('reports a file that is not a database as corrupt', () => {
    const path = join(dir, 'junk.db');
    writeFileSync(path, Buffer.alloc(4096, 7));
    expect(thrown(() => Catalog.open(path, FAST))).toMatchObject({ reason: 'corrupt' });
  });

  it('says where the folder is missing', () => {
    expect(thrown(() => Catalog.open(join(dir, 'no', 'such', 'catalog.db'), FAST))).toMatchObject({ reason: 'unavailable', hint: /folder exists/ });
  });

  it('loads SQLite only when opened: on another Node the import works and open() explains', async () => {
    const node22 = fileURLToPath(new URL('../../../node_modules/node22/bin/node', import.meta.url));
    const catalogModule = fileURLToPath(new URL('./catalog.ts', import.meta.url));
    const script = join(dir, 'other-node.mts');
    writeFileSync(script, `
      import { Catalog } from ${JSON.stringify(catalogModule)};
      import { createRequire } from 'node:module';
      const before = Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('better-sqlite3'));
      try { Catalog.openInMemory(); console.log(JSON.stringify({ before, opened: true })); }
      catch (err) { console.log(JSON.stringify({ before, reason: err.reason, hint: err.hint })); }
    `);
    const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
    const out = await new Promise<string>((resolve, reject) => {
      execFile(node22, ['--import', 'tsx', script], { cwd: repoRoot }, (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout)));
    });
    expect(JSON.parse(out)).toMatchObject({ before: false, reason: 'unavailable', hint: /npm rebuild better-sqlite3/ });
  });

  it('passes its self-test in memory', async () => {
    const lines = await catalogSelfTest();
    expect(lines[0]).toMatch(/schema version/);
    expect(lines).toHaveLength(4);
  });
});

describe('jobs', () => {
  it('creates, reads, updates and deletes, validating the definition both ways', () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    const job = c.createJob('nightly', DEF);
    expect(job).toMatchObject({ name: 'nightly', enabled: true, definition: DEF });
    expect(c.getJob('nightly')?.id).toBe(job.id);

    expect(thrown(() => c.createJob('nightly', DEF))).toMatchObject({ reason: 'conflict', code: 'usage' });
    expect(thrown(() => c.createJob('bad', { ...DEF, sources: [] }))).toMatchObject({ reason: 'invalid', message: /sources/ });
    expect(thrown(() => c.createJob('bad', { ...DEF, kind: 'tape' } as unknown as JobDefinition))).toMatchObject({ reason: 'invalid' });
    expect(thrown(() => c.createJob('bad', { ...DEF, extra: 1 } as unknown as JobDefinition))).toMatchObject({ message: /unknown field/ });
    expect(thrown(() => c.createJob('bad', { ...DEF, options: { when: new Date() } } as unknown as JobDefinition))).toMatchObject({ message: /plain object/ });
    expect(thrown(() => c.createJob('bad', { ...DEF, options: { n: NaN } }))).toMatchObject({ message: /finite/ });
    expect(thrown(() => c.createJob('', DEF))).toMatchObject({ reason: 'invalid' });

    clock.t += 1000;
    const run = c.createRun(job.id, 'manual', { status: 'running' });
    const renamed = c.updateJob(job.id, { name: 'nightly-vms', enabled: false, definition: { ...DEF, tags: ['vm'] } });
    expect(renamed).toMatchObject({ name: 'nightly-vms', enabled: false, definition: { tags: ['vm'] } });
    expect(renamed.updatedAt.getTime()).toBe(clock.t);
    expect(c.getRun(run.id)?.jobName).toBe('nightly-vms');
    c.createJob('other', DEF);
    expect(thrown(() => c.updateJob(job.id, { name: 'other' }))).toMatchObject({ reason: 'conflict' });
    expect(thrown(() => c.updateJob(999, { enabled: true }))).toMatchObject({ reason: 'not-found', code: 'not-found' });

    expect(c.deleteJob(job.id)).toBe(true);
    expect(c.getJob(job.id)).toBeUndefined();
    expect(c.getRun(run.id)).toMatchObject({ jobId: null, jobName: 'nightly-vms' });
  });

  it('refuses to read back a definition altered in the file', () => {
    const path = join(dir, 'catalog.db');
    const c = Catalog.open(path, FAST);
    c.createJob('nightly', DEF);
    c.close();
    const raw = new Database(path);
    raw.prepare("UPDATE jobs SET definition = '{\"kind\":\"vm\"}'").run();
    raw.close();
    const again = openCatalog();
    expect(thrown(() => again.listJobs())).toMatchObject({ reason: 'corrupt', message: /sources/ });
  });
});

describe('runs', () => {
  it('moves through its states once, and keeps a summary and items', () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    const job = c.createJob('nightly', DEF);
    const run = c.createRun(job.id, 'scheduled');
    expect(run).toMatchObject({ status: 'queued', startedAt: null, trigger: 'scheduled' });
    clock.t += 5000;
    expect(c.startRun(run.id).startedAt?.getTime()).toBe(clock.t);
    expect(thrown(() => c.startRun(run.id))).toMatchObject({ reason: 'conflict' });

    const item = c.addItem(run.id, 'web01', { status: 'running' });
    const done = c.updateItem(item.id, { status: 'success', consistency: 'application', bytesRead: 1000, bytesStored: 10, durationMs: 42, snapshotId: 'a'.repeat(64) });
    expect(done).toMatchObject({ name: 'web01', status: 'success', consistency: 'application', bytesRead: 1000, snapshotId: 'a'.repeat(64), error: null });
    expect(thrown(() => c.updateItem(item.id, { bytesRead: -1 }))).toMatchObject({ reason: 'invalid' });
    expect(thrown(() => c.updateItem(item.id, { status: 'done' as never }))).toMatchObject({ reason: 'invalid' });
    expect(thrown(() => c.addItem(run.id, 'db01', { snapshotId: 'a'.repeat(64) }))).toMatchObject({ reason: 'conflict' });

    expect(thrown(() => c.finishRun(run.id, 'success', { when: new Date() } as never))).toMatchObject({ reason: 'invalid' });
    const finished = c.finishRun(run.id, 'warning', { items: 1, warnings: ['slow'] });
    expect(finished).toMatchObject({ status: 'warning', summary: { items: 1, warnings: ['slow'] } });
    expect(thrown(() => c.finishRun(run.id, 'success'))).toMatchObject({ reason: 'conflict', message: /warning/ });
    expect(c.listItems(run.id)).toHaveLength(1);
    expect(c.listRuns({ jobId: job.id }).map((r) => r.id)).toEqual([run.id]);
  });

  it('gives the last start per job for catch-up, leaving manual runs out unless asked', () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    const a = c.createJob('a', DEF);
    const b = c.createJob('b', DEF);
    c.createRun(a.id, 'scheduled', { status: 'running' });
    const scheduledAt = clock.t;
    clock.t += 60_000;
    c.createRun(a.id, 'manual', { status: 'running' });
    c.createRun(b.id, 'catch-up'); // queued, never started
    expect(c.lastStartTimes()).toEqual(new Map([['a', new Date(scheduledAt)]]));
    expect(c.lastStartTimes({ includeManual: true }).get('a')?.getTime()).toBe(clock.t);
  });

  it('lists each job last run with failures first', () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    const names = ['ok', 'broken', 'warned', 'idle'];
    const jobs = Object.fromEntries(names.map((n) => [n, c.createJob(n, DEF)]));
    const run = (job: string, status: 'success' | 'warning' | 'failure') => {
      clock.t += 1000;
      c.finishRun(c.createRun(jobs[job]!.id, 'scheduled', { status: 'running' }).id, status);
    };
    run('broken', 'success');
    run('broken', 'failure');
    run('ok', 'failure');
    run('ok', 'success');
    run('warned', 'warning');
    const rows = c.dashboard();
    expect(rows.map((r) => [r.jobName, r.lastRun?.status ?? null])).toEqual([
      ['broken', 'failure'], ['warned', 'warning'], ['ok', 'success'], ['idle', null],
    ]);
    expect(rows[0]!.job?.name).toBe('broken');
  });
});

describe('interrupted runs', () => {
  it('marks runs a killed server left running or queued, with their items, in a reopened file', async () => {
    const path = join(dir, 'catalog.db');
    const catalogModule = fileURLToPath(new URL('./catalog.ts', import.meta.url));
    const script = join(dir, 'crash.mts');
    writeFileSync(script, `
      import { Catalog } from ${JSON.stringify(catalogModule)};
      const c = Catalog.open(${JSON.stringify(path)});
      const job = c.createJob('nightly', { kind: 'vm', sources: ['web01', 'db01'], repository: '/srv/repo' });
      const done = c.createRun(job.id, 'scheduled', { status: 'running' });
      c.finishRun(done.id, 'success');
      const run = c.createRun(job.id, 'scheduled', { status: 'running', id: 'run-crashed' });
      c.addItem(run.id, 'web01', { status: 'success', snapshotId: 'f'.repeat(64) });
      c.addItem(run.id, 'db01', { status: 'running' });
      c.createRun(job.id, 'manual', { id: 'run-queued' });
      process.kill(process.pid, 'SIGKILL');
    `);
    const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => {
      execFile(process.execPath, ['--import', 'tsx', script], { cwd: repoRoot }, (err) => resolve((err as { signal?: NodeJS.Signals } | null)?.signal ?? null));
    });
    expect(signal).toBe('SIGKILL');

    const clock = new FakeClock(Date.now() + 1000);
    const c = openCatalog('catalog.db', { clock });
    const interrupted = c.markInterrupted();
    expect(interrupted.map((r) => r.run.id)).toEqual(['run-crashed', 'run-queued']);
    expect(interrupted.every((r) => r.run.status === 'interrupted' && r.run.endedAt?.getTime() === clock.t)).toBe(true);
    expect(interrupted[0]!.items.map((i) => [i.name, i.status])).toEqual([['web01', 'success'], ['db01', 'interrupted']]);
    expect(c.listEvents({ runId: 'run-crashed' }).events[0]).toMatchObject({ level: 'warning', message: /interrupted/ });
    // Done once: the next start finds nothing, and the finished run was left alone.
    expect(c.markInterrupted()).toEqual([]);
    expect(c.dashboard()[0]!.lastRun?.status).toBe('interrupted');
    expect(thrown(() => c.finishRun('run-crashed', 'success'))).toMatchObject({ reason: 'conflict' });
  });
});

describe('events', () => {
  it('pages with a cursor, bounds pages and stores a capped number per run', () => {
    const c = openCatalog('catalog.db', { maxEventsPerRun: 25 });
    const job = c.createJob('nightly', DEF);
    const run = c.createRun(job.id, 'manual', { status: 'running' });
    const other = c.createRun(job.id, 'manual', { status: 'running' });
    for (let i = 0; i < 30; i++) {
      c.appendEvent({ runId: run.id, level: 'info', message: `line ${i}` });
      if (i % 10 === 0) c.appendEvent({ runId: other.id, level: 'error', message: `other ${i}` });
    }
    expect(c.getRun(run.id)?.eventsDropped).toBe(5);

    const seen: string[] = [];
    let cursor = 0;
    for (let pages = 0; ; pages++) {
      const page = c.listEvents({ runId: run.id, after: cursor, limit: 10 });
      seen.push(...page.events.map((e) => e.message));
      cursor = page.cursor;
      if (!page.more) {
        expect(pages).toBe(2);
        break;
      }
    }
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => `line ${i}`));
    // Following a live log: an empty page keeps the cursor where it was.
    expect(c.listEvents({ runId: run.id, after: cursor })).toEqual({ events: [], cursor, more: false });
    c.appendEvent({ runId: other.id, level: 'info', message: 'later' });
    expect(c.listEvents({ runId: other.id }).events.map((e) => e.message)).toEqual(['other 0', 'other 10', 'other 20', 'later']);
    expect(c.listEvents({ limit: 1_000_000 }).events).toHaveLength(29);

    expect(thrown(() => c.listEvents({ limit: 0 }))).toMatchObject({ reason: 'invalid' });
    expect(thrown(() => c.appendEvent({ level: 'loud' as never, message: 'x' }))).toMatchObject({ reason: 'invalid' });
    expect(thrown(() => c.appendEvent({ runId: 'nope', level: 'info', message: 'x' }))).toMatchObject({ reason: 'not-found' });
    const id = c.appendEvent({ level: 'info', message: 'x'.repeat(100_000) });
    expect(c.listEvents({ after: id! - 1 }).events[0]!.message.length).toBeLessThan(10_000);
  });

  it('prunes events older than a time', () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    c.appendEvent({ level: 'info', message: 'old' });
    clock.t += 10_000;
    c.appendEvent({ level: 'info', message: 'new' });
    expect(c.pruneEvents(new Date(clock.t - 1))).toBe(1);
    expect(c.listEvents().events.map((e) => e.message)).toEqual(['new']);
  });
});

describe('users, tokens and sessions', () => {
  it('verifies passwords with scrypt, refusing wrong ones and unknown users', async () => {
    const c = openCatalog();
    const alice = await c.createUser('alice', 'correct horse battery', 'admin');
    expect(alice).toMatchObject({ name: 'alice', role: 'admin' });
    expect(JSON.stringify(alice)).not.toContain('scrypt');
    expect((await c.verifyLogin('alice', 'correct horse battery'))?.id).toBe(alice.id);
    expect(await c.verifyLogin('alice', 'correct horse batterx')).toBeUndefined();
    expect(await c.verifyLogin('bob', 'correct horse battery')).toBeUndefined();
    await expect(c.createUser('alice', 'another password', 'viewer')).rejects.toMatchObject({ reason: 'conflict' });
    await expect(c.createUser('carol', 'short', 'viewer')).rejects.toMatchObject({ reason: 'invalid' });
    await expect(c.createUser('carol', 'long enough pw', 'root' as never)).rejects.toMatchObject({ reason: 'invalid' });

    await c.setPassword(alice.id, 'a new passphrase');
    expect(await c.verifyLogin('alice', 'correct horse battery')).toBeUndefined();
    expect(await c.verifyLogin('alice', 'a new passphrase')).toBeDefined();
    expect(c.setRole(alice.id, 'viewer').role).toBe('viewer');
  });

  it('stores a salt and the parameters with each hash', async () => {
    const a = await hashPassword('same password', { N: 2 ** 10, r: 8, p: 1 });
    const b = await hashPassword('same password', { N: 2 ** 10, r: 8, p: 1 });
    expect(a).not.toBe(b);
    expect(a).toMatch(/^scrypt\$1024\$8\$1\$/);
    expect(await verifyPassword('same password', a)).toBe(true);
    expect(await verifyPassword('same password', 'scrypt$garbage')).toBe(false);
    expect(needsRehash(a)).toBe(true);
    const strong = await hashPassword('same password');
    expect(needsRehash(strong)).toBe(false);
    expect(await verifyPassword('same password', strong)).toBe(true);
  });

  it('keeps only a hash of API tokens and refuses wrong, revoked or expired ones', async () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    const user = await c.createUser('ci', 'ci password 123', 'operator');
    const { token, info } = c.createToken(user.id, 'ci pipeline');
    expect(token).toMatch(/^bwk_/);
    const raw = new Database(join(dir, 'catalog.db'), { readonly: true });
    const stored = JSON.stringify(raw.prepare('SELECT * FROM api_tokens').all());
    raw.close();
    expect(stored).not.toContain(token.split('_').at(-1));

    expect(c.verifyToken(token)).toMatchObject({ user: { name: 'ci' }, token: { id: info.id, lastUsedAt: clock.now() } });
    const tampered = token.slice(0, -1) + (token.endsWith('A') ? 'B' : 'A');
    expect(c.verifyToken(tampered)).toBeUndefined();
    expect(c.verifyToken('bwk_nonsense')).toBeUndefined();
    expect(c.verifyToken('')).toBeUndefined();

    clock.t += 1;
    const short = c.createToken(user.id, 'short-lived', { expiresAt: new Date(clock.t + 1000) });
    expect(c.verifyToken(short.token)).toBeDefined();
    clock.t += 1000;
    expect(c.verifyToken(short.token)).toBeUndefined();

    expect(c.listTokens(user.id).map((t) => t.name)).toEqual(['ci pipeline', 'short-lived']);
    expect(c.revokeToken(info.id)).toBe(true);
    expect(c.verifyToken(token)).toBeUndefined();
    c.deleteUser(user.id);
    expect(c.listTokens(user.id)).toEqual([]);
  });

  it('expires sessions, checks CSRF tokens, and ends sessions on a password change', async () => {
    const clock = new FakeClock();
    const c = openCatalog('catalog.db', { clock });
    const user = await c.createUser('alice', 'correct horse battery', 'admin');
    const s = c.createSession(user.id, 60_000);
    const raw = new Database(join(dir, 'catalog.db'), { readonly: true });
    expect(JSON.stringify(raw.prepare('SELECT hex(id_hash) AS h FROM sessions').all())).not.toContain(Buffer.from(s.sessionId).toString('hex').toUpperCase());
    raw.close();

    const live = c.getSession(s.sessionId)!;
    expect(live.user.name).toBe('alice');
    expect(c.checkCsrf(live, s.csrfToken)).toBe(true);
    expect(c.checkCsrf(live, s.csrfToken + 'x')).toBe(false);
    expect(c.checkCsrf(live, '')).toBe(false);
    expect(c.getSession('not a session')).toBeUndefined();

    clock.t += 59_999;
    expect(c.getSession(s.sessionId)).toBeDefined();
    clock.t += 1;
    expect(c.getSession(s.sessionId)).toBeUndefined();

    const a = c.createSession(user.id, 1000);
    c.createSession(user.id, 10);
    clock.t += 10;
    // Only the 10 ms one: reading the first one after its expiry already deleted it.
    expect(c.purgeExpiredSessions()).toBe(1);
    expect(c.getSession(a.sessionId)).toBeDefined();
    await c.setPassword(user.id, 'new password here');
    expect(c.getSession(a.sessionId)).toBeUndefined();
    const b = c.createSession(user.id, 1000);
    expect(c.deleteSession(b.sessionId)).toBe(true);
    expect(c.getSession(b.sessionId)).toBeUndefined();
  });
});

describe('rebuild from restore points', () => {
  const t0 = Date.parse('2026-02-01T02:00:00Z');
  const point = (id: string, offsetS: number, source: string, tags: string[], warnings: string[] = []): RestorePoint => ({
    id: id.repeat(64).slice(0, 64), time: new Date(t0 + offsetS * 1000).toISOString(), hostname: 'hv1', source, tags,
    summary: { bytesRead: 100, bytesNew: 10, durationMs: 5000, warnings }, consistency: 'application',
  });
  const points = [
    point('a', 0, 'vm:web01', [`${JOB_TAG}nightly`, `${RUN_TAG}r1`]),
    point('b', 30, 'vm:db01', [`${JOB_TAG}nightly`, `${RUN_TAG}r1`], ['guest agent slow']),
    point('c', 86400, 'vm:web01', [`${JOB_TAG}nightly`, `${RUN_TAG}r2`]),
    point('d', 100, 'files', []),
  ];

  it('adds runs for unknown restore points, grouped by run, and adds nothing the second time', () => {
    const c = openCatalog();
    const job = c.createJob('nightly', DEF);
    expect(c.rebuildFromSnapshots(points)).toEqual({ runsAdded: 3, itemsAdded: 4, known: 0 });
    expect(c.rebuildFromSnapshots(points)).toEqual({ runsAdded: 0, itemsAdded: 0, known: 4 });

    const r1 = c.getRun('r1')!;
    expect(r1).toMatchObject({ jobId: job.id, jobName: 'nightly', trigger: 'rebuilt', status: 'warning' });
    expect(r1.startedAt?.getTime()).toBe(t0);
    expect(r1.endedAt?.getTime()).toBe(t0 + 35_000);
    expect(c.listItems('r1').map((i) => [i.name, i.status, i.consistency, i.bytesStored])).toEqual([
      ['web01', 'success', 'application', 10], ['db01', 'warning', 'application', 10],
    ]);
    expect(c.listRuns().find((r) => r.jobName === 'files@hv1')).toMatchObject({ jobId: null, status: 'success' });
    expect(c.lastStartTimes().get('nightly')?.getTime()).toBe(t0 + 86400_000);
  });

  it('leaves restore points the catalog recorded itself alone', () => {
    const c = openCatalog();
    const job = c.createJob('nightly', DEF);
    const run = c.createRun(job.id, 'scheduled', { status: 'running', id: 'r1' });
    c.addItem(run.id, 'web01', { status: 'success', snapshotId: points[0]!.id });
    c.finishRun(run.id, 'success');
    expect(c.rebuildFromSnapshots(points.slice(0, 2))).toEqual({ runsAdded: 0, itemsAdded: 1, known: 1 });
    // A run the server recorded keeps its own status and times.
    expect(c.getRun('r1')).toMatchObject({ trigger: 'scheduled', status: 'success' });
    expect(c.listItems('r1')).toHaveLength(2);
  });

  it('refuses a restore point without a valid time, adding nothing', () => {
    const c = openCatalog();
    const bad = { ...points[0]!, id: 'e'.repeat(64), time: 'yesterday' };
    expect(thrown(() => c.rebuildFromSnapshots([points[3]!, bad]))).toMatchObject({ reason: 'invalid' });
    expect(c.listRuns()).toEqual([]);
  });
});
