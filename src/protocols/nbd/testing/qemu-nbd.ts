// Test helpers around QEMU's command-line tools: images made with qemu-img, written with qemu-io,
// exported by a qemu-nbd this process owns (and must stop).
//
//   await qemuImg('create', '-f', 'qcow2', img, '8M');
//   await qemuIo(img, 'qcow2', 'write -P 0xab 1M 64k');
//   const server = await startQemuNbd({ image: img, format: 'qcow2', socket: `${dir}/nbd.sock` });
//   try { ... NbdClient.connect({ path: server.socket }, { exportName: server.exportName }) ... }
//   finally { await server.stop(); }
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const exec = promisify(execFile);

export async function qemuImg(...args: string[]): Promise<string> {
  const { stdout } = await exec('qemu-img', args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** Runs qemu-io commands (e.g. 'write -P 0xab 1M 64k', 'write -s file 0 4k') against an image, in order. */
export async function qemuIo(image: string, format: 'qcow2' | 'raw', ...commands: string[]): Promise<void> {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  args.push(image);
  const { stdout } = await exec('qemu-io', args);
  // qemu-io reports command failures on stdout and still exits 0.
  if (/error|failed|cannot|invalid/i.test(stdout)) throw new Error(`qemu-io ${commands.join('; ')}: ${stdout.trim()}`);
}

export interface QemuNbdOptions {
  image: string;
  format: 'qcow2' | 'raw';
  socket?: string;
  /** Listen on 127.0.0.1:port instead of a unix socket. */
  tcpPort?: number;
  exportName?: string;
  /** Exported dirty bitmaps (-B). */
  bitmaps?: string[];
  /** Default 8 concurrent clients. */
  shared?: number;
}

export interface QemuNbdServer {
  socket: string | undefined;
  tcpPort: number | undefined;
  exportName: string;
  pid: number;
  /** SIGSTOP: the server stops answering but keeps its sockets open. */
  freeze(): void;
  /** SIGKILL, then waits for the exit. */
  kill(): Promise<void>;
  /** Stops the server (SIGTERM, SIGKILL if it lingers) and waits for the exit. Idempotent. */
  stop(): Promise<void>;
}

export async function startQemuNbd(opts: QemuNbdOptions): Promise<QemuNbdServer> {
  const exportName = opts.exportName ?? 'vda';
  const args = [`--format=${opts.format}`, '--read-only', '--persistent', `--shared=${opts.shared ?? 8}`, `--export-name=${exportName}`];
  if (opts.socket) args.push(`--socket=${opts.socket}`);
  else if (opts.tcpPort) args.push('--bind=127.0.0.1', `--port=${opts.tcpPort}`);
  else throw new Error('startQemuNbd needs socket or tcpPort');
  for (const b of opts.bitmaps ?? []) args.push(`--bitmap=${b}`);
  args.push(opts.image);
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const server: QemuNbdServer = {
    socket: opts.socket,
    tcpPort: opts.tcpPort,
    exportName,
    pid: child.pid ?? -1,
    freeze: () => void child.kill('SIGSTOP'),
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      // A frozen server only dies by SIGKILL.
      child.kill('SIGCONT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
  try {
    await waitReady(child, opts);
  } catch (err) {
    await server.kill();
    throw new Error(`qemu-nbd did not start: ${err instanceof Error ? err.message : String(err)}; stderr: ${stderr.trim()}`, { cause: err });
  }
  return server;
}

async function waitReady(child: ChildProcess, opts: QemuNbdOptions): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`exited (${child.exitCode ?? child.signalCode})`);
    // The socket file appears at bind(), a moment before listen(): only a connection proves readiness.
    if (await canConnect(opts)) return;
    await sleep(20);
  }
  throw new Error('not listening after 10 s');
}

function canConnect(opts: QemuNbdOptions): Promise<boolean> {
  return new Promise((resolve) => {
    const s = opts.socket ? net.createConnection({ path: opts.socket }) : net.createConnection({ host: '127.0.0.1', port: opts.tcpPort as number });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
