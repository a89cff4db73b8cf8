// QEMU guest agent client over the host end of its virtio-serial channel (a unix socket).
//
// The channel is a byte pipe with no framing and no request ids, so:
// - The pipe may hold bytes from an earlier client (or a reply to a command that timed out). Every
//   session, and every call after a timeout, first runs `guest-sync-delimited`: we send 0xFF (which
//   resets the agent's JSON parser) and a random id; the agent answers 0xFF then {"return": id}.
//   Everything before that 0xFF is stale and dropped; a delimited reply with another id is stale too.
// - Replies come in request order, so calls are serialised: one command on the wire at a time.
// - A hung agent (stopped vCPUs, a guest under memory pressure) must never hang us: every call has
//   a timeout and rejects with code 'timeout'. The command may still run in the guest later; after
//   a timed-out freeze, the guest may be frozen, so callers thaw in `finally`.
// - The channel serves one client at a time (QEMU's socket chardev): hold the client only as long
//   as needed, and let whoever froze be whoever thaws.
import { randomInt } from 'node:crypto';
import type net from 'node:net';

import { BulwarkError } from '../../util/errors.js';
import { openSocket } from '../qmp/client.js';

export interface QgaCallOptions {
  timeoutMs?: number;
}

export interface QgaConnectOptions {
  /** Budget for connecting and the first guest-sync-delimited. Default 10 s. */
  timeoutMs?: number;
  /** Default timeout of each call. Default 10 s. */
  commandTimeoutMs?: number;
}

export interface QgaInfo {
  version: string;
  commands: { name: string; enabled: boolean; successResponse: boolean }[];
}

export type FsfreezeStatus = 'thawed' | 'frozen';

export interface QgaDisk {
  dev?: string;
  busType: string;
  bus: number;
  target: number;
  unit: number;
  serial?: string;
}

export interface QgaFilesystem {
  name: string;
  mountpoint: string;
  type: string;
  usedBytes?: number;
  totalBytes?: number;
  disks: QgaDisk[];
}

/** The agent answered with an error reply (e.g. a command disabled while frozen). */
export class QgaError extends BulwarkError {
  readonly errorClass: string;
  readonly desc: string;
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super('protocol', `guest agent command '${command}' failed: ${desc} (${errorClass})`);
    this.errorClass = errorClass;
    this.desc = desc;
    this.command = command;
  }
}

const DELIMITER = 0xff;

interface Waiter {
  mode: 'sync' | 'reply';
  command: string;
  syncId?: number;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

export class QgaClient {
  readonly socketPath: string;
  private readonly socket: net.Socket;
  private readonly commandTimeoutMs: number;
  private buffer: Buffer = Buffer.alloc(0);
  private waiter: Waiter | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private needsSync = true;
  private closedReason: Error | undefined;
  private isClosed = false;

