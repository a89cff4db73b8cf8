// A repository on Bulwark's repository server (server/repo-server.ts), over HTTPS in the shape of
// restic's REST protocol v2: /<repo>/config, /<repo>/<type>/ (listing) and /<repo>/<type>/<name>.
//
// The password comes only from the options (the CLI reads BULWARK_REST_PASSWORD), never from the
// location, so it shows in no message. The server certificate is checked against the system CAs, a CA
// file (tlsCa), or pinned by its SHA-256 (tlsFingerprint, as `bulwark serve-repo` prints it); a pin is
// checked on every new connection before a request, and so the password, is sent on it.
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tls, { type TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { BulwarkError, errnoCode, type ErrorCode } from '../util/errors.js';
import { OBJECT_NAME } from './layout.js';
import { FILE_TYPES, OBJECT_WORDS, isFileSource, saveSize, type Backend, type BackendProperties, type FileInfo, type FileType, type Handle, type SaveData } from './backend.js';

export interface RestLocation {
  secure: boolean;
  user: string;
  /** Without brackets, also for IPv6. */
  host: string;
  port: number;
  /** The repository's path segments on the server (decoded). */
  path: string[];
}

export interface RestBackendOptions {
  /** The login's password (BULWARK_REST_PASSWORD); never part of the location. */
  password?: string;
  /** A PEM file of the CA (or the self-signed certificate) the server's certificate must chain to. */
  tlsCa?: string;
  /** SHA-256 of the server certificate (DER), hex, colons optional: pinned, no CA needed. */
  tlsFingerprint?: string;
  /** Requests in flight at once, each on its own kept-alive connection. */
  connections?: number;
  /** A request with no progress for this long fails (transiently). */
  timeoutMs?: number;
}

interface Reply {
  status: number;
  res: IncomingMessage;
}

interface Body {
  data: Buffer | FileSourceBody | undefined;
}

interface FileSourceBody {
  path: string;
  size: number;
}

/** The server's answer as an error: its status decides isNotFound and isPermanent. */
export class RestError extends BulwarkError {
  constructor(
    readonly status: number,
    code: ErrorCode,
    message: string,
    hint?: string,
  ) {
    super(code, message, hint === undefined ? {} : { hint });
  }
}

const DEFAULT_CONNECTIONS = 8;
const DEFAULT_TIMEOUT_MS = 60_000;
const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);
const TRANSIENT_CODES = new Set<ErrorCode>(['io', 'timeout', 'protocol']);
// Only reading a FileSource fails with an errno on our side; a missing or unreadable file stays so.
const LOCAL_PERMANENT_ERRNO = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'ELOOP']);
/** An error reply longer than this is not a message; the rest is dropped. */
const MAX_ERROR_BODY = 64 * 1024;
/** Listing lines longer than this are not entries (a name and a size); refusing keeps memory bounded. */
const MAX_LIST_LINE = 4096;
const LOCATION_HINT = 'write rest:https://user@host:port/path (http: only for 127.0.0.1 or localhost)';
const TLS_HINT = "pin the server's certificate with its SHA-256 fingerprint (bulwark serve-repo prints it), or give its CA certificate as a PEM file";

function usage(message: string, hint = LOCATION_HINT): BulwarkError {
  return new BulwarkError('usage', message, { hint });
}

/** Messages must not carry a password someone put into a location anyway. */
function redactLocation(location: string): string {
  return location.replace(/\/\/[^/@\s]*@/, '//***@');
}

function decode(part: string, location: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw usage(`the location '${redactLocation(location)}' has a bad %-escape`);
  }
}

