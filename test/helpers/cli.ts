// Runs the real CLI (the built dist/, as users run it) in a child process.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach } from 'vitest';
import { launcherFlags } from '../../src/cli/launcher.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BIN = `${ROOT}bin/bulwark.js`;
/** The Node that runs the CLI: the test runner's own, or another version (BULWARK_TEST_NODE) to check 22 and 24. */
export const NODE = process.env['BULWARK_TEST_NODE'] || process.execPath;
/** Node's flags for the CLI, as its launcher starts it (the tests run it through `node`, which ignores that line). */
export const NODE_FLAGS = launcherFlags(BIN);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: Record<string, string | undefined>;
  /** Run as another user (uid:gid) through setpriv, e.g. to meet files root could always read. */
  as?: { uid: number; gid: number };
  timeoutMs?: number;
  /** Called with the child, e.g. to kill it midway. */
  onSpawn?: (pid: number) => void;
}

/** Tests keep this host's per-repository records (rollback detection) out of the real home folder. */
const STATE_DIR = mkdtempSync(join(tmpdir(), 'bulwark-test-state-'));
/** And their index caches out of ~/.cache; open to all, as tests also run the CLI as other users. */
export const CACHE_DIR = mkdtempSync(join(tmpdir(), 'bulwark-test-cache-'));
chmodSync(CACHE_DIR, 0o1777);
// Made once per test file (each file loads this module afresh): removed once the file is done. Registered
// at import, before the file's own hooks, so it runs after them (after-hooks run in reverse order).
afterAll(() => {
  for (const dir of [STATE_DIR, CACHE_DIR]) rmSync(dir, { recursive: true, force: true });
});

/**
 * Every runCli is awaited inside its own test, so a child still alive after the test is one the test
 * gave up on (it timed out or threw). Killed here, or it runs on and skews whatever runs next.
 */
const liveChildren = new Set<ChildProcess>();
afterEach(() => {
  for (const child of liveChildren) child.kill('SIGKILL');
  liveChildren.clear();
});

export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  if (!existsSync(`${ROOT}dist/cli/main.js`)) throw new Error("dist/ is missing: run 'npm run build' first (npm test does)");
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, BULWARK_STATE_DIR: STATE_DIR, BULWARK_CACHE_DIR: CACHE_DIR, ...opts.env })) if (v !== undefined) env[k] = v;
  const cmd = opts.as ? 'setpriv' : NODE;
  const argv = opts.as ? [`--reuid=${opts.as.uid}`, `--regid=${opts.as.gid}`, '--clear-groups', NODE, ...NODE_FLAGS, BIN, ...args] : [...NODE_FLAGS, BIN, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(child);
    if (child.pid !== undefined) opts.onSpawn?.(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

/** Parses the JSON lines a --json command printed and returns the final summary (or the only document). */
export function jsonResult<T = Record<string, unknown>>(r: CliResult): T {
  const docs = r.stdout
    .split('\n')
    .filter((l) => l.trim().startsWith('{') || l.trim().startsWith('['))
    .map((l) => JSON.parse(l) as T & { type?: string });
  const last = docs.filter((d) => (d as { type?: string }).type !== 'progress').pop();
  if (!last) throw new Error(`no JSON result in output:\n${r.stdout}\n${r.stderr}`);
  return last;
}

/** Runs the CLI and SIGKILLs it after `ms` unless it finished first; `killed` says which happened. */
export async function runCliKilledAfter(args: string[], ms: number, opts: CliOptions = {}): Promise<CliResult & { killed: boolean }> {
  let timer: NodeJS.Timeout | undefined;
  let killed = false;
  const r = await runCli(args, {
    ...opts,
    onSpawn: (pid) => {
      timer = setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
          killed = true;
        } catch {
          // already finished
        }
      }, ms);
    },
  });
  clearTimeout(timer);
  return { ...r, killed: killed && r.code === 128 };
}

/** A seeded pseudo-random integer source (0 ≤ n < bound), the same on every machine and run. */
export function seededInts(seed: number): (bound: number) => number {
  let x = seed;
  return (bound) => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x % bound;
  };
}

/** A long-running command (export, instant restore): started, waited on until its first JSON line, stopped by signal. */
export interface RunningCli<T> {
  ready: T;
  pid: number;
  output(): { stdout: string; stderr: string };
  /** Resolves with the exit code when the command ends by itself. */
  exited: Promise<number>;
  /** Sends the signal and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number>;
}

export async function startCli<T = Record<string, unknown>>(args: string[], opts: { env?: Record<string, string | undefined>; readyTimeoutMs?: number } = {}): Promise<RunningCli<T>> {
  if (!existsSync(`${ROOT}dist/cli/main.js`)) throw new Error("dist/ is missing: run 'npm run build' first (npm test does)");
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, BULWARK_STATE_DIR: STATE_DIR, BULWARK_CACHE_DIR: CACHE_DIR, ...opts.env })) if (v !== undefined) env[k] = v;
  const child = spawn(NODE, [BIN, ...args, '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const exited = new Promise<number>((resolve) => child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const ready = await new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`'bulwark ${args.join(' ')}' was not ready in time: ${stderr}`));
    }, opts.readyTimeoutMs ?? 60_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      const line = stdout.split('\n').find((l) => l.trim().startsWith('{'));
      if (line && stdout.includes('\n', stdout.indexOf(line))) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as T);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`'bulwark ${args.join(' ')}' exited (${code}) before it was ready: ${stderr}`));
    });
  });
  return {
    ready,
    pid: child.pid!,
    output: () => ({ stdout, stderr }),
    exited,
    stop: (signal: NodeJS.Signals = 'SIGTERM') => {
      child.kill(signal);
      return exited;
    },
  };
}
