// A repository on an FTP server, plain (ftp://) or with explicit TLS (ftps://, AUTH TLS), always in
// passive mode. Same layout as the local backend, so a repository copied between a disk and a server
// (lftp mirror, rsync to the FTP root) stays usable.
//
// FTP runs one transfer at a time per control connection, so the backend keeps a small pool of logged
// in connections (properties.connections of them), each serving one request at a time. A connection
// whose state is unknown after a failure (socket error, timeout, aborted transfer gone wrong) is
// closed and a new one is made on the next request; a clean error reply from the server keeps it.
import { createReadStream, promises as fsp } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import type { ConnectionOptions, PeerCertificate, TLSSocket } from 'node:tls';
import type * as BasicFtp from 'basic-ftp';
import type { Client, FTPResponse, TaskResolver, TransferStrategy } from 'basic-ftp';
import { lazyRequire } from '../util/lazy-require.js';
import { BulwarkError, errnoCode, unable, type ErrorCode } from '../util/errors.js';
import { OBJECT_NAME, objectPath } from './layout.js';
import { FILE_TYPES, OBJECT_WORDS, isFileSource, saveSize, type Backend, type BackendProperties, type FileInfo, type FileType, type Handle, type SaveData } from './backend.js';

const ftp = lazyRequire<typeof BasicFtp>('basic-ftp');

export interface FtpLocation {
  /** ftps: explicit TLS (AUTH TLS) on the control and every data connection. */
  secure: boolean;
  user: string;
  /** From the location itself (discouraged); the option `password` is the usual way. */
  password: string | undefined;
  /** Without brackets, also for IPv6. */
  host: string;
  port: number;
  /** Relative to the login folder ('repo'), or absolute ('/srv/repo', written //srv/repo or /%2Fsrv/repo). */
  path: string;
}

export interface FtpBackendOptions {
  /** Login password when the location has none (the CLI fills it from BULWARK_FTP_PASSWORD). */
  password?: string;
  /** A PEM file of the CA (or the self-signed certificate) to trust for ftps:, instead of the system CAs. */
  tlsCa?: string;
  /** The SHA-256 fingerprint of the server certificate (hex, colons optional): pinned, no CA needed. */
  tlsFingerprint?: string;
  /** Pool size: connections (and so requests) in flight at once. */
  connections?: number;
  /** Inactivity limit on control and data connections, and the limit on connecting and logging in. */
  timeoutMs?: number;
}

interface Pooled {
  client: Client;
  /** Set when the control connection's state is unknown: closed on release, never reused. */
  spoiled: boolean;
}

const TEMP_PREFIX = '.tmp-';
const DATA_SUBDIRS = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const LAYOUT_DIRS: readonly string[] = FILE_TYPES.filter((t) => t !== 'config');
const TRANSIENT_CODES = new Set<ErrorCode>(['io', 'timeout', 'protocol']);
// Socket-level failures: the server or the network went away, a new connection may well work.
const TRANSIENT_ERRNO = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EAI_AGAIN', 'ERR_STREAM_PREMATURE_CLOSE']);
// Node's certificate verdicts: no retry makes an untrusted certificate trusted.
const CERT_ERRORS = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|ALTNAME/;
const DEFAULT_PORT = 21;
const DEFAULT_CONNECTIONS = 4;
const DEFAULT_TIMEOUT_MS = 30_000;
/** Data subfolders listed ahead of the consumer: round trips overlap, memory stays bounded. */
const LIST_AHEAD = 4;
const MKDIR_BATCH = 32;
const EMPTY_TLS_UPLOAD_PAUSE_MS = 100;
/** How long a server may take to answer a download we cut short (RFC 959 says 426, at once). */
const ABORT_REPLY_MS = 5_000;
const LOCATION_HINT = 'write ftp://user@host[:port]/path or ftps://user@host[:port]/path (the path is relative to the login folder; //path or /%2Fpath for an absolute one)';
const LOGIN_HINT = 'check the user in the location and the password (BULWARK_FTP_PASSWORD)';
const TLS_HINT = "give the server's CA certificate (PEM) with the tlsCa option, or pin its certificate with tlsFingerprint";

function usage(message: string, hint = LOCATION_HINT): BulwarkError {
  return new BulwarkError('usage', message, { hint });
}

