// libvirt's own RPC protocol over its UNIX socket, as virsh speaks it (libvirt's docs: "libvirt RPC
// infrastructure"; procedure numbers and argument layouts from its remote_protocol.x).
//
// Wire facts this relies on:
// - A message is a 4-byte big-endian length (counting itself), a 24-byte header (program, version,
//   procedure, type, serial, status), then the XDR payload. Replies carry the call's serial;
//   events (type MESSAGE) and keepalive pings may come in between, and are matched by nothing here
//   except the ping, which is answered.
// - A reply with status ERROR carries a remote_error instead of the procedure's return value.
// - Before CONNECT_OPEN the client authenticates: AUTH_LIST says which methods the socket wants; on
//   a UNIX socket that is none, or polkit, which the daemon decides from the peer's credentials.
// - libvirt serves many calls at once on one connection; calls are matched by serial, not order.
import net from 'node:net';
import { BulwarkError } from '../../util/errors.js';
import { XdrReader, XdrWriter } from './xdr.js';

export const REMOTE_PROGRAM = 0x20008086;
export const QEMU_PROGRAM = 0x20008087;
const KEEPALIVE_PROGRAM = 0x6b656570;
const PROTOCOL_VERSION = 1;
const HEADER = 24;
/** libvirt's own ceiling for a message is 32 MiB; anything claiming more is not libvirt. */
const MESSAGE_MAX = 32 * 1024 * 1024 + HEADER + 4;

const enum MessageType {
  Call = 0,
  Reply = 1,
  Message = 2,
}
const enum Status {
  Ok = 0,
  Error = 1,
}
const PROC_CONNECT_OPEN = 1;
const PROC_CONNECT_CLOSE = 2;
const PROC_AUTH_LIST = 66;
const PROC_AUTH_POLKIT = 70;
const AUTH_NONE = 0;
const AUTH_POLKIT = 2;

/** libvirt answered a call with an error (its virErrorNumber in `libvirtCode`). */
export class LibvirtError extends BulwarkError {
  constructor(
    readonly procedure: number,
    readonly libvirtCode: number,
    readonly libvirtDomain: number,
    readonly desc: string,
  ) {
    super(libvirtCode === 42 || libvirtCode === 101 ? 'not-found' : 'protocol', `libvirt: ${desc}`);
  }
}

export interface LibvirtConnectOptions {
  /** The UNIX socket of the daemon (libvirtd or virtqemud). */
  socket: string;
  /** The URI handed to the daemon's CONNECT_OPEN, e.g. qemu:///system. */
  uri: string;
  timeoutMs?: number;
  callTimeoutMs?: number;
}

interface Pending {
  procedure: number;
  resolve(r: XdrReader): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

function readError(procedure: number, r: XdrReader): LibvirtError {
  const code = r.int();
  const domain = r.int();
  const message = r.optString() ?? `error ${code}`;
  return new LibvirtError(procedure, code, domain, message);
}

export class LibvirtClient {
  private serial = 1;
  private readonly pending = new Map<number, Pending>();
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private closedReason: Error | undefined;