/** `rest:https://user@host:port/path`; `http://` only to this machine, where nothing crosses a network. */
export function parseRestLocation(location: string): RestLocation {
  const m = /^rest:(https?):\/\/(.*)$/is.exec(location);
  if (!m) throw usage(`'${redactLocation(location)}' is not a rest:http(s):// location`);
  const secure = (m[1] ?? '').toLowerCase() === 'https';
  const rest = m[2] ?? '';
  const slash = rest.indexOf('/');
  const authority = slash < 0 ? rest : rest.slice(0, slash);
  const rawPath = slash < 0 ? '' : rest.slice(slash + 1);
  const at = authority.lastIndexOf('@');
  if (at < 0) throw usage(`the location '${location}' has no user name`);
  const userPart = authority.slice(0, at);
  if (userPart.includes(':')) throw usage(`the location '${redactLocation(location)}' contains a password`, 'give the password in BULWARK_REST_PASSWORD, never in the location');
  const user = decode(userPart, location);
  if (!SEGMENT.test(user)) throw usage(`the location '${location}' has an invalid user name '${user}'`);
  const hp = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/.exec(authority.slice(at + 1));
  if (!hp) throw usage(`the location '${location}' has an invalid host or port '${authority.slice(at + 1)}'`);
  const host = (hp[1] ?? '').replace(/^\[|\]$/g, '');
  if (hp[1]?.startsWith('[') && isIP(host) !== 6) throw usage(`'${hp[1]}' in '${location}' is not an IPv6 address`);
  const port = hp[2] === undefined ? (secure ? 443 : 80) : Number(hp[2]);
  if (!(port >= 1 && port <= 65535)) throw usage(`the location '${location}' has an invalid port '${hp[2] ?? ''}'`);
  if (!secure && !LOOPBACK.has(host.toLowerCase())) {
    throw usage(`refusing plain http to ${host}: the password and the repository would cross the network unprotected`, 'use rest:https://… (bulwark serve-repo serves HTTPS by default); http is allowed only for 127.0.0.1 and localhost');
  }
  const trimmed = rawPath.replace(/\/+$/, '');
  if (trimmed === '') throw usage(`the location '${location}' has no repository path`);
  const path = trimmed.split('/').map((s) => decode(s, location));
  for (const seg of path) {
    if (!SEGMENT.test(seg)) throw usage(`the repository path in '${location}' has an invalid part '${seg}' (letters, digits, ., _ and - only, not starting with a dot)`);
  }
  return { secure, user, host, port, path };
}

export function formatRestLocation(loc: RestLocation): string {
  const host = loc.host.includes(':') ? `[${loc.host}]` : loc.host;
  return `rest:${loc.secure ? 'https' : 'http'}://${encodeURIComponent(loc.user)}@${host}:${loc.port}/${loc.path.map(encodeURIComponent).join('/')}`;
}

function normalizeFingerprint(fp: string): string {
  const hex = fp.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw usage(`the TLS fingerprint '${fp}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)`, 'see: openssl x509 -noout -fingerprint -sha256 -in cert.pem');
  return hex;
}

/** The status of the server's answer along an error's cause chain. */
function statusOf(err: unknown): number | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; depth++) {
    if (e instanceof RestError) return e.status;
    e = e.cause;
  }
  return undefined;
}

function errnoChain(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    const code = e instanceof BulwarkError ? undefined : errnoCode(e);
    if (code !== undefined) return code;
    e = e instanceof Error ? e.cause : undefined;
  }
  return undefined;
}

/** Counts what passes and fails at the end unless it was exactly `size` bytes (a FileSource shorter than said). */
class ExactLength extends Transform {
  private seen = 0;

  constructor(
    private readonly size: number,
    private readonly what: string,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    cb(this.seen === this.size ? null : new BulwarkError('failed', `${this.what} ended after ${this.seen} of ${this.size} bytes`));
  }
}

/**
 * Checks the pinned certificate on each new connection. The check runs in the handshake's own
 * 'secureConnect' step, where Node itself refuses a certificate it cannot verify: the request (and its
 * Authorization header) is not sent on a socket destroyed there.
 */
class PinnedAgent extends https.Agent {
  constructor(
    private readonly pin: string,
    private readonly where: string,
    options: https.AgentOptions,
  ) {
    super(options);
  }

  override createConnection(options: https.RequestOptions): Duplex {
    const host = options.host ?? 'localhost';
    const sock: TLSSocket = tls.connect({
      host,
      port: Number(options.port),
      ...(isIP(host) === 0 ? { servername: host } : {}),
      // Verified by the pin below instead of a CA chain, which a self-signed certificate does not have.
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
    });
    sock.once('secureConnect', () => {
      const cert = sock.getPeerCertificate();
      const got = cert?.raw === undefined ? 'none' : createHash('sha256').update(cert.raw).digest('hex');
      if (got !== this.pin) {
        sock.destroy(
          new BulwarkError('failed', `the server ${this.where} presented a certificate with SHA-256 fingerprint ${got}, not the pinned ${this.pin}`, {
            hint: 'if the server certificate was replaced on purpose, pin the new fingerprint; otherwise someone may be intercepting the connection',
          }),
        );
      }
    });
    return sock;
  }
}

