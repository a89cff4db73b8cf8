// The real test guest for integration tests: a Debian cloud kernel + busybox initramfs with
// qemu-guest-agent, a checksummed writer on /data, and freeze/thaw hooks (built by build.sh).
//
//   const image = await ensureGuestBuilt();
//   await makeDataDisk(`${dir}/data.qcow2`, { sizeMiB: 64, format: 'qcow2', fill: image.sampleDir });
//   const guest = await startGuest({ dir, name: 'vm1', disks: [{ path: `${dir}/data.qcow2`, format: 'qcow2' }] });
//   try { ... QmpClient.connect(guest.qmpSocket) ... QgaClient.connect(guest.qgaSocket) ... }
//   finally { await guest.stop(); }
//
// Inside the guest: /dev/vda (ext4) is mounted on /data; the writer appends records to
// /data/log.txt (see verifyWriterLog); qemu-ga's fsfreeze hook appends `freeze`/`thaw` lines to
// /data/hooks.log (see readHookLog). Block nodes are named disk0, disk1, … in disks' order.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, openSync, closeSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { QgaClient } from '../../src/protocols/qga/client.js';
import { QmpClient } from '../../src/protocols/qmp/client.js';
import { BulwarkError } from '../../src/util/errors.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BUILD_SCRIPT = path.join(ROOT, 'test/guest/build.sh');
const CACHE = process.env['BULWARK_GUEST_CACHE'] ?? path.join(ROOT, '.cache/guest');
const QEMU = 'qemu-system-x86_64';

export type Accel = 'tcg' | 'kvm';
export type DiskFormat = 'qcow2' | 'raw';

export interface GuestManifest {
  key: string;
  kernelPackage: string;
  kernelVersion: string;
  busyboxVersion: string;
  qemuGaVersion: string;
  buildMs: number;
  builtAt: string;
}

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  /** A few MiB of real files (modules, text, a symlink) to put on data disks via makeDataDisk's fill. */
  sampleDir: string;
  key: string;
  manifest: GuestManifest;
}

export interface DataDiskOptions {
  sizeMiB: number;
  format: DiskFormat;
  /** A directory whose contents become the filesystem's root (mkfs.ext4 -d). */
  fill?: string;
}

export interface GuestDisk {
  path: string;
  format: DiskFormat;
}

export interface StartGuestOptions {
  /** Holds sockets and logs; created if missing. Keep it short: unix socket paths max 107 bytes. */
  dir: string;
  /** The first disk is /dev/vda, mounted on /data inside the guest. */
  disks: GuestDisk[];
  name: string;
  /** Writer on /data/log.txt; default { kibPerSec: 64 }. sync (default true) syncs after each batch. */
  writer?: { kibPerSec: number; sync?: boolean } | false;
  memMiB?: number;
  /** Default: detectAccel(). */
  accel?: Accel;
  /** Until the agent answers guest-ping. Default 60 s (TCG under parallel test load). */
  bootTimeoutMs?: number;
  /** Appended to QEMU's command line. */
  qemuArgs?: string[];
}

export interface RunningGuest {
  name: string;
  dir: string;
  qmpSocket: string;
  qgaSocket: string;
  /** A second QMP monitor for the harness: free while the code under test holds `qmpSocket`. */
  harnessSocket: string;
  consoleLog: string;
  qemuLog: string;
  pid: number;
  accel: Accel;
  /** From spawning QEMU to the first answered guest-ping. */
  bootToAgentMs: number;
  alive(): boolean;
  /** quit via QMP, then SIGTERM, then SIGKILL; always reaps. Idempotent. */
  stop(): Promise<void>;
}

// ---- build ------------------------------------------------------------------------------------

let built: Promise<GuestImage> | undefined;

