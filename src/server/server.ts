// `bulwark serve` assembled: catalog, first user, backup service and the HTTP(S) listener. The CLI
// parses options into ServerOptions; tests start it here, in their own process.
import { randomBytes } from 'node:crypto';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';
import { z } from 'zod';
import { BulwarkError } from '../util/errors.js';
import { createApp } from './api/app.js';
import type * as S from './api/schemas.js';
import { JobIn } from './api/schemas.js';
import { Catalog, type Job } from './catalog/catalog.js';
import type { NotifyTarget } from './notify/notify.js';
import type { SchedulerClock } from './scheduler.js';
import { BackupService } from './service.js';
import { MIN_TLS_VERSION, type TlsFiles } from './tls.js';

export interface ServerOptions {
  host: string;
  /** 0: any free port. */
  port: number;
  /** The catalog file; undefined: a throwaway catalog in memory (self-test). */
  catalogPath?: string;
  keyPath?: string;
  tls?: TlsFiles;
  /** The first start's admin password; else one is generated and returned once. */
  adminPassword?: string;
  defaultRepository?: { location: string; password: string };
  /** Jobs from a configuration file (name, definition, enabled): created, or updated to match, at start. */
  jobs?: unknown;
  /** Where `jobs` came from, for messages. */
  jobsFile?: string;
  cli: readonly string[];
  webRoot?: string;
  version: string;
  concurrency?: number;
  notifyTargets?: readonly NotifyTarget[];
  vms?: (connect: string[]) => Promise<{ vms: { name: string; state: string }[]; findings: z.infer<typeof S.Finding>[] }>;
  recoverVms?: (job: Job) => Promise<string[]>;
  clock?: SchedulerClock;
  /** Cheaper password hashes for tests. */
  scrypt?: { N: number; r: number; p: number };
  log?: (line: string) => void;
}

export interface RunningServer {
  url: string;
  port: number;
  catalog: Catalog;
  service: BackupService;
  /** Set on the first start when the admin password was generated: shown once, never stored in clear. */
  generatedAdminPassword?: string;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const catalog = o.catalogPath ? Catalog.open(o.catalogPath, { ...(o.keyPath ? { keyPath: o.keyPath } : {}), ...(o.scrypt ? { scrypt: o.scrypt } : {}) }) : Catalog.openInMemory(o.scrypt ? { scrypt: o.scrypt } : {});
  let service: BackupService | undefined;
  try {
    let generatedAdminPassword: string | undefined;
    if (catalog.listUsers().length === 0) {
      const password = o.adminPassword ?? (generatedAdminPassword = randomBytes(15).toString('base64url'));
      await catalog.createUser('admin', password, 'admin');
    }
    if (o.defaultRepository) catalog.setRepositoryPassword(o.defaultRepository.location, o.defaultRepository.password);
    if (o.jobs !== undefined) applyJobs(catalog, o.jobs, o.jobsFile ?? 'the jobs file', o.defaultRepository?.location);
    service = new BackupService({
      catalog,
      cli: o.cli,
      ...(o.defaultRepository ? { defaultRepository: o.defaultRepository.location } : {}),
      ...(o.clock ? { clock: o.clock } : {}),
      ...(o.concurrency ? { concurrency: o.concurrency } : {}),
      ...(o.notifyTargets ? { notifyTargets: o.notifyTargets } : {}),
      ...(o.recoverVms ? { recoverVms: o.recoverVms } : {}),
      ...(o.log ? { log: o.log } : {}),
    });
    await service.start();
    const app = createApp({ catalog, service, version: o.version, ...(o.webRoot ? { webRoot: o.webRoot } : {}), secureCookies: o.tls !== undefined, ...(o.vms ? { vms: o.vms } : {}), ...(o.log ? { log: o.log } : {}) });
    const server = await listen(app.fetch, o);
    const port = (server.address() as AddressInfo).port;
    const host = o.host.includes(':') ? `[${o.host}]` : o.host;
    const svc = service;
    return {
      url: `${o.tls ? 'https' : 'http'}://${host}:${port}`,
      port,
      catalog,
      service: svc,
      ...(generatedAdminPassword ? { generatedAdminPassword } : {}),
      async close() {
        // Open event streams would hold close() forever.
        (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await svc.stop();
        catalog.close();
      },
    };
  } catch (err) {
    await service?.stop().catch(() => undefined);
    catalog.close();
    throw err;
  }
}

/** The jobs of a configuration file into the catalog: new ones created, changed ones updated, others left alone. */
function applyJobs(catalog: Catalog, jobs: unknown, file: string, defaultRepository: string | undefined): void {
  const parsed = z.array(JobIn).safeParse(jobs);
  if (!parsed.success) {
    throw new BulwarkError('usage', `${file}: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'list'}: ${i.message}`).join('; ')}`, { hint: 'a JSON list of {name, definition, enabled?} (docs/server.md)' });
  }
  for (const j of parsed.data) {
    const repository = j.definition.repository ?? defaultRepository;
    if (!repository) throw new BulwarkError('usage', `${file}: job '${j.name}' names no repository and the server has no default (-r)`);
    const definition = { ...j.definition, repository };
    const existing = catalog.getJob(j.name);
    if (!existing) catalog.createJob(j.name, definition, { enabled: j.enabled ?? true });
    else if (JSON.stringify(existing.definition) !== JSON.stringify(definition) || existing.enabled !== (j.enabled ?? true)) catalog.updateJob(existing.id, { definition, enabled: j.enabled ?? true });
  }
}

function listen(fetch: (req: Request) => Response | Promise<Response>, o: ServerOptions): Promise<ServerType> {
  return new Promise((resolve, reject) => {
    const server = serve({
      fetch,
      hostname: o.host,
      port: o.port,
      ...(o.tls ? { createServer: createHttpsServer, serverOptions: { cert: o.tls.cert, key: o.tls.key, minVersion: MIN_TLS_VERSION } } : {}),
    });
    server.once('listening', () => resolve(server));
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? new BulwarkError('failed', `${o.host}:${o.port} is already in use`, { hint: 'stop what listens there, or give another --listen' })
          : err.code === 'EACCES'
            ? new BulwarkError('failed', `not allowed to listen on ${o.host}:${o.port}`, { hint: 'ports below 1024 need root; pick another --listen' })
            : err,
      );
    });
  });
}