function decode(part: string, what: string, location: string): string {
  let s: string;
  try {
    s = decodeURIComponent(part);
  } catch {
    throw usage(`the ${what} in '${redactLocation(location)}' has a bad %-escape`);
  }
  // CR or LF would end the FTP command early and let the rest become a command of its own.
  if (/[\r\n\0]/.test(s)) throw usage(`the ${what} in '${redactLocation(location)}' contains a line break or NUL character`);
  return s;
}

/** Messages must not carry a password someone put into a location. */
function redactLocation(location: string): string {
  return location.replace(/\/\/([^/@\s:]*):[^/@\s]*@/, '//$1:***@');
}

/** Reads `ftp://user[:password]@host[:port]/path` and the same with `ftps://`; IPv6 hosts in brackets. */
export function parseFtpLocation(location: string): FtpLocation {
  const m = /^(ftps?):\/\/([^/]*)(?:\/(.*))?$/is.exec(location);
  if (!m) throw usage(`'${redactLocation(location)}' is not an ftp:// or ftps:// location`);
  const secure = (m[1] ?? '').toLowerCase() === 'ftps';
  const authority = m[2] ?? '';
  const at = authority.lastIndexOf('@');
  if (at < 0) throw usage(`the location '${location}' has no user name`);
  const userInfo = authority.slice(0, at);
  const hostPort = authority.slice(at + 1);
  const colon = userInfo.indexOf(':');
  const user = decode(colon < 0 ? userInfo : userInfo.slice(0, colon), 'user name', location);
  const password = colon < 0 ? undefined : decode(userInfo.slice(colon + 1), 'password', location);
  if (user === '') throw usage(`the location '${redactLocation(location)}' has an empty user name`);
  const hp = /^(\[[^\]]*\]|[^:[\]]*)(?::([^:]*))?$/.exec(hostPort);
  if (!hp) throw usage(`the location '${redactLocation(location)}' has an invalid host or port '${hostPort}'`);
  let host = hp[1] ?? '';
  if (host.startsWith('[')) {
    host = host.slice(1, -1);
    if (!/^[0-9a-fA-F:.]+$/.test(host) || !host.includes(':')) throw usage(`'${hp[1]}' in '${redactLocation(location)}' is not an IPv6 address`);
  } else if (!/^[A-Za-z0-9._-]+$/.test(host)) {
    throw usage(`the location '${redactLocation(location)}' has ${host === '' ? 'no host' : `an invalid host '${host}'`}`);
  }
  let port = DEFAULT_PORT;
  if (hp[2] !== undefined) {
    port = /^\d{1,5}$/.test(hp[2]) ? Number(hp[2]) : NaN;
    if (!(port >= 1 && port <= 65535)) throw usage(`the location '${redactLocation(location)}' has an invalid port '${hp[2]}'`);
  }
  const raw = decode(m[3] ?? '', 'path', location);
  // Trailing slashes would only make folder names in messages differ from the ones in the location.
  const path = raw.length > 1 ? raw.replace(/\/+$/, '') || '/' : raw;
  if (path === '') throw usage(`the location '${redactLocation(location)}' has no path`, `${LOCATION_HINT}; the login folder itself is not accepted, give a folder in it`);
  if (path.split('/').some((p) => p === '..')) throw usage(`the path in '${redactLocation(location)}' contains '..'`);
  return { secure, user, password, host, port, path };
}

/** The canonical form for messages: scheme, user, host, port and path, never the password. */
export function formatFtpLocation(loc: FtpLocation): string {
  const host = loc.host.includes(':') ? `[${loc.host}]` : loc.host;
  const path = loc.path.split('/').map(encodeURIComponent).join('/');
  return `${loc.secure ? 'ftps' : 'ftp'}://${encodeURIComponent(loc.user)}@${host}:${loc.port}/${path}`;
}

function normalizeFingerprint(fp: string): string {
  const hex = fp.replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw usage(`the TLS fingerprint '${fp}' is not a SHA-256 fingerprint (64 hex digits, colons allowed)`, 'see: openssl x509 -noout -fingerprint -sha256 -in cert.pem');
  return hex;
}

function fingerprintOf(cert: PeerCertificate): string {
  return createHash('sha256').update(cert.raw).digest('hex');
}

