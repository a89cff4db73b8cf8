// Off-site backends: Bulwark's first backup and full restore to a local folder, SFTP (OpenSSH), FTP
// (vsftpd), S3 (OpenStack Swift + s3api) and REST (Bulwark's own `bulwark serve-repo`, HTTPS with the
// certificate pinned), all on loopback, against restic 0.14 over the same servers (local, SFTP, S3:
// restic has no FTP backend, and its REST backend needs rest-server, not Bulwark's) and against plain
// copies of the same bytes as one tar file (cp, scp, curl -T). Real servers come from the test helpers
// (test/helpers/*.ts); the REST server is the `bulwark serve-repo` of the Bulwark being measured.
//
//   npx tsx bench/offsite.ts          (as root: the FTP/SFTP test users are system users; caches are dropped)
//
// Data: real files < 8 MiB from /usr/lib and /usr/share, up to BENCH_OFFSITE_MIB MiB (default 1024),
// copied once into <out>/offsite/src (rebuilt when the size changes), and tarred once into src.tar.
// Every tool gets a fresh repository per backend; each timed step starts with the page cache dropped
// (root) after a sync. MB/s = bytes of file data in the tree (10^6) ÷ wall seconds, for every column
// (the tar's headers are not counted). Every restore is checked: `diff -rq` of the restored tree against
// the source, sha256 of the downloaded tar against the uploaded one. A wrong restore fails the run.
// Writes <out>/offsite-results.md (and offsite-results.json); logs of every command in <out>/offsite/logs.
//
// Knobs: BENCH_OFFSITE_MIB (1024), BENCH_OFFSITE_BACKENDS ("local sftp ftp s3 rest"),
// BENCH_OFFSITE_TOOLS ("bulwark restic plain"), BENCH_OFFSITE_VERBOSE (1: Bulwark runs with --verbose),
// BENCH_TIMEOUT (1800 s per timed command), BENCH_RESTORE_TMPFS (1: restores go to a tmpfs),
// BENCH_BULWARK_JS (bin/bulwark.js), BENCH_OUT (bench/out), BENCH_KEEP (1 keeps the repositories).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, openSync, closeSync, writeFileSync, readFileSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import net from 'node:net';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { launcherFlags } from '../src/cli/launcher.js';
import { startSshd, type Sshd } from '../test/helpers/sshd.js';
import { startFtpd, type Ftpd } from '../test/helpers/ftpd.js';
import { startS3Server, type S3Server } from '../test/helpers/s3server.js';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(BENCH_DIR);
const OUT = resolve(process.env['BENCH_OUT'] ?? join(BENCH_DIR, 'out'));
const WORK = join(OUT, 'offsite');
const SRC = join(WORK, 'src');
const TAR = join(WORK, 'src.tar');
const DATA_META = join(WORK, 'data.json');
const LOGS = join(WORK, 'logs');
const REPOS = join(WORK, 'repos');
const RESTORE = join(WORK, 'restore');
const MIB = Number(process.env['BENCH_OFFSITE_MIB'] ?? 1024);
const BACKENDS = (process.env['BENCH_OFFSITE_BACKENDS'] ?? 'local sftp ftp s3 rest').split(/\s+/).filter(Boolean) as Backend[];
const TOOLS = (process.env['BENCH_OFFSITE_TOOLS'] ?? 'bulwark restic plain').split(/\s+/).filter(Boolean) as Tool[];
const VERBOSE = process.env['BENCH_OFFSITE_VERBOSE'] === '1';
const TIMEOUT_MS = Number(process.env['BENCH_TIMEOUT'] ?? 1800) * 1000;
const BULWARK_JS = resolve(ROOT, process.env['BENCH_BULWARK_JS'] ?? 'bin/bulwark.js');
/** Node's flags, from the launcher's first line: Bulwark as the `bulwark` command starts it. */
const BW_FLAGS = launcherFlags(BULWARK_JS);
const BW = [...BW_FLAGS, BULWARK_JS];
const KEEP = process.env['BENCH_KEEP'] === '1';
const PASSWORD = 'bench';
const MAX_FILE = 8 * 1024 * 1024;
const IS_ROOT = process.getuid?.() === 0;
// The Node that runs Bulwark: BENCH_NODE, else the first `node` in PATH outside node_modules (the
// node22/node24 devDependencies put theirs in node_modules/.bin, and tsx may itself run on one).
const NODE =
  process.env['BENCH_NODE'] ??
  (process.env['PATH'] ?? '')
    .split(':')
    .filter((d) => d && !d.includes('node_modules'))
    .map((d) => join(d, 'node'))
    .find((p) => existsSync(p)) ??
  'node';

