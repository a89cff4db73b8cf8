// serve: the backup host's service — scheduled jobs, the catalog, the REST API and the web UI
// (docs/server.md).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { driverFor } from '../../hypervisors/drivers.js';
import { endpointsFrom, type VmEndpoint } from '../../hypervisors/registry.js';
import { doctor } from '../../jobs/vms.js';
import { defaultStateDir } from '../../repository/freshness.js';
import type { Job } from '../../server/catalog/catalog.js';
import type { NotifyTarget } from '../../server/notify/notify.js';
import type { RunningServer } from '../../server/server.js';
import { readTlsFiles, type TlsFiles } from '../../server/tls.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { parseHostPort } from '../format.js';
import { launcherFlags } from '../launcher.js';
import { selectEndpoints } from './backup.js';

const VERSION = '0.1.0';
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));


/** A self-signed certificate made once with openssl and kept in the state folder. */
async function generatedTls(dir: string, host: string): Promise<TlsFiles> {
  const cert = join(dir, 'tls-cert.pem');
  const key = join(dir, 'tls-key.pem');
  if (!existsSync(cert) || !existsSync(key)) {
    const san = /^[\d.]+$/.test(host) ? `IP:${host}` : /:/.test(host) ? `IP:${host}` : `DNS:${host}`;
    const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '825', '-subj', '/CN=bulwark', '-addext', `subjectAltName=${san},DNS:localhost,IP:127.0.0.1`, '-keyout', key, '-out', cert], { encoding: 'utf8' });
    if (r.status !== 0) throw new BulwarkError('failed', `could not make a certificate with openssl: ${r.error?.message ?? r.stderr.trim()}`, { hint: 'install openssl, or give --tls-cert and --tls-key' });
  }
  return readTlsFiles(cert, key);
}

async function jobEndpoints(job: Job): Promise<VmEndpoint[]> {
  const connect = (job.definition.options?.['connect'] as string[] | undefined) ?? [];
  return selectEndpoints(await endpointsFrom(connect), job.definition.sources);
}

