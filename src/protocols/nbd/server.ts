// NBD server (NetworkBlockDevice/nbd doc/proto.md), fixed newstyle only: serves disks of restore points
// to QEMU, qemu-img, nbdcopy or the kernel (instant restore, verify-boot, `bulwark export`).
//
// What it speaks: NBD_OPT_GO/INFO/EXPORT_NAME/LIST/ABORT, structured replies, the base:allocation
// meta context (holes are reported, so a reader skips them), READ with OFFSET_HOLE chunks, BLOCK_STATUS,
// FLUSH, DISC, and — when the export is writable — WRITE, WRITE_ZEROES and TRIM. Several clients at
// once, each with requests served concurrently; a reply is written whole (each chunk in one write), so
// replies of different requests never interleave inside a chunk.
//
// The client is distrusted like any input: option and request lengths are bounded, a request outside
// the export is answered EINVAL, an unknown magic closes the connection.
import net from 'node:net';
import { BulwarkError } from '../../util/errors.js';
import * as C from './constants.js';

/** One export's disk, as the server reads and (writable) writes it. */
export interface NbdBackend {
  readonly size: number;
  readonly writable: boolean;
  read(buf: Buffer, offset: number): Promise<void>;
  /** Extents covering [offset, offset + length) in order: NBD_STATE_HOLE | NBD_STATE_ZERO for holes. */
  blockStatus(offset: number, length: number): Promise<{ length: number; flags: number }[]>;
  write?(data: Buffer, offset: number): Promise<void>;
  writeZeroes?(offset: number, length: number): Promise<void>;
  flush?(): Promise<void>;
}

const MAX_OPTION = 64 * 1024;
const MAX_REQUEST = 32 * 1024 * 1024;
const BASE_ALLOCATION_ID = 1;

export type NbdListen = { path: string } | { host: string; port: number };

/** Reads exact byte counts from a socket, in order. */
class SocketReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  constructor(socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.pump();
    });
    const end = (): void => {
      this.ended ??= new Error('the client went away');
      this.pump();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  private pump(): void {
    const w = this.waiting;
    if (!w) return;
    if (this.have >= w.n) {
      this.waiting = undefined;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      const out = all.subarray(0, w.n);
      const rest = all.subarray(w.n);
      this.chunks = rest.length ? [rest] : [];
      this.have = rest.length;
      w.resolve(out);
    } else if (this.ended) {
      this.waiting = undefined;
      w.reject(this.ended);
    }
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiting = { n, resolve, reject };
      this.pump();
    });
  }
}

class Connection {
  private readonly in: SocketReader;
  private structured = false;
  private baseAllocation = false;
  private noZeroes = false;
  private inFlight = new Set<Promise<void>>();

  constructor(
    private readonly socket: net.Socket,
    private readonly exports: Map<string, NbdBackend>,
    private readonly log: (message: string) => void,
  ) {
    this.in = new SocketReader(socket);
    socket.setNoDelay(true);
  }

  async serve(): Promise<void> {
    try {
      const hello = Buffer.alloc(18);
      hello.writeBigUInt64BE(C.NBDMAGIC, 0);
      hello.writeBigUInt64BE(C.IHAVEOPT, 8);
      hello.writeUInt16BE(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES, 16);
      this.socket.write(hello);
      const clientFlags = (await this.in.read(4)).readUInt32BE(0);
      if (!(clientFlags & C.NBD_FLAG_C_FIXED_NEWSTYLE)) throw new Error('the client does not speak fixed newstyle negotiation');
      this.noZeroes = (clientFlags & C.NBD_FLAG_C_NO_ZEROES) !== 0;
      const backend = await this.negotiate();
      if (!backend) return;
      await this.transmit(backend);
    } catch (err) {
      if (!/went away/.test((err as Error).message)) this.log(`NBD client: ${(err as Error).message}`);
    } finally {
      await Promise.allSettled([...this.inFlight]);
      this.socket.end();
    }
  }