export class RestBackend implements Backend {
  readonly properties: BackendProperties;
  private readonly loc: RestLocation;
  private readonly password: string | undefined;
  private readonly timeoutMs: number;
  private readonly pin: string | undefined;
  private readonly tlsCaFile: string | undefined;
  private agent: Promise<http.Agent> | undefined;

  constructor(location: string | RestLocation, opts: RestBackendOptions = {}) {
    this.loc = typeof location === 'string' ? parseRestLocation(location) : location;
    const connections = opts.connections ?? DEFAULT_CONNECTIONS;
    if (!Number.isInteger(connections) || connections < 1) throw new Error(`connections must be a positive integer, not ${connections}`);
    this.password = opts.password;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.pin = opts.tlsFingerprint === undefined ? undefined : normalizeFingerprint(opts.tlsFingerprint);
    this.tlsCaFile = opts.tlsCa;
    if (!this.loc.secure && (this.pin !== undefined || this.tlsCaFile !== undefined)) throw usage('tlsCa and tlsFingerprint apply to rest:https:// locations only', 'write rest:https:// to use TLS');
    this.properties = { connections, location: formatRestLocation(this.loc) };
  }

  private get hostPort(): string {
    return `${this.loc.host.includes(':') ? `[${this.loc.host}]` : this.loc.host}:${this.loc.port}`;
  }

  private makeAgent(): Promise<http.Agent> {
    const base = { keepAlive: true, maxSockets: this.properties.connections, maxFreeSockets: this.properties.connections };
    if (!this.loc.secure) return Promise.resolve(new http.Agent(base));
    // No session resumption: a resumed session shows no certificate to check the pin against.
    const tlsBase: https.AgentOptions = { ...base, maxCachedSessions: 0, minVersion: 'TLSv1.2' };
    if (this.pin !== undefined) return Promise.resolve(new PinnedAgent(this.pin, this.hostPort, tlsBase));
    if (this.tlsCaFile !== undefined) {
      const file = this.tlsCaFile;
      return fsp.readFile(file).then(
        (ca) => new https.Agent({ ...tlsBase, ca }),
        (err: unknown) => {
          throw usage(`unable to read the TLS CA file '${file}': ${err instanceof Error ? err.message : String(err)}`, TLS_HINT);
        },
      );
    }
    return Promise.resolve(new https.Agent(tlsBase));
  }

  private getAgent(): Promise<http.Agent> {
    if (!this.agent) {
      this.agent = this.makeAgent();
      this.agent.catch(() => (this.agent = undefined));
    }
    return this.agent;
  }

  private urlPath(h?: Handle | FileType, trailing = false): string {
    const repo = '/' + this.loc.path.map(encodeURIComponent).join('/');
    if (h === undefined) return `${repo}/`;
    if (typeof h === 'string') return `${repo}/${h}${trailing ? '/' : ''}`;
    return h.type === 'config' ? `${repo}/config` : `${repo}/${h.type}/${h.name}`;
  }

  /** Names are hashes we computed or listed, so anything else is a bug, refused before any request. */
  private check(h: Handle): void {
    if (!FILE_TYPES.includes(h.type)) throw new Error(`invalid file type '${String(h.type)}'`);
    if (typeof h.name !== 'string') throw new Error(`invalid object name for ${h.type}`);
    if (h.type === 'config') {
      if (h.name !== '') throw new Error(`invalid name '${h.name}' for config (it has none)`);
      return;
    }
    if (!OBJECT_NAME.test(h.name)) throw new Error(`invalid ${h.type} name '${h.name}' (want 64 lowercase hex characters)`);
  }

  private what(h: Handle): string {
    return h.type === 'config' ? `config '${this.properties.location}'` : `${OBJECT_WORDS[h.type]} '${h.name}'`;
  }

