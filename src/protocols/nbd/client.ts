// NBD client for reading point-in-time disk images that QEMU exports during a live backup
// (qemu-nbd, or QEMU's own NBD server fed by block-export-add / nbd-server-add).
//
// Wire facts this relies on (NetworkBlockDevice/nbd doc/proto.md):
// - Only fixed newstyle negotiation is spoken; oldstyle servers are refused with a clear error.
// - Once NBD_OPT_GO (or NBD_OPT_EXPORT_NAME) succeeds there is no way back to option haggling and
//   no way to cancel a request: a request is answered, or the connection goes away.
// - Replies come in any order and structured reply chunks of different requests interleave; they
//   are matched by the 64-bit handle. Chunks of one read may also come in any order, so coverage
//   of the requested range is checked before a read resolves.
// - A read payload has no length of its own in a simple reply (it is the request's length), which
//   is why simple replies can only be parsed knowing the pending request.
//
// Hot path: read payloads are received straight into the caller's (or a preallocated) buffer. The
// socket uses Node's `onread` user-buffer mode: while a data payload is being received the kernel
// reads directly into the remaining part of the target, so the bulk of every payload is written
// once, by the kernel; only bytes that arrive together with a header in the scratch buffer are
// copied.
import net from 'node:net';

import { BulwarkError, errnoCode, type ErrorCode } from '../../util/errors.js';
import * as C from './constants.js';

export type NbdAddress = { path: string } | { host: string; port?: number };

export interface NbdConnectOptions {
  /** Export to open. Default '' (the server's default export). */
  exportName?: string;
  /**
   * Metadata contexts to select, e.g. ['base:allocation', 'qemu:dirty-bitmap:b0']. Every one must be
   * granted, or connect fails: a backup that silently lost its dirty bitmap would copy the wrong data.
   */
  metaContexts?: string[];
  /** Negotiate structured replies (needed for block status and sparse reads). Default true. */
  structuredReplies?: boolean;
  /** Budget for connecting plus the whole handshake. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * Default budget for one request from the moment it is sent (time spent queued behind
   * maxInFlight does not count). A request that misses it closes the connection: NBD cannot cancel
   * a request, and a server that stopped answering is not one to keep reading a backup from.
   * Default 60 s; 0 disables.
   */
  requestTimeoutMs?: number;
  /** Requests on the wire at once; more wait in a queue. Default 16 (QEMU serves 16 per client). */
  maxInFlight?: number;
  /** Largest read sent as one request; larger reads are split. Default and ceiling: 32 MiB or the server's maximum. */
  maxRequestBytes?: number;
}

export interface NbdRequestOptions {
  /** Overrides NbdConnectOptions.requestTimeoutMs for this call. */
  timeoutMs?: number;
}

export interface NbdExtent {
  offset: number;
  length: number;
  /** Context-defined: base:allocation bit 0 NBD_STATE_HOLE, bit 1 NBD_STATE_ZERO; qemu:dirty-bitmap bit 0 dirty. */
  flags: number;
}

export interface NbdBlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface NbdExtentsOptions extends NbdRequestOptions {
  offset?: number;
  /** Default: to the end of the export. */
  length?: number;
  /** Bytes asked for per block status request. Default 1 GiB. */
  chunkBytes?: number;
}

/** The server answered a request with an error (as opposed to the connection failing). */
export class NbdRequestError extends BulwarkError {
  /** NBD error value: 1 EPERM, 5 EIO, 12 ENOMEM, 22 EINVAL, 28 ENOSPC, 75 EOVERFLOW, 95 ENOTSUP, 108 ESHUTDOWN. */
  readonly errno: number;
  readonly serverMessage: string | undefined;
  /** Where the error happened, when the server said (NBD_REPLY_TYPE_ERROR_OFFSET). */
  readonly errorOffset: number | undefined;

  constructor(what: string, errno: number, serverMessage?: string, errorOffset?: number) {
    const at = errorOffset === undefined ? '' : ` at offset ${errorOffset}`;
    const msg = serverMessage ? `: ${serverMessage}` : '';
    super(errnoErrorCode(errno), `NBD ${what} failed${at}: ${C.nbdErrnoName(errno)}${msg}`, errno === C.NBD_ESHUTDOWN ? { hint: 'the NBD server is shutting down; the export may have been removed while the backup was reading it' } : {});
    this.errno = errno;
    this.serverMessage = serverMessage || undefined;
    this.errorOffset = errorOffset;
  }
}

const MiB = 1024 * 1024;
const DEFAULT_MAX_REQUEST = 32 * MiB;
const DEFAULT_EXTENT_CHUNK = 1024 * MiB;
/** Block status lengths are 32-bit; 2 GiB keeps every request aligned to any legal block size. */
const MAX_STATUS_LENGTH = 2 ** 31;
/** Option replies carry names and messages (at most 4 KiB by the spec); anything near this is not NBD. */
const MAX_OPTION_REPLY = MiB;
/** QEMU caps a block status reply at 2^20 extents (8 MiB); past this the length field is garbage. */
const MAX_STATUS_PAYLOAD = 64 * MiB;
const MAX_ERROR_PAYLOAD = 64 * 1024;
const SCRATCH_BYTES = 256 * 1024;
/** Below this, a payload remainder is left to the scratch buffer so it arrives with the next header in one read. */
const DIRECT_MIN = 16 * 1024;

// Parser states for the transmission phase.
const ST_HEADER = 0;
const ST_DATA = 1;
const ST_PAYLOAD = 2;