type Backend = 'local' | 'sftp' | 'ftp' | 's3' | 'rest';
type Tool = 'bulwark' | 'restic' | 'plain';
type Step = 'backup' | 'restore';
const BACKEND_NAMES: Record<Backend, string> = {
  local: 'local folder',
  sftp: 'SFTP (OpenSSH sshd)',
  ftp: 'FTP (vsftpd, plain)',
  s3: 'S3 (OpenStack Swift, s3api)',
  rest: 'REST (bulwark serve-repo, HTTPS, pinned)',
};
const SUPPORTED: Record<Tool, Backend[]> = { bulwark: ['local', 'sftp', 'ftp', 's3', 'rest'], restic: ['local', 'sftp', 's3'], plain: ['local', 'sftp', 'ftp', 's3'] };

interface Cell {
  status: 'ok' | 'FAILED' | 'FAIL' | 'n/a' | 'not run';
  secs?: number;
  note?: string;
}
const results = new Map<string, Cell>(); // `${backend}/${tool}/${step}`
const stored = new Map<string, number>(); // `${backend}/${tool}` -> bytes on the server
let verifyFailed = false;
let bulwarkFailed = false;

const log = (msg: string): void => console.error(`[offsite ${new Date().toISOString().slice(11, 19)}] ${msg}`);

// ------------------------------------------------------------------------------------------ processes
let current: ReturnType<typeof spawn> | undefined;

interface RunResult {
  ok: boolean;
  secs: number;
  code: number | null;
  tail: string;
}