/** Builds the guest unless .cache/guest holds a build of the current build.sh. */
export function ensureGuestBuilt(): Promise<GuestImage> {
  built ??= (async () => {
    const key = createHash('sha256').update(await fs.readFile(BUILD_SCRIPT)).digest('hex').slice(0, 16);
    const dir = path.join(CACHE, key);
    if (!existsSync(path.join(dir, 'manifest.json'))) {
      const out = await run('bash', [BUILD_SCRIPT], { timeoutMs: 15 * 60_000 });
      const printed = out.stdout.toString().trim().split('\n').pop();
      if (printed !== dir) throw new Error(`build.sh built '${printed}', expected '${dir}'`);
    }
    const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8')) as GuestManifest;
    return { dir, kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.gz'), sampleDir: path.join(dir, 'sample'), key, manifest };
  })();
  built.catch(() => (built = undefined));
  return built;
}

// ---- accelerator --------------------------------------------------------------------------------

let accelVerdict: Promise<Accel> | undefined;

/**
 * TCG unless a trial boot under KVM reached the agent on this machine (nested KVM here has
 * /dev/kvm yet kills the guest). The verdict is cached per guest build and QEMU version in
 * .cache/guest/accel; BULWARK_TEST_ACCEL=tcg|kvm overrides.
 */
export function detectAccel(): Promise<Accel> {
  const forced = process.env['BULWARK_TEST_ACCEL'];
  if (forced !== undefined && forced !== '') {
    if (forced !== 'tcg' && forced !== 'kvm') throw new Error(`BULWARK_TEST_ACCEL must be 'tcg' or 'kvm', not '${forced}'`);
    return Promise.resolve(forced);
  }
  accelVerdict ??= (async () => {
    const image = await ensureGuestBuilt();
    const qemu = (await run(QEMU, ['--version'])).stdout.toString().split('\n')[0] ?? '';
    const file = path.join(CACHE, 'accel');
    type Verdict = { accel: Accel; guestKey: string; qemu: string; trialMs: number; reason: string };
    const cached = async (): Promise<Verdict | undefined> => {
      try {
        const v = JSON.parse(await fs.readFile(file, 'utf8')) as Verdict;
        return v.guestKey === image.key && v.qemu === qemu ? v : undefined;
      } catch {
        return undefined;
      }
    };
    const hit = await cached();
    if (hit) return hit.accel;
    try {
      await fs.access('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    } catch {
      return 'tcg';
    }
    return withLock(path.join(CACHE, 'accel.lock'), async () => {
      const again = await cached();
      if (again) return again.accel;
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-accel-'));
      const started = Date.now();
      let verdict: Verdict;
      try {
        const g = await startGuest({ dir, name: 'accel-trial', disks: [], writer: false, accel: 'kvm', bootTimeoutMs: 20_000 });
        await g.stop();
        verdict = { accel: 'kvm', guestKey: image.key, qemu, trialMs: Date.now() - started, reason: `agent answered after ${g.bootToAgentMs} ms` };
      } catch (err) {
        verdict = { accel: 'tcg', guestKey: image.key, qemu, trialMs: Date.now() - started, reason: err instanceof Error ? err.message.slice(0, 500) : String(err) };
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
      await fs.writeFile(`${file}.tmp`, JSON.stringify(verdict, null, 2) + '\n');
      await fs.rename(`${file}.tmp`, file);
      return verdict.accel;
    });
  })();
  return accelVerdict;
}

// ---- data disks ---------------------------------------------------------------------------------

/** An ext4 filesystem (label "data") in a raw or qcow2 image, optionally filled from a directory. */
export async function makeDataDisk(imagePath: string, opts: DataDiskOptions): Promise<void> {
  const raw = opts.format === 'raw' ? imagePath : `${imagePath}.mkfs.raw`;
  await fs.rm(raw, { force: true });
  try {
    // Eager inode-table/journal init: the guest's ext4lazyinit thread would otherwise write in the
    // background and blur "which blocks did the workload change".
    const args = ['-q', '-F', '-L', 'data', '-E', 'lazy_itable_init=0,lazy_journal_init=0'];
    if (opts.fill !== undefined) args.push('-d', opts.fill);
    await run('mkfs.ext4', [...args, raw, `${opts.sizeMiB}M`]);
    if (opts.format === 'qcow2') await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, imagePath]);
  } finally {
    if (raw !== imagePath) await fs.rm(raw, { force: true });
  }
}

/**
 * Reads one file out of an ext4 image without mounting it (debugfs). qcow2 images are converted
 * to a temporary raw copy first, and a journal that needs recovery (an image of a running or
 * crashed guest) is replayed on a copy, so the result is what a mount would show.
 */
export async function readFileFromExt4Image(imagePath: string, pathInFs: string): Promise<Buffer> {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-ext4-'));
  try {
    let img = imagePath;
    const fh = await fs.open(imagePath, 'r');
    const magic = Buffer.alloc(4);
    try {
      await fh.read(magic, 0, 4, 0);
    } finally {
      await fh.close();
    }
    if (magic.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb]))) {
      img = path.join(tmp, 'image.raw');
      await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', imagePath, img]);
    }
    const header = (await run('dumpe2fs', ['-h', img])).stdout.toString();
    if (/^Filesystem features:.*\bneeds_recovery\b/m.test(header)) {
      if (img === imagePath) {
        img = path.join(tmp, 'image.raw');
        await run('cp', ['--sparse=always', imagePath, img]);
      }
      // Exit 1 means "fixed something", which replaying the journal is.
      await run('e2fsck', ['-fy', '-E', 'journal_only', img], { okCodes: [0, 1] });
    }
    const res = await run('debugfs', ['-R', `cat "${pathInFs.replace(/"/g, '\\"')}"`, img]);
    const complaints = res.stderr
      .toString()
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^debugfs \d/.test(l));
    if (complaints.length > 0) throw new Error(`debugfs could not read '${pathInFs}' from '${imagePath}': ${complaints.join('; ')}`);
    return res.stdout;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