interface Pending {
  id: number;
  cmd: number;
  offset: number;
  length: number;
  /** Where read data lands: exactly `length` bytes. */
  target: Buffer | undefined;
  /** Reads: [start, end) pairs relative to `offset` that replies have filled. */
  covered: number[];
  extents: Map<number, NbdExtent[]> | undefined;
  error: Error | undefined;
  timeoutMs: number;
  timer: NodeJS.Timeout | undefined;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class NbdClient {
  /** Export size in bytes. */
  readonly size: number;
  /** Transmission flags (NBD_FLAG_*). */
  readonly flags: number;
  readonly exportName: string;
  /** Server block size constraints, when it sent NBD_INFO_BLOCK_SIZE. */
  readonly blockSize: NbdBlockSize | undefined;
  readonly structuredReplies: boolean;
  /** Granted metadata contexts: name → context id used on the wire. */
  readonly metaContexts: ReadonlyMap<string, number>;
  /** Reads larger than this are split into several requests. */
  readonly maxRequestBytes: number;
  /** Where the server is, for messages: a socket path or host:port. */
  readonly address: string;

  private readonly wire: Wire;

  private constructor(wire: Wire, info: NegotiatedInfo, opts: NbdConnectOptions) {
    this.wire = wire;
    this.address = wire.address;
    this.size = info.size;
    this.flags = info.flags;
    this.exportName = info.exportName;
    this.blockSize = info.blockSize;
    this.structuredReplies = info.structuredReplies;
    this.metaContexts = info.metaContexts;
    const minimum = info.blockSize?.minimum ?? 1;
    let max = Math.min(opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST, DEFAULT_MAX_REQUEST, info.blockSize?.maximum ?? DEFAULT_MAX_REQUEST);
    max = Math.floor(max / minimum) * minimum;
    if (max < 1) throw new Error(`maxRequestBytes must be at least the server's minimum block size ${minimum}`);
    this.maxRequestBytes = max;
  }

  /** Connects, negotiates and opens the export. */
  static async connect(address: NbdAddress, opts: NbdConnectOptions = {}): Promise<NbdClient> {
    const maxInFlight = opts.maxInFlight ?? 16;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1) throw new Error(`maxInFlight must be a positive integer, got ${maxInFlight}`);
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const wire = await Wire.open(address, timeoutMs, maxInFlight, opts.requestTimeoutMs ?? 60_000);
    const timer = setTimeout(() => {
      wire.fail(new BulwarkError('timeout', `NBD handshake with '${wire.address}' did not finish within ${timeoutMs} ms`, { hint: 'the server may be hung, or this socket is not an NBD server' }));
    }, timeoutMs);
    let info: NegotiatedInfo;
    try {
      info = await negotiate(wire, opts);
      wire.startTransmission();
    } catch (err) {
      wire.abortHandshake();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    try {
      return new NbdClient(wire, info, opts);
    } catch (err) {
      // Past NBD_OPT_GO the only polite way out is NBD_CMD_DISC.
      await wire.disconnect();
      throw err;
    }
  }

  get closed(): boolean {
    return this.wire.closed;
  }

  /** Requests sent and not yet answered, plus those queued behind maxInFlight. */
  get inFlight(): number {
    return this.wire.outstanding;
  }

  get readOnly(): boolean {
    return (this.flags & C.NBD_FLAG_READ_ONLY) !== 0;
  }

  /** The id of a granted metadata context, by name; throws if it was not negotiated. */
  contextId(context: string | number): number {
    if (typeof context === 'number') {
      for (const id of this.metaContexts.values()) if (id === context) return id;
      throw new Error(`metadata context id ${context} was not negotiated on this NBD connection`);
    }
    const id = this.metaContexts.get(context);
    if (id === undefined) throw new Error(`metadata context '${context}' was not negotiated on this NBD connection (have: ${[...this.metaContexts.keys()].join(', ') || 'none'})`);
    return id;
  }

  /** Reads `length` bytes at `offset` into a new Buffer. Holes read as zeros. */
  async read(offset: number, length: number, opts: NbdRequestOptions = {}): Promise<Buffer> {
    const target = Buffer.allocUnsafe(length);
    await this.readInto(target, offset, opts);
    return target;
  }

  /**
   * Fills `target` with the bytes at `offset`. If this rejects, `target` holds an unspecified mix
   * of old and new bytes, but nothing writes to it after the promise settles.
   */
  async readInto(target: Uint8Array, offset: number, opts: NbdRequestOptions = {}): Promise<void> {
    const length = target.byteLength;
    this.checkRange(offset, length);
    if (length === 0) return;
    const buf = Buffer.isBuffer(target) ? target : Buffer.from(target.buffer, target.byteOffset, target.byteLength);
    const min = this.blockSize?.minimum ?? 1;
    const start = Math.floor(offset / min) * min;
    const end = Math.min(this.size, Math.ceil((offset + length) / min) * min);
    if (start === offset && end === offset + length) {
      await this.readAligned(buf, offset, opts);
      return;
    }
    // The server may refuse requests not aligned to its minimum block size; widen, then copy out.
    const bounce = Buffer.allocUnsafe(end - start);
    await this.readAligned(bounce, start, opts);
    bounce.copy(buf, 0, offset - start, offset - start + length);
  }

  /**
   * Block status for [offset, offset + length) from every negotiated context, keyed by context id.
   * The server may describe less than asked (never less than one extent per context); extents are
   * clipped to the asked range. Use extents() to walk a range completely.
   */
  blockStatus(offset: number, length: number, opts?: NbdRequestOptions): Promise<Map<number, NbdExtent[]>>;
  blockStatus(offset: number, length: number, context: string | number, opts?: NbdRequestOptions): Promise<NbdExtent[]>;
  async blockStatus(offset: number, length: number, contextOrOpts?: string | number | NbdRequestOptions, maybeOpts?: NbdRequestOptions): Promise<Map<number, NbdExtent[]> | NbdExtent[]> {
    const single = typeof contextOrOpts === 'string' || typeof contextOrOpts === 'number';
    const opts = (single ? maybeOpts : contextOrOpts) ?? {};
    const wanted = single ? this.contextId(contextOrOpts) : undefined;
    if (this.metaContexts.size === 0) throw new Error('block status needs at least one metadata context: pass metaContexts to NbdClient.connect');
    this.checkRange(offset, length);
    if (length === 0) throw new RangeError('block status of zero bytes');
    const min = this.blockSize?.minimum ?? 1;
    const start = Math.floor(offset / min) * min;
    const end = Math.min(this.size, Math.ceil((offset + length) / min) * min, start + MAX_STATUS_LENGTH);
    const p = this.wire.request(C.NBD_CMD_BLOCK_STATUS, start, end - start, undefined, opts.timeoutMs);
    await p.done;
    const got = p.pending.extents ?? new Map<number, NbdExtent[]>();
    const all = new Map<number, NbdExtent[]>();
    for (const [name, id] of this.metaContexts) {
      const list = got.get(id);
      if (!list) throw new BulwarkError('protocol', `NBD server '${this.address}' answered block status at offset ${start} without extents for context '${name}'`);
      // Servers may describe more than asked (past the end, or from an aligned start).
      all.set(id, clip(list, offset, offset + length));
    }
    if (wanted !== undefined) return all.get(wanted) as NbdExtent[];
    return all;
  }

  /**
   * Walks [offset, offset + length) of one context, asking again where the server answered short.
   * Adjacent extents with equal flags are merged, also across requests.
   */
  async *extents(context: string | number, opts: NbdExtentsOptions = {}): AsyncGenerator<NbdExtent> {
    const id = this.contextId(context);
    const offset = opts.offset ?? 0;
    const end = offset + (opts.length ?? this.size - offset);
    this.checkRange(offset, end - offset);
    const chunk = Math.max(1, Math.min(opts.chunkBytes ?? DEFAULT_EXTENT_CHUNK, MAX_STATUS_LENGTH));
    const reqOpts = opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs };
    let held: NbdExtent | undefined;
    let pos = offset;
    while (pos < end) {
      const list = await this.blockStatus(pos, Math.min(chunk, end - pos), id, reqOpts);
      const first = list[0];
      if (!first || first.offset !== pos) throw new BulwarkError('protocol', `NBD server '${this.address}' made no progress describing offset ${pos} of context ${id}`);
      for (const e of list) {
        if (held && held.flags === e.flags && held.offset + held.length === e.offset) {
          held.length += e.length;
        } else {
          if (held) yield held;
          held = { ...e };
        }
      }
      const last = list[list.length - 1] as NbdExtent;
      pos = last.offset + last.length;
    }
    if (held) yield held;
  }