  private constructor(socketPath: string, socket: net.Socket, commandTimeoutMs: number) {
    this.socketPath = socketPath;
    this.socket = socket;
    this.commandTimeoutMs = commandTimeoutMs;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      this.pump();
    });
    socket.on('error', (err) => this.shutdown(new BulwarkError('io', `guest agent connection '${socketPath}' failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.shutdown(new BulwarkError('protocol', `guest agent connection '${socketPath}' closed`, { hint: 'QEMU may have exited' })));
  }

  /** Connects and synchronises (guest-sync-delimited). */
  static async connect(socketPath: string, opts: QgaConnectOptions = {}): Promise<QgaClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const socket = await openSocket(socketPath, timeoutMs);
    const client = new QgaClient(socketPath, socket, opts.commandTimeoutMs ?? 10_000);
    try {
      await client.sync({ timeoutMs: Math.max(1, deadline - Date.now()) });
      return client;
    } catch (err) {
      // The peer may never acknowledge a graceful close (a hung agent, a second client).
      client.destroy();
      throw err;
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Drops whatever stale bytes the channel holds; done automatically when needed. */
  sync(opts: QgaCallOptions = {}): Promise<void> {
    return this.serialise(async (deadline) => {
      await this.doSync(deadline);
    }, opts);
  }

  async ping(opts: QgaCallOptions = {}): Promise<void> {
    await this.execute('guest-ping', undefined, opts);
  }

  async info(opts: QgaCallOptions = {}): Promise<QgaInfo> {
    const raw = await this.execute<{ version: string; supported_commands: { name: string; enabled: boolean; 'success-response': boolean }[] }>('guest-info', undefined, opts);
    return {
      version: raw.version,
      commands: raw.supported_commands.map((c) => ({ name: c.name, enabled: c.enabled, successResponse: c['success-response'] })),
    };
  }

  fsfreezeStatus(opts: QgaCallOptions = {}): Promise<FsfreezeStatus> {
    return this.execute<FsfreezeStatus>('guest-fsfreeze-status', undefined, opts);
  }

  /** Runs the guest's freeze hooks, then freezes; resolves with the number of filesystems frozen. */
  fsfreezeFreeze(opts: QgaCallOptions = {}): Promise<number> {
    return this.execute<number>('guest-fsfreeze-freeze', undefined, opts);
  }

  /** Thaws, then runs the thaw hooks; resolves with the number of filesystems thawed. */
  fsfreezeThaw(opts: QgaCallOptions = {}): Promise<number> {
    return this.execute<number>('guest-fsfreeze-thaw', undefined, opts);
  }

  async getFsinfo(opts: QgaCallOptions = {}): Promise<QgaFilesystem[]> {
    type RawDisk = { dev?: string; 'bus-type': string; bus: number; target: number; unit: number; serial?: string };
    type RawFs = { name: string; mountpoint: string; type: string; 'used-bytes'?: number; 'total-bytes'?: number; disk: RawDisk[] };
    const raw = await this.execute<RawFs[]>('guest-get-fsinfo', undefined, opts);
    return raw.map((fs) => ({
      name: fs.name,
      mountpoint: fs.mountpoint,
      type: fs.type,
      ...(fs['used-bytes'] !== undefined ? { usedBytes: fs['used-bytes'] } : {}),
      ...(fs['total-bytes'] !== undefined ? { totalBytes: fs['total-bytes'] } : {}),
      disks: fs.disk.map((d) => ({
        ...(d.dev !== undefined ? { dev: d.dev } : {}),
        busType: d['bus-type'],
        bus: d.bus,
        target: d.target,
        unit: d.unit,
        ...(d.serial !== undefined ? { serial: d.serial } : {}),
      })),
    }));
  }

  /**
   * Reads a whole file from the guest (guest-file-open/read/close). Refused by the agent while
   * the guest is frozen. The timeout covers the whole transfer.
   */
  async readFile(path: string, opts: QgaCallOptions = {}): Promise<Buffer> {
    const deadline = Date.now() + (opts.timeoutMs ?? this.commandTimeoutMs);
    const left = (): QgaCallOptions => ({ timeoutMs: Math.max(1, deadline - Date.now()) });
    const handle = await this.execute<number>('guest-file-open', { path, mode: 'r' }, left());
    const parts: Buffer[] = [];
    try {
      for (;;) {
        const r = await this.execute<{ count: number; 'buf-b64': string; eof: boolean }>('guest-file-read', { handle, count: 1 << 20 }, left());
        parts.push(Buffer.from(r['buf-b64'], 'base64'));
        if (r.eof || r.count === 0) break;
      }
    } finally {
      await this.execute('guest-file-close', { handle }, left()).catch(() => undefined);
    }
    return Buffer.concat(parts);
  }

  /**
   * Asks the guest to shut down (guest-shutdown). The agent does not answer a request it carries out,
   * so silence for `waitMs` is success; an error reply (e.g. the command is disabled) is thrown.
   */
  requestShutdown(mode: 'powerdown' | 'halt' | 'reboot' = 'powerdown', waitMs = 1000): Promise<void> {
    return this.serialise(async (deadline) => {
      if (this.needsSync) await this.doSync(deadline);
      const payload = JSON.stringify({ execute: 'guest-shutdown', arguments: { mode } }) + '\n';
      try {
        await this.await({ mode: 'reply', command: 'guest-shutdown' }, payload, Math.min(deadline, Date.now() + waitMs));
      } catch (err) {
        if (err instanceof BulwarkError && err.code === 'timeout') return;
        throw err;
      }
    }, {});
  }

  /** Any agent command. Commands without a reply (guest-shutdown, guest-suspend-*) are not supported here. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QgaCallOptions = {}): Promise<T> {
    return this.serialise(async (deadline) => {
      if (this.needsSync) await this.doSync(deadline);
      const message: Record<string, unknown> = { execute: command };
      if (args !== undefined) message['arguments'] = args;
      const reply = await this.await({ mode: 'reply', command }, JSON.stringify(message) + '\n', deadline);
      return reply as T;
    }, opts);
  }

  async close(): Promise<void> {
    if (this.socket.destroyed) {
      this.shutdown(undefined);
      return;
    }
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.shutdown(undefined);
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), 1000);
    await closed;
    clearTimeout(timer);
  }

  private serialise<T>(fn: (deadline: number) => Promise<T>, opts: QgaCallOptions): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    // The timeout runs from the call, not from when the queue reaches it: a caller's budget
    // includes waiting behind a hung command.
    const deadline = Date.now() + timeoutMs;
    const run = this.queue.then(() => fn(deadline));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async doSync(deadline: number): Promise<void> {
    this.needsSync = true;
    // 31 bits: the agent parses the id as an int.
    const id = randomInt(1, 2 ** 31 - 1);
    const payload = Buffer.concat([Buffer.from([DELIMITER]), Buffer.from(JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } }) + '\n')]);
    await this.await({ mode: 'sync', command: 'guest-sync-delimited', syncId: id }, payload, deadline);
    this.needsSync = false;
  }

  private await(w: Omit<Waiter, 'resolve' | 'reject'>, payload: string | Buffer, deadline: number): Promise<unknown> {
    const command = w.command;
    if (this.isClosed) {
      return Promise.reject(new BulwarkError('protocol', `cannot send '${command}': guest agent connection '${this.socketPath}' is closed`, this.closedReason ? { cause: this.closedReason } : {}));
    }
    const timedOut = (): BulwarkError =>
      new BulwarkError('timeout', `guest agent did not answer '${command}' in time`, { hint: 'the guest may be paused, overloaded, or its agent not running' });
    const remaining = deadline - Date.now();
    // Budget spent queueing behind a slow call: fail without putting a command on the wire.
    if (remaining <= 0) return Promise.reject(timedOut());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.waiter !== waiter) return;
        this.waiter = undefined;
        // The reply may still come; the next call resynchronises past it.
        this.needsSync = true;
        reject(timedOut());
      }, remaining);
      const waiter: Waiter = {
        ...w,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          if (!(e instanceof QgaError)) this.needsSync = true;
          reject(e);
        },
      };
      this.waiter = waiter;
      this.socket.write(payload);
      this.pump();
    });
  }

  private pump(): void {
    for (;;) {
      const w = this.waiter;
      if (!w) return;
      if (w.mode === 'sync') {
        const at = this.buffer.indexOf(DELIMITER);
        if (at < 0) {
          this.buffer = Buffer.alloc(0);
          return;
        }
        const nl = this.buffer.indexOf(0x0a, at + 1);
        if (nl < 0) {
          this.buffer = this.buffer.subarray(at);
          return;
        }
        const text = this.buffer.subarray(at + 1, nl).toString('utf8');
        this.buffer = this.buffer.subarray(nl + 1);
        let msg: unknown;
        try {
          msg = JSON.parse(text);
        } catch {
          continue;
        }
        if (isObject(msg) && msg['return'] === w.syncId) {
          this.waiter = undefined;
          w.resolve(undefined);
        }
        continue;
      }
      const nl = this.buffer.indexOf(0x0a);
      if (nl < 0) return;
      const line = this.buffer.subarray(0, nl).toString('utf8').trim();
      this.buffer = this.buffer.subarray(nl + 1);
      if (line === '') continue;
      this.waiter = undefined;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch (err) {
        w.reject(new BulwarkError('protocol', `guest agent sent a line that is not JSON: ${line.slice(0, 200)}`, { cause: err }));
        continue;
      }
      if (isObject(msg) && 'return' in msg) {
        w.resolve(msg['return']);
      } else if (isObject(msg) && isObject(msg['error'])) {
        const e = msg['error'];
        w.reject(new QgaError(w.command, String(e['class'] ?? 'GenericError'), String(e['desc'] ?? 'no description')));
      } else {
        w.reject(new BulwarkError('protocol', `unexpected guest agent reply: ${line.slice(0, 200)}`));
      }
    }
  }

  private destroy(): void {
    this.shutdown(undefined);
    this.socket.destroy();
  }

  private shutdown(reason: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedReason = reason;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(new BulwarkError('protocol', `guest agent gave no reply: ${reason ? reason.message : 'the client closed the connection'}`, reason ? { cause: reason } : {}));
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
