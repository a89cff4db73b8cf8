// A real S3-compatible server for the S3 backend tests: OpenStack Swift with its s3api middleware, from
// Debian's packages, run as plain processes (no systemd here). Needs the Debian packages
//   swift swift-proxy swift-account swift-container swift-object memcached python3-keystonemiddleware
// (python3-keystonemiddleware is only there because Debian's s3api imports parts of it).
//
// Everything lives in one temp folder: configs, rings (one replica, one device folder, no mount
// check), objects. memcached and the account, container, object and proxy servers each run in the
// foreground as a child of this process, with workers = 0 so each is one process whose pid we hold;
// stop() signals exactly those pids. Users come from tempauth: S3 access key 'test:tester', secret
// 'testing'. Swift still reads /etc/swift/swift.conf (the hash path salt and storage policies), which
// the swift package installs; everything else points at the temp folder.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { answers, freePort } from './daemon.js';

export interface S3Server {
  /** http://127.0.0.1:<port>, for path-style requests. */
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** The object server's device folder: each stored object (or part) is a `.data` file below it. */
  objectsDir: string;
  /** The proxy alone: stopping it makes the endpoint refuse connections (for outage tests). */
  stopProxy(): Promise<void>;
  /** Kills the proxy at once (SIGKILL), as a crash would; the storage servers and objects stay. */
  killProxy(): Promise<void>;
  /** Starts the proxy again on the same port (after stopProxy() or killProxy()) and waits until it is healthy. */
  restartProxy(): Promise<void>;
  /** Freezes the proxy (SIGSTOP): connections to it stay open, nothing answers. */
  pauseProxy(): void;
  /** Lets it run again (SIGCONT) after pauseProxy(). */
  resumeProxy(): void;
  /** Ends every process this call started and removes its folder. */
  stop(): Promise<void>;
}

interface Daemon {
  name: string;
  child: ChildProcess;
  log: string;
}

const run = promisify(execFile);
// The python that has Debian's swift modules: a pyenv or venv python3 earlier in PATH does not.
const PYTHON = '/usr/bin/python3';
const READY_TIMEOUT_MS = 60_000;
const ACCESS_KEY = 'test:tester';
const SECRET = 'testing';

/** A port the kernel just handed out and released; the window for someone else to take it is tiny. */

function serverConf(dir: string, port: number, app: 'account' | 'container' | 'object'): string {
  return `[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
devices = ${join(dir, 'srv')}
mount_check = false
swift_dir = ${dir}
user = root
workers = 0
log_name = ${app}-server
log_level = WARNING

[pipeline:main]
pipeline = ${app}-server

[app:${app}-server]
use = egg:swift#${app}
`;
}

function proxyConf(dir: string, port: number, memcachePort: number): string {
  // s3api sits right before its auth filter; slo is required for multipart uploads (s3api stores them
  // as static large objects), and copy/dlo/versioned_writes/symlink keep the stock order around it.
  return `[DEFAULT]
bind_ip = 127.0.0.1
bind_port = ${port}
swift_dir = ${dir}
user = root
workers = 0
log_name = proxy-server
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:${memcachePort}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = ${SECRET} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes

[filter:symlink]
use = egg:swift#symlink
`;
}

async function buildRing(dir: string, kind: 'account' | 'container' | 'object', port: number): Promise<void> {
  const builder = join(dir, `${kind}.builder`);
  // Part power 4 (16 partitions) is plenty for one device; min_part_hours 0 so rebalance never waits.
  await run('swift-ring-builder', [builder, 'create', '4', '1', '0']);
  await run('swift-ring-builder', [builder, 'add', `r1z1-127.0.0.1:${port}/d1`, '1']);
  // Exit status 1 from rebalance is a warning (e.g. "balance unchanged"); 2 is an error.
  await run('swift-ring-builder', [builder, 'rebalance']).catch((err: unknown) => {
    if ((err as { code?: unknown }).code !== 1) throw err;
  });
}