  /**
   * Soft disconnect: waits for outstanding requests, sends NBD_CMD_DISC and closes. Requests made
   * meanwhile are refused. Resolves once the socket is closed.
   */
  disconnect(): Promise<void> {
    return this.wire.disconnect();
  }

  /** Hard disconnect: outstanding requests reject at once. */
  destroy(): void {
    this.wire.fail(undefined);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new RangeError(`NBD range offset ${offset} length ${length} is outside the export (size ${this.size})`);
    }
  }

  private async readAligned(target: Buffer, offset: number, opts: NbdRequestOptions): Promise<void> {
    const max = this.maxRequestBytes;
    if (target.length <= max) {
      await this.wire.request(C.NBD_CMD_READ, offset, target.length, target, opts.timeoutMs).done;
      return;
    }
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < target.length; pos += max) {
      const n = Math.min(max, target.length - pos);
      parts.push(this.wire.request(C.NBD_CMD_READ, offset + pos, n, target.subarray(pos, pos + n), opts.timeoutMs).done);
    }
    // Settle all before reporting: the others are still writing into the caller's buffer.
    const results = await Promise.allSettled(parts);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }
}

function clip(list: NbdExtent[], start: number, end: number): NbdExtent[] {
  const out: NbdExtent[] = [];
  for (const e of list) {
    const a = Math.max(e.offset, start);
    const b = Math.min(e.offset + e.length, end);
    if (b > a) out.push({ offset: a, length: b - a, flags: e.flags });
  }
  return out;
}

function errnoErrorCode(errno: number): ErrorCode {
  switch (errno) {
    case C.NBD_EINVAL:
    case C.NBD_EOVERFLOW:
    case C.NBD_ENOTSUP:
      return 'protocol';
    default:
      return 'io';
  }
}

// ---------------------------------------------------------------------------------------------
// Handshake

interface NegotiatedInfo {
  exportName: string;
  size: number;
  flags: number;
  blockSize: NbdBlockSize | undefined;
  structuredReplies: boolean;
  metaContexts: Map<string, number>;
}

interface OptionReply {
  type: number;
  data: Buffer;
}