/** The errno-like code of an error or its causes (Node system errors, TLS verdicts). */
function codeChain(err: unknown): string[] {
  const codes: string[] = [];
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    const code = e instanceof BulwarkError ? undefined : errnoCode(e);
    if (code !== undefined) codes.push(code);
    e = e instanceof Error ? e.cause : undefined;
  }
  return codes;
}

/**
 * One failure of the FTP layer as a BulwarkError whose code decides isNotFound/isPermanent: a clean
 * 550 where a file was expected is "not found", a 4xx reply or a lost socket is worth retrying, a 5xx
 * reply or an untrusted certificate is not.
 */
function classify(err: unknown, missingIsNotFound: boolean): BulwarkError {
  if (err instanceof BulwarkError) return err;
  const reason = err instanceof Error ? err.message : String(err);
  if (err instanceof ftp().FTPError) {
    const c = err.code;
    if (c === 550 && missingIsNotFound) return new BulwarkError('not-found', reason, { cause: err });
    if (c === 530 || c === 532) return new BulwarkError('failed', `the server refused the login (${reason})`, { cause: err, hint: LOGIN_HINT });
    // 452/552: no space. The contract (backend.ts) makes "no space" permanent, as for a local disk.
    if (c === 452 || c === 552) return new BulwarkError('no-space', `no space left on the FTP server (${reason})`, { cause: err, hint: 'free space on the server; objects already saved are intact' });
    if (c >= 400 && c < 500) return new BulwarkError('io', reason, { cause: err });
    return new BulwarkError('failed', reason, { cause: err, ...(c === 550 || c === 553 ? { hint: 'check that the repository folder exists and is writable by this FTP user' } : {}) });
  }
  const codes = codeChain(err);
  if (codes.some((c) => CERT_ERRORS.test(c))) return new BulwarkError('failed', `the server's TLS certificate is not trusted (${reason})`, { cause: err, hint: TLS_HINT });
  if (/timeout/i.test(reason) || codes.includes('ETIMEDOUT')) return new BulwarkError('timeout', reason, { cause: err });
  if (codes.some((c) => TRANSIENT_ERRNO.has(c))) return new BulwarkError('io', reason, { cause: err });
  // basic-ftp reports a closed or broken control connection as a plain Error ("Server sent FIN…",
  // "Client is closed because …"): the connection is gone, a new one may work.
  return new BulwarkError('io', reason, { cause: err });
}

function ftpError(verb: string, object: string, path: string, err: unknown, missingIsNotFound = true): BulwarkError {
  return unable(verb, object, path, classify(err, missingIsNotFound));
}

function beyondEnd(size: number, offset: number, length: number): BulwarkError {
  return new BulwarkError('repository-corrupt', `it has ${size} bytes, so ${length} bytes at offset ${offset} lie beyond its end`, {
    hint: "the index and the stored object disagree: run 'bulwark check'",
  });
}