/** The proxy's /healthcheck: answers once the proxy has loaded its whole pipeline. */
async function healthy(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthcheck`, { signal: AbortSignal.timeout(2000) });
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

async function tail(path: string): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.split('\n').slice(-15).join('\n');
}

async function waitFor(what: string, daemons: Daemon[], ready: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const dead = daemons.find((d) => d.child.exitCode !== null || d.child.signalCode !== null);
    if (dead) throw new Error(`${dead.name} exited (${dead.child.exitCode ?? dead.child.signalCode}) before ${what} was ready:\n${await tail(dead.log)}`);
    if (await ready()) return;
    if (Date.now() > end) throw new Error(`${what} not ready after ${READY_TIMEOUT_MS / 1000} s; logs in ${daemons.map((d) => d.log).join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopDaemon(d: Daemon): Promise<void> {
  if (d.child.exitCode !== null || d.child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => d.child.once('exit', () => resolve()));
  d.child.kill('SIGTERM');
  // A frozen daemon (a test's SIGSTOP) acts on the SIGTERM only once it runs again.
  d.child.kill('SIGCONT');
  const timer = setTimeout(() => d.child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

export async function startS3Server(): Promise<S3Server> {
  const dir = await mkdtemp(join(tmpdir(), 'bulwark-swift-'));
  const daemons: Daemon[] = [];
  const start = async (name: string, cmd: string, args: string[]): Promise<Daemon> => {
    const log = join(dir, `${name}.log`);
    const out = createWriteStream(log);
    await new Promise<void>((resolve, reject) => out.once('open', () => resolve()).once('error', reject));
    // Its own process group is not needed: with workers = 0 each server is the single process we spawned.
    const child = spawn(cmd, args, { cwd: dir, stdio: ['ignore', out, out] });
    child.once('error', () => undefined); // a failed spawn shows as an exit in waitFor
    const d = { name, child, log };
    daemons.push(d);
    return d;
  };
  // A test worker that dies without running afterAll must not leave daemons holding ports behind; kill()
  // is synchronous, so it works from an 'exit' handler.
  const killOnExit = (): void => {
    for (const d of daemons) if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  const stopAll = async (): Promise<void> => {
    // The proxy first, so nothing talks to servers that are going away.
    for (const d of [...daemons].reverse()) await stopDaemon(d);
    process.off('exit', killOnExit);
  };

  try {
    const [memcachePort, accountPort, containerPort, objectPort, proxyPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
    if (new Set([memcachePort, accountPort, containerPort, objectPort, proxyPort]).size !== 5) throw new Error('the kernel handed out one port twice; try again');
    await mkdir(join(dir, 'srv', 'd1'), { recursive: true });
    await writeFile(join(dir, 'account-server.conf'), serverConf(dir, accountPort, 'account'));
    await writeFile(join(dir, 'container-server.conf'), serverConf(dir, containerPort, 'container'));
    await writeFile(join(dir, 'object-server.conf'), serverConf(dir, objectPort, 'object'));
    await writeFile(join(dir, 'proxy-server.conf'), proxyConf(dir, proxyPort, memcachePort));
    // Each swift-ring-builder run is a python start-up of a second or more: the three rings in parallel.
    await Promise.all([buildRing(dir, 'account', accountPort), buildRing(dir, 'container', containerPort), buildRing(dir, 'object', objectPort)]);

    await start('memcached', 'memcached', ['-u', 'root', '-l', '127.0.0.1', '-p', String(memcachePort), '-U', '0', '-m', '64']);
    for (const kind of ['account', 'container', 'object']) await start(`${kind}-server`, PYTHON, [`/usr/bin/swift-${kind}-server`, join(dir, `${kind}-server.conf`)]);
    const startProxy = () => start('proxy-server', PYTHON, ['/usr/bin/swift-proxy-server', join(dir, 'proxy-server.conf')]);
    let proxy = await startProxy();
    await waitFor('the storage servers', daemons, async () => (await Promise.all([memcachePort, accountPort, containerPort, objectPort].map((p) => answers(p)))).every(Boolean));
    await waitFor('the proxy', daemons, () => healthy(proxyPort));
    const killProxy = async (): Promise<void> => {
      const c = proxy.child;
      if (c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGKILL');
      await exited;
    };
    return {
      endpoint: `http://127.0.0.1:${proxyPort}`,
      accessKeyId: ACCESS_KEY,
      secretAccessKey: SECRET,
      objectsDir: join(dir, 'srv', 'd1', 'objects'),
      stopProxy: () => stopDaemon(proxy),
      killProxy,
      async restartProxy() {
        await killProxy();
        daemons.splice(daemons.indexOf(proxy), 1);
        proxy = await startProxy();
        await waitFor('the restarted proxy', daemons, () => healthy(proxyPort));
      },
      pauseProxy: () => proxy.child.kill('SIGSTOP'),
      resumeProxy: () => proxy.child.kill('SIGCONT'),
      async stop() {
        await stopAll();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopAll();
    // Kept on failure: the logs in it say why.
    throw new Error(`could not start Swift in ${dir}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