// ---- running a guest ----------------------------------------------------------------------------

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test that forgets stop() must not leave QEMU behind (setpriv's pdeathsig covers a crash).
  process.once('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

export async function startGuest(opts: StartGuestOptions): Promise<RunningGuest> {
  const image = await ensureGuestBuilt();
  const accel = opts.accel ?? (await detectAccel());
  const dir = path.resolve(opts.dir);
  await fs.mkdir(dir, { recursive: true });
  const qmpSocket = path.join(dir, 'qmp.sock');
  const qgaSocket = path.join(dir, 'qga.sock');
  const harnessSocket = path.join(dir, 'harness.sock');
  const consoleLog = path.join(dir, 'console.log');
  const qemuLog = path.join(dir, 'qemu.log');
  for (const s of [qmpSocket, qgaSocket, harnessSocket]) {
    if (Buffer.byteLength(s) > 107) throw new Error(`socket path too long for a unix socket (max 107 bytes): ${s}`);
    await fs.rm(s, { force: true });
  }

  const writer = opts.writer ?? { kibPerSec: 64 };
  const cmdline = ['console=ttyS0', 'quiet', 'panic=-1'];
  if (writer === false) cmdline.push('bulwark.writer=off');
  else {
    cmdline.push(`bulwark.writer_kib_per_s=${Math.max(1, Math.round(writer.kibPerSec))}`);
    if (writer.sync === false) cmdline.push('bulwark.writer_sync=off');
  }
  const esc = (s: string): string => s.replace(/,/g, ',,');
  const args = [
    '-name', `guest=${esc(opts.name)}`,
    ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']),
    '-machine', 'q35', '-m', String(opts.memMiB ?? 256), '-smp', '1',
    '-display', 'none', '-nodefaults', '-no-user-config', '-no-reboot',
    '-kernel', image.kernel, '-initrd', image.initrd, '-append', cmdline.join(' '),
    '-chardev', `file,id=console,path=${esc(consoleLog)}`, '-serial', 'chardev:console',
    '-qmp', `unix:${esc(qmpSocket)},server=on,wait=off`,
    // A second monitor for this harness, so stop() works while a test holds the QMP socket.
    '-chardev', `socket,id=harness,path=${esc(harnessSocket)},server=on,wait=off`, '-mon', 'chardev=harness,mode=control',
    '-device', 'virtio-serial-pci,id=vser0',
    '-chardev', `socket,id=qga0,path=${esc(qgaSocket)},server=on,wait=off`,
    '-device', 'virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0',
  ];
  opts.disks.forEach((d, i) => {
    args.push(
      '-blockdev', JSON.stringify({ driver: 'file', filename: path.resolve(d.path), 'node-name': `file${i}` }),
      '-blockdev', JSON.stringify({ driver: d.format, file: `file${i}`, 'node-name': `disk${i}` }),
      // serial = node name: the guest (and guest-get-fsinfo) can tell the disks apart.
      '-device', JSON.stringify({ driver: 'virtio-blk-pci', drive: `disk${i}`, id: `vd${i}`, serial: `disk${i}` }),
    );
  });
  args.push(...(opts.qemuArgs ?? []));

  installExitHook();
  const logFd = openSync(qemuLog, 'w');
  const spawnedAt = performance.now();
  let child: ChildProcess;
  try {
    // pdeathsig: QEMU dies with the test worker, even on SIGKILL of the worker.
    child = spawn('setpriv', ['--pdeathsig', 'KILL', QEMU, ...args], { stdio: ['ignore', logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  live.add(child);
  let exitInfo: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = signal ? `signal ${signal}` : `code ${code}`;
      live.delete(child);
      resolve();
    });
    child.once('error', (err) => {
      exitInfo = `spawn failed: ${err.message}`;
      live.delete(child);
      resolve();
    });
  });
  const waitExit = async (ms: number): Promise<boolean> => {
    if (exitInfo !== undefined) return true;
    const t = sleep(ms, false, { ref: false });
    return Promise.race([exited.then(() => true), t]);
  };

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exitInfo !== undefined) return;
      try {
        const qmp = await QmpClient.connect(harnessSocket, { timeoutMs: 2000 });
        try {
          await qmp.execute('quit', undefined, { timeoutMs: 2000 });
        } catch {
          // QEMU may close the monitor before the reply reaches us.
        } finally {
          await qmp.close();
        }
      } catch {
        // Fall through to signals.
      }
      if (await waitExit(5000)) return;
      child.kill('SIGTERM');
      if (await waitExit(3000)) return;
      child.kill('SIGKILL');
      await exited;
    })();
    return stopping;
  };

  const bootTimeoutMs = opts.bootTimeoutMs ?? 60_000;
  const deadline = spawnedAt + bootTimeoutMs;
  let lastErr: unknown;
  let bootToAgentMs: number | undefined;
  while (bootToAgentMs === undefined) {
    if (exitInfo !== undefined || performance.now() > deadline || (await kvmFailed(qemuLog))) {
      await stop();
      const why = exitInfo !== undefined ? `QEMU exited (${exitInfo})` : `the agent did not answer within ${bootTimeoutMs} ms`;
      throw new BulwarkError('failed', `guest '${opts.name}' (${accel}) did not boot: ${why}\n--- qemu.log\n${await tail(qemuLog)}\n--- console.log\n${await tail(consoleLog)}`, {
        cause: lastErr,
      });
    }
    let qga: QgaClient | undefined;
    try {
      const attempt = Math.min(5000, Math.max(1, deadline - performance.now()));
      qga = await QgaClient.connect(qgaSocket, { timeoutMs: attempt });
      await qga.ping({ timeoutMs: attempt });
      bootToAgentMs = Math.round(performance.now() - spawnedAt);
    } catch (err) {
      lastErr = err;
      // Before QEMU creates the socket: ENOENT / ECONNREFUSED come back at once.
      if (!(err instanceof BulwarkError && err.code === 'timeout')) await sleep(50);
    } finally {
      await qga?.close();
    }
  }

  return {
    name: opts.name,
    dir,
    qmpSocket,
    qgaSocket,
    harnessSocket,
    consoleLog,
    qemuLog,
    pid: child.pid ?? -1,
    accel,
    bootToAgentMs,
    alive: () => exitInfo === undefined,
    stop,
  };
}