/** Counts what passes, so a source file that ends early is noticed even though the server took it. */
class Counter extends Transform {
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

/**
 * Nothing to send. Over TLS 1.3, a data connection closed the instant its handshake completes makes
 * vsftpd fail the transfer (alert 50, decode error) before it has read the session ticket exchange;
 * a short pause lets the handshake settle first.
 */
function emptySource(secure: boolean): Readable {
  if (!secure) return Readable.from([]);
  const r = new Readable({ read: () => undefined });
  setTimeout(() => r.push(null), EMPTY_TLS_UPLOAD_PAUSE_MS);
  return r;
}

/** SIZE of a file, or undefined when the server says there is none (550). */
async function sizeOf(c: Client, path: string): Promise<number | undefined> {
  try {
    return await c.size(path);
  } catch (err) {
    if (err instanceof ftp().FTPError && err.code === 550) return undefined;
    throw err;
  }
}

/**
 * RETR from `start` (REST first), reading `limit` bytes at most. With a limit, the data connection is
 * closed as soon as enough arrived, so a range from a large pack transfers about the range (plus what
 * the socket buffers held), not the rest of the pack. The server answers the closed data connection
 * with 426 (or 226 when it had sent everything already); that reply is awaited here, so it cannot be
 * mistaken for the reply to the connection's next command.
 */
async function retrieve(c: Client, path: string, start: number, limit: number | undefined): Promise<Buffer> {
  const ctx = c.ftp;
  const validPath = await c.protectWhitespace(path);
  await c.prepareTransfer(ctx);
  const chunks: Buffer[] = [];
  let got = 0;
  let started = false;
  let aborted = false;
  let dataDone = false;
  let reply: FTPResponse | undefined;
  await ctx.handle(start > 0 ? `REST ${start}` : `RETR ${validPath}`, (res: Error | FTPResponse, task: TaskResolver) => {
    const finish = () => {
      if (!dataDone || reply === undefined) return;
      ctx.dataSocket = undefined;
      task.resolve(reply);
    };
    const fail = (err: Error) => {
      ctx.socket.setTimeout(ctx.timeout);
      ctx.dataSocket = undefined;
      task.reject(err);
    };
    if (res instanceof Error) {
      // 426/451 after we closed the data connection on purpose: the transfer ended as we wanted.
      if (aborted && res instanceof ftp().FTPError && res.code >= 400 && res.code < 500) {
        reply = { code: res.code, message: res.message };
        finish();
        return;
      }
      fail(res);
      return;
    }
    if (res.code === 350) {
      ctx.send(`RETR ${validPath}`);
      return;
    }
    if (res.code === 150 || res.code === 125) {
      if (started) return;
      started = true;
      const sock = ctx.dataSocket;
      if (!sock) {
        fail(new Error('the server started a download but no data connection is open'));
        return;
      }
      // The control connection is idle during a transfer; the data connection's silence is what counts.
      ctx.socket.setTimeout(0);
      sock.setTimeout(ctx.timeout, () => ctx.closeWithError(new Error('Timeout (data connection)')));
      const stop = () => {
        aborted = true;
        dataDone = true;
        sock.removeAllListeners('data');
        sock.destroy();
        ctx.socket.setTimeout(ctx.timeout);
        finish();
        if (reply !== undefined) return;
        // A server that never answers the cut-off transfer must not cost us the bytes we hold: they
        // are returned, and the connection (whose next reply is now unknown) is closed, not reused.
        const grace = setTimeout(() => {
          if (reply !== undefined) return;
          task.resolve({ code: 0, message: 'no reply to the aborted transfer' });
          ctx.closeWithError(new Error('the server did not answer an aborted transfer'));
        }, ABORT_REPLY_MS);
        grace.unref();
      };
      sock.on('data', (chunk: Buffer) => {
        if (limit !== undefined && got + chunk.length >= limit) {
          chunks.push(chunk.subarray(0, limit - got));
          got = limit;
          stop();
          return;
        }
        chunks.push(chunk);
        got += chunk.length;
      });
      sock.once('error', (err: Error) => {
        if (!aborted) fail(err);
      });
      sock.once('close', () => {
        if (aborted) return;
        dataDone = true;
        ctx.socket.setTimeout(ctx.timeout);
        finish();
      });
      if (limit === 0) stop();
      return;
    }
    if (res.code >= 200 && res.code < 300) {
      reply = res;
      finish();
    }
    // Other preliminary replies (1xx) carry nothing for us.
  });
  return Buffer.concat(chunks, got);
}

/** Connections to one server, each doing one request at a time. */
class Pool {
  private readonly idle: Pooled[] = [];
  private readonly all = new Set<Pooled>();
  private readonly waiters: (() => void)[] = [];
  private opening = 0;
  private closed = false;

  constructor(
    private readonly size: number,
    private readonly connect: () => Promise<Client>,
  ) {}

  async run<T>(fn: (c: Client) => Promise<T>): Promise<T> {
    const p = await this.acquire();
    try {
      return await fn(p.client);
    } catch (err) {
      // A clean error reply leaves the connection in a known state; anything else (a socket error, a
      // timeout, a transfer that broke) may leave replies in flight that would confuse the next request.
      // Our own verdicts (a short object, a size mismatch) come after a finished exchange.
      if (!(err instanceof ftp().FTPError) && !(err instanceof BulwarkError)) p.spoiled = true;
      throw err;
    } finally {
      this.release(p);
    }
  }