/** Runs a command with its output to LOGS/<name>.{out,err}; wall seconds from spawn to exit. */
function run(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  const outPath = join(LOGS, `${name}.out`);
  const errPath = join(LOGS, `${name}.err`);
  const out = openSync(outPath, 'w');
  const err = openSync(errPath, 'w');
  writeFileSync(join(LOGS, `${name}.cmd`), `${[cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ')}\n`);
  return new Promise((resolvePromise) => {
    const t0 = process.hrtime.bigint();
    // Its own process group, so a timeout ends its children too (restic's ssh).
    const p = spawn(cmd, args, { cwd: opts.cwd ?? WORK, env: opts.env ?? process.env, stdio: ['ignore', out, err], detached: true });
    current = p;
    const timer = setTimeout(() => {
      try {
        process.kill(-p.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    }, opts.timeoutMs ?? TIMEOUT_MS);
    const done = (code: number | null, signal: string | null): void => {
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      clearTimeout(timer);
      current = undefined;
      closeSync(out);
      closeSync(err);
      let tail = '';
      if (code !== 0) {
        const text = readFileSync(errPath, 'utf8').trim() || readFileSync(outPath, 'utf8').trim();
        tail = `exit ${code ?? signal}: ${text.split('\n').slice(-3).join(' / ').slice(0, 400)}`;
      }
      resolvePromise({ ok: code === 0, secs, code, tail });
    };
    p.once('error', (e) => {
      writeFileSync(errPath, String(e));
      done(127, null);
    });
    p.once('exit', done);
  });
}

/** Untimed helper commands that must work. */
function must(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { cwd: opts.cwd ?? WORK, env: opts.env ?? process.env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr || r.stdout || String(r.error)).trim().slice(-500)}`);
  return r.stdout;
}

function dropCaches(): void {
  spawnSync('sync');
  if (!IS_ROOT) return;
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    // not allowed in this container: warm cache then
  }
}

function idlePct(): Promise<number> {
  const sample = (): number[] => readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const a = sample();
  return new Promise((r) =>
    setTimeout(() => {
      const b = sample();
      const tot = b.reduce((s, v, i) => s + v - a[i]!, 0);
      r(Math.round((100 * (b[3]! - a[3]! + b[4]! - a[4]!)) / tot));
    }, 2000),
  );
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function duBytes(path: string): Promise<number | undefined> {
  const r = spawnSync('du', ['-sb', path], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout.split('\t')[0]) : undefined;
}

// ------------------------------------------------------------------------------------------------ data
interface DataMeta {
  mib: number;
  bytes: number;
  files: number;
  tarBytes: number;
  tarSha256: string;
}

async function makeData(): Promise<DataMeta> {
  if (existsSync(DATA_META) && existsSync(SRC) && existsSync(TAR)) {
    const meta = JSON.parse(readFileSync(DATA_META, 'utf8')) as DataMeta;
    if (meta.mib === MIB) {
      log(`data: reusing ${SRC} (${meta.files} files, ${(meta.bytes / 1048576).toFixed(0)} MiB)`);
      return meta;
    }
  }
  log(`data: copying up to ${MIB} MiB of files < 8 MiB from /usr/lib and /usr/share into ${SRC}`);
  await rm(DATA_META, { force: true });
  await rm(SRC, { recursive: true, force: true });
  await rm(TAR, { force: true });
  await mkdir(SRC, { recursive: true });
  const budget = MIB * 1048576;
  let bytes = 0;
  let files = 0;
  // find streams its list: nothing of the tree is held in memory. Sorted per directory for the same
  // tree on every run of this machine.
  const find = spawn('find', ['/usr/lib', '/usr/share', '-type', 'f', '-size', `-${MAX_FILE}c`, '-readable', '-printf', '%s\t%p\n'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const made = new Set<string>();
  const lines = createInterface({ input: find.stdout! });
  for await (const line of lines) {
    const tab = line.indexOf('\t');
    const size = Number(line.slice(0, tab));
    const path = line.slice(tab + 1);
    if (bytes + size > budget) break;
    const dest = join(SRC, path);
    const d = dirname(dest);
    if (!made.has(d)) {
      await mkdir(d, { recursive: true });
      made.add(d);
    }
    try {
      await copyFile(path, dest);
    } catch {
      continue; // vanished or unreadable after all
    }
    const st = await stat(dest);
    bytes += st.size;
    files++;
  }
  lines.close();
  find.kill();
  log(`data: ${files} files, ${(bytes / 1048576).toFixed(0)} MiB; tarring it once into ${TAR}`);
  must('tar', ['-C', WORK, '-cf', TAR, 'src']);
  const tarBytes = (await stat(TAR)).size;
  const tarSha256 = await sha256File(TAR);
  const meta: DataMeta = { mib: MIB, bytes, files, tarBytes, tarSha256 };
  await writeFile(DATA_META, JSON.stringify(meta, null, 2));
  return meta;
}

// ------------------------------------------------------------------------------------------ servers
interface Servers {
  sshd?: Sshd;
  ftpd?: Ftpd;
  s3?: S3Server;
  knownHosts?: string;
  /** A TLS front for Swift, for restic only (see startTlsFront). */
  s3Tls?: { port: number; caFile: string; stop(): Promise<void> };
  rest?: RestServer;
}
const servers: Servers = {};
let stopping: Promise<void> | undefined;

function stopServers(): Promise<void> {
  stopping ??= (async () => {
    const all: [string, { stop(): Promise<void> } | undefined][] = [
      ['the TLS front', servers.s3Tls],
      ['sshd', servers.sshd],
      ['vsftpd', servers.ftpd],
      ['swift', servers.s3],
      ['bulwark serve-repo', servers.rest],
    ];
    for (const [name, s] of all) {
      if (!s) continue;
      try {
        await s.stop();
        log(`stopped ${name}`);
      } catch (err) {
        log(`stopping ${name} failed: ${String(err)}`);
      }
    }
  })();
  return stopping;
}

/**
 * restic 0.14's S3 client (minio-go) signs uploads over plain http:// with the streaming
 * `aws-chunked` payload, which Swift's s3api refuses ("Transfering payloads in multiple chunks using
 * aws-chunked is not supported"); over https:// it does not. So restic reaches the same Swift through
 * this TLS terminator (self-signed, trusted with --cacert), a byte pipe in this process: one more hop
 * and TLS for restic only.
 */
async function startTlsFront(targetPort: number): Promise<{ port: number; caFile: string; stop(): Promise<void> }> {
  const caFile = join(WORK, 'tls-front.pem');
  const keyFile = join(WORK, 'tls-front.key');
  must('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '2', '-keyout', keyFile, '-out', caFile]);
  const sockets = new Set<net.Socket>();
  const srv = tls.createServer({ key: readFileSync(keyFile), cert: readFileSync(caFile) }, (client) => {
    const up = net.connect(targetPort, '127.0.0.1');
    sockets.add(client).add(up);
    client.pipe(up).on('error', () => client.destroy());
    up.pipe(client).on('error', () => up.destroy());
    client.on('error', () => up.destroy()).on('close', () => (up.end(), sockets.delete(client)));
    up.on('error', () => client.destroy()).on('close', () => (client.end(), sockets.delete(up)));
  });
  await new Promise<void>((r, j) => srv.once('error', j).listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  return {
    port,
    caFile,
    stop: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        srv.close(() => r());
      }),
  };
}

interface RestServer {
  url: string;
  fingerprint: string;
  data: string;
  user: string;
  password: string;
  stop(): Promise<void>;
}

const REST_USER = 'bench';

/** `bulwark serve-repo` on a free loopback port with one login; ready once it prints its JSON line. */
async function startRestServer(): Promise<RestServer> {
  const data = join(WORK, 'serve-repo');
  await rm(data, { recursive: true, force: true });
  await mkdir(data, { recursive: true });
  const pwFile = join(WORK, 'serve-repo.pw');
  await writeFile(pwFile, `${PASSWORD}-rest\n`, { mode: 0o600 });
  must(NODE, [...BW, 'serve-repo', '--data', data, '--add-user', REST_USER, '--password-file', pwFile]);
  const errPath = join(LOGS, 'serve-repo.err');
  const err = openSync(errPath, 'w');
  const p = spawn(NODE, [...BW, 'serve-repo', '--data', data, '--listen', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'pipe', err] });
  closeSync(err);
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  const ready = await new Promise<{ url: string; fingerprint: string }>((resolvePromise, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`bulwark serve-repo was not ready in 60 s: ${readFileSync(errPath, 'utf8').trim().slice(-400)}`)), 60_000);
    p.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.trim().startsWith('{'));
      if (line && out.includes('\n', out.indexOf(line))) {
        clearTimeout(timer);
        resolvePromise(JSON.parse(line) as { url: string; fingerprint: string });
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`bulwark serve-repo exited before it was ready: ${readFileSync(errPath, 'utf8').trim().slice(-400)}`));
    });
  });
  return {
    ...ready,
    data,
    user: REST_USER,
    password: `${PASSWORD}-rest`,
    stop: async () => {
      p.kill('SIGTERM');
      await exited;
    },
  };
}

let restoreMounted = false;
function unmountRestore(): void {
  if (restoreMounted) {
    spawnSync('umount', [RESTORE]);
    restoreMounted = false;
  }
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    log(`${sig}: stopping the servers`);
    if (current?.pid) {
      try {
        process.kill(-current.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    void stopServers().finally(() => {
      unmountRestore();
      process.exit(130);
    });
  });
}

// ------------------------------------------------------------------------------------------- tools
const S3_BUCKET = 'bench';

function s3Port(): string {
  return new URL(servers.s3!.endpoint).port;
}

/** The Bulwark repository location and environment for a backend. */
function bulwarkTarget(backend: Backend, cache: string): { repo: string; env: NodeJS.ProcessEnv } {
  const env: NodeJS.ProcessEnv = { ...process.env, BULWARK_PASSWORD: PASSWORD, BULWARK_CACHE_DIR: cache };
  delete env['BULWARK_REPOSITORY'];
  switch (backend) {
    case 'local':
      return { repo: join(REPOS, 'bulwark-local'), env };
    case 'sftp': {
      const s = servers.sshd!;
      return { repo: `sftp://${s.user}@127.0.0.1:${s.port}/${join(s.dir, 'bulwark')}`, env: { ...env, BULWARK_SFTP_KEY: s.keyFile, BULWARK_SFTP_KNOWN_HOSTS: servers.knownHosts } };
    }
    case 'ftp': {
      const f = servers.ftpd!;
      return { repo: `ftp://${f.user}@127.0.0.1:${f.port}/bulwark`, env: { ...env, BULWARK_FTP_PASSWORD: f.password } };
    }
    case 's3': {
      const s = servers.s3!;
      return { repo: `s3:http://127.0.0.1:${s3Port()}/${S3_BUCKET}/bulwark`, env: { ...env, AWS_ACCESS_KEY_ID: s.accessKeyId, AWS_SECRET_ACCESS_KEY: s.secretAccessKey } };
    }
    case 'rest': {
      const r = servers.rest!;
      const base = r.url.replace('://', `://${r.user}@`).replace(/\/$/, '');
      return { repo: `rest:${base}/bulwark`, env: { ...env, BULWARK_REST_PASSWORD: r.password, BULWARK_REST_FINGERPRINT: r.fingerprint } };
    }
  }
}