async function negotiate(wire: Wire, opts: NbdConnectOptions): Promise<NegotiatedInfo> {
  const exportName = opts.exportName ?? '';
  const wanted = opts.metaContexts ?? [];
  const hello = await wire.readExact(18);
  const magic = hello.readBigUInt64BE(0);
  const second = hello.readBigUInt64BE(8);
  if (magic !== C.NBDMAGIC || (second !== C.IHAVEOPT && second !== C.CLISERV_MAGIC)) {
    throw new BulwarkError('protocol', `'${wire.address}' is not an NBD server (unexpected greeting)`, { hint: 'check the socket path or port: it should be the one given to qemu-nbd or nbd-server-start' });
  }
  if (second === C.CLISERV_MAGIC) {
    throw new BulwarkError('protocol', `NBD server '${wire.address}' speaks only the oldstyle handshake, which does not support named exports`, { hint: 'use qemu-nbd or QEMU\'s built-in NBD server' });
  }
  const hsFlags = hello.readUInt16BE(16);
  if ((hsFlags & C.NBD_FLAG_FIXED_NEWSTYLE) === 0) {
    throw new BulwarkError('protocol', `NBD server '${wire.address}' does not support fixed newstyle negotiation`);
  }
  const noZeroes = (hsFlags & C.NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(C.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? C.NBD_FLAG_C_NO_ZEROES : 0));
  wire.write(clientFlags);

  let structured = false;
  if (opts.structuredReplies ?? true) {
    const r = await option(wire, C.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    if (r.type === C.NBD_REP_ACK) structured = true;
    else if (r.type !== C.NBD_REP_ERR_UNSUP) throw optionError(wire, C.NBD_OPT_STRUCTURED_REPLY, r, exportName);
  }

  const metaContexts = new Map<string, number>();
  if (wanted.length > 0) {
    if (!structured) {
      throw new BulwarkError('protocol', `NBD server '${wire.address}' does not support structured replies, which block status (${wanted.join(', ')}) requires`);
    }
    const name = Buffer.from(exportName, 'utf8');
    const queries = wanted.map((q) => Buffer.from(q, 'utf8'));
    const data = Buffer.alloc(4 + name.length + 4 + queries.reduce((n, q) => n + 4 + q.length, 0));
    let pos = data.writeUInt32BE(name.length, 0);
    pos += name.copy(data, pos);
    pos = data.writeUInt32BE(queries.length, pos);
    for (const q of queries) {
      pos = data.writeUInt32BE(q.length, pos);
      pos += q.copy(data, pos);
    }
    wire.write(optionHeader(C.NBD_OPT_SET_META_CONTEXT, data.length));
    wire.write(data);
    for (;;) {
      const r = await optionReply(wire, C.NBD_OPT_SET_META_CONTEXT);
      if (r.type === C.NBD_REP_ACK) break;
      if (r.type === C.NBD_REP_META_CONTEXT) {
        if (r.data.length < 5) throw violation(wire, 'a metadata context reply too short to hold an id and a name');
        metaContexts.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
        continue;
      }
      throw optionError(wire, C.NBD_OPT_SET_META_CONTEXT, r, exportName);
    }
    const missing = wanted.filter((q) => !metaContexts.has(q));
    if (missing.length > 0) {
      const bitmap = missing.some((m) => m.startsWith('qemu:dirty-bitmap:'));
      throw new BulwarkError('not-found', `NBD export '${exportName}' on '${wire.address}' does not offer metadata context ${missing.map((m) => `'${m}'`).join(', ')} (offered: ${[...metaContexts.keys()].join(', ') || 'none'})`, {
        hint: bitmap
          ? 'a dirty bitmap is only visible if it is exported with the image: qemu-nbd -B <bitmap>, or "bitmaps" in block-export-add'
          : 'list what the server offers with: nbdinfo --list --content <uri>',
      });
    }
  }

  const info = await go(wire, exportName, noZeroes);
  return { exportName, structuredReplies: structured, metaContexts, ...info };
}

async function go(wire: Wire, exportName: string, noZeroes: boolean): Promise<{ size: number; flags: number; blockSize: NbdBlockSize | undefined }> {
  const name = Buffer.from(exportName, 'utf8');
  const data = Buffer.alloc(4 + name.length + 2 + 2);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  // Asking for NBD_INFO_BLOCK_SIZE promises to honour the minimum; readInto() aligns for that.
  data.writeUInt16BE(1, 4 + name.length);
  data.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 6 + name.length);
  wire.write(optionHeader(C.NBD_OPT_GO, data.length));
  wire.write(data);
  let size: number | undefined;
  let flags = 0;
  let blockSize: NbdBlockSize | undefined;
  for (;;) {
    const r = await optionReply(wire, C.NBD_OPT_GO);
    if (r.type === C.NBD_REP_INFO) {
      if (r.data.length < 2) throw violation(wire, 'an NBD_REP_INFO reply without an info type');
      const type = r.data.readUInt16BE(0);
      if (type === C.NBD_INFO_EXPORT) {
        if (r.data.length !== 12) throw violation(wire, `an NBD_INFO_EXPORT of ${r.data.length} bytes (expected 12)`);
        size = readU64(wire, r.data, 2, 'export size');
        flags = r.data.readUInt16BE(10);
      } else if (type === C.NBD_INFO_BLOCK_SIZE) {
        if (r.data.length !== 14) throw violation(wire, `an NBD_INFO_BLOCK_SIZE of ${r.data.length} bytes (expected 14)`);
        blockSize = { minimum: r.data.readUInt32BE(2), preferred: r.data.readUInt32BE(6), maximum: r.data.readUInt32BE(10) };
        if (!isPowerOfTwo(blockSize.minimum) || blockSize.minimum > 64 * 1024 || blockSize.preferred < blockSize.minimum || blockSize.maximum < blockSize.minimum) {
          throw violation(wire, `nonsensical block sizes (minimum ${blockSize.minimum}, preferred ${blockSize.preferred}, maximum ${blockSize.maximum})`);
        }
      }
      // NBD_INFO_NAME / NBD_INFO_DESCRIPTION and unknown types are informational.
      continue;
    }
    if (r.type === C.NBD_REP_ACK) {
      if (size === undefined) throw violation(wire, 'an NBD_OPT_GO acknowledgement without NBD_INFO_EXPORT');
      return { size, flags, blockSize };
    }
    if (r.type === C.NBD_REP_ERR_UNSUP) return exportNameFallback(wire, name, noZeroes);
    throw optionError(wire, C.NBD_OPT_GO, r, exportName);
  }
}

/** Servers older than NBD_OPT_GO: no errors, no block sizes; an unknown export just drops the connection. */
async function exportNameFallback(wire: Wire, name: Buffer, noZeroes: boolean): Promise<{ size: number; flags: number; blockSize: undefined }> {
  wire.write(optionHeader(C.NBD_OPT_EXPORT_NAME, name.length));
  wire.write(name);
  const r = await wire.readExact(noZeroes ? 10 : 134);
  return { size: readU64(wire, r, 0, 'export size'), flags: r.readUInt16BE(8), blockSize: undefined };
}

async function option(wire: Wire, opt: number, data: Buffer): Promise<OptionReply> {
  wire.write(optionHeader(opt, data.length));
  if (data.length > 0) wire.write(data);
  return optionReply(wire, opt);
}

function optionHeader(opt: number, length: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(C.IHAVEOPT, 0);
  b.writeUInt32BE(opt, 8);
  b.writeUInt32BE(length, 12);
  return b;
}