  private async acquire(): Promise<Pooled> {
    for (;;) {
      if (this.closed) throw new BulwarkError('failed', 'the FTP backend is closed');
      const p = this.idle.pop();
      if (p !== undefined) {
        if (!p.client.closed) return p;
        this.drop(p);
        continue;
      }
      if (this.all.size + this.opening < this.size) {
        this.opening++;
        try {
          const client = await this.connect();
          const fresh = { client, spoiled: false };
          if (this.closed) {
            client.close();
            throw new BulwarkError('failed', 'the FTP backend is closed');
          }
          this.all.add(fresh);
          return fresh;
        } finally {
          this.opening--;
          // A failed connect frees its slot; someone waiting may try in turn.
          this.wake();
        }
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  private release(p: Pooled): void {
    if (p.spoiled || p.client.closed || this.closed) this.drop(p);
    else this.idle.push(p);
    this.wake();
  }

  private drop(p: Pooled): void {
    this.all.delete(p);
    p.client.close();
  }

  private wake(): void {
    this.waiters.shift()?.();
  }

  close(): void {
    this.closed = true;
    for (const p of this.all) p.client.close();
    this.all.clear();
    this.idle.length = 0;
    for (const w of this.waiters.splice(0)) w();
  }
}

export class FtpBackend implements Backend {
  readonly properties: BackendProperties;
  private readonly loc: FtpLocation;
  private readonly root: string;
  private readonly pool: Pool;
  private readonly timeoutMs: number;
  private readonly password: string;
  private readonly tlsCaFile: string | undefined;
  private readonly pin: string | undefined;
  private ca: Promise<Buffer> | undefined;

  constructor(location: string, opts: FtpBackendOptions = {}) {
    this.loc = parseFtpLocation(location);
    const connections = opts.connections ?? DEFAULT_CONNECTIONS;
    if (!Number.isInteger(connections) || connections < 1) throw new Error(`connections must be a positive integer, not ${connections}`);
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.password = this.loc.password ?? opts.password ?? '';
    if (/[\r\n\0]/.test(this.password)) throw usage('the FTP password contains a line break or NUL character', LOGIN_HINT);
    this.tlsCaFile = opts.tlsCa;
    this.pin = opts.tlsFingerprint === undefined ? undefined : normalizeFingerprint(opts.tlsFingerprint);
    if (!this.loc.secure && (this.tlsCaFile !== undefined || this.pin !== undefined)) throw usage('tlsCa and tlsFingerprint apply to ftps:// locations only', 'write ftps:// to use TLS');
    this.root = this.loc.path;
    this.properties = { connections, location: formatFtpLocation(this.loc) };
    this.pool = new Pool(connections, () => this.connect());
  }

  private where(): string {
    return this.properties.location;
  }

  /** A path on the server as messages show it: with the server, so a timeout says whose it was. */
  private at(path: string): string {
    const host = this.loc.host.includes(':') ? `[${this.loc.host}]` : this.loc.host;
    return `${this.loc.secure ? 'ftps' : 'ftp'}://${host}:${this.loc.port}/${path}`;
  }

  private async tlsOptions(): Promise<ConnectionOptions> {
    const opts: ConnectionOptions = { host: this.loc.host, minVersion: 'TLSv1.2' };
    // A pinned certificate is checked by us (below) rather than by the CA chain, which it may not have.
    if (this.pin !== undefined) return { ...opts, rejectUnauthorized: false };
    if (this.tlsCaFile !== undefined) {
      this.ca ??= fsp.readFile(this.tlsCaFile);
      const file = this.tlsCaFile;
      const ca = await this.ca.catch((err: unknown) => {
        this.ca = undefined;
        throw usage(`unable to read the TLS CA file '${file}': ${err instanceof Error ? err.message : String(err)}`, TLS_HINT);
      });
      return { ...opts, ca };
    }
    return opts;
  }

  /** The pin, on the control connection (before the password is sent) and on each new data connection. */
  private checkPin(sock: TLSSocket): void {
    if (this.pin === undefined) return;
    const cert = sock.getPeerCertificate();
    // A resumed session presents no certificate; only a server holding the session secret can resume.
    if (sock.isSessionReused() && (cert === undefined || Object.keys(cert).length === 0)) return;
    const got = cert?.raw === undefined ? 'none' : fingerprintOf(cert);
    if (got !== this.pin) {
      throw new BulwarkError('failed', `the FTPS server ${this.loc.host}:${this.loc.port} presented a certificate with SHA-256 fingerprint ${got}, not the pinned ${this.pin}`, {
        hint: 'if the server certificate was replaced on purpose, pin the new fingerprint; otherwise someone may be intercepting the connection',
      });
    }
  }

  private async connect(): Promise<Client> {
    const client = new (ftp().Client)(this.timeoutMs);
    try {
      await client.connect(this.loc.host, this.loc.port);
      if (this.loc.secure) {
        await client.useTLS(await this.tlsOptions());
        const sock = client.ftp.socket;
        if ('getPeerCertificate' in sock) this.checkPin(sock);
      }
      client.prepareTransfer = this.passive();
      await client.sendIgnoringError('OPTS UTF8 ON');
      await client.login(this.loc.user, this.password);
      await client.useDefaultSettings();
      return client;
    } catch (err) {
      client.close();
      const e = classify(err, false);
      throw new BulwarkError(e.code, `unable to connect to ${this.where()}: ${e.message}`, { cause: e, ...(e.hint ? { hint: e.hint } : {}) });
    }
  }

  /**
   * Passive mode (EPSV, else PASV), chosen here rather than by basic-ftp: its own chooser replaces
   * itself once a mode works, and this one must stay, because with a pin (and no CA to check the chain)
   * each new data connection's certificate is checked against the pin as its handshake completes,
   * before the transfer command's first byte goes through it.
   */
  private passive(): TransferStrategy {
    let modes: TransferStrategy[] = [ftp().enterPassiveModeIPv6, ftp().enterPassiveModeIPv4];
    return async (ctx) => {
      let last: unknown;
      for (const mode of modes) {
        try {
          const res = await mode(ctx);
          modes = [mode];
          const sock = ctx.dataSocket;
          if (this.pin !== undefined && sock !== undefined && 'getPeerCertificate' in sock) {
            sock.once('secureConnect', () => {
              try {
                this.checkPin(sock);
              } catch (err) {
                ctx.closeWithError(err instanceof Error ? err : new Error(String(err)));
              }
            });
          }
          return res;
        } catch (err) {
          // A server may answer EPSV wrongly; a closed connection will not get better with PASV.
          if (ctx.closed) throw err;
          last = err;
        }
      }
      throw last instanceof Error ? last : new Error(`no passive mode works: ${String(last)}`);
    };
  }

  private pathOf(h: Handle): { dir: string; path: string } {
    return objectPath(this.root, h);
  }

  async create(): Promise<void> {
    const config = posix.join(this.root, 'config');
    const exists = await this.pool.run((c) => sizeOf(c, config)).catch((err: unknown) => {
      throw ftpError('create', 'repository', this.where(), err, false);
    });
    if (exists !== undefined) throw new BulwarkError('repository-exists', `a repository already exists at '${this.where()}'`, { hint: 'use it as it is, or choose another location' });
    try {
      await this.pool.run(async (c) => {
        // Each level of the path, so a new repository can be made in a new folder.
        const parts = this.root.split('/');
        for (let i = 1; i <= parts.length; i++) {
          const p = parts.slice(0, i).join('/');
          if (p !== '' && p !== '.') await this.mkdir(c, p);
        }
        await this.assertNoStrangers(c);
        for (const t of LAYOUT_DIRS) await this.mkdir(c, posix.join(this.root, t));
      });
      const subs = DATA_SUBDIRS.map((s) => posix.join(this.root, 'data', s));
      const batches: string[][] = [];
      for (let i = 0; i < subs.length; i += MKDIR_BATCH) batches.push(subs.slice(i, i + MKDIR_BATCH));
      await Promise.all(
        batches.map((b) =>
          this.pool.run(async (c) => {
            for (const d of b) await this.mkdir(c, d);
          }),
        ),
      );
    } catch (err) {
      throw ftpError('create', 'repository', this.where(), err, false);
    }
  }

  /** MKD that accepts a folder already there (vsftpd says 550 for that too, so it is checked by CWD). */
  private async mkdir(c: Client, dir: string): Promise<void> {
    try {
      await c.send(`MKD ${await c.protectWhitespace(dir)}`);
    } catch (err) {
      if (!(err instanceof ftp().FTPError)) throw err;
      // CWD is only a probe: all paths here are relative to the login folder, so go back to it at once.
      const home = await c.pwd();
      try {
        await c.cd(dir);
      } catch {
        throw err;
      } finally {
        await c.cd(home);
      }
    }
  }

  /** A folder with other things in it is almost certainly the wrong place (a home folder, a web root). */
  private async assertNoStrangers(c: Client): Promise<void> {
    const strangers: string[] = [];
    for (const e of await c.list(this.root)) {
      if (e.name.startsWith('.') || e.name === 'lost+found') continue;
      if (!LAYOUT_DIRS.includes(e.name) || e.type !== ftp().FileType.Directory) strangers.push(e.name);
      else if (e.name !== 'data' && (await c.list(posix.join(this.root, e.name))).some((x) => !x.name.startsWith('.'))) strangers.push(e.name);
    }
    if (strangers.length > 0) {
      throw new BulwarkError('usage', `the folder is not empty and not a repository (it holds ${strangers.slice(0, 3).join(', ')}${strangers.length > 3 ? ', …' : ''})`, {
        hint: 'create a repository in an empty or new folder (if an earlier init was interrupted, remove the folder and run init again)',
      });
    }
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    const { dir, path } = this.pathOf(h);
    const size = saveSize(data);
    const object = OBJECT_WORDS[h.type];
    if (isFileSource(data)) {
      // Checked before any upload: a short source would otherwise only show after the transfer.
      const st = await fsp.stat(data.path).catch((err: unknown) => {
        throw unable('write', object, path, new BulwarkError('failed', `cannot read ${data.path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
      });
      if (st.size < size) throw unable('write', object, path, new BulwarkError('failed', `${data.path} holds ${st.size} bytes, not ${size}`));
    }
    try {
      await this.pool.run(async (c) => {
        const existing = await sizeOf(c, path);
        // The config is the one object that is replaced (by a format upgrade): the rename does that.
        if (existing !== undefined && h.type !== 'config') {
          if (existing !== size) throw corrupt(object, path, existing, size);
          // Content-addressed: the same name and size means the same bytes, stored whole by a rename.
          return;
        }
        await this.upload(c, h.type, dir, path, data, size, object);
      });
    } catch (err) {
      throw ftpError('write', object, this.at(path), err, false);
    }
  }

  // The bytes go to a dot-named temp file in the target folder (hidden from list(), never loaded), and
  // a rename publishes them whole; a broken upload leaves only a temp file, removed when possible.
  private async upload(c: Client, type: FileType, dir: string, path: string, data: SaveData, size: number, object: string): Promise<void> {
    const tmp = posix.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const send = async () => {
      const counter = new Counter();
      const source: Readable =
        size === 0
          ? emptySource(this.loc.secure)
          : isFileSource(data)
            ? createReadStream(data.path, { start: 0, end: size - 1, highWaterMark: 256 * 1024 })
            : Readable.from([Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
      source.once('error', (err) => counter.destroy(err));
      await c.uploadFrom(source.pipe(counter), tmp);
      if (counter.bytes !== size) throw new BulwarkError('failed', `${isFileSource(data) ? data.path : 'the source'} gave ${counter.bytes} bytes, not ${size}`);
    };
    let tried = false;
    try {
      try {
        tried = true;
        await send();
      } catch (err) {
        // A data subfolder can go missing (a copy tool that drops empty folders), and repositories made
        // before notes/ existed lack that folder: recreate just that level, once.
        if (!(err instanceof ftp().FTPError && (err.code === 553 || err.code === 550)) || (type !== 'data' && type !== 'notes')) throw err;
        await this.mkdir(c, dir);
        await send();
      }
      // 226 said the server took the bytes; SIZE says it kept all of them.
      const stored = await sizeOf(c, tmp);
      if (stored !== size) throw new BulwarkError('io', `the server kept ${stored ?? 'no'} bytes of ${size}`);
      try {
        await c.rename(tmp, path);
      } catch (err) {
        // Some servers refuse to rename over an existing file; an equal one there (another saver of
        // the same object won the race) is success.
        if (!(err instanceof ftp().FTPError) || type === 'config') throw err;
        const existing = await sizeOf(c, path);
        if (existing === undefined) throw err;
        if (existing !== size) throw corrupt(object, path, existing, size);
        await c.remove(tmp, true);
      }
      tried = false;
    } finally {
      if (tried && !c.closed) await c.remove(tmp, true).catch(() => undefined);
    }
  }

  async load(h: Handle, offset?: number, length?: number): Promise<Buffer> {
    const { path } = this.pathOf(h);
    const object = OBJECT_WORDS[h.type];
    if (offset !== undefined && (!Number.isSafeInteger(offset) || offset < 0)) throw new Error(`invalid offset ${offset}`);
    if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new Error(`invalid length ${length}`);
    try {
      return await this.pool.run(async (c) => {
        if (offset === undefined && length === undefined) return retrieve(c, path, 0, undefined);
        const start = offset ?? 0;
        let len = length;
        // Without a length (or with none to read), only the size tells whether the range is valid:
        // a REST beyond the end reads nothing and succeeds.
        if (len === undefined || len === 0) {
          const size = await sizeOf(c, path);
          if (size === undefined) throw new (ftp().FTPError)({ code: 550, message: '550 No such file.' });
          len ??= Math.max(0, size - start);
          if (start + len > size) throw beyondEnd(size, start, len);
          if (len === 0) return Buffer.alloc(0);
        }
        const buf = await retrieve(c, path, start, len);
        if (buf.length < len) throw beyondEnd(start + buf.length, start, len);
        return buf;
      });
    } catch (err) {
      throw ftpError('read', object, this.at(path), err);
    }
  }

  async stat(h: Handle): Promise<FileInfo> {
    const { path } = this.pathOf(h);
    try {
      const size = await this.pool.run((c) => c.size(path));
      return { name: h.name, size };
    } catch (err) {
      throw ftpError('stat', OBJECT_WORDS[h.type], this.at(path), err);
    }
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (!FILE_TYPES.includes(type)) throw new Error(`invalid file type '${String(type)}'`);
    if (type === 'config') {
      const path = posix.join(this.root, 'config');
      const size = await this.pool.run((c) => sizeOf(c, path)).catch((err: unknown) => {
        throw ftpError('list', 'config', this.at(path), err, false);
      });
      if (size !== undefined) yield { name: '', size };
      return;
    }
    const dirs = type === 'data' ? DATA_SUBDIRS.map((sub) => ({ dir: posix.join(this.root, 'data', sub), prefix: sub })) : [{ dir: posix.join(this.root, type), prefix: '' }];
    // basic-ftp reads one folder's listing whole (MLSD when the server offers it, else LIST); folders
    // are listed a few ahead and handed on one by one, so memory holds a few folders, not the repository.
    const fetchDir = (dir: string, prefix: string): Promise<FileInfo[]> =>
      this.pool
        .run((c) => c.list(dir))
        .then(
          (entries) => entries.filter((e) => e.type === ftp().FileType.File && OBJECT_NAME.test(e.name) && e.name.startsWith(prefix)).map((e) => ({ name: e.name, size: e.size })),
          (err: unknown) => {
            // No such folder holds no objects.
            if (err instanceof ftp().FTPError && err.code === 550) return [];
            throw ftpError('list', `${type} folder`, this.at(dir), err, false);
          },
        );
    const ahead: Promise<FileInfo[]>[] = [];
    let next = 0;
    const fill = () => {
      while (ahead.length < LIST_AHEAD && next < dirs.length) {
        const d = dirs[next++]!;
        const p = fetchDir(d.dir, d.prefix);
        // Rejections are awaited in order below; this keeps one left behind by an early break quiet.
        p.catch(() => undefined);
        ahead.push(p);
      }
    };
    fill();
    while (ahead.length > 0) {
      const files = await ahead.shift()!;
      fill();
      for (const f of files) yield f;
    }
  }

  async remove(h: Handle): Promise<void> {
    const { path } = this.pathOf(h);
    try {
      await this.pool.run((c) => c.send(`DELE ${path}`));
    } catch (err) {
      throw ftpError('remove', OBJECT_WORDS[h.type], this.at(path), err);
    }
  }

  isNotFound(err: unknown): boolean {
    for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; depth++, e = e.cause) {
      if (e instanceof BulwarkError && e.code === 'not-found') return true;
    }
    return false;
  }

  isPermanent(err: unknown): boolean {
    if (err instanceof BulwarkError) return !TRANSIENT_CODES.has(err.code);
    // Not ours: a programmer error (bad name, bad offset), which no retry fixes.
    return true;
  }

  async close(): Promise<void> {
    this.pool.close();
  }
}

function corrupt(object: string, path: string, existing: number, size: number): BulwarkError {
  return new BulwarkError('repository-corrupt', `${object} '${path}' exists with ${existing} bytes, not ${size}`, { hint: "run 'bulwark check'" });
}