function resticTarget(backend: Backend, cache: string): { args: string[]; env: NodeJS.ProcessEnv } {
  const env: NodeJS.ProcessEnv = { ...process.env, RESTIC_PASSWORD: PASSWORD, RESTIC_CACHE_DIR: cache };
  delete env['RESTIC_REPOSITORY'];
  switch (backend) {
    case 'local':
      return { args: ['-r', join(REPOS, 'restic-local')], env };
    case 'sftp': {
      const s = servers.sshd!;
      const ssh = `ssh -p ${s.port} -i ${s.keyFile} -o UserKnownHostsFile=${servers.knownHosts} -o StrictHostKeyChecking=yes -o BatchMode=yes ${s.user}@127.0.0.1 -s sftp`;
      return { args: ['-r', `sftp:${s.user}@127.0.0.1:${join(s.dir, 'restic')}`, '-o', `sftp.command=${ssh}`], env };
    }
    case 's3': {
      const s = servers.s3!;
      const t = servers.s3Tls!;
      return { args: ['-r', `s3:https://127.0.0.1:${t.port}/${S3_BUCKET}/restic`, '--cacert', t.caFile], env: { ...env, AWS_ACCESS_KEY_ID: s.accessKeyId, AWS_SECRET_ACCESS_KEY: s.secretAccessKey } };
    }
    case 'ftp':
    case 'rest':
      throw new Error(`restic has no ${backend} backend for this server`);
  }
}