async function kvmFailed(qemuLog: string): Promise<boolean> {
  const text = await fs.readFile(qemuLog, 'utf8').catch(() => '');
  return /KVM internal error|failed to set MSR/.test(text);
}

async function tail(file: string, lines = 20): Promise<string> {
  const text = await fs.readFile(file, 'utf8').catch((err: Error) => `(unreadable: ${err.message})`);
  return text.split('\n').slice(-lines).join('\n');
}

// ---- what the guest wrote -----------------------------------------------------------------------

export interface WriterLogCheck {
  /** Complete records with a correct checksum. */
  records: number;
  /** Damaged records that are not a run's last line: corruption, never acceptable. */
  torn: number;
  /** Valid records whose seq is not the previous one + 1 within their run (lost or reordered data). */
  seqBreaks: number;
  /** The file ends inside a record (or in zeros): legitimate in a crash-consistent copy. */
  incompleteTail: boolean;
  /** Earlier runs that ended inside a record before the guest booted again on the same disk. */
  interruptedRuns: number;
  runs: number;
  /** seq of the last valid record (0 if none). */
  lastSeq: number;
  /** The first torn line or sequence break, for assertion messages. */
  firstBad?: string;
  /** torn === 0 && seqBreaks === 0. */
  ok: boolean;
}