  /** Sends one request; resolves with the response once its headers are in, whatever the status. */
  private async request(method: string, path: string, headers: Record<string, string | number>, body: Body): Promise<Reply> {
    if (this.password === undefined) {
      throw new BulwarkError('usage', `no password for ${this.properties.location}`, { hint: 'set BULWARK_REST_PASSWORD to the password of the repository server login' });
    }
    const agent = await this.getAgent();
    const auth = 'Basic ' + Buffer.from(`${this.loc.user}:${this.password}`).toString('base64');
    let source: fsp.FileHandle | undefined;
    const data = body.data;
    if (data !== undefined && !Buffer.isBuffer(data)) {
      source = await fsp.open(data.path, 'r');
      const have = (await source.stat().catch(async (err: unknown) => {
        await source?.close();
        throw err;
      })).size;
      if (have < data.size) {
        await source.close();
        throw new BulwarkError('failed', `${data.path} holds ${have} bytes, not ${data.size}`);
      }
    }
    const mod = this.loc.secure ? https : http;
    return new Promise<Reply>((resolve, reject) => {
      let settled = false;
      const fail = (err: unknown): void => {
        if (settled) return;
        settled = true;
        reject(err);
      };
      const req = mod.request(
        {
          agent,
          host: this.loc.host,
          port: this.loc.port,
          method,
          path,
          headers: { ...headers, Authorization: auth, Accept: 'application/json, application/octet-stream', ...(data !== undefined ? { 'Content-Length': Buffer.isBuffer(data) ? data.length : data.size, 'Content-Type': 'application/octet-stream' } : {}) },
          timeout: this.timeoutMs,
        },
        (res) => {
          settled = true;
          resolve({ status: res.statusCode ?? 0, res });
          // An early refusal (quota, login) needs no more of the upload.
          res.once('end', () => {
            if (!req.writableFinished) req.destroy();
          });
        },
      );
      req.on('timeout', () => req.destroy(new BulwarkError('timeout', `no answer from ${this.hostPort} in ${Math.round(this.timeoutMs / 1000)} s`, { hint: 'check the network and the server' })));
      req.on('error', fail);
      if (data === undefined) req.end();
      else if (Buffer.isBuffer(data)) req.end(data);
      else if (data.size === 0) {
        void source?.close();
        req.end();
      } else {
        const stream = source!.createReadStream({ start: 0, end: data.size - 1, highWaterMark: 256 * 1024 });
        pipeline(stream, new ExactLength(data.size, data.path), req).catch((err: unknown) => {
          req.destroy(err instanceof Error ? err : new Error(String(err)));
          fail(err);
        });
      }
    });
  }