/** scp / curl / cp of the tar up (backup) and down (restore). */
function plainCommand(backend: Backend, step: Step, local: string): [string, string[]] {
  switch (backend) {
    case 'local': {
      const remote = join(REPOS, 'plain-local', 'plain.tar');
      return step === 'backup' ? ['cp', [local, remote]] : ['cp', [remote, local]];
    }
    case 'sftp': {
      const s = servers.sshd!;
      const opts = ['-q', '-P', String(s.port), '-i', s.keyFile, '-o', `UserKnownHostsFile=${servers.knownHosts}`, '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes'];
      const remote = `${s.user}@127.0.0.1:${join(s.dir, 'plain.tar')}`;
      return ['scp', step === 'backup' ? [...opts, local, remote] : [...opts, remote, local]];
    }
    case 'ftp': {
      const f = servers.ftpd!;
      const url = `ftp://127.0.0.1:${f.port}/plain.tar`;
      const opts = ['-sS', '--fail', '--user', `${f.user}:${f.password}`];
      return ['curl', step === 'backup' ? [...opts, '-T', local, url] : [...opts, '-o', local, url]];
    }
    case 's3': {
      const s = servers.s3!;
      // The access key is `account:user` (Swift tempauth); --user would split it at its colon, so the
      // credentials go in the URL, percent-encoded (curl decodes them). Swift's s3api requires the
      // x-amz-content-sha256 header, which curl 7.88 sends only when given one: UNSIGNED-PAYLOAD (the
      // body is not hashed, so curl reads the file once).
      const url = `http://${encodeURIComponent(s.accessKeyId)}:${encodeURIComponent(s.secretAccessKey)}@127.0.0.1:${s3Port()}/${S3_BUCKET}/plain.tar`;
      const opts = ['-sS', '--fail-with-body', '--aws-sigv4', 'aws:amz:us-east-1:s3', '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD'];
      return ['curl', step === 'backup' ? [...opts, '-T', local, url] : [...opts, '-o', local, url]];
    }
    case 'rest':
      throw new Error('no plain copy to a repository server');
  }
}

// ------------------------------------------------------------------------------------------ checks
/** The shallowest folder named `src` below dir (where each tool puts the restored tree varies). */
function findRestoredTree(dir: string): string | undefined {
  const r = spawnSync('find', [dir, '-mindepth', '1', '-type', 'd', '-name', 'src', '-prune', '-printf', '%d\t%p\n'], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const best = r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split('\t') as [string, string])
    .sort((a, b) => Number(a[0]) - Number(b[0]))[0];
  return best?.[1];
}

function verifyTree(target: string): { ok: boolean; note: string } {
  const d = findRestoredTree(target);
  if (!d) return { ok: false, note: `no folder named src under ${target}` };
  const r = spawnSync('diff', ['-rq', '--no-dereference', SRC, d], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.status === 0) return { ok: true, note: relative(target, d) };
  const lines = (r.stdout + r.stderr).trim().split('\n');
  return { ok: false, note: `diff -rq: ${lines.length} differences, e.g. ${lines.slice(0, 2).join(' / ')}` };
}

// ------------------------------------------------------------------------------------------ steps
function key(b: Backend, t: Tool, s: Step): string {
  return `${b}/${t}/${s}`;
}

function record(b: Backend, t: Tool, s: Step, cell: Cell): void {
  results.set(key(b, t, s), cell);
  if (t === 'bulwark' && cell.status === 'FAILED') bulwarkFailed = true;
  if (cell.status === 'FAIL') verifyFailed = true;
}

async function timedStep(b: Backend, t: Tool, s: Step, cmd: string, args: string[], env: NodeJS.ProcessEnv, data: DataMeta): Promise<boolean> {
  dropCaches();
  log(`${t} ${b}: ${s}…`);
  const r = await run(`${t}-${b}-${s}`, cmd, args, { env });
  spawnSync('sync'); // the next step must not pay for this one's writes
  if (!r.ok) {
    log(`${t} ${b}: ${s} FAILED after ${r.secs.toFixed(1)} s: ${r.tail}`);
    record(b, t, s, { status: 'FAILED', secs: r.secs, note: r.tail });
    return false;
  }
  log(`${t} ${b}: ${s} ${r.secs.toFixed(2)} s, ${(data.bytes / 1e6 / r.secs).toFixed(1)} MB/s`);
  record(b, t, s, { status: 'ok', secs: r.secs });
  return true;
}

async function freshTarget(name: string): Promise<string> {
  const target = join(RESTORE, name);
  await rm(target, { recursive: true, force: true });
  await mkdir(target, { recursive: true });
  return target;
}

function serverSide(b: Backend, t: Tool): string | undefined {
  const name = t === 'plain' ? 'plain.tar' : t;
  switch (b) {
    case 'local':
      return t === 'plain' ? join(REPOS, 'plain-local') : join(REPOS, `${t}-local`);
    case 'sftp':
      return join(servers.sshd!.dir, name);
    case 'ftp':
      return join(servers.ftpd!.root, name);
    case 's3':
      return undefined; // inside Swift's object folders, not one path
    case 'rest':
      return t === 'bulwark' ? join(servers.rest!.data, servers.rest!.user, 'bulwark') : undefined;
  }
}

