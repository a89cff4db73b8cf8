// QEMU Machine Protocol client over a unix socket.
//
// Wire facts this relies on (QEMU docs/interop/qmp-spec): the server speaks first with a greeting,
// then accepts only `qmp_capabilities`; every message is one JSON object per line; a reply echoes
// the request's `id`, and events (no `id`) interleave with replies at any point. Replies can
// arrive in any order relative to other commands' replies once out-of-band execution is in play,
// so replies are matched by `id`, never by order.
//
// QEMU serves one client per monitor socket: a second client connects fine at the socket level but
// gets no greeting until the first leaves. That shows up here as a greeting timeout with a hint.
import { EventEmitter } from 'node:events';
import net from 'node:net';

import { BulwarkError, errnoCode } from '../../util/errors.js';

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

export interface QmpStatusInfo {
  running: boolean;
  status: string;
  singlestep?: boolean;
}

export interface QmpBlockInfo {
  device: string;
  qdev?: string;
  locked: boolean;
  removable: boolean;
  inserted?: {
    'node-name': string;
    file: string;
    drv: string;
    ro: boolean;
    image: { filename: string; format: string; 'virtual-size': number; 'dirty-flag'?: boolean };
    [key: string]: unknown;
  };
  'dirty-bitmaps'?: unknown[];
  [key: string]: unknown;
}

/** Commands whose arguments and results are typed here; anything else goes through the untyped overload. */
export interface QmpCommandMap {
  'query-status': { args: undefined; result: QmpStatusInfo };
  'query-block': { args: undefined; result: QmpBlockInfo[] };
  'query-version': { args: undefined; result: QmpGreeting['version'] };
  'query-name': { args: undefined; result: { name?: string } };
  stop: { args: undefined; result: Record<string, never> };
  cont: { args: undefined; result: Record<string, never> };
  quit: { args: undefined; result: Record<string, never> };
}

/** QEMU answered a command with an error reply. */
export class QmpError extends BulwarkError {
  /** QMP's error class, e.g. GenericError, CommandNotFound, DeviceNotFound. */
  readonly errorClass: string;
  readonly desc: string;
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super('protocol', `QMP command '${command}' failed: ${desc} (${errorClass})`);
    this.errorClass = errorClass;
    this.desc = desc;
    this.command = command;
  }
}

export interface QmpConnectOptions {
  /** Budget for connect + greeting + capabilities negotiation. Default 10 s. */
  timeoutMs?: number;
  /** Default per-command timeout for execute(). Default 30 s. */
  commandTimeoutMs?: number;
  /**
   * Keep trying this long when the monitor is busy (another client holds it: QEMU serves one at a
   * time) or not there yet (QEMU starting): each attempt gets `timeoutMs`. Default 0: one attempt.
   */
  retryForMs?: number;
}

export interface QmpExecuteOptions {
  timeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

type RawMessage = Record<string, unknown>;

// Events: 'event' (QmpEvent), 'close' (Error | undefined: why the connection ended, undefined after close()).
export class QmpClient extends EventEmitter {
  readonly socketPath: string;
  private greetingValue: QmpGreeting | undefined;
  private readonly socket: net.Socket;
  private readonly commandTimeoutMs: number;
  private readonly pending = new Map<string, Pending>();
  private nextId = 1;
  /** Prefix of request ids: an adopted connection must not answer to the ids its first owner used. */
  private idPrefix = '';
  /** Skip lines that are not JSON instead of failing: an adopted connection may start mid-message. */
  private lenient = false;
  private buffer = '';
  private closedReason: Error | undefined;
  private isClosed = false;
  private greetingWaiter: ((msg: RawMessage) => void) | undefined;

