// The HTTP face of the server: /api/v1 (docs/server.md) and the web UI's static files.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { Readable } from 'node:stream';
import { serveStatic } from '@hono/node-server/serve-static';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import { streamSSE } from 'hono/streaming';
import type { z } from 'zod';
import type { Catalog, Job, Run, RunItem } from '../catalog/catalog.js';
import type { DriveNode } from '../../restore/drive.js';
import { snapshotFolderName } from '../../restore/drive.js';
import type { SnapshotWithId } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import type { RestoreState } from '../restores.js';
import type { BackupService } from '../service.js';
import { authenticate, requireRole, SESSION_COOKIE, type AuthEnv } from './auth.js';
import { ApiError, errorBody, toApiError } from './errors.js';
import { openApiDocument } from './openapi.js';
import * as S from './schemas.js';

export interface AppOptions {
  catalog: Catalog;
  service: BackupService;
  version: string;
  /** The built web UI (dist/web); the API alone without it. */
  webRoot?: string;
  /** The session cookie gets Secure: set when serving HTTPS. */
  secureCookies: boolean;
  sessionTtlMs?: number;
  /** VMs and doctor findings, for the VM list file and the jobs' --connect targets; none when there is nothing to ask. */
  vms?: (connect: string[]) => Promise<{ vms: z.infer<typeof S.VmList>['vms']; findings: z.infer<typeof S.Finding>[] }>;
  log?: (line: string) => void;
}

const VMS_TIMEOUT_MS = 30_000;

const iso = (d: Date | null): string | null => (d ? d.toISOString() : null);

function jobOut(job: Job, service: BackupService): z.infer<typeof S.JobOut> {
  return { id: job.id, name: job.name, enabled: job.enabled, definition: job.definition as z.infer<typeof S.JobDefinitionOut>, nextRunAt: iso(service.nextRunAt(job)), createdAt: job.createdAt.toISOString(), updatedAt: job.updatedAt.toISOString() };
}

export function runOut(run: Run): z.infer<typeof S.RunOut> {
  return { id: run.id, jobId: run.jobId, jobName: run.jobName, trigger: run.trigger, status: run.status, queuedAt: run.queuedAt.toISOString(), startedAt: iso(run.startedAt), endedAt: iso(run.endedAt), summary: run.summary };
}

function itemOut(i: RunItem): z.infer<typeof S.RunItemOut> {
  return { id: i.id, name: i.name, status: i.status, consistency: i.consistency, bytesRead: i.bytesRead, bytesStored: i.bytesStored, durationMs: i.durationMs, error: i.error, hint: i.hint, snapshotId: i.snapshotId };
}

function snapshotOut(s: SnapshotWithId): z.infer<typeof S.SnapshotOut> {
  const kind = s.source === 'files' ? 'files' : s.source.startsWith('vm:') ? 'vm' : 'disk';
  return { id: s.id, time: new Date(s.time).toISOString(), kind, source: s.source, hostname: s.hostname, tags: s.tags, bytes: s.summary.bytesRead, bytesNew: s.summary.bytesNew, consistency: s.consistency ?? null };
}

async function body<T extends z.ZodType>(c: Context, schema: T): Promise<z.infer<T>> {
  if (!(c.req.header('Content-Type') ?? '').toLowerCase().startsWith('application/json')) throw new ApiError(415, 'unsupported-media-type', 'the body must be JSON (Content-Type: application/json)');
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    throw new ApiError(400, 'malformed', 'the body is not valid JSON');
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new ApiError(422, 'invalid', parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
  return parsed.data;
}

function intParam(value: string | undefined, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,15}$/.test(value)) throw new ApiError(400, 'malformed', `${what} '${value}' is not a number`);
  return Number(value);
}

/** A path inside a restore point: absolute, '/'-separated, no '.', '..', empty or NUL segments. */
export function snapshotPath(raw: string | undefined, what = 'path inside the restore point'): string {
  const p = raw ?? '/';
  if (!p.startsWith('/') || p.includes('\0') || p.includes('\\')) throw new ApiError(400, 'bad-path', `'${p}' is not an absolute ${what}`);
  const segs = p.split('/').filter((s) => s !== '');
  if (segs.some((s) => s === '.' || s === '..')) throw new ApiError(400, 'bad-path', `'${p}' may not contain '.' or '..'`);
  return '/' + segs.join('/');
}