async function benchBulwark(b: Backend, data: DataMeta): Promise<void> {
  const cache = await mkdtemp(join(tmpdir(), 'bulwark-bench-cache-'));
  try {
    const { repo, env } = bulwarkTarget(b, cache);
    const g = [...(VERBOSE ? ['--verbose'] : []), '-r', repo];
    const init = await run(`bulwark-${b}-init`, NODE, [...BW, ...g, 'init'], { env });
    if (!init.ok) {
      log(`bulwark ${b}: init failed: ${init.tail}`);
      for (const s of ['backup', 'restore'] as const) record(b, 'bulwark', s, { status: 'FAILED', note: `init: ${init.tail}` });
      return;
    }
    if (!(await timedStep(b, 'bulwark', 'backup', NODE, [...BW, ...g, 'backup', 'files', 'src'], env, data))) {
      record(b, 'bulwark', 'restore', { status: 'FAILED', note: 'no backup' });
      return;
    }
    const side = serverSide(b, 'bulwark');
    if (side) stored.set(`${b}/bulwark`, (await duBytes(side)) ?? NaN);
    const target = await freshTarget(`bulwark-${b}`);
    if (await timedStep(b, 'bulwark', 'restore', NODE, [...BW, ...g, 'restore', 'latest', '--target', target], env, data)) checkTree(b, 'bulwark', target);
    await rm(target, { recursive: true, force: true });
  } finally {
    await rm(cache, { recursive: true, force: true });
  }
}

async function benchRestic(b: Backend, data: DataMeta): Promise<void> {
  const cache = await mkdtemp(join(tmpdir(), 'restic-bench-cache-'));
  try {
    const { args: g, env } = resticTarget(b, cache);
    const init = await run(`restic-${b}-init`, 'restic', [...g, 'init'], { env });
    if (!init.ok) {
      log(`restic ${b}: init failed: ${init.tail}`);
      for (const s of ['backup', 'restore'] as const) record(b, 'restic', s, { status: 'FAILED', note: `init: ${init.tail}` });
      return;
    }
    if (!(await timedStep(b, 'restic', 'backup', 'restic', [...g, 'backup', 'src'], env, data))) {
      record(b, 'restic', 'restore', { status: 'FAILED', note: 'no backup' });
      return;
    }
    const side = serverSide(b, 'restic');
    if (side) stored.set(`${b}/restic`, (await duBytes(side)) ?? NaN);
    const target = await freshTarget(`restic-${b}`);
    if (await timedStep(b, 'restic', 'restore', 'restic', [...g, 'restore', 'latest', '--target', target], env, data)) checkTree(b, 'restic', target);
    await rm(target, { recursive: true, force: true });
  } finally {
    await rm(cache, { recursive: true, force: true });
  }
}

function checkTree(b: Backend, t: Tool, target: string): void {
  const v = verifyTree(target);
  if (v.ok) {
    log(`${t} ${b}: restore verified (diff -rq clean, ${v.note})`);
    return;
  }
  log(`*** FAIL: ${t} ${b}: the restore differs from the source: ${v.note}`);
  const cell = results.get(key(b, t, 'restore'))!;
  record(b, t, 'restore', { ...cell, status: 'FAIL', note: v.note });
}

async function benchPlain(b: Backend, data: DataMeta): Promise<void> {
  if (b === 'local') await mkdir(join(REPOS, 'plain-local'), { recursive: true });
  const [upCmd, upArgs] = plainCommand(b, 'backup', TAR);
  if (!(await timedStep(b, 'plain', 'backup', upCmd, upArgs, process.env, data))) {
    record(b, 'plain', 'restore', { status: 'FAILED', note: 'no upload' });
    return;
  }
  const side = serverSide(b, 'plain');
  if (side) stored.set(`${b}/plain`, (await duBytes(side)) ?? NaN);
  const target = await freshTarget(`plain-${b}`);
  const down = join(target, 'plain.tar');
  const [downCmd, downArgs] = plainCommand(b, 'restore', down);
  if (await timedStep(b, 'plain', 'restore', downCmd, downArgs, process.env, data)) {
    const sum = existsSync(down) ? await sha256File(down) : 'missing';
    if (sum === data.tarSha256) log(`plain ${b}: download verified (sha256 of the tar)`);
    else {
      const note = `sha256 of the downloaded tar ${sum.slice(0, 16)}… ≠ ${data.tarSha256.slice(0, 16)}…`;
      log(`*** FAIL: plain ${b}: ${note}`);
      record(b, 'plain', 'restore', { ...results.get(key(b, 'plain', 'restore'))!, status: 'FAIL', note });
    }
  }
  await rm(target, { recursive: true, force: true });
}