async function optionReply(wire: Wire, opt: number): Promise<OptionReply> {
  const h = await wire.readExact(20);
  if (h.readBigUInt64BE(0) !== C.OPTION_REPLY_MAGIC) throw violation(wire, 'an option reply with a bad magic number');
  const echoed = h.readUInt32BE(8);
  if (echoed !== opt) throw violation(wire, `a reply to ${C.nbdOptionName(echoed)} while waiting for ${C.nbdOptionName(opt)}`);
  const type = h.readUInt32BE(12);
  const length = h.readUInt32BE(16);
  if (length > MAX_OPTION_REPLY) throw violation(wire, `an option reply of ${length} bytes`);
  const data = length > 0 ? await wire.readExact(length) : Buffer.alloc(0);
  return { type, data };
}

function optionError(wire: Wire, opt: number, r: OptionReply, exportName: string): BulwarkError {
  if ((r.type & C.NBD_REP_FLAG_ERROR) === 0) {
    return violation(wire, `unexpected reply type ${r.type} to ${C.nbdOptionName(opt)}`);
  }
  const said = r.data.length > 0 ? `: ${r.data.toString('utf8')}` : '';
  const name = C.nbdReplyErrorName(r.type);
  switch (r.type) {
    case C.NBD_REP_ERR_UNKNOWN:
      return new BulwarkError('not-found', `NBD server '${wire.address}' has no export '${exportName}'${said}`, {
        hint: 'list the exports with: nbdinfo --list <uri>; QEMU names them after the node or the name given to block-export-add / qemu-nbd --export-name',
      });
    case C.NBD_REP_ERR_TLS_REQD:
      return new BulwarkError('protocol', `NBD server '${wire.address}' requires TLS${said}`, { hint: 'Bulwark reads NBD exports over a local unix socket without TLS; export without tls-creds' });
    case C.NBD_REP_ERR_SHUTDOWN:
      return new BulwarkError('io', `NBD server '${wire.address}' is shutting down${said}`);
    case C.NBD_REP_ERR_POLICY:
      return new BulwarkError('protocol', `NBD server '${wire.address}' refused ${C.nbdOptionName(opt)} by policy${said}`);
    default:
      return new BulwarkError('protocol', `NBD server '${wire.address}' rejected ${C.nbdOptionName(opt)} for export '${exportName}' with ${name}${said}`);
  }
}

function violation(wire: Wire, what: string): BulwarkError {
  return new BulwarkError('protocol', `NBD server '${wire.address}' broke the protocol: it sent ${what}`);
}