const RECORD = /^(\d+) ([0-9a-f]{8}):([A-Za-z0-9]{56}) ([0-9a-f]{8})$/;
const RECORD_PREFIX = /^\d*( [0-9a-f]{0,8}(:[A-Za-z0-9]{0,56}( [0-9a-f]{0,8})?)?)?$/;
const RUN_MARKER = /^#run ([0-9a-f]{8}) (\d+)$/;

/** The writer's checksum: h = (h*31 + byte) mod (2^31-1) over "<seq> <run>:<payload>". */
export function writerChecksum(body: string): string {
  let h = 0;
  for (let i = 0; i < body.length; i++) h = (h * 31 + body.charCodeAt(i)) % 2147483647;
  return h.toString(16).padStart(8, '0');
}

/** One record line as the guest's writer formats it (without the newline); for unit tests. */
export function writerRecord(seq: number, run: string, payload: string): string {
  const body = `${seq} ${run}:${payload}`;
  return `${body} ${writerChecksum(body)}`;
}

export function verifyWriterLog(text: string | Buffer): WriterLogCheck {
  const s = typeof text === 'string' ? text : text.toString('latin1');
  const lines = s.split('\n');
  // A file ending in '\n' leaves an empty last element; anything else there is an unterminated line.
  const last = lines.pop() ?? '';
  const unterminated = last.length > 0 ? last : undefined;
  const r: WriterLogCheck = { records: 0, torn: 0, seqBreaks: 0, incompleteTail: false, interruptedRuns: 0, runs: 0, lastSeq: 0, ok: true };
  const bad = (lineNo: number, what: string, line: string): void => {
    r.firstBad ??= `line ${lineNo}: ${what}: ${JSON.stringify(line.slice(0, 120))}`;
  };
  let run: string | undefined;
  let expected: number | undefined;
  const all = unterminated === undefined ? lines : [...lines, unterminated];
  all.forEach((line, i) => {
    const lineNo = i + 1;
    const marker = RUN_MARKER.exec(line);
    if (marker) {
      run = marker[1];
      expected = 1;
      r.runs++;
      return;
    }
    const m = RECORD.exec(line);
    if (m && writerChecksum(`${m[1]} ${m[2]}:${m[3]}`) === m[4] && (run === undefined || m[2] === run)) {
      const seq = Number(m[1]);
      if (run === undefined) {
        // A fragment that starts mid-run: adopt the run it shows.
        run = m[2];
        r.runs++;
      } else if (expected !== undefined && seq !== expected) {
        r.seqBreaks++;
        bad(lineNo, `seq ${seq}, expected ${expected}`, line);
      }
      expected = seq + 1;
      r.records++;
      r.lastSeq = seq;
      return;
    }
    const isLast = i === all.length - 1;
    const beforeMarker = !isLast && RUN_MARKER.test(all[i + 1] ?? '');
    // A whole record with a wrong checksum is damage, not truncation.
    const truncated = !m && RECORD_PREFIX.test(line.replace(/\0+$/, ''));
    if (isLast && truncated) {
      r.incompleteTail = true;
      return;
    }
    if (beforeMarker && truncated) {
      r.interruptedRuns++;
      return;
    }
    r.torn++;
    bad(lineNo, m ? (m[2] !== run ? `run ${m[2]} inside run ${run}` : 'checksum mismatch') : 'damaged record', line);
  });
  r.ok = r.torn === 0 && r.seqBreaks === 0;
  return r;
}