// ------------------------------------------------------------------------------------------ report
function mbs(c: Cell | undefined, data: DataMeta): number | undefined {
  return c?.status === 'ok' && c.secs ? data.bytes / 1e6 / c.secs : undefined;
}

function cellText(c: Cell | undefined, data: DataMeta): [string, string] {
  if (!c) return ['not run', ''];
  if (c.status === 'n/a') return ['n/a', ''];
  if (c.status === 'ok') return [c.secs!.toFixed(2), mbs(c, data)!.toFixed(1)];
  return [`**${c.status}**`, ''];
}

function ratio(a: number | undefined, b: number | undefined): string {
  return a !== undefined && b !== undefined ? `${(a / b).toFixed(2)}×` : '–';
}

function report(data: DataMeta, meta: Record<string, string>): string {
  const lines: string[] = [];
  lines.push(`# Off-site backends — Bulwark vs restic vs plain copies — ${meta['date']}`, '');
  lines.push(
    `${data.files} real files (< 8 MiB each) from ${readdirSync(join(SRC, 'usr')).map((d) => `/usr/${d}`).join(' and ')} (\`find /usr/lib /usr/share\` order until the budget is full), ${(data.bytes / 1048576).toFixed(0)} MiB of file data (tar: ${(data.tarBytes / 1048576).toFixed(0)} MiB). ` +
      `All servers on 127.0.0.1 of this machine (${meta['cpu']}, ${meta['nproc']} cores, ${meta['ram']} GiB RAM), storing to the same disk. ` +
      `MB/s = file data (10^6 bytes) ÷ wall seconds, the same numerator for every column. One run per cell.`,
    '',
  );
  lines.push(
    `Bulwark ${meta['bulwark']} (commit ${meta['commit']}, \`node ${[...BW_FLAGS, relative(ROOT, BULWARK_JS)].join(' ')}\`, default zstd, encrypted), ${meta['restic']} (defaults: auto compression, encrypted), ` +
      `plain = one \`tar\` of the tree copied up (\`cp\`, \`scp\`, \`curl -T\` FTP, \`curl -T --aws-sigv4\`) and down again (download only, not unpacked). ` +
      `Node ${meta['node']}. ${meta['caches']}. Restores to ${meta['restoreFs']}. ` +
      `CPU idle before the run: ${meta['idle']} % (load ${meta['loadStart']} → ${meta['loadEnd']})${Number(meta['idle']) < 90 ? ' — **the machine was busy: other work shares the 2 cores, wall times are inflated and noisy**' : ''}.`,
    '',
  );
  lines.push('Ratios are Bulwark MB/s ÷ the other\'s MB/s: above 1× Bulwark is faster. Every restore verified (`diff -rq` of the tree; sha256 of the tar).', '');
  for (const b of BACKENDS) {
    lines.push(`## ${BACKEND_NAMES[b]}`, '');
    lines.push('| step | Bulwark s | Bulwark MB/s | restic s | restic MB/s | plain s | plain MB/s | Bulwark/restic | Bulwark/plain |');
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const s of ['backup', 'restore'] as const) {
      const row = [s === 'backup' ? 'first backup' : 'full restore'];
      for (const t of ['bulwark', 'restic', 'plain'] as const) row.push(...cellText(results.get(key(b, t, s)), data));
      const bw = mbs(results.get(key(b, 'bulwark', s)), data);
      row.push(ratio(bw, mbs(results.get(key(b, 'restic', s)), data)), ratio(bw, mbs(results.get(key(b, 'plain', s)), data)));
      lines.push(`| ${row.join(' | ')} |`);
    }
    const size = (t: Tool): string => {
      const v = stored.get(`${b}/${t}`);
      return v === undefined || Number.isNaN(v) ? '–' : (v / 1048576).toFixed(0);
    };
    lines.push(`| stored (MiB, \`du -sb\`) | | ${size('bulwark')} | | ${size('restic')} | | ${size('plain')} | | |`);
    lines.push('');
  }
  const notes: string[] = [];
  for (const [k, c] of results) if (c.status !== 'ok' && c.status !== 'n/a' && c.note) notes.push(`- \`${k}\`: ${c.status}: ${c.note}`);
  if (notes.length) lines.push('Failures:', '', ...notes, '');
  lines.push(`Logs of every command: \`${relative(ROOT, LOGS)}/\`.`);
  return lines.join('\n') + '\n';
}