  /** Reads a body of at most `limit` bytes. */
  private async readBody(res: IncomingMessage, limit: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > limit) {
        res.destroy();
        throw new BulwarkError('protocol', `the server ${this.hostPort} sent more than the ${limit} bytes expected`);
      }
      chunks.push(chunk);
    }
    return Buffer.concat(chunks);
  }

  /** The server's refusal as an error whose status and code say what it means. */
  private async failure(verb: string, what: string, r: Reply, createCall = false): Promise<RestError> {
    let message = '';
    let serverCode: string | undefined;
    try {
      const text = (await this.readBody(r.res, MAX_ERROR_BODY)).toString('utf8');
      try {
        const j = JSON.parse(text) as { error?: unknown; code?: unknown };
        if (typeof j.error === 'string') message = j.error;
        if (typeof j.code === 'string') serverCode = j.code;
      } catch {
        message = text.trim().slice(0, 300);
      }
    } catch {
      // The status alone has to do.
    }
    const reason = message || r.res.statusMessage || `HTTP ${r.status}`;
    const text = `unable to ${verb} ${what}: ${reason} (HTTP ${r.status} from ${this.hostPort})`;
    switch (r.status) {
      case 404:
        return new RestError(404, 'not-found', text);
      case 401:
        return new RestError(401, 'usage', `unable to ${verb} ${what}: the server ${this.hostPort} refused the login of '${this.loc.user}'`, 'check the user name in the location and the password (BULWARK_REST_PASSWORD)');
      case 403:
        if (serverCode === 'append-only') return new RestError(403, 'append-only', text, 'the server keeps this repository append-only; deleting needs a login that is not append-only, on the server');
        return new RestError(403, 'failed', text);
      case 507:
        return new RestError(507, 'no-space', text, 'free space on the server (forget and prune) or ask its administrator for a larger quota; objects already saved are intact');
      case 409:
        if (createCall || serverCode === 'repository-exists') return new RestError(409, 'repository-exists', text, 'use it as it is, or choose another location');
        return new RestError(409, 'repository-corrupt', text, "run 'bulwark check'");
      case 416:
        return new RestError(416, 'repository-corrupt', text, "the index and the stored object disagree: run 'bulwark check'");
    }
    if (r.status >= 500) return new RestError(r.status, 'io', text, 'the server had a problem; the operation can be retried');
    return new RestError(r.status, serverCode === 'usage' ? 'usage' : 'failed', text);
  }

  /** Errors that are not the server's answer (no connection, TLS, a cut-off reply) in the common template. */
  private wrap(verb: string, what: string, err: unknown): BulwarkError {
    if (err instanceof RestError) return err;
    const reason = err instanceof Error ? err.message : String(err);
    if (err instanceof BulwarkError) return new BulwarkError(err.code, `unable to ${verb} ${what}: ${reason}`, { cause: err, ...(err.hint ? { hint: err.hint } : {}) });
    const errno = errnoChain(err);
    const tlsCode = errnoCode(err);
    if (tlsCode !== undefined && /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS/.test(tlsCode)) {
      return new BulwarkError('failed', `unable to ${verb} ${what}: the server ${this.hostPort} presented a certificate that could not be verified (${reason})`, { cause: err, hint: TLS_HINT });
    }
    if (errno !== undefined && LOCAL_PERMANENT_ERRNO.has(errno) && !(err instanceof Error && 'syscall' in err && (err as { syscall?: unknown }).syscall === 'connect')) {
      return new BulwarkError('failed', `unable to ${verb} ${what}: ${reason}`, { cause: err });
    }
    return new BulwarkError('io', `unable to ${verb} ${what}: ${reason} (talking to ${this.hostPort})`, { cause: err, hint: 'check the network and the server; the operation can be retried' });
  }

  async create(): Promise<void> {
    const what = `repository '${this.properties.location}'`;
    try {
      const r = await this.request('POST', `${this.urlPath()}?create=true`, {}, { data: undefined });
      if (r.status !== 200) throw await this.failure('create', what, r, true);
      await this.readBody(r.res, MAX_ERROR_BODY);
    } catch (err) {
      throw this.wrap('create', what, err);
    }
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    this.check(h);
    const what = this.what(h);
    try {
      const body = isFileSource(data) ? { path: data.path, size: saveSize(data) } : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      const r = await this.request('POST', this.urlPath(h), {}, { data: body });
      if (r.status !== 200) throw await this.failure('save', what, r);
      await this.readBody(r.res, MAX_ERROR_BODY);
    } catch (err) {
      throw this.wrap('save', what, err);
    }
  }

  async load(h: Handle, offset?: number, length?: number): Promise<Buffer> {
    this.check(h);
    if (offset !== undefined && (!Number.isSafeInteger(offset) || offset < 0)) throw new Error(`invalid offset ${offset}`);
    if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new Error(`invalid length ${length}`);
    const what = this.what(h);
    const start = offset ?? 0;
    let want = length;
    // HTTP has no empty range, and "from here to the end" is unsatisfiable at the very end; so those
    // ask for the size first (the object must still exist and be long enough).
    if (length === 0 || (length === undefined && start > 0)) {
      const { size } = await this.stat(h);
      const n = length ?? size - start;
      if (n < 0 || start + n > size) throw new RestError(416, 'repository-corrupt', `unable to read ${what}: it has ${size} bytes, so ${length ?? 'the rest'} bytes at offset ${start} lie beyond its end`, "the index and the stored object disagree: run 'bulwark check'");
      if (n === 0) return Buffer.alloc(0);
      want = n;
    }
    const ranged = want !== undefined;
    const range = want !== undefined ? `bytes=${start}-${start + want - 1}` : undefined;
    try {
      const r = await this.request('GET', this.urlPath(h), range === undefined ? {} : { Range: range }, { data: undefined });
      if (r.status !== (ranged ? 206 : 200)) throw await this.failure('read', what, r);
      const expected = Number(r.res.headers['content-length']);
      if (!Number.isSafeInteger(expected) || (want !== undefined && expected !== want)) {
        r.res.destroy();
        throw new BulwarkError('protocol', `the server ${this.hostPort} answered with ${r.res.headers['content-length'] ?? 'no'} Content-Length${want !== undefined ? `, not ${want}` : ''}`);
      }
      const buf = await this.readBody(r.res, expected);
      if (buf.length !== expected) throw new BulwarkError('protocol', `the reply from ${this.hostPort} ended after ${buf.length} of ${expected} bytes`);
      return buf;
    } catch (err) {
      throw this.wrap('read', what, err);
    }
  }

  async stat(h: Handle): Promise<FileInfo> {
    this.check(h);
    const what = this.what(h);
    try {
      const r = await this.request('HEAD', this.urlPath(h), {}, { data: undefined });
      r.res.resume();
      if (r.status !== 200) throw await this.failure('stat', what, r);
      const size = Number(r.res.headers['content-length']);
      if (!Number.isSafeInteger(size) || size < 0) throw new BulwarkError('protocol', `the server ${this.hostPort} sent no size for ${what}`);
      return { name: h.name, size };
    } catch (err) {
      throw this.wrap('stat', what, err);
    }
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (!FILE_TYPES.includes(type)) throw new Error(`invalid file type '${String(type)}'`);
    if (type === 'config') {
      try {
        yield await this.stat({ type: 'config', name: '' });
      } catch (err) {
        if (!this.isNotFound(err)) throw err;
      }
      return;
    }
    const what = `${type} folder`;
    let r: Reply;
    try {
      r = await this.request('GET', this.urlPath(type, true), {}, { data: undefined });
      if (r.status !== 200) throw await this.failure('list', what, r);
    } catch (err) {
      throw this.wrap('list', what, err);
    }
    // One entry per line (see the server), so entries are yielded as they arrive.
    let pending = '';
    let closed = false;
    try {
      for await (const chunk of r.res as AsyncIterable<Buffer>) {
        pending += chunk.toString('utf8');
        let nl: number;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl).trim();
          pending = pending.slice(nl + 1);
          if (line === '[' || line === '') continue;
          if (line === ']') {
            closed = true;
            continue;
          }
          yield this.entry(line.replace(/,$/, ''), type);
        }
        if (pending.length > MAX_LIST_LINE) throw new BulwarkError('protocol', `the listing from ${this.hostPort} has a line longer than ${MAX_LIST_LINE} characters`);
      }
      if (pending.trim() === ']') closed = true;
      else if (pending.trim() !== '') yield this.entry(pending.trim(), type);
      // The server ends the listing with ']'; without it the connection broke midway.
      if (!closed) throw new BulwarkError('io', `the listing from ${this.hostPort} was cut off`);
    } catch (err) {
      r.res.destroy();
      throw this.wrap('list', what, err);
    }
  }

  private entry(line: string, type: FileType): FileInfo {
    let j: unknown;
    try {
      j = JSON.parse(line);
    } catch {
      throw new BulwarkError('protocol', `the listing from ${this.hostPort} has a line that is not JSON`);
    }
    const e = j as { name?: unknown; size?: unknown };
    if (typeof e.name !== 'string' || !OBJECT_NAME.test(e.name) || typeof e.size !== 'number' || !Number.isSafeInteger(e.size) || e.size < 0) {
      throw new BulwarkError('protocol', `the listing of ${type} from ${this.hostPort} has an invalid entry`);
    }
    return { name: e.name, size: e.size };
  }

  async remove(h: Handle): Promise<void> {
    this.check(h);
    const what = this.what(h);
    try {
      const r = await this.request('DELETE', this.urlPath(h), {}, { data: undefined });
      if (r.status !== 200) throw await this.failure('remove', what, r);
      await this.readBody(r.res, MAX_ERROR_BODY);
    } catch (err) {
      throw this.wrap('remove', what, err);
    }
  }

  isNotFound(err: unknown): boolean {
    return statusOf(err) === 404;
  }

  isPermanent(err: unknown): boolean {
    const status = statusOf(err);
    // 408 and 429 say "later"; other 4xx (401, 403, 400, 404, 416) and 507 no retry can change.
    if (status !== undefined) return status === 507 || (status >= 400 && status < 500 && status !== 408 && status !== 429);
    if (err instanceof BulwarkError) return !TRANSIENT_CODES.has(err.code);
    // Not ours and no status: a programmer error (bad name, bad offset), which no retry fixes.
    return true;
  }

  async close(): Promise<void> {
    const agent = await this.agent?.catch(() => undefined);
    this.agent = undefined;
    agent?.destroy();
  }
}