  private reply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(C.OPTION_REPLY_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type >>> 0, 12);
    h.writeUInt32BE(data.length, 16);
    this.socket.write(Buffer.concat([h, data]));
  }

  private exportInfo(b: NbdBackend): Buffer {
    const info = Buffer.alloc(12);
    info.writeUInt16BE(C.NBD_INFO_EXPORT, 0);
    info.writeBigUInt64BE(BigInt(b.size), 2);
    info.writeUInt16BE(this.transmissionFlags(b), 10);
    return info;
  }

  private transmissionFlags(b: NbdBackend): number {
    let f = C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_SEND_FLUSH | C.NBD_FLAG_SEND_DF | C.NBD_FLAG_CAN_MULTI_CONN;
    if (!b.writable) f |= C.NBD_FLAG_READ_ONLY;
    else f |= C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_FUA;
    return f;
  }

  /** Option haggling; resolves with the export chosen, or undefined when the client left. */
  private async negotiate(): Promise<NbdBackend | undefined> {
    for (;;) {
      const h = await this.in.read(16);
      if (h.readBigUInt64BE(0) !== C.IHAVEOPT) throw new Error('bad option magic');
      const option = h.readUInt32BE(8);
      const length = h.readUInt32BE(12);
      if (length > MAX_OPTION) throw new Error(`option data of ${length} bytes`);
      const data = await this.in.read(length);
      switch (option) {
        case C.NBD_OPT_EXPORT_NAME: {
          const b = this.exports.get(data.toString('utf8'));
          if (!b) throw new Error(`no export '${data.toString('utf8')}'`);
          const out = Buffer.alloc(this.noZeroes ? 10 : 134);
          out.writeBigUInt64BE(BigInt(b.size), 0);
          out.writeUInt16BE(this.transmissionFlags(b), 8);
          this.socket.write(out);
          return b;
        }
        case C.NBD_OPT_ABORT:
          this.reply(option, C.NBD_REP_ACK);
          return undefined;
        case C.NBD_OPT_LIST:
          for (const name of this.exports.keys()) {
            const n = Buffer.from(name, 'utf8');
            const d = Buffer.alloc(4 + n.length);
            d.writeUInt32BE(n.length, 0);
            n.copy(d, 4);
            this.reply(option, C.NBD_REP_SERVER, d);
          }
          this.reply(option, C.NBD_REP_ACK);
          break;
        case C.NBD_OPT_STRUCTURED_REPLY:
          if (length !== 0) this.reply(option, C.NBD_REP_ERR_INVALID);
          else {
            this.structured = true;
            this.reply(option, C.NBD_REP_ACK);
          }
          break;
        case C.NBD_OPT_LIST_META_CONTEXT:
        case C.NBD_OPT_SET_META_CONTEXT: {
          const q = this.parseMetaQuery(data);
          if (!q || (option === C.NBD_OPT_SET_META_CONTEXT && !this.structured)) {
            this.reply(option, C.NBD_REP_ERR_INVALID);
            break;
          }
          if (!this.exports.has(q.name)) {
            this.reply(option, C.NBD_REP_ERR_UNKNOWN);
            break;
          }
          if (option === C.NBD_OPT_SET_META_CONTEXT) this.baseAllocation = false;
          const wants = q.queries.length === 0 ? option === C.NBD_OPT_LIST_META_CONTEXT : q.queries.some((s) => s === C.BASE_ALLOCATION || (option === C.NBD_OPT_LIST_META_CONTEXT && s === 'base:'));
          if (wants) {
            const name = Buffer.from(C.BASE_ALLOCATION);
            const d = Buffer.alloc(4 + name.length);
            d.writeUInt32BE(BASE_ALLOCATION_ID, 0);
            name.copy(d, 4);
            this.reply(option, C.NBD_REP_META_CONTEXT, d);
            if (option === C.NBD_OPT_SET_META_CONTEXT) this.baseAllocation = true;
          }
          this.reply(option, C.NBD_REP_ACK);
          break;
        }
        case C.NBD_OPT_INFO:
        case C.NBD_OPT_GO: {
          if (length < 6) {
            this.reply(option, C.NBD_REP_ERR_INVALID);
            break;
          }
          const nameLen = data.readUInt32BE(0);
          if (4 + nameLen + 2 > length) {
            this.reply(option, C.NBD_REP_ERR_INVALID);
            break;
          }
          const name = data.subarray(4, 4 + nameLen).toString('utf8');
          const b = this.exports.get(name);
          if (!b) {
            this.reply(option, C.NBD_REP_ERR_UNKNOWN, Buffer.from(`no export '${name}'`));
            break;
          }
          this.reply(option, C.NBD_REP_INFO, this.exportInfo(b));
          const bs = Buffer.alloc(14);
          bs.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 0);
          bs.writeUInt32BE(1, 2);
          bs.writeUInt32BE(4096, 6);
          bs.writeUInt32BE(MAX_REQUEST, 10);
          this.reply(option, C.NBD_REP_INFO, bs);
          this.reply(option, C.NBD_REP_ACK);
          if (option === C.NBD_OPT_GO) return b;
          break;
        }
        default:
          this.reply(option, C.NBD_REP_ERR_UNSUP);
      }
    }
  }

  private parseMetaQuery(data: Buffer): { name: string; queries: string[] } | undefined {
    if (data.length < 8) return undefined;
    const nameLen = data.readUInt32BE(0);
    if (4 + nameLen + 4 > data.length) return undefined;
    const name = data.subarray(4, 4 + nameLen).toString('utf8');
    let at = 4 + nameLen;
    const count = data.readUInt32BE(at);
    at += 4;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return undefined;
      const l = data.readUInt32BE(at);
      if (at + 4 + l > data.length) return undefined;
      queries.push(data.subarray(at + 4, at + 4 + l).toString('utf8'));
      at += 4 + l;
    }
    return { name, queries };
  }

  private async transmit(b: NbdBackend): Promise<void> {
    for (;;) {
      const h = await this.in.read(28);
      if (h.readUInt32BE(0) !== C.NBD_REQUEST_MAGIC) throw new Error('bad request magic');
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      const handle = h.subarray(8, 16);
      const offset = Number(h.readBigUInt64BE(16));
      const length = h.readUInt32BE(24);
      if (type === C.NBD_CMD_DISC) return;
      let payload: Buffer | undefined;
      if (type === C.NBD_CMD_WRITE) {
        if (length > MAX_REQUEST) throw new Error(`a write of ${length} bytes`);
        payload = await this.in.read(length);
      }
      const p = this.handle(b, type, flags, Buffer.from(handle), offset, length, payload).catch((err: unknown) => {
        this.log(`NBD request failed: ${(err as Error).message}`);
        this.error(Buffer.from(handle), C.NBD_EIO);
      });
      this.inFlight.add(p);
      void p.finally(() => this.inFlight.delete(p));
    }
  }

  private simple(handle: Buffer, error: number, data?: Buffer): void {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(C.NBD_SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(error, 4);
    handle.copy(h, 8);
    this.socket.write(data ? Buffer.concat([h, data]) : h);
  }

  private chunk(handle: Buffer, flags: number, type: number, data: Buffer): void {
    const h = Buffer.alloc(20);
    h.writeUInt32BE(C.NBD_STRUCTURED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    handle.copy(h, 8);
    h.writeUInt32BE(data.length, 16);
    this.socket.write(Buffer.concat([h, data]));
  }

  private error(handle: Buffer, errno: number): void {
    if (!this.structured) return this.simple(handle, errno);
    const d = Buffer.alloc(6);
    d.writeUInt32BE(errno, 0);
    this.chunk(handle, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_ERROR, d);
  }

  private done(handle: Buffer): void {
    if (this.structured) this.chunk(handle, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_NONE, Buffer.alloc(0));
    else this.simple(handle, 0);
  }

  private async handle(b: NbdBackend, type: number, flags: number, handle: Buffer, offset: number, length: number, payload: Buffer | undefined): Promise<void> {
    const inside = offset >= 0 && offset + length <= b.size;
    switch (type) {
      case C.NBD_CMD_READ: {
        if (!inside || length > MAX_REQUEST) return this.error(handle, C.NBD_EINVAL);
        if (!this.structured) {
          const buf = Buffer.alloc(length);
          await b.read(buf, offset);
          return this.simple(handle, 0, buf);
        }
        // Holes go back as OFFSET_HOLE chunks (unless the client asked for one piece): nothing read, nothing sent.
        const extents = flags & C.NBD_CMD_FLAG_DF ? [{ length, flags: 0 }] : await b.blockStatus(offset, length);
        let at = offset;
        const parts: { at: number; length: number; hole: boolean }[] = [];
        for (const e of extents) {
          const len = Math.min(e.length, offset + length - at);
          if (len <= 0) break;
          const hole = (e.flags & C.NBD_STATE_ZERO) !== 0;
          const last = parts[parts.length - 1];
          if (last && last.hole === hole) last.length += len;
          else parts.push({ at, length: len, hole });
          at += len;
        }
        if (at < offset + length) parts.push({ at, length: offset + length - at, hole: false });
        for (const [i, part] of parts.entries()) {
          const fl = i === parts.length - 1 ? C.NBD_REPLY_FLAG_DONE : 0;
          if (part.hole) {
            const d = Buffer.alloc(12);
            d.writeBigUInt64BE(BigInt(part.at), 0);
            d.writeUInt32BE(part.length, 8);
            this.chunk(handle, fl, C.NBD_REPLY_TYPE_OFFSET_HOLE, d);
          } else {
            const d = Buffer.alloc(8 + part.length);
            d.writeBigUInt64BE(BigInt(part.at), 0);
            await b.read(d.subarray(8), part.at);
            this.chunk(handle, fl, C.NBD_REPLY_TYPE_OFFSET_DATA, d);
          }
        }
        return;
      }
      case C.NBD_CMD_WRITE:
        if (!b.writable || !b.write) return this.error(handle, C.NBD_EPERM);
        if (!inside) return this.error(handle, C.NBD_ENOSPC);
        await b.write(payload!, offset);
        if (flags & C.NBD_CMD_FLAG_FUA) await b.flush?.();
        return this.done(handle);
      case C.NBD_CMD_WRITE_ZEROES:
      case C.NBD_CMD_TRIM:
        if (!b.writable || !b.writeZeroes) return this.error(handle, C.NBD_EPERM);
        if (!inside) return this.error(handle, C.NBD_ENOSPC);
        await b.writeZeroes(offset, length);
        return this.done(handle);
      case C.NBD_CMD_FLUSH:
        await b.flush?.();
        return this.done(handle);
      case C.NBD_CMD_BLOCK_STATUS: {
        if (!this.structured || !this.baseAllocation) return this.error(handle, C.NBD_EINVAL);
        if (!inside || length === 0) return this.error(handle, C.NBD_EINVAL);
        let extents = await b.blockStatus(offset, length);
        if (flags & C.NBD_CMD_FLAG_REQ_ONE) extents = extents.slice(0, 1);
        const d = Buffer.alloc(4 + 8 * extents.length);
        d.writeUInt32BE(BASE_ALLOCATION_ID, 0);
        extents.forEach((e, i) => {
          d.writeUInt32BE(e.length, 4 + i * 8);
          d.writeUInt32BE(e.flags, 8 + i * 8);
        });
        return this.chunk(handle, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_BLOCK_STATUS, d);
      }
      default:
        return this.error(handle, C.NBD_EINVAL);
    }
  }
}

export class NbdServer {
  private constructor(
    private readonly server: net.Server,
    readonly address: string,
    private readonly sockets: Set<net.Socket>,
  ) {}

  /** Starts serving `exports` (name → disk); resolves once listening. */
  static async listen(listen: NbdListen, exports: Map<string, NbdBackend>, opts: { log?: (message: string) => void } = {}): Promise<NbdServer> {
    const log = opts.log ?? (() => undefined);
    const sockets = new Set<net.Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      void new Connection(socket, exports, log).serve();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new BulwarkError(err.code === 'EADDRINUSE' ? 'usage' : 'failed', `cannot listen for NBD clients on ${'path' in listen ? listen.path : `${listen.host}:${listen.port}`}: ${err.message}`, { cause: err })),
      );
      if ('path' in listen) server.listen(listen.path, resolve);
      else server.listen(listen.port, listen.host, resolve);
    });
    const a = server.address();
    const address = typeof a === 'string' ? a : `${a!.address}:${a!.port}`;
    return new NbdServer(server, address, sockets);
  }

  /** The TCP port, when listening on TCP. */
  get port(): number | undefined {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.port : undefined;
  }

  get clients(): number {
    return this.sockets.size;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