  private constructor(
    private readonly socket: net.Socket,
    readonly uri: string,
    private readonly callTimeoutMs: number,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new BulwarkError('io', `libvirt connection failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new BulwarkError('protocol', 'libvirt closed the connection', { hint: 'is libvirtd (or virtqemud) still running?' })));
  }

  /** Connects, authenticates and opens `uri`. */
  static async connect(opts: LibvirtConnectOptions): Promise<LibvirtClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection({ path: opts.socket });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new BulwarkError('timeout', `connecting to libvirt at '${opts.socket}' took longer than ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const hint = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'is libvirtd (or virtqemud) running? Start it, or name its socket with qemu+unix:///system?socket=PATH' : err.code === 'EACCES' ? 'run as root, or as a member of the libvirt group' : undefined;
        reject(new BulwarkError(err.code === 'ENOENT' ? 'not-found' : 'io', `cannot connect to libvirt at '${opts.socket}': ${err.message}`, { cause: err, ...(hint ? { hint } : {}) }));
      });
    });
    const client = new LibvirtClient(socket, opts.uri, opts.callTimeoutMs ?? 60_000);
    try {
      const methods = (await client.call(PROC_AUTH_LIST, Buffer.alloc(0), { timeoutMs })).array((r) => r.int(), 20);
      if (!methods.includes(AUTH_NONE)) {
        if (!methods.includes(AUTH_POLKIT)) {
          throw new BulwarkError('failed', `libvirt at '${opts.socket}' asks for SASL authentication, which Bulwark does not speak`, { hint: 'use the local UNIX socket (auth_unix_rw = "none" or "polkit" in libvirtd.conf)' });
        }
        const complete = (await client.call(PROC_AUTH_POLKIT, Buffer.alloc(0), { timeoutMs })).int();
        if (!complete) throw new BulwarkError('failed', 'libvirt refused the connection (polkit)', { hint: 'run as root, or as a user polkit allows to manage VMs' });
      }
      await client.call(PROC_CONNECT_OPEN, new XdrWriter().optString(opts.uri).uint(0).toBuffer(), { timeoutMs });
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** One call; resolves with a reader over the return value. */
  call(procedure: number, args: Buffer, opts: { program?: number; timeoutMs?: number } = {}): Promise<XdrReader> {
    if (this.closedReason) return Promise.reject(this.closedReason);
    const serial = this.serial++;
    const header = new XdrWriter()
      .uint(HEADER + 4 + args.length)
      .uint(opts.program ?? REMOTE_PROGRAM)
      .uint(PROTOCOL_VERSION)
      .int(procedure)
      .int(MessageType.Call)
      .uint(serial)
      .int(Status.Ok)
      .toBuffer();
    const timeoutMs = opts.timeoutMs ?? this.callTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(serial);
        reject(new BulwarkError('timeout', `libvirt did not answer procedure ${procedure} within ${timeoutMs} ms`, { hint: 'the daemon may be busy or hung (a VM stuck on storage I/O)' }));
      }, timeoutMs);
      this.pending.set(serial, { procedure, resolve, reject, timer });
      this.socket.write(Buffer.concat([header, args]));
    });
  }

  async close(): Promise<void> {
    if (!this.closedReason) await this.call(PROC_CONNECT_CLOSE, Buffer.alloc(0), { timeoutMs: 2000 }).catch(() => undefined);
    this.fail(new BulwarkError('protocol', 'the libvirt connection is closed'));
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.length;
    for (;;) {
      if (this.bufferedBytes < 4) return;
      const all = this.buffered.length === 1 ? this.buffered[0]! : Buffer.concat(this.buffered, this.bufferedBytes);
      const len = all.readUInt32BE(0);
      if (len < HEADER + 4 || len > MESSAGE_MAX) {
        this.socket.destroy();
        this.fail(new BulwarkError('protocol', `libvirt sent a message of ${len} bytes, which cannot be one`));
        return;
      }
      if (all.length < len) {
        this.buffered = [all];
        return;
      }
      const msg = all.subarray(4, len);
      const rest = all.subarray(len);
      this.buffered = rest.length ? [rest] : [];
      this.bufferedBytes = rest.length;
      this.dispatch(msg);
    }
  }

  private dispatch(msg: Buffer): void {
    const r = new XdrReader(msg);
    const program = r.uint();
    r.uint();
    const procedure = r.int();
    const type = r.int();
    const serial = r.uint();
    const status = r.int();
    if (program === KEEPALIVE_PROGRAM) {
      // PING (1) is answered with PONG (2); nothing else of keepalive needs an answer.
      if (procedure === 1) this.socket.write(new XdrWriter().uint(HEADER + 4).uint(KEEPALIVE_PROGRAM).uint(1).int(2).int(MessageType.Message).uint(0).int(Status.Ok).toBuffer());
      return;
    }
    if (type !== MessageType.Reply) return;
    const p = this.pending.get(serial);
    if (!p) return;
    this.pending.delete(serial);
    clearTimeout(p.timer);
    try {
      if (status === Status.Error) p.reject(readError(p.procedure, r));
      else p.resolve(r);
    } catch (err) {
      p.reject(err as Error);
    }
  }

  private fail(reason: Error): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    for (const [serial, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(serial);
      p.reject(reason);
    }
  }
}