export interface HookEvent {
  action: 'freeze' | 'thaw';
  epochSeconds: number;
  uptimeSeconds: number;
}

export interface HookLog {
  events: HookEvent[];
  freezes: number;
  thaws: number;
  last?: 'freeze' | 'thaw';
  /** Lines that are not hook records (a crash-consistent copy may end inside one). */
  malformed: number;
}

/** Parses /data/hooks.log: lines `<freeze|thaw> <epoch seconds> <uptime seconds>`. */
export function readHookLog(text: string | Buffer): HookLog {
  const s = typeof text === 'string' ? text : text.toString('latin1');
  const out: HookLog = { events: [], freezes: 0, thaws: 0, malformed: 0 };
  for (const line of s.split('\n')) {
    if (line === '') continue;
    const m = /^(freeze|thaw) (\d+) (\d+(?:\.\d+)?)$/.exec(line);
    if (!m) {
      out.malformed++;
      continue;
    }
    const action = m[1] as 'freeze' | 'thaw';
    out.events.push({ action, epochSeconds: Number(m[2]), uptimeSeconds: Number(m[3]) });
    if (action === 'freeze') out.freezes++;
    else out.thaws++;
    out.last = action;
  }
  return out;
}

// ---- helpers ------------------------------------------------------------------------------------

interface RunResult {
  stdout: Buffer;
  stderr: Buffer;
}

function run(cmd: string, args: string[], opts: { timeoutMs?: number; okCodes?: number[] } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'buffer', maxBuffer: 1 << 30, timeout: opts.timeoutMs ?? 120_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (err && !(opts.okCodes ?? [0]).includes(code)) {
        reject(new Error(`${cmd} ${args.join(' ')} failed (${err.killed ? 'timed out' : `exit ${String(err.code)}`}): ${stderr.toString().trim().slice(-2000)}`));
        return;
      }
      resolve({ stdout, stderr });
    });
  });
}

/** mkdir as a lock across processes (vitest runs files in parallel); a lock older than 2 min is stale. */
async function withLock<T>(lockDir: string, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      await fs.mkdir(lockDir);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = await fs.stat(lockDir).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > 120_000) await fs.rm(lockDir, { recursive: true, force: true });
      else await sleep(200);
    }
  }
  try {
    return await fn();
  } finally {
    await fs.rm(lockDir, { recursive: true, force: true });
  }
}