// ------------------------------------------------------------------------------------------ main
async function main(): Promise<number> {
  if (!IS_ROOT) log('warning: not root: vsftpd needs a system user (FTP will fail) and caches cannot be dropped');
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: npm run build first');
  await mkdir(WORK, { recursive: true });
  const loadStart = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const idle = await idlePct();
  if (idle < 90) log(`warning: the CPUs are only ${idle} % idle before the run: other processes will skew the times`);
  const data = await makeData();

  unmountRestore();
  await rm(LOGS, { recursive: true, force: true });
  await rm(REPOS, { recursive: true, force: true });
  if (existsSync(RESTORE)) spawnSync('umount', [RESTORE], { stdio: 'ignore' });
  await rm(RESTORE, { recursive: true, force: true });
  await mkdir(LOGS, { recursive: true });
  await mkdir(REPOS, { recursive: true });
  await mkdir(RESTORE, { recursive: true });
  let restoreFs = 'the disk';
  if (process.env['BENCH_RESTORE_TMPFS'] !== '0' && IS_ROOT) {
    const size = Math.ceil((data.tarBytes * 1.3) / 1048576) + 512;
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}m`, 'bulwark-offsite', RESTORE]).status === 0) {
      restoreMounted = true;
      restoreFs = 'a tmpfs';
    }
  }

  const need = (b: Backend): boolean => BACKENDS.includes(b);
  log('starting servers…');
  if (need('sftp')) {
    servers.sshd = await startSshd();
    servers.knownHosts = join(WORK, 'known_hosts');
    await writeFile(servers.knownHosts, `${servers.sshd.hostKeyLine}\n`);
    log(`sshd on port ${servers.sshd.port}, user ${servers.sshd.user}, folder ${servers.sshd.dir}`);
  }
  if (need('ftp')) {
    servers.ftpd = await startFtpd();
    log(`vsftpd on port ${servers.ftpd.port}, user ${servers.ftpd.user}, root ${servers.ftpd.root}`);
  }
  if (need('s3')) {
    servers.s3 = await startS3Server();
    log(`Swift s3api at ${servers.s3.endpoint}`);
    // The bucket for all three tools (each under its own prefix / object).
    const url = `http://${encodeURIComponent(servers.s3.accessKeyId)}:${encodeURIComponent(servers.s3.secretAccessKey)}@127.0.0.1:${s3Port()}/${S3_BUCKET}`;
    const code = must('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'PUT', '--aws-sigv4', 'aws:amz:us-east-1:s3', '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD', url]).trim();
    if (code !== '200' && code !== '409') throw new Error(`creating the S3 bucket answered HTTP ${code}`);
    if (TOOLS.includes('restic')) servers.s3Tls = await startTlsFront(Number(s3Port()));
  }
  if (need('rest') && TOOLS.includes('bulwark')) {
    servers.rest = await startRestServer();
    log(`bulwark serve-repo at ${servers.rest.url}, data ${servers.rest.data}`);
  }

  for (const b of BACKENDS) {
    for (const t of TOOLS) {
      if (!SUPPORTED[t].includes(b)) {
        for (const s of ['backup', 'restore'] as const) record(b, t, s, { status: 'n/a' });
        continue;
      }
      if (t === 'bulwark') await benchBulwark(b, data);
      else if (t === 'restic') await benchRestic(b, data);
      else await benchPlain(b, data);
    }
  }

  const meta: Record<string, string> = {
    date: new Date().toISOString().slice(0, 16) + 'Z',
    cpu: (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown CPU').trim(),
    nproc: String(cpus().length),
    ram: (totalmem() / 2 ** 30).toFixed(0),
    bulwark: spawnSync(NODE, [...BW, '--version'], { encoding: 'utf8' }).stdout.trim(),
    commit:
      (spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim() || 'unknown') +
      (spawnSync('git', ['-C', ROOT, 'diff', '--quiet', 'HEAD']).status === 0 ? '' : '+uncommitted changes'),
    restic: spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout.split(' ').slice(0, 2).join(' '),
    caches: IS_ROOT ? 'Page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every timed step; times exclude the final writeback (`sync` after each step, untimed)' : 'Warm page cache (not root)',
    restoreFs,
    node: `${spawnSync(NODE, ['--version'], { encoding: 'utf8' }).stdout.trim()} (${NODE})`,
    idle: String(idle),
    loadStart,
    loadEnd: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
  };
  const md = report(data, meta);
  process.stdout.write(md);
  await writeFile(join(OUT, 'offsite-results.md'), md);
  await writeFile(
    join(OUT, 'offsite-results.json'),
    JSON.stringify({ meta, data, results: Object.fromEntries(results), stored: Object.fromEntries(stored) }, null, 2) + '\n',
  );
  log(`results in ${join(OUT, 'offsite-results.md')}`);
  if (verifyFailed || bulwarkFailed) {
    log('exit 1: a restore did not give back the data, or a Bulwark step failed');
    return 1;
  }
  return 0;
}

let code: number;
try {
  code = await main();
} catch (err) {
  log(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  code = 1;
} finally {
  await stopServers();
  unmountRestore();
  if (!KEEP) {
    await rm(REPOS, { recursive: true, force: true }).catch(() => undefined);
    await rm(RESTORE, { recursive: true, force: true }).catch(() => undefined);
  }
}
// Stray handles (none expected) must not keep the process alive.
process.exit(code);