/** After a crash: each VM of the job opened, an interrupted run's leftovers removed (which also thaws and resumes). */
async function recoverVms(job: Job): Promise<string[]> {
  const done: string[] = [];
  const scratch = (job.definition.options?.['scratchDir'] as string | undefined) ?? '/var/tmp';
  for (const e of await jobEndpoints(job)) {
    const session = await driverFor(e).open(e, { log: (m) => done.push(m) });
    try {
      done.push(...(await session.cleanupLeftovers(scratch)));
    } finally {
      await session.close();
    }
  }
  return done;
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('the backup service: scheduled jobs, a catalog of runs, the REST API and the web UI (docs/server.md)')
    .option('--listen <[host:]port>', 'where the API and UI answer (host defaults to 127.0.0.1)', '127.0.0.1:8420')
    .option('--state-dir <dir>', 'the catalog and its key (default: $BULWARK_STATE_DIR/server)')
    .option('--tls-cert <file>', 'PEM certificate: serve HTTPS')
    .option('--tls-key <file>', 'PEM key of --tls-cert')
    .option('--tls-generate', 'serve HTTPS with a self-signed certificate made at the first start (kept in the state folder)')
    .option('--admin-password-file <file>', "the first start's password for the user admin (or BULWARK_ADMIN_PASSWORD; else one is generated and printed once)")
    .option('--jobs-file <file>', 'JSON list of jobs {name, definition, enabled?}: created, or updated to match, at each start (docs/server.md)')
    .option('--notify-file <file>', 'JSON list of notification targets (e-mail, webhook), see docs/server.md')
    .option('--concurrency <n>', 'runs at once', '1')
    .option('--self-test', 'start on a free port with a throwaway catalog, check health, login and the UI, and exit')
    .addHelpText('after', '\nExamples:\n  BULWARK_ADMIN_PASSWORD=… bulwark -r /backup/repo serve\n  bulwark serve --self-test\n  bulwark serve --listen 0.0.0.0:8443 --tls-generate')
    .action(async (o: { jobsFile?: string; listen: string; stateDir?: string; tlsCert?: string; tlsKey?: string; tlsGenerate?: boolean; adminPasswordFile?: string; notifyFile?: string; concurrency: string; selfTest?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const bin = join(ROOT, 'bin', 'bulwark.js');
      const cli = [process.execPath, ...launcherFlags(bin), bin];
      const webRoot = join(ROOT, 'dist', 'web');
      if (o.selfTest) return selfTest(ctx, cli, webRoot);
      const { host, port } = parseHostPort(o.listen, '--listen 127.0.0.1:8420');
      const concurrency = Number(o.concurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1) throw new BulwarkError('usage', `--concurrency '${o.concurrency}' is not a positive whole number`);
      if (!o.tlsCert !== !o.tlsKey) throw new BulwarkError('usage', '--tls-cert and --tls-key go together');
      const stateDir = o.stateDir ?? join(defaultStateDir(), 'server');
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      const tls = o.tlsCert && o.tlsKey ? await readTlsFiles(o.tlsCert, o.tlsKey) : o.tlsGenerate ? await generatedTls(stateDir, host) : undefined;
      const adminPassword = o.adminPasswordFile ? (await readFile(o.adminPasswordFile, 'utf8')).replace(/\r?\n$/, '') : process.env['BULWARK_ADMIN_PASSWORD'];
      const notifyTargets = o.notifyFile ? await readNotifyFile(o.notifyFile) : undefined;
      const jobs = o.jobsFile ? await readJsonFile(o.jobsFile, 'jobs') : undefined;
      // The default repository is opened once now: a wrong password is an error at start, not at 2 a.m.
      let defaultRepository: { location: string; password: string } | undefined;
      if (ctx.opts.repo ?? process.env['BULWARK_REPOSITORY']) {
        const { repo, password } = await ctx.openWithPassword();
        await repo.close();
        defaultRepository = { location: ctx.location, password };
      }
      // Loaded here, not with every command: the web server, its schemas and the catalog's SQLite cost
      // every other command start-up time and memory.
      const { startServer } = await import('../../server/server.js');
      const server = await startServer({
        host,
        port,
        catalogPath: join(stateDir, 'catalog.sqlite'),
        keyPath: join(stateDir, 'secret.key'),
        ...(tls ? { tls } : {}),
        ...(adminPassword ? { adminPassword } : {}),
        ...(defaultRepository ? { defaultRepository } : {}),
        ...(o.jobsFile ? { jobs, jobsFile: o.jobsFile } : {}),
        cli,
        webRoot,
        version: VERSION,
        concurrency,
        ...(notifyTargets ? { notifyTargets } : {}),
        vms: (connect) => vmsAndFindings(connect),
        recoverVms,
        log: (l) => ctx.warn(l),
      });
      if (server.generatedAdminPassword) process.stderr.write(`first start: user 'admin' created with the password ${server.generatedAdminPassword}\n(shown once; change it in the settings)\n`);
      if (!tls && !['127.0.0.1', 'localhost', '::1'].includes(host)) ctx.warn(`${server.url} is plain HTTP on a network address: passwords cross the network in the clear (give --tls-cert/--tls-key or --tls-generate)`);
      ctx.print({ url: server.url, stateDir }, (r) => `Bulwark server at ${r.url}/ (catalog in ${r.stateDir}; Ctrl-C to stop)`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
    });
}

async function readJsonFile(file: string, what: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new BulwarkError('usage', `cannot read the ${what} in '${file}': ${err instanceof Error ? err.message : String(err)}`, { hint: 'a JSON list (docs/server.md)' });
  }
}

async function readNotifyFile(file: string): Promise<NotifyTarget[]> {
  const parsed = await readJsonFile(file, 'notification targets');
  if (!Array.isArray(parsed) || parsed.some((t) => typeof t !== 'object' || t === null || !['email', 'webhook'].includes((t as { kind?: string }).kind ?? '') || typeof (t as { name?: unknown }).name !== 'string' || !Array.isArray((t as { on?: unknown }).on))) {
    throw new BulwarkError('usage', `'${file}' is not a list of notification targets`, { hint: 'each needs kind ("email" or "webhook"), name and on (e.g. ["failure","warning"])' });
  }
  return parsed as NotifyTarget[];
}

/** VMs of the host's VM list and what doctor finds; empty, not an error, on a host without one. */
async function vmsAndFindings(connect: string[]): Promise<{ vms: { name: string; state: string }[]; findings: { severity: 'error' | 'warning' | 'info'; vm?: string; message: string; fix?: string }[] }> {
  let endpoints: VmEndpoint[] = [];
  try {
    endpoints = await endpointsFrom([]);
  } catch {
    // no VM list on this host
  }
  if (connect.length > 0) endpoints.push(...(await endpointsFrom(connect)));
  if (endpoints.length === 0) return { vms: [], findings: [] };
  const r = await doctor(driverFor, endpoints, { scratchDir: '/var/tmp' });
  return {
    vms: r.vms.map((v) => ({ name: v.name, state: v.status, address: v.address, agent: v.agent.state, disks: v.disks.length })),
    findings: r.findings.map((f) => ({ severity: f.severity, ...(f.object ? { vm: f.object } : {}), message: f.message, ...(f.fix ? { fix: f.fix } : {}) })),
  };
}

async function selfTest(ctx: Context, cli: string[], webRoot: string): Promise<void> {
  const password = (await import('node:crypto')).randomBytes(12).toString('base64url');
  const checks: { check: string; ok: boolean; detail: string }[] = [];
  let server: RunningServer | undefined;
  try {
    const { startServer } = await import('../../server/server.js');
    server = await startServer({ host: '127.0.0.1', port: 0, adminPassword: password, cli, webRoot, version: VERSION });
    const health = await fetch(`${server.url}/api/v1/health`);
    checks.push({ check: 'health', ok: health.ok, detail: `GET /api/v1/health: ${health.status}` });
    const login = await fetch(`${server.url}/api/v1/login`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ username: 'admin', password }) });
    const cookie = login.headers.get('set-cookie')?.split(';')[0] ?? '';
    const me = await fetch(`${server.url}/api/v1/me`, { headers: { Cookie: cookie } });
    checks.push({ check: 'login', ok: login.ok && me.ok, detail: `POST /api/v1/login: ${login.status}, GET /api/v1/me with its session: ${me.status}` });
    const page = await fetch(`${server.url}/`);
    const html = page.ok ? await page.text() : '';
    checks.push({ check: 'web UI', ok: page.ok && html.includes('<div id="root">'), detail: page.ok ? `GET /: ${page.status}, ${html.length} bytes` : `GET /: ${page.status} (is dist/web built? npm run build)` });
  } catch (err) {
    checks.push({ check: 'start', ok: false, detail: err instanceof Error ? err.message : String(err) });
  } finally {
    await server?.close();
  }
  const ok = checks.every((c) => c.ok);
  ctx.print({ ok, checks }, (r) => [...r.checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'} ${c.check}: ${c.detail}`), r.ok ? 'self-test passed: the server works on this host' : 'self-test FAILED'].join('\n'));
  if (!ok) throw new BulwarkError('failed', 'the server self-test failed', { hint: 'see the checks above' });
}