  private constructor(socketPath: string, socket: net.Socket, commandTimeoutMs: number) {
    super();
    this.socketPath = socketPath;
    this.socket = socket;
    this.commandTimeoutMs = commandTimeoutMs;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.shutdown(this.connectionError(err)));
    socket.on('close', () => this.shutdown(new BulwarkError('protocol', `QMP connection to '${socketPath}' closed`, { hint: 'QEMU may have exited or closed the monitor' })));
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const until = Date.now() + (opts.retryForMs ?? 0);
    for (let wait = 100; ; wait = Math.min(wait * 2, 2000)) {
      try {
        return await QmpClient.connectOnce(socketPath, opts);
      } catch (err) {
        // Only a monitor that is busy (no greeting, or its listen queue full: EAGAIN) or not
        // listening yet is worth another try.
        const cause = err instanceof BulwarkError ? (err.cause as NodeJS.ErrnoException | undefined) : undefined;
        const retriable = err instanceof BulwarkError && (err.code === 'timeout' || err.code === 'not-found' || cause?.code === 'ECONNREFUSED' || cause?.code === 'EAGAIN');
        if (!retriable || Date.now() + wait >= until) throw err;
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private static async connectOnce(socketPath: string, opts: QmpConnectOptions): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    const socket = await openSocket(socketPath, timeoutMs);
    const client = new QmpClient(socketPath, socket, opts.commandTimeoutMs ?? 30_000);
    try {
      const msg = await client.readGreeting(timeoutMs);
      const qmp = msg['QMP'];
      if (!isObject(qmp)) throw new BulwarkError('protocol', `'${socketPath}' did not greet like a QMP monitor`, { hint: 'is this the -qmp socket, not the guest agent or a serial port?' });
      client.greetingValue = qmp as unknown as QmpGreeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
      return client;
    } catch (err) {
      // The peer may never acknowledge a graceful close (a second client QEMU has not accepted).
      client.destroy();
      throw err;
    }
  }

  /**
   * Takes over a connection another process negotiated and handed down (a guardian's fd 3, see
   * socketForWatchdog): no greeting, no negotiation. The first owner may have died mid-message, so a
   * newline goes first to end any partial command, and unparsable lines (the tail of a message it was
   * reading) are skipped. Replies to the first owner's commands carry ids this client never uses.
   */
  static adopt(socket: net.Socket, label: string, opts: { commandTimeoutMs?: number } = {}): QmpClient {
    const client = new QmpClient(label, socket, opts.commandTimeoutMs ?? 10_000);
    client.idPrefix = 'adopted-';
    client.lenient = true;
    socket.write('\n');
    return client;
  }

  /**
   * The connection's file descriptor, for a watchdog process to inherit and take over if this
   * process dies. The watchdog must not read it while this client is in use.
   */
  socketForWatchdog(): number {
    // The descriptor number, not the socket object: spawn() stops reading a stream passed in stdio,
    // which would starve this client. Unix sockets always have one on the platforms we run on.
    const fd = (this.socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) throw new BulwarkError('failed', 'the QMP connection has no file descriptor to share');
    return fd;
  }

  /** What QEMU announced on connect (version, capabilities). */
  get greeting(): QmpGreeting {
    if (!this.greetingValue) throw new Error('QmpClient used before connect() finished');
    return this.greetingValue;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  execute<C extends keyof QmpCommandMap>(command: C, args?: QmpCommandMap[C]['args'], opts?: QmpExecuteOptions): Promise<QmpCommandMap[C]['result']>;
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: QmpExecuteOptions): Promise<T>;
  execute(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<unknown> {
    if (this.isClosed) {
      return Promise.reject(new BulwarkError('protocol', `cannot send QMP command '${command}': connection to '${this.socketPath}' is closed`, this.closedReason ? { cause: this.closedReason } : {}));
    }
    const id = `${this.idPrefix}${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    const message: RawMessage = { execute: command, id };
    if (args !== undefined) message['arguments'] = args;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // A reply that arrives later finds no pending entry and is dropped.
        this.pending.delete(id);
        reject(new BulwarkError('timeout', `QMP command '${command}' got no reply within ${timeoutMs} ms`, { hint: 'QEMU may be hung or busy (e.g. stuck on storage I/O)' }));
      }, timeoutMs);
      this.pending.set(id, { command, resolve, reject, timer });
      this.socket.write(JSON.stringify(message) + '\n');
    });
  }

  /**
   * Resolves with the next event named `name` that satisfies `predicate`. Only events arriving
   * after the call count, and QEMU often emits an event before the reply to the command that
   * caused it: create the promise before executing that command.
   */
  waitForEvent(name: string, predicate: (e: QmpEvent) => boolean = () => true, timeoutMs = this.commandTimeoutMs): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (e: QmpEvent): void => {
        if (e.event !== name) return;
        let matched: boolean;
        try {
          matched = predicate(e);
        } catch (err) {
          cleanup();
          reject(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        if (!matched) return;
        cleanup();
        resolve(e);
      };
      const onClose = (reason: Error | undefined): void => {
        cleanup();
        reject(new BulwarkError('protocol', `QMP connection closed while waiting for event ${name}`, reason ? { cause: reason } : {}));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new BulwarkError('timeout', `QMP event ${name} did not arrive within ${timeoutMs} ms`));
      }, timeoutMs);
      if (this.isClosed) {
        onClose(this.closedReason);
        return;
      }
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Ends the connection; pending commands reject. Resolves once the socket is closed. */
  async close(): Promise<void> {
    if (this.isClosed && this.socket.destroyed) return;
    const closed = new Promise<void>((resolve) => {
      if (this.socket.destroyed) resolve();
      else this.socket.once('close', () => resolve());
    });
    this.shutdown(undefined);
    this.socket.end();
    // A peer that never acknowledges the FIN must not hold us: give it a moment, then cut.
    const timer = setTimeout(() => this.socket.destroy(), 1000);
    await closed;
    clearTimeout(timer);
  }

  private readGreeting(timeoutMs: number): Promise<RawMessage> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        this.off('close', onClose);
        reject(new BulwarkError('timeout', `no QMP greeting on '${this.socketPath}' within ${timeoutMs} ms`, {
          hint: 'QEMU serves one client per QMP socket: another client may be connected (or QEMU is hung)',
        }));
      }, timeoutMs);
      const onClose = (reason: Error | undefined): void => {
        clearTimeout(timer);
        this.greetingWaiter = undefined;
        reject(reason ?? new BulwarkError('protocol', `QMP connection to '${this.socketPath}' closed before the greeting`));
      };
      this.once('close', onClose);
      this.greetingWaiter = (msg) => {
        clearTimeout(timer);
        this.off('close', onClose);
        this.greetingWaiter = undefined;
        resolve(msg);
      };
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line === '') continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch (err) {
        if (this.lenient) continue;
        this.socket.destroy();
        this.shutdown(new BulwarkError('protocol', `QMP peer '${this.socketPath}' sent a line that is not JSON: ${line.slice(0, 200)}`, { cause: err }));
        return;
      }
      if (isObject(msg)) this.dispatch(msg);
    }
  }

  private dispatch(msg: RawMessage): void {
    if (this.greetingWaiter) {
      this.greetingWaiter(msg);
      return;
    }
    if (typeof msg['event'] === 'string') {
      const event: QmpEvent = {
        event: msg['event'],
        data: isObject(msg['data']) ? msg['data'] : {},
        timestamp: isObject(msg['timestamp']) ? (msg['timestamp'] as QmpEvent['timestamp']) : { seconds: 0, microseconds: 0 },
      };
      this.emit('event', event);
      return;
    }
    const id = msg['id'];
    const pending = typeof id === 'string' ? this.pending.get(id) : undefined;
    // Replies without a known id: to a command that already timed out, or to a malformed request
    // (QEMU cannot echo an id it could not parse). Neither belongs to a waiting caller.
    if (!pending || typeof id !== 'string') return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if ('return' in msg) {
      pending.resolve(msg['return']);
    } else if (isObject(msg['error'])) {
      const e = msg['error'];
      pending.reject(new QmpError(pending.command, String(e['class'] ?? 'GenericError'), String(e['desc'] ?? 'no description')));
    } else {
      pending.reject(new BulwarkError('protocol', `QMP reply to '${pending.command}' has neither return nor error: ${JSON.stringify(msg).slice(0, 200)}`));
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
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new BulwarkError('protocol', `QMP command '${p.command}' got no reply: ${reason ? reason.message : 'the client closed the connection'}`, reason ? { cause: reason, hint: (reason as BulwarkError).hint } : {}));
    }
    this.emit('close', reason);
  }

  private connectionError(err: Error): BulwarkError {
    return new BulwarkError('io', `QMP connection to '${this.socketPath}' failed: ${err.message}`, { cause: err });
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Opens a unix socket with errors a person can act on; shared with the guest agent client. */
export function openSocket(socketPath: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path: socketPath });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new BulwarkError('timeout', `connecting to '${socketPath}' took longer than ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      socket.destroy();
      const code = errnoCode(err);
      if (code === 'ENOENT') {
        reject(new BulwarkError('not-found', `no socket at '${socketPath}'`, { cause: err, hint: 'is the VM running, and is this the path given to QEMU?' }));
      } else if (code === 'ECONNREFUSED') {
        reject(new BulwarkError('io', `nothing listens on '${socketPath}'`, { cause: err, hint: 'the VM may have exited and left its socket file behind' }));
      } else {
        reject(new BulwarkError('io', `cannot connect to '${socketPath}': ${err.message}`, { cause: err }));
      }
    });
  });
}