function readU64(wire: Wire, b: Buffer, at: number, what: string): number {
  const hi = b.readUInt32BE(at);
  if (hi >= 2 ** 21) throw violation(wire, `a ${what} beyond 2^53`);
  return hi * 2 ** 32 + b.readUInt32BE(at + 4);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

// ---------------------------------------------------------------------------------------------
// Connection: socket, request table, reply parser

class Wire {
  readonly address: string;
  private readonly socket: net.Socket;
  private readonly maxInFlight: number;
  private readonly defaultTimeoutMs: number;

  private isClosed = false;
  private closedReason: Error | undefined;
  private readonly closedPromise: Promise<void>;
  private disconnecting: Promise<void> | undefined;

  private readonly pending = new Map<number, Pending>();
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private corked = false;
  private drainWaiter: (() => void) | undefined;

  // Handshake phase: bytes accumulate until readExact() takes them.
  private handshaking = true;
  private hsChunks: Buffer[] = [];
  private hsLen = 0;
  private hsWaiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;

  // Transmission phase parser.
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  /** The view of a read target handed to the socket for the next read, if any. */
  private direct: Buffer | undefined;
  private state = ST_HEADER;
  private readonly hdr = Buffer.alloc(32);
  private hdrLen = 0;
  private hdrNeed = 16;
  private cur: Pending | undefined;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  private data: Buffer = this.scratch;
  private dataPos = 0;
  private dataLeft = 0;
  private payload: Buffer = this.scratch;
  private payloadLen = 0;

  private constructor(address: string, socket: net.Socket, maxInFlight: number, defaultTimeoutMs: number) {
    this.address = address;
    this.socket = socket;
    this.maxInFlight = maxInFlight;
    this.defaultTimeoutMs = defaultTimeoutMs;
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    const gone = { hint: 'the NBD server (qemu-nbd or the VM\'s QEMU) exited or dropped the export' };
    socket.on('error', (err) => {
      const code = errnoCode(err);
      // A server that exits with our requests unread resets the connection rather than closing it.
      if (code === 'ECONNRESET' || code === 'EPIPE') this.fail(new BulwarkError('io', `NBD server '${address}' closed the connection (${code})`, { cause: err, ...gone }));
      else this.fail(new BulwarkError('io', `NBD connection to '${address}' failed: ${err.message}`, { cause: err }));
    });
    socket.on('close', () => this.fail(new BulwarkError('io', `NBD server '${address}' closed the connection`, gone)));
  }

  static open(address: NbdAddress, timeoutMs: number, maxInFlight: number, defaultTimeoutMs: number): Promise<Wire> {
    const label = 'path' in address ? address.path : `${address.host}:${address.port ?? 10809}`;
    return new Promise((resolve, reject) => {
      // The socket needs its read buffers from the wire object, which needs the socket: bind late.
      const bound: { wire?: Wire } = {};
      const onread = {
        buffer: (): Uint8Array => (bound.wire ? bound.wire.nextBuffer() : Buffer.allocUnsafe(SCRATCH_BYTES)),
        callback: (n: number, buf: Uint8Array): boolean => {
          bound.wire?.onRead(n, buf);
          return true;
        },
      };
      const socket = 'path' in address
        ? net.createConnection({ path: address.path, onread })
        : net.createConnection({ host: address.host, port: address.port ?? 10809, noDelay: true, onread });
      const wire = new Wire(label, socket, maxInFlight, defaultTimeoutMs);
      bound.wire = wire;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new BulwarkError('timeout', `connecting to NBD server '${label}' took longer than ${timeoutMs} ms`));
      }, timeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        const code = errnoCode(err);
        if (code === 'ENOENT') reject(new BulwarkError('not-found', `no NBD socket at '${label}'`, { cause: err, hint: 'is the NBD export running, and is this the socket path it was given?' }));
        else if (code === 'ECONNREFUSED') reject(new BulwarkError('io', `nothing accepts NBD connections at '${label}'`, { cause: err, hint: 'the NBD server may have exited (a unix socket file can outlive it)' }));
        else reject(new BulwarkError('io', `cannot connect to NBD server '${label}': ${err.message}`, { cause: err }));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve(wire);
      });
    });
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get outstanding(): number {
    return this.pending.size + this.queue.length;
  }

  // --- handshake I/O

  write(b: Buffer): void {
    this.socket.write(b);
  }

  readExact(n: number): Promise<Buffer> {
    if (this.isClosed) return Promise.reject(this.closedError());
    return new Promise((resolve, reject) => {
      this.hsWaiter = { n, resolve, reject };
      this.pumpHandshake();
    });
  }

  /** Handshake failed after the socket opened: say goodbye politely if we still can, then go. */
  abortHandshake(): void {
    if (!this.isClosed && this.handshaking && this.socket.writable) {
      const abort = Buffer.alloc(16);
      abort.writeBigUInt64BE(C.IHAVEOPT, 0);
      abort.writeUInt32BE(C.NBD_OPT_ABORT, 8);
      this.socket.end(abort);
      // The server should close after acknowledging; do not wait for that courtesy forever.
      setTimeout(() => this.socket.destroy(), 1000).unref();
    }
    this.fail(undefined, false);
  }

  private pumpHandshake(): void {
    const w = this.hsWaiter;
    if (!w || this.hsLen < w.n) return;
    const all = this.hsChunks.length === 1 ? (this.hsChunks[0] as Buffer) : Buffer.concat(this.hsChunks, this.hsLen);
    const rest = all.subarray(w.n);
    this.hsChunks = rest.length > 0 ? [rest] : [];
    this.hsLen = rest.length;
    this.hsWaiter = undefined;
    w.resolve(all.subarray(0, w.n));
  }

  // --- requests

  /** Option haggling is over: from here on bytes go to the reply parser. */
  startTransmission(): void {
    this.handshaking = false;
    // Nothing is due from the server before the first request, but be exact about any bytes.
    const early = this.hsChunks;
    this.hsChunks = [];
    this.hsLen = 0;
    for (const b of early) this.consume(b, b.length);
  }

  request(cmd: number, offset: number, length: number, target: Buffer | undefined, timeoutMs: number | undefined): { pending: Pending; done: Promise<void> } {
    const p: Pending = {
      id: 0,
      cmd,
      offset,
      length,
      target,
      covered: [],
      extents: undefined,
      error: undefined,
      timeoutMs: timeoutMs ?? this.defaultTimeoutMs,
      timer: undefined,
      resolve: noop,
      reject: noop,
    };
    const done = new Promise<void>((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    if (this.isClosed || this.disconnecting) {
      p.reject(this.refusal(p));
    } else if (this.pending.size < this.maxInFlight) {
      this.send(p);
    } else {
      this.queue.push(p);
    }
    return { pending: p, done };
  }

  disconnect(): Promise<void> {
    this.disconnecting ??= (async () => {
      if (!this.isClosed && this.outstanding > 0) {
        await new Promise<void>((resolve) => (this.drainWaiter = resolve));
      }
      if (!this.isClosed) {
        const h = Buffer.alloc(28);
        h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
        h.writeUInt16BE(C.NBD_CMD_DISC, 6);
        this.isClosed = true;
        this.socket.end(h);
        // A server that never closes its end must not hold us.
        const timer = setTimeout(() => this.socket.destroy(), 1000);
        await this.closedPromise;
        clearTimeout(timer);
      } else {
        this.socket.destroy();
        await this.closedPromise;
      }
    })();
    return this.disconnecting;
  }

  /**
   * Ends the connection; every outstanding request rejects. `reason` undefined means the client
   * chose to close. The request that caused it (a timeout) gets `reason` itself.
   */
  fail(reason: Error | undefined, destroy = true, culprit?: Pending): void {
    if (this.isClosed && this.pending.size === 0 && this.queue.length === 0 && !this.hsWaiter) {
      if (destroy) this.socket.destroy();
      return;
    }
    this.isClosed = true;
    this.closedReason ??= reason;
    if (destroy) this.socket.destroy();
    const hs = this.hsWaiter;
    this.hsWaiter = undefined;
    hs?.reject(reason ?? this.closedError());
    const all = [...this.pending.values(), ...this.queue];
    this.pending.clear();
    this.queue.length = 0;
    for (const p of all) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(p === culprit && reason ? reason : this.refusal(p, reason));
    }
    this.drainWaiter?.();
    this.drainWaiter = undefined;
  }

  private send(p: Pending): void {
    let id = this.nextId;
    while (this.pending.has(id)) id = id >= 0xffffffff ? 1 : id + 1;
    this.nextId = id >= 0xffffffff ? 1 : id + 1;
    p.id = id;
    this.pending.set(id, p);
    const h = Buffer.allocUnsafe(28);
    h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(0, 4);
    h.writeUInt16BE(p.cmd, 6);
    h.writeUInt32BE(0, 8);
    h.writeUInt32BE(id, 12);
    h.writeUInt32BE(Math.floor(p.offset / 2 ** 32), 16);
    h.writeUInt32BE(p.offset >>> 0, 20);
    h.writeUInt32BE(p.length, 24);
    // Requests issued in one tick (a batch of reads) leave in one write.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(h);
    if (p.timeoutMs > 0) {
      p.timer = setTimeout(() => {
        p.timer = undefined;
        this.fail(new BulwarkError('timeout', `NBD ${describe(p)} on '${this.address}' got no answer within ${p.timeoutMs} ms`, { hint: 'the NBD server may be hung or stuck on slow storage; the connection was closed' }), true, p);
      }, p.timeoutMs);
    }
  }

  private finish(p: Pending): void {
    this.pending.delete(p.id);
    if (p.timer) clearTimeout(p.timer);
    const err = p.error ?? this.completeness(p);
    if (err) p.reject(err);
    else p.resolve();
    const next = this.queue.shift();
    if (next) this.send(next);
    else if (this.pending.size === 0 && this.drainWaiter) {
      const w = this.drainWaiter;
      this.drainWaiter = undefined;
      w();
    }
    if (p.error instanceof NbdRequestError && p.error.errno === C.NBD_ESHUTDOWN) {
      // The spec obliges a soft disconnect once the server says it is going away.
      this.disconnect().catch(noop);
    }
  }

  private completeness(p: Pending): Error | undefined {
    if (p.cmd === C.NBD_CMD_READ) {
      const c = p.covered;
      if (c.length === 2 && c[0] === 0 && c[1] === p.length) return undefined;
      const pairs: [number, number][] = [];
      for (let i = 0; i < c.length; i += 2) pairs.push([c[i] as number, c[i + 1] as number]);
      pairs.sort((a, b) => a[0] - b[0]);
      let at = 0;
      for (const [s, e] of pairs) {
        if (s !== at) return this.protocolError(`a reply to ${describe(p)} that ${s < at ? 'overlaps itself' : 'leaves a gap'} at offset ${p.offset + Math.min(s, at)}`);
        at = e;
      }
      if (at !== p.length) return this.protocolError(`a reply to ${describe(p)} that ends after ${at} bytes`);
    }
    if (p.cmd === C.NBD_CMD_BLOCK_STATUS && !p.extents) {
      return this.protocolError(`a reply to ${describe(p)} without any extents`);
    }
    return undefined;
  }

  private refusal(p: Pending, reason = this.closedReason): BulwarkError {
    const why = reason ? reason.message : 'the client closed the connection';
    const code = reason instanceof BulwarkError ? (reason.code === 'timeout' ? 'io' : reason.code) : 'io';
    const hint = reason instanceof BulwarkError ? reason.hint : undefined;
    return new BulwarkError(code, `NBD ${describe(p)} on '${this.address}' did not complete: ${why}`, { ...(reason ? { cause: reason } : {}), ...(hint ? { hint } : {}) });
  }

  private closedError(): BulwarkError {
    return this.closedReason instanceof BulwarkError ? this.closedReason : new BulwarkError('io', `NBD connection to '${this.address}' is closed`, this.closedReason ? { cause: this.closedReason } : {});
  }

  private protocolError(what: string): BulwarkError {
    return new BulwarkError('protocol', `NBD server '${this.address}' broke the protocol: it sent ${what}`);
  }

  /** A broken stream cannot be resynchronised: everything outstanding fails and the connection goes. */
  private violation(what: string): void {
    this.fail(this.protocolError(what));
  }

  // --- reading

  /** Where the kernel should put the next bytes read from the socket. */
  nextBuffer(): Uint8Array {
    if (this.state === ST_DATA && this.dataLeft >= DIRECT_MIN && !this.isClosed) {
      this.direct = this.data.subarray(this.dataPos, this.dataPos + this.dataLeft);
      return this.direct;
    }
    this.direct = undefined;
    return this.scratch;
  }

  onRead(n: number, buf: Uint8Array): void {
    try {
      if (this.handshaking) {
        this.hsChunks.push(Buffer.from(buf.subarray(0, n)));
        this.hsLen += n;
        this.pumpHandshake();
        return;
      }
      if (buf === this.direct) {
        // Already in place: the kernel wrote into the target.
        this.dataPos += n;
        this.dataLeft -= n;
        if (this.dataLeft === 0) this.endData();
        return;
      }
      this.consume(buf, n);
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private consume(buf: Uint8Array, end: number): void {
    let pos = 0;
    // After a violation nothing more of the stream means anything.
    while (pos < end && !this.isClosed) {
      if (this.state === ST_HEADER) {
        const n = Math.min(this.hdrNeed - this.hdrLen, end - pos);
        this.hdr.set(buf.subarray(pos, pos + n), this.hdrLen);
        this.hdrLen += n;
        pos += n;
        if (this.hdrLen === this.hdrNeed) this.onHeader();
      } else if (this.state === ST_DATA) {
        const n = Math.min(this.dataLeft, end - pos);
        this.data.set(buf.subarray(pos, pos + n), this.dataPos);
        this.dataPos += n;
        this.dataLeft -= n;
        pos += n;
        if (this.dataLeft === 0) this.endData();
      } else {
        const n = Math.min(this.payload.length - this.payloadLen, end - pos);
        this.payload.set(buf.subarray(pos, pos + n), this.payloadLen);
        this.payloadLen += n;
        pos += n;
        if (this.payloadLen === this.payload.length) this.onPayload();
      }
    }
  }

  private lookup(): Pending | undefined {
    const hi = this.hdr.readUInt32BE(8);
    const lo = this.hdr.readUInt32BE(12);
    const p = hi === 0 ? this.pending.get(lo) : undefined;
    if (!p) this.violation(`a reply for handle 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}, which no request is waiting for`);
    return p;
  }

  private onHeader(): void {
    const h = this.hdr;
    if (this.hdrNeed === 16) {
      const magic = h.readUInt32BE(0);
      if (magic === C.NBD_STRUCTURED_REPLY_MAGIC) {
        this.hdrNeed = 20;
        return;
      }
      if (magic !== C.NBD_SIMPLE_REPLY_MAGIC) {
        this.violation(`a reply with bad magic 0x${magic.toString(16)}`);
        return;
      }
      const p = this.lookup();
      if (!p) return;
      this.cur = p;
      this.chunkFlags = C.NBD_REPLY_FLAG_DONE;
      const errno = h.readUInt32BE(4);
      if (errno !== 0) {
        p.error = new NbdRequestError(describe(p), errno);
        this.endChunk();
      } else if (p.cmd === C.NBD_CMD_READ) {
        p.covered.push(0, p.length);
        this.beginData(p.target as Buffer, 0, p.length);
      } else {
        this.endChunk();
      }
      return;
    }
    if (this.hdrNeed === 20) {
      const p = this.lookup();
      if (!p) return;
      this.cur = p;
      this.chunkFlags = h.readUInt16BE(4);
      this.chunkType = h.readUInt16BE(6);
      this.chunkLength = h.readUInt32BE(16);
      const type = this.chunkType;
      const len = this.chunkLength;
      if (type === C.NBD_REPLY_TYPE_OFFSET_DATA) {
        if (p.cmd !== C.NBD_CMD_READ || len < 9) this.violation(`a data chunk of ${len} bytes in reply to ${describe(p)}`);
        else this.hdrNeed = 28;
      } else if (type === C.NBD_REPLY_TYPE_OFFSET_HOLE) {
        if (p.cmd !== C.NBD_CMD_READ || len !== 12) this.violation(`a hole chunk of ${len} bytes in reply to ${describe(p)}`);
        else this.hdrNeed = 32;
      } else if (type === C.NBD_REPLY_TYPE_NONE) {
        if (len !== 0 || (this.chunkFlags & C.NBD_REPLY_FLAG_DONE) === 0) this.violation(`an NBD_REPLY_TYPE_NONE chunk of ${len} bytes without the done flag`);
        else this.endChunk();
      } else if (type === C.NBD_REPLY_TYPE_BLOCK_STATUS) {
        if (p.cmd !== C.NBD_CMD_BLOCK_STATUS || len < 12 || (len - 4) % 8 !== 0 || len > MAX_STATUS_PAYLOAD) this.violation(`a block status chunk of ${len} bytes in reply to ${describe(p)}`);
        else this.beginPayload(len);
      } else if ((type & C.NBD_REPLY_TYPE_FLAG_ERROR) !== 0) {
        if (len < 6 || len > MAX_ERROR_PAYLOAD) this.violation(`an error chunk of ${len} bytes`);
        else this.beginPayload(len);
      } else {
        this.violation(`a reply chunk of unknown type ${type}`);
      }
      return;
    }
    const p = this.cur as Pending;
    const chunkOffset = readU64Raw(h, 20);
    if (this.hdrNeed === 28) {
      const n = this.chunkLength - 8;
      const rel = chunkOffset - p.offset;
      if (chunkOffset < p.offset || rel + n > p.length) {
        this.violation(`data for offset ${chunkOffset} length ${n} in reply to ${describe(p)}`);
        return;
      }
      p.covered.push(rel, rel + n);
      this.beginData(p.target as Buffer, rel, n);
      return;
    }
    // hdrNeed === 32: OFFSET_HOLE, complete.
    const n = h.readUInt32BE(28);
    const rel = chunkOffset - p.offset;
    if (n === 0 || chunkOffset < p.offset || rel + n > p.length) {
      this.violation(`a hole at offset ${chunkOffset} length ${n} in reply to ${describe(p)}`);
      return;
    }
    p.covered.push(rel, rel + n);
    (p.target as Buffer).fill(0, rel, rel + n);
    this.endChunk();
  }

  private beginData(target: Buffer, at: number, n: number): void {
    this.state = ST_DATA;
    this.data = target;
    this.dataPos = at;
    this.dataLeft = n;
    if (n === 0) this.endData();
  }

  private endData(): void {
    this.data = this.scratch;
    this.endChunk();
  }

  private beginPayload(n: number): void {
    this.state = ST_PAYLOAD;
    this.payload = Buffer.allocUnsafe(n);
    this.payloadLen = 0;
  }

  private onPayload(): void {
    const p = this.cur as Pending;
    const b = this.payload;
    this.payload = this.scratch;
    if (this.chunkType === C.NBD_REPLY_TYPE_BLOCK_STATUS) {
      const ctx = b.readUInt32BE(0);
      p.extents ??= new Map();
      if (p.extents.has(ctx)) {
        this.violation(`two block status chunks for context ${ctx} in reply to ${describe(p)}`);
        return;
      }
      const list: NbdExtent[] = [];
      const end = p.offset + p.length;
      let at = p.offset;
      for (let i = 4; i < b.length && at < end; i += 8) {
        const len = b.readUInt32BE(i);
        if (len === 0) {
          this.violation(`a zero-length extent in reply to ${describe(p)}`);
          return;
        }
        // May run past the request's end; blockStatus() clips.
        list.push({ offset: at, length: len, flags: b.readUInt32BE(i + 4) });
        at += len;
      }
      p.extents.set(ctx, list);
    } else {
      const errno = b.readUInt32BE(0);
      const msgLen = b.readUInt16BE(4);
      if (6 + msgLen > b.length) {
        this.violation(`an error chunk whose message overruns it`);
        return;
      }
      const msg = b.toString('utf8', 6, 6 + msgLen);
      const at = this.chunkType === C.NBD_REPLY_TYPE_ERROR_OFFSET && b.length >= 14 + msgLen ? readU64Raw(b, 6 + msgLen) : undefined;
      p.error ??= new NbdRequestError(describe(p), errno === 0 ? C.NBD_EIO : errno, msg, at);
    }
    this.endChunk();
  }

  private endChunk(): void {
    this.state = ST_HEADER;
    this.hdrLen = 0;
    this.hdrNeed = 16;
    const p = this.cur;
    this.cur = undefined;
    if (p && (this.chunkFlags & C.NBD_REPLY_FLAG_DONE) !== 0) this.finish(p);
  }
}

function readU64Raw(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 2 ** 32 + b.readUInt32BE(at + 4);
}

function describe(p: Pending): string {
  const what = p.cmd === C.NBD_CMD_READ ? 'read' : p.cmd === C.NBD_CMD_BLOCK_STATUS ? 'block status' : `command ${p.cmd}`;
  return `${what} of ${p.length} bytes at offset ${p.offset}`;
}

function noop(): void {}