export function createApp(opts: AppOptions): Hono<AuthEnv> {
  const { catalog, service } = opts;
  const app = new Hono<AuthEnv>();
  const api = new Hono<AuthEnv>();
  const document = openApiDocument(opts.version);

  app.use('*', async (c, next) => {
    await next();
    c.header('X-Content-Type-Options', 'nosniff');
    c.header('X-Frame-Options', 'DENY');
    c.header('Referrer-Policy', 'no-referrer');
    c.header('Content-Security-Policy', "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'");
  });
  app.onError((err, c) => {
    const e = toApiError(err);
    if (e.status >= 500) opts.log?.(`${c.req.method} ${c.req.path}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return c.json(errorBody(e), e.status);
  });

  // No request body of this API is large; a client sending one cannot make the server hold it.
  api.use(
    '*',
    bodyLimit({
      maxSize: 1024 * 1024,
      onError: () => {
        throw new ApiError(413, 'too-large', 'the request body is larger than 1 MiB');
      },
    }),
  );

  // ---- public -------------------------------------------------------------------------------------
  api.get('/health', (c) => c.json({ status: 'ok' as const, version: opts.version }));
  api.get('/openapi.json', (c) => c.json(document));
  api.post('/login', async (c) => {
    const { username, password } = await body(c, S.LoginIn);
    const user = await catalog.verifyLogin(username, password);
    if (!user) throw new ApiError(401, 'unauthorized', 'wrong user name or password');
    const s = catalog.createSession(user.id, opts.sessionTtlMs ?? 12 * 3600_000);
    setCookie(c, SESSION_COOKIE, s.sessionId, { httpOnly: true, sameSite: 'Strict', secure: opts.secureCookies, path: '/', expires: s.expiresAt });
    return c.json({ user: { name: user.name, role: user.role }, csrfToken: s.csrfToken });
  });

  // ---- everything else needs a caller -------------------------------------------------------------
  api.use('*', authenticate(catalog));
  api.post('/logout', (c) => {
    const caller = c.get('caller');
    if (caller.via === 'session') {
      const sid = getCookie(c, SESSION_COOKIE);
      if (sid) catalog.deleteSession(sid);
      deleteCookie(c, SESSION_COOKIE, { path: '/' });
    }
    return c.body(null, 204);
  });
  api.get('/me', (c) => {
    const caller = c.get('caller');
    return c.json({ user: { name: caller.user.name, role: caller.user.role }, ...(caller.csrfToken ? { csrfToken: caller.csrfToken } : {}) });
  });

  const userOut = (u: { id: number; name: string; role: 'admin' | 'operator' | 'viewer'; createdAt: Date; updatedAt: Date }) => ({ id: u.id, name: u.name, role: u.role, createdAt: u.createdAt.toISOString(), updatedAt: u.updatedAt.toISOString() });
  const userOf = (id: string) => {
    const u = /^\d{1,15}$/.test(id) ? catalog.getUser(Number(id)) : undefined;
    if (!u) throw new ApiError(404, 'not-found', `no user with id '${id}'`);
    return u;
  };
  api.get('/users', (c) => {
    requireRole(c, 'admin');
    return c.json({ users: catalog.listUsers().map(userOut) });
  });
  api.post('/users', async (c) => {
    requireRole(c, 'admin');
    const b = await body(c, S.UserIn);
    return c.json(userOut(await catalog.createUser(b.name, b.password, b.role)), 201);
  });
  api.put('/users/:id', async (c) => {
    const user = userOf(c.req.param('id'));
    const b = await body(c, S.UserPatch);
    const self = c.get('caller').user.id === user.id;
    if (!self || b.role !== undefined) requireRole(c, 'admin');
    // One's own password needs the current one: a session left open is not enough to take the account.
    if (self && b.password !== undefined && !(b.currentPassword !== undefined && (await catalog.verifyLogin(user.name, b.currentPassword)))) {
      throw new ApiError(403, 'forbidden', 'changing your own password needs your current password (currentPassword)');
    }
    if (b.role !== undefined && b.role !== 'admin' && user.role === 'admin' && catalog.listUsers().filter((u) => u.role === 'admin').length === 1) {
      throw new ApiError(409, 'conflict', `'${user.name}' is the last admin`, 'make another user admin first');
    }
    if (b.password !== undefined) await catalog.setPassword(user.id, b.password);
    return c.json(userOut(b.role !== undefined ? catalog.setRole(user.id, b.role) : catalog.getUser(user.id)!));
  });
  api.delete('/users/:id', (c) => {
    requireRole(c, 'admin');
    const user = userOf(c.req.param('id'));
    if (user.id === c.get('caller').user.id) throw new ApiError(409, 'conflict', 'you cannot delete yourself', 'log in as another admin');
    catalog.deleteUser(user.id);
    return c.body(null, 204);
  });

  api.post('/tokens', async (c) => {
    const { name } = await body(c, S.TokenIn);
    const { token, info } = catalog.createToken(c.get('caller').user.id, name);
    return c.json({ id: info.id, name: info.name, token }, 201);
  });

  const repositories = (): { name: string; location: string }[] => {
    const seen = new Map<string, string>();
    if (service.defaultRepository) seen.set(service.defaultRepository, 'default');
    for (const j of catalog.listJobs()) if (!seen.has(j.definition.repository)) seen.set(j.definition.repository, j.definition.repository);
    for (const r of catalog.listRepositorySecrets()) if (!seen.has(r)) seen.set(r, r);
    return [...seen].map(([location, name]) => ({ name, location }));
  };
  const locationOf = (name: string | undefined): string => {
    const all = repositories();
    const found = name === undefined ? all[0] : all.find((r) => r.name === name || r.location === name);
    if (!found) throw new ApiError(404, 'not-found', name === undefined ? 'the server has no repository' : `no repository '${name}'`, 'start the server with -r, or create a job that names one');
    return found.location;
  };
  const jobOf = (id: string): Job => {
    const job = /^\d{1,15}$/.test(id) ? catalog.getJob(Number(id)) : undefined;
    if (!job) throw new ApiError(404, 'not-found', `no job with id '${id}'`);
    return job;
  };
  const definitionOf = (d: z.infer<typeof S.JobDefinitionIn>) => {
    const repository = d.repository ?? service.defaultRepository;
    if (!repository) throw new ApiError(422, 'invalid', 'definition.repository: the server has no default repository, so the job must name one');
    if (d.kind !== 'vm' && d.sources.some((s) => !s.startsWith('/'))) throw new ApiError(422, 'invalid', `definition.sources: ${d.kind === 'disk' ? 'disk images' : 'folders'} must be absolute paths`);
    if (d.sources.some((s) => s.startsWith('-'))) throw new ApiError(422, 'invalid', 'definition.sources: a source may not start with -');
    return { ...d, repository };
  };

  api.get('/dashboard', async (c) => {
    const rows = catalog.dashboard();
    const jobs = catalog.listJobs().map((job) => ({ job: jobOut(job, service), lastRun: rows.find((r) => r.job?.id === job.id)?.lastRun ?? null, nextRunAt: iso(service.nextRunAt(job)) }));
    const rank = (r: Run | null) => (r?.status === 'failure' ? 0 : r?.status === 'interrupted' ? 1 : r?.status === 'warning' ? 2 : 3);
    jobs.sort((a, b) => rank(a.lastRun) - rank(b.lastRun) || a.job.name.localeCompare(b.job.name));
    const repos = await Promise.all(
      repositories().map(async (r) => {
        try {
          const { snapshots } = await service.pool.get(r.location);
          return { ...r, snapshots: snapshots.length, bytes: snapshots.reduce((s, x) => s + x.summary.bytesNew, 0) };
        } catch (err) {
          return { ...r, snapshots: null, bytes: null, error: toApiError(err).message };
        }
      }),
    );
    return c.json({ jobs: jobs.map((j) => ({ ...j, lastRun: j.lastRun ? runOut(j.lastRun) : null })), repositories: repos, recentRuns: catalog.listRuns({ limit: 30 }).map(runOut) });
  });

  api.get('/jobs', (c) => c.json({ jobs: catalog.listJobs().map((j) => jobOut(j, service)) }));
  api.post('/jobs', async (c) => {
    requireRole(c, 'admin');
    const b = await body(c, S.JobIn);
    const job = catalog.createJob(b.name, definitionOf(b.definition), { enabled: b.enabled ?? true });
    try {
      service.jobChanged(job);
    } catch (err) {
      catalog.deleteJob(job.id);
      throw new ApiError(422, 'invalid', err instanceof Error ? err.message : String(err));
    }
    return c.json(jobOut(job, service), 201);
  });
  api.get('/jobs/:id', (c) => c.json(jobOut(jobOf(c.req.param('id')), service)));
  api.put('/jobs/:id', async (c) => {
    requireRole(c, 'admin');
    const before = jobOf(c.req.param('id'));
    const b = await body(c, S.JobPatch);
    const job = catalog.updateJob(before.id, { ...(b.name !== undefined ? { name: b.name } : {}), ...(b.definition ? { definition: definitionOf(b.definition) } : {}), ...(b.enabled !== undefined ? { enabled: b.enabled } : {}) });
    try {
      service.jobChanged(job);
    } catch (err) {
      catalog.updateJob(before.id, { name: before.name, definition: before.definition, enabled: before.enabled });
      service.jobChanged(before);
      throw new ApiError(422, 'invalid', err instanceof Error ? err.message : String(err));
    }
    return c.json(jobOut(job, service));
  });
  api.delete('/jobs/:id', (c) => {
    requireRole(c, 'admin');
    const job = jobOf(c.req.param('id'));
    service.jobRemoved(job.id);
    catalog.deleteJob(job.id);
    return c.body(null, 204);
  });
  api.post('/jobs/:id/run', (c) => {
    requireRole(c, 'operator');
    const job = jobOf(c.req.param('id'));
    if (!job.enabled) throw new ApiError(409, 'conflict', `job '${job.name}' is disabled`, 'enable it first');
    const run = service.runNow(job);
    if (!run) throw new ApiError(409, 'conflict', `a run of job '${job.name}' is already waiting to start`);
    return c.json(runOut(run), 202);
  });

  api.get('/runs', (c) => {
    const jobId = intParam(c.req.query('jobId'), 'jobId');
    const limit = Math.min(intParam(c.req.query('limit'), 'limit') ?? 50, 500);
    return c.json({ runs: catalog.listRuns({ ...(jobId !== undefined ? { jobId } : {}), limit }).map(runOut) });
  });
  const runOf = (id: string): Run => {
    const run = /^[A-Za-z0-9_-]{1,100}$/.test(id) ? catalog.getRun(id) : undefined;
    if (!run) throw new ApiError(404, 'not-found', `no run '${id}'`);
    return run;
  };
  api.get('/runs/:id', (c) => {
    const run = runOf(c.req.param('id'));
    return c.json({ run: runOut(run), items: catalog.listItems(run.id).map(itemOut) });
  });
  api.get('/runs/:id/events', (c) => {
    const run = runOf(c.req.param('id'));
    const after = intParam(c.req.query('after'), 'after');
    const limit = Math.min(intParam(c.req.query('limit'), 'limit') ?? 500, 5000);
    const page = catalog.listEvents({ runId: run.id, ...(after !== undefined ? { after } : {}), limit });
    return c.json({ events: page.events.map((e) => ({ id: e.id, time: e.time.toISOString(), level: e.level, message: e.message })), next: page.cursor });
  });

  api.get('/stream', (c) =>
    streamSSE(c, async (stream) => {
      // Sent at once: the browser's EventSource (and the page that opened it) is not left waiting.
      await stream.writeSSE({ event: 'hello', data: '{}' });
      const queue: { event: string; data: string }[] = [];
      let wake: (() => void) | undefined;
      const off = service.live.subscribe((e) => {
        if (e.type === 'run') queue.push({ event: 'run', data: JSON.stringify(runOut(e.run)) });
        else if (e.type === 'progress') queue.push({ event: 'progress', data: JSON.stringify(e.progress) });
        else queue.push({ event: 'event', data: JSON.stringify({ runId: e.event.runId, id: e.event.id, time: e.event.time.toISOString(), level: e.event.level, message: e.event.message }) });
        // A reader that does not keep up loses old progress, never the server's memory.
        if (queue.length > 1000) queue.splice(0, queue.length - 1000);
        wake?.();
      });
      stream.onAbort(() => {
        off();
        wake?.();
      });
      try {
        while (!stream.aborted) {
          while (queue.length > 0 && !stream.aborted) await stream.writeSSE(queue.shift()!);
          await new Promise<void>((resolve) => {
            wake = resolve;
            setTimeout(resolve, 15_000).unref();
          });
          wake = undefined;
          if (queue.length === 0 && !stream.aborted) await stream.write(': keep-alive\n\n');
        }
      } finally {
        off();
      }
    }),
  );

  api.get('/repositories', (c) => c.json({ repositories: repositories() }));
  api.post('/repositories', async (c) => {
    requireRole(c, 'admin');
    const b = await body(c, S.RepositoryIn);
    // Opened first: a wrong password or location is an answer now, not a failed run at night.
    await service.pool.check(b.location, b.password);
    catalog.setRepositoryPassword(b.location, b.password);
    await service.pool.invalidate(b.location);
    return c.json(repositories().find((r) => r.location === b.location)!, 201);
  });
  api.get('/snapshots', async (c) => {
    const { snapshots } = await service.pool.get(locationOf(c.req.query('repository')));
    return c.json({ snapshots: [...snapshots].reverse().map(snapshotOut) });
  });
  const nodeOf = async (c: Context<AuthEnv>): Promise<{ node: DriveNode; path: string }> => {
    const id = c.req.param('id') ?? '';
    if (!/^[0-9a-f]{8,64}$/.test(id)) throw new ApiError(400, 'malformed', `'${id}' is not a restore point id`);
    const path = snapshotPath(c.req.query('path'));
    const { snapshots, drive } = await service.pool.get(locationOf(c.req.query('repository')));
    const matches = snapshots.filter((s) => s.id.startsWith(id));
    if (matches.length !== 1) throw new ApiError(404, 'not-found', matches.length === 0 ? `no restore point '${id}'` : `'${id}' matches ${matches.length} restore points`);
    try {
      return { node: await drive.resolve(`/snapshots/${snapshotFolderName(matches[0]!)}${path === '/' ? '' : path}`), path };
    } catch (err) {
      if (err instanceof Error && 'errno' in err && (err as { errno: unknown }).errno === 'ENOENT') throw new ApiError(404, 'not-found', `'${path}' is not in restore point ${id.slice(0, 8)}`);
      throw err;
    }
  };
  api.get('/snapshots/:id/tree', async (c) => {
    const { node, path } = await nodeOf(c);
    if (node.kind !== 'dir' || !node.list) throw new ApiError(400, 'not-a-folder', `'${path}' is not a folder`);
    const entries = (await node.list()).map((e) => ({ name: e.name, kind: e.kind, size: e.size, mtime: new Date(e.mtimeMs).toISOString() }));
    return c.json({ path, entries });
  });
  api.get('/snapshots/:id/files', async (c) => {
    const { node, path } = await nodeOf(c);
    if (node.kind !== 'file' || !node.read) throw new ApiError(400, 'not-a-file', `'${path}' is not a file`);
    const read = node.read;
    const size = node.size;
    let offset = 0;
    const stream = new Readable({
      highWaterMark: 1,
      read() {
        if (offset >= size) return void this.push(null);
        const n = Math.min(1 << 20, size - offset);
        read(offset, n).then(
          (b) => {
            offset += b.length;
            this.push(b.length > 0 ? b : null);
          },
          (err: unknown) => this.destroy(err instanceof Error ? err : new Error(String(err))),
        );
      },
    });
    const name = path.split('/').pop() || 'file';
    return new Response(Readable.toWeb(stream) as ReadableStream, {
      headers: {
        'Content-Type': 'application/octet-stream',
        'Content-Length': String(size),
        'Content-Disposition': `attachment; filename="${name.replace(/[^\x20-\x7e]|["\\]/g, '_')}"; filename*=UTF-8''${encodeURIComponent(name)}`,
      },
    });
  });

  const restoreOut = (r: RestoreState): z.infer<typeof S.RestoreOut> => ({ ...r, startedAt: r.startedAt.toISOString(), endedAt: iso(r.endedAt), output: [...r.output] });
  api.get('/restores', (c) => c.json({ restores: service.restores.list().map(restoreOut) }));
  api.get('/restores/:id', (c) => {
    const r = service.restores.get(c.req.param('id'));
    if (!r) throw new ApiError(404, 'not-found', `no restore '${c.req.param('id')}' (restores are listed until the server restarts)`);
    return c.json(restoreOut(r));
  });
  api.post('/restores', async (c) => {
    requireRole(c, 'admin');
    const b = await body(c, S.RestoreIn);
    const target = snapshotPath(b.target, 'target folder');
    if (target === '/') throw new ApiError(422, 'invalid', 'target: restoring into / is refused', 'give a new or empty folder');
    // Nothing already on the host is overwritten: the target must be new or empty.
    if (existsSync(target) && (!statSync(target).isDirectory() || readdirSync(target).length > 0)) {
      throw new ApiError(409, 'conflict', `target '${target}' exists and is not an empty folder`, 'give a new or empty folder; nothing on the host is overwritten');
    }
    const repository = locationOf(b.repository);
    const { snapshots } = await service.pool.get(repository);
    const found = snapshots.filter((s) => s.id.startsWith(b.snapshot));
    if (found.length !== 1) throw new ApiError(404, 'not-found', found.length === 0 ? `no restore point '${b.snapshot}'` : `'${b.snapshot}' matches ${found.length} restore points`);
    if (b.kind === 'vm' && !found[0]!.disks?.length) throw new ApiError(422, 'invalid', `restore point ${b.snapshot.slice(0, 8)} has no disks`, "restore its files with kind 'files'");
    const path = b.path === undefined ? undefined : snapshotPath(b.path);
    return c.json(restoreOut(service.restores.start({ ...b, repository, snapshot: found[0]!.id, target, ...(path ? { path } : {}) })), 202);
  });

  // A host without QEMU or libvirt, or a VM that cannot be reached, is a finding, never a 5xx.
  const vms = async (): Promise<{ vms: { name: string; state: string }[]; findings: z.infer<typeof S.Finding>[] }> => {
    if (!opts.vms) return { vms: [], findings: [] };
    const connect = [...new Set(catalog.listJobs().flatMap((j) => (j.definition.kind === 'vm' ? ((j.definition.options?.['connect'] as string[] | undefined) ?? []) : [])))];
    let timer: NodeJS.Timeout | undefined;
    try {
      // A hypervisor or guest agent that does not answer makes a finding, not a page that never loads.
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new BulwarkError('timeout', `no answer within ${VMS_TIMEOUT_MS / 1000} s`, { hint: 'check that QEMU or libvirtd answers; try again' })), VMS_TIMEOUT_MS);
      });
      return await Promise.race([opts.vms(connect), late]);
    } catch (err) {
      const hint = err instanceof BulwarkError ? err.hint : undefined;
      return { vms: [], findings: [{ severity: 'error', message: `the VMs could not be looked at: ${err instanceof Error ? err.message : String(err)}`, ...(hint ? { fix: hint } : {}) }] };
    } finally {
      clearTimeout(timer);
    }
  };
  api.get('/vms', async (c) => c.json(await vms()));
  api.get('/doctor', async (c) => c.json({ findings: (await vms()).findings }));
  api.all('*', () => {
    throw new ApiError(404, 'not-found', 'no such endpoint', 'GET /api/v1/openapi.json lists them');
  });

  app.route('/api/v1', api);
  if (opts.webRoot && existsSync(opts.webRoot)) {
    const root = opts.webRoot;
    app.use('/*', serveStatic({ root }));
    // The UI routes in the page (#/…), so every other path is the page itself.
    app.get('*', serveStatic({ root, path: 'index.html' }));
  }
  return app;
}
