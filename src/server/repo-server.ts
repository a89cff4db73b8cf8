// Bulwark's own repository server: repositories of several users in one data folder, served over HTTPS
// in the shape of restic's REST protocol v2 (POST /<repo>/?create=true, /<repo>/config,
// /<repo>/<type>/ and /<repo>/<type>/<name>). What it adds over a plain file server is what a backup
// host needs to be safe from the machines it backs up: each user reaches only its own folder, objects
// must hash to their names (a client cannot plant or swap bytes under a name), per-user quotas, and
// append-only users whose repositories a compromised client cannot destroy (storage/rest.ts is the client).
//
// Objects are written through a LocalBackend rooted at the repository folder, so the atomic
// temp-and-rename and the fsyncs are the same code as for local repositories.
import { execFile } from 'node:child_process';
import { X509Certificate, createHash, randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FILE_TYPES, type FileType, type Handle } from '../storage/backend.js';
import { OBJECT_NAME, objectPath } from '../storage/layout.js';
import { LocalBackend } from '../storage/local.js';
import { BulwarkError, errnoCode, type ErrorCode } from '../util/errors.js';
import { MIN_TLS_VERSION, readTlsFiles, type TlsFiles } from './tls.js';

export interface RepoServerOptions {
  /** The data folder: `<data>/<user>/<repo path>`, users in `<data>/.users`, the generated certificate in `<data>/.tls/`. */
  data: string;
  /** HOST:PORT, [V6]:PORT or PORT; default 127.0.0.1:8000. Port 0 picks a free one (see `url`). */
  listen?: string;
  /** PEM files; without them a self-signed certificate is made once in `<data>/.tls/`. */
  tlsCert?: string;
  tlsKey?: string;
  /** Plain HTTP, for tests on loopback only: passwords would cross the network in the clear. */
  insecureHttp?: boolean;
  /** Every user append-only, whatever `.users` says. */
  appendOnly?: boolean;
  /** One line per request. */
  log?: (line: string) => void;
  /** How long a wrong login waits before its 401 (slows password guessing); default 300 ms. */
  authFailureDelayMs?: number;
}

export interface RunningRepoServer {
  url: string;
  /** SHA-256 of the certificate (DER), lowercase hex, for clients to pin; undefined over plain HTTP. */
  fingerprint: string | undefined;
  close(): Promise<void>;
}

export interface UserOptions {
  quotaBytes?: number;
  appendOnly?: boolean;
}

interface User {
  name: string;
  hash: string;
  quotaBytes: number | undefined;
  appendOnly: boolean;
}

interface UsersFile {
  mtimeMs: number;
  size: number;
  users: Map<string, User>;
}

/** Bytes in a user's folder, kept current by this process (nothing else should write there). */
interface Usage {
  used: number;
  /** Uploads under way, counted against the quota before their bytes arrive. */
  reserved: number;
}

type Route =
  | { kind: 'create'; repo: string[] }
  | { kind: 'list'; repo: string[]; type: FileType }
  | { kind: 'object'; repo: string[]; handle: Handle };

/** An answer other than success, with the Bulwark error code the client turns it into. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: ErrorCode = 'failed',
  ) {
    super(message);
  }
}

const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;
const OBJECT_TYPES: readonly FileType[] = FILE_TYPES.filter((t) => t !== 'config');
const USERS_FILE = '.users';
const TLS_DIR = '.tls';
const UPLOAD_PREFIX = '.upload-';
// N=2^15 costs ~30 ms and 32 MiB per check: slow for a guesser, and verified logins are cached below.
const SCRYPT = { N: 32768, r: 8, p: 1, keyLen: 32 };
const SCRYPT_MAXMEM = 256 * 1024 * 1024;
const DEFAULT_LISTEN = '127.0.0.1:8000';
const DEFAULT_AUTH_DELAY_MS = 300;
const JSON_TYPE = 'application/json';

const scryptAsync = promisify(scrypt) as (password: string | Buffer, salt: Buffer, keylen: number, options: ScryptOptions) => Promise<Buffer>;
const execFileAsync = promisify(execFile);

// --- users --------------------------------------------------------------------------------------

/** `scrypt$N$r$p$saltB64$hashB64`, the form kept in `<data>/.users`. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, SCRYPT.keyLen, { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p, maxmem: SCRYPT_MAXMEM });
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

async function verifyPassword(password: string, hash: string): Promise<boolean> {
  const m = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(hash);
  if (!m) return false;
  const want = Buffer.from(m[5] ?? '', 'base64');
  if (want.length < 16) return false;
  const key = await scryptAsync(password, Buffer.from(m[4] ?? '', 'base64'), want.length, { N: Number(m[1]), r: Number(m[2]), p: Number(m[3]), maxmem: SCRYPT_MAXMEM });
  return timingSafeEqual(key, want);
}

function usersError(file: string, line: number, why: string): BulwarkError {
  return new BulwarkError('usage', `${file} line ${line}: ${why}`, { hint: 'lines are name:scrypt$N$r$p$salt$hash[:quotaBytes][:append-only]; manage them with bulwark serve-repo --add-user' });
}

function parseUsers(text: string, file: string): Map<string, User> {
  const users = new Map<string, User>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const [name = '', hash = '', ...rest] = line.split(':');
    if (!SEGMENT.test(name)) throw usersError(file, i + 1, `'${name}' is not a valid user name`);
    if (!hash.startsWith('scrypt$')) throw usersError(file, i + 1, 'the password hash is not an scrypt hash');
    const user: User = { name, hash, quotaBytes: undefined, appendOnly: false };
    for (const field of rest) {
      if (field === '') continue;
      if (field === 'append-only') user.appendOnly = true;
      else if (/^\d+$/.test(field)) user.quotaBytes = Number(field);
      else throw usersError(file, i + 1, `unknown field '${field}'`);
    }
    users.set(name, user);
  });
  return users;
}

function formatUser(u: User): string {
  return [u.name, u.hash, ...(u.quotaBytes !== undefined ? [String(u.quotaBytes)] : []), ...(u.appendOnly ? ['append-only'] : [])].join(':');
}

/** Adds a user or replaces its password and settings; the file is replaced atomically. */
export async function addUser(dataDir: string, name: string, password: string, opts: UserOptions = {}): Promise<void> {
  if (!SEGMENT.test(name)) throw new BulwarkError('usage', `'${name}' is not a valid user name`, { hint: 'use letters, digits, ., _ and - (not starting with a dot)' });
  if (password === '') throw new BulwarkError('usage', `the password for '${name}' is empty`);
  if (opts.quotaBytes !== undefined && (!Number.isSafeInteger(opts.quotaBytes) || opts.quotaBytes < 0)) throw new BulwarkError('usage', `invalid quota ${opts.quotaBytes}`);
  await fsp.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const file = join(dataDir, USERS_FILE);
  const text = await fsp.readFile(file, 'utf8').catch((err: unknown) => {
    if (errnoCode(err) === 'ENOENT') return '';
    throw err;
  });
  const users = parseUsers(text, file);
  users.set(name, { name, hash: await hashPassword(password), quotaBytes: opts.quotaBytes, appendOnly: opts.appendOnly ?? false });
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await fsp.writeFile(tmp, [...users.values()].map(formatUser).join('\n') + '\n', { mode: 0o600, flag: 'wx' });
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.unlink(tmp).catch(() => undefined);
    throw err;
  }
}

// --- TLS ----------------------------------------------------------------------------------------

async function ensureCertificate(data: string): Promise<TlsFiles> {
  const dir = join(data, TLS_DIR);
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  const existing = await Promise.all([fsp.readFile(certFile), fsp.readFile(keyFile)]).catch((err: unknown) => {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  });
  if (existing) return { cert: existing[0], key: existing[1] };
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  // Made under temporary names and renamed: a server killed halfway must not leave a key without its
  // certificate, which the next start would take for a finished pair.
  const tag = randomBytes(6).toString('hex');
  const tmpCert = join(dir, `.cert-${tag}`);
  const tmpKey = join(dir, `.key-${tag}`);
  try {
    await execFileAsync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '3650', '-subj', '/CN=bulwark', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', tmpKey, '-out', tmpCert]);
    await fsp.chmod(tmpKey, 0o600);
    await fsp.rename(tmpKey, keyFile);
    await fsp.rename(tmpCert, certFile);
  } catch (err) {
    await Promise.all([fsp.unlink(tmpCert), fsp.unlink(tmpKey)].map((p) => p.catch(() => undefined)));
    throw new BulwarkError('failed', `unable to make a TLS certificate in '${dir}': ${err instanceof Error ? err.message : String(err)}`, { cause: err, hint: 'install openssl, or give --tls-cert and --tls-key' });
  }
  return { cert: await fsp.readFile(certFile), key: await fsp.readFile(keyFile) };
}

function fingerprintOf(pem: Buffer): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
}

function parseListen(spec: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(spec);
  const port = Number(m?.[2]);
  if (!m || port > 65535) throw new BulwarkError('usage', `'${spec}' is not [HOST:]PORT`, { hint: `e.g. --listen ${DEFAULT_LISTEN}` });
  return { host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port };
}

// --- the server ---------------------------------------------------------------------------------

/** Runs calls with the same key one after another (two uploads of one object, an upload and a delete). */
class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = before.then(() => mine);
    this.tails.set(key, tail);
    await before;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

/** Total size of the regular files under a folder; 0 when it does not exist. */
async function folderBytes(dir: string): Promise<number> {
  let entries;
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return 0;
    throw err;
  }
  let total = 0;
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) total += await folderBytes(path);
    else if (e.isFile()) total += (await fsp.lstat(path).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

function sizeText(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

class RepoServer {
  private usersFile: UsersFile | undefined;
  private readonly usage = new Map<string, Promise<Usage>>();
  private readonly queue = new KeyedQueue();
  /** HMAC key for the cache of verified logins, so the cache holds no password or its plain hash. */
  private readonly cacheKey = randomBytes(32);
  private readonly verified = new Map<string, Buffer>();
  private readonly dummyHash: Promise<string>;

  constructor(private readonly opts: RepoServerOptions) {
    // A login for an unknown user costs as much as one for a known user, so timing does not tell names.
    this.dummyHash = hashPassword(randomBytes(16).toString('hex'));
  }

  private get data(): string {
    return this.opts.data;
  }

  /** The users file, re-read when it changes, so --add-user takes effect without a restart. */
  async users(): Promise<Map<string, User>> {
    const file = join(this.data, USERS_FILE);
    const st = await fsp.stat(file).catch((err: unknown) => {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw err;
    });
    if (st === undefined) return new Map();
    if (this.usersFile?.mtimeMs !== st.mtimeMs || this.usersFile.size !== st.size) {
      this.usersFile = { mtimeMs: st.mtimeMs, size: st.size, users: parseUsers(await fsp.readFile(file, 'utf8'), file) };
    }
    return this.usersFile.users;
  }

  private usageOf(user: string): Promise<Usage> {
    let u = this.usage.get(user);
    if (!u) {
      u = folderBytes(join(this.data, user)).then((used) => ({ used, reserved: 0 }));
      this.usage.set(user, u);
      u.catch(() => this.usage.delete(user));
    }
    return u;
  }

  /** Computes every user's usage once at start rather than on its first upload. */
  async warmUp(): Promise<void> {
    for (const name of (await this.users()).keys()) await this.usageOf(name);
  }

  private async authenticate(req: IncomingMessage): Promise<User | undefined> {
    const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(req.headers.authorization ?? '');
    const decoded = m ? Buffer.from(m[1] ?? '', 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    const name = colon < 0 ? '' : decoded.slice(0, colon);
    const password = colon < 0 ? '' : decoded.slice(colon + 1);
    const user = (await this.users()).get(name);
    const hash = user?.hash ?? (await this.dummyHash);
    const tag = createHash('sha256').update(this.cacheKey).update(hash).update('\0').update(password).digest();
    const cached = this.verified.get(`${name}:${hash}`);
    if (user && cached && timingSafeEqual(cached, tag)) return user;
    const ok = (await verifyPassword(password, hash)) && user !== undefined;
    if (!ok || !user) return undefined;
    this.verified.set(`${name}:${hash}`, tag);
    return user;
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    let sent = 0;
    let user = '-';
    const path = (req.url ?? '').replace(/\?.*$/s, '');
    // 'close' rather than 'finish': a response cut off (the client went away) is logged too.
    res.on('close', () => {
      this.opts.log?.(`${req.socket.remoteAddress ?? '-'} ${user} ${req.method ?? '-'} ${path} ${res.statusCode} ${sent} ${Date.now() - started}ms`);
    });
    // A client that goes away mid-upload surfaces in the upload loop; unheard, it would end the process.
    req.on('error', () => undefined);
    try {
      const who = await this.authenticate(req);
      if (!who) {
        await new Promise((resolve) => setTimeout(resolve, this.opts.authFailureDelayMs ?? DEFAULT_AUTH_DELAY_MS));
        res.setHeader('WWW-Authenticate', 'Basic realm="bulwark", charset="UTF-8"');
        throw new HttpError(401, 'wrong user name or password', 'usage');
      }
      user = who.name;
      sent = await this.dispatch(req, res, who);
    } catch (err) {
      // A body we answer before reading (a refusal) is read and dropped, so the connection stays usable.
      req.resume();
      const e = err instanceof HttpError ? err : this.mapError(err);
      if (res.headersSent) {
        // A listing cut off midway: closing without its end tells the client it is incomplete.
        res.destroy();
        return;
      }
      const body = Buffer.from(JSON.stringify({ error: e.message, code: e.code }) + '\n');
      res.writeHead(e.status, { 'Content-Type': JSON_TYPE, 'Content-Length': body.length });
      res.end(req.method === 'HEAD' ? undefined : body);
      sent = req.method === 'HEAD' ? 0 : body.length;
    }
  }

  private mapError(err: unknown): HttpError {
    // Messages go to the client: the server's own folder names are none of its business.
    const message = (err instanceof Error ? err.message : String(err)).split(this.data).join('');
    if (err instanceof BulwarkError) {
      switch (err.code) {
        case 'not-found':
          return new HttpError(404, message, 'not-found');
        case 'no-space':
          return new HttpError(507, message, 'no-space');
        case 'repository-exists':
          return new HttpError(409, message, 'repository-exists');
        case 'repository-corrupt':
          return new HttpError(409, message, 'repository-corrupt');
        case 'usage':
          return new HttpError(400, message, 'usage');
      }
    }
    const errno = errnoCode(err);
    if (errno === 'ENOENT') return new HttpError(404, message, 'not-found');
    return new HttpError(500, message, 'io');
  }

  private route(req: IncomingMessage): Route {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const pathname = q < 0 ? url : url.slice(0, q);
    const query = new URLSearchParams(q < 0 ? '' : url.slice(q + 1));
    if (!pathname.startsWith('/')) throw new HttpError(400, 'bad request path');
    const raw = pathname.slice(1).split('/');
    const trailing = raw.length > 1 && raw[raw.length - 1] === '';
    if (trailing) raw.pop();
    const segs = raw.map((s) => {
      let d: string;
      try {
        d = decodeURIComponent(s);
      } catch {
        throw new HttpError(400, 'bad %-escape in the path');
      }
      // Checked after decoding: %2e%2e and %2f are refused like .. and /.
      if (!SEGMENT.test(d)) throw new HttpError(403, `path segment '${s}' refused (letters, digits, ., _ and - only, not starting with a dot)`);
      return d;
    });
    const last = segs[segs.length - 1] ?? '';
    const beforeLast = segs[segs.length - 2] ?? '';
    if (trailing && req.method === 'POST' && query.get('create') === 'true' && segs.length >= 1) return { kind: 'create', repo: segs };
    if (trailing && segs.length >= 2 && OBJECT_TYPES.includes(last as FileType)) return { kind: 'list', repo: segs.slice(0, -1), type: last as FileType };
    if (!trailing && segs.length >= 2 && last === 'config') return { kind: 'object', repo: segs.slice(0, -1), handle: { type: 'config', name: '' } };
    if (!trailing && segs.length >= 3 && OBJECT_TYPES.includes(beforeLast as FileType) && OBJECT_NAME.test(last)) {
      return { kind: 'object', repo: segs.slice(0, -2), handle: { type: beforeLast as FileType, name: last } };
    }
    throw new HttpError(404, 'no such resource');
  }

  /** Answers one request; resolves to the bytes of the response body. */
  private async dispatch(req: IncomingMessage, res: ServerResponse, user: User): Promise<number> {
    const r = this.route(req);
    const root = join(this.data, user.name, ...r.repo);
    const method = req.method ?? '';
    if (r.kind === 'create') {
      await new LocalBackend(root).create();
      return reply(res, 200, { ok: true });
    }
    if (r.kind === 'list') {
      if (method !== 'GET') throw new HttpError(405, `${method} is not allowed on a listing`);
      await assertRepo(root);
      return this.list(res, root, r.type);
    }
    switch (method) {
      case 'HEAD':
      case 'GET':
        return this.get(req, res, root, r.handle, method === 'HEAD');
      case 'POST':
        await this.save(req, root, r.handle, user);
        return reply(res, 200, { ok: true });
      case 'DELETE':
        await this.remove(root, r.handle, user);
        return reply(res, 200, { ok: true });
      default:
        throw new HttpError(405, `${method} is not allowed here`);
    }
  }

  private async list(res: ServerResponse, root: string, type: FileType): Promise<number> {
    // One entry per line: valid JSON, and a client can read it as it comes without holding it all.
    res.writeHead(200, { 'Content-Type': JSON_TYPE });
    let bytes = 0;
    const write = async (s: string): Promise<void> => {
      bytes += Buffer.byteLength(s);
      if (!res.write(s)) await drained(res);
      if (res.destroyed) throw new Error('the client went away');
    };
    await write('[');
    let first = true;
    for await (const f of new LocalBackend(root).list(type)) {
      await write(`${first ? '\n' : ',\n'}${JSON.stringify({ name: f.name, size: f.size })}`);
      first = false;
    }
    await write('\n]\n');
    res.end();
    return bytes;
  }

  private async get(req: IncomingMessage, res: ServerResponse, root: string, h: Handle, headOnly: boolean): Promise<number> {
    const { path } = objectPath(root, h);
    let fh: fsp.FileHandle;
    try {
      // As LocalBackend reads: no symlink followed, no FIFO waited on.
      fh = await fsp.open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') throw new HttpError(404, `no such ${h.type === 'config' ? 'config' : `${h.type} object ${h.name}`}`, 'not-found');
      throw err;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new HttpError(409, 'the stored object is not a regular file', 'repository-corrupt');
      let start = 0;
      let end = st.size - 1;
      let status = 200;
      const range = req.headers.range;
      if (range !== undefined) {
        const m = /^bytes=(\d+)-(\d*)$/.exec(range.trim());
        if (!m) throw new HttpError(400, `unsupported Range '${range}' (want bytes=a-b or bytes=a-)`);
        start = Number(m[1]);
        end = m[2] === '' ? st.size - 1 : Number(m[2]);
        // Stricter than RFC 9110, which would shorten the range: a read past the end means the index
        // and the pack disagree, and the client must hear so rather than get fewer bytes.
        if (start > end || end >= st.size) {
          res.setHeader('Content-Range', `bytes */${st.size}`);
          throw new HttpError(416, `it has ${st.size} bytes, so ${range} lies beyond its end`, 'repository-corrupt');
        }
        status = 206;
      }
      const length = end - start + 1;
      res.writeHead(status, {
        'Content-Type': 'application/octet-stream',
        'Content-Length': length,
        'Accept-Ranges': 'bytes',
        ...(status === 206 ? { 'Content-Range': `bytes ${start}-${end}/${st.size}` } : {}),
      });
      if (headOnly || length === 0) {
        res.end();
        return 0;
      }
      const stream = fh.createReadStream({ start, end, autoClose: false, highWaterMark: 256 * 1024 });
      for await (const chunk of stream) {
        if (!res.write(chunk)) await drained(res);
        if (res.destroyed) throw new Error('the client went away');
      }
      res.end();
      return length;
    } finally {
      await fh.close().catch(() => undefined);
    }
  }

  private async save(req: IncomingMessage, root: string, h: Handle, user: User): Promise<void> {
    const lengthHeader = req.headers['content-length'];
    if (lengthHeader === undefined || !/^\d+$/.test(lengthHeader)) throw new HttpError(411, 'uploads need a Content-Length');
    const length = Number(lengthHeader);
    const appendOnly = this.opts.appendOnly === true || user.appendOnly;
    const usage = await this.usageOf(user.name);
    // A retry of an object that is already there adds nothing, so it must not fail on a full quota.
    const present = h.type === 'config' ? undefined : await fsp.lstat(objectPath(root, h).path).catch(() => undefined);
    const grows = present?.isFile() && present.size === length ? 0 : length;
    // Refused before a byte is read, so nothing is written, not even a temp file.
    if (user.quotaBytes !== undefined && grows > 0 && usage.used + usage.reserved + grows > user.quotaBytes) {
      throw new HttpError(
        507,
        `quota exceeded: user '${user.name}' may store ${sizeText(user.quotaBytes)} and uses ${sizeText(usage.used)}${usage.reserved ? ` (+${sizeText(usage.reserved)} arriving)` : ''}, so this upload of ${sizeText(length)} does not fit`,
        'no-space',
      );
    }
    usage.reserved += grows;
    const tmp = join(root, `${UPLOAD_PREFIX}${randomBytes(8).toString('hex')}`);
    let fh: fsp.FileHandle | undefined;
    try {
      try {
        fh = await fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') throw new HttpError(404, 'no repository here (create it first)', 'not-found');
        throw err;
      }
      // Streamed to disk and hashed on the way: a pack is never held in memory.
      const hash = createHash('sha256');
      let got = 0;
      for await (const chunk of req as AsyncIterable<Buffer>) {
        got += chunk.length;
        if (got > length) throw new HttpError(400, `the body is longer than its Content-Length ${length}`);
        hash.update(chunk);
        let done = 0;
        while (done < chunk.length) done += (await fh.write(chunk, done, chunk.length - done)).bytesWritten;
      }
      await fh.close();
      fh = undefined;
      if (got !== length) throw new HttpError(400, `the body has ${got} bytes, not its Content-Length ${length}`);
      const digest = hash.digest('hex');
      if (h.type !== 'config' && digest !== h.name) throw new HttpError(400, `the body's SHA-256 is ${digest}, not its name ${h.name}: objects are content-addressed`);
      await this.queue.run(objectPath(root, h).path, async () => {
        const { path } = objectPath(root, h);
        const existing = await fsp.lstat(path).catch((err: unknown) => {
          if (errnoCode(err) === 'ENOENT') return undefined;
          throw err;
        });
        if (existing && appendOnly) {
          // The same bytes again is a retry, and harmless; anything else would destroy what is there.
          if (h.type === 'config' ? !(await sameBytes(path, tmp)) : existing.size !== length) {
            throw new HttpError(403, `refusing to replace the existing ${h.type === 'config' ? 'config' : `${h.type} object ${h.name}`}: the user '${user.name}' is append-only`, 'append-only');
          }
        }
        await new LocalBackend(root).save(h, { path: tmp, size: length });
        // A content-addressed object that existed is unchanged; only the config is replaced.
        if (!existing) usage.used += length;
        else if (h.type === 'config') usage.used += length - existing.size;
      });
    } finally {
      usage.reserved -= grows;
      await fh?.close().catch(() => undefined);
      await fsp.unlink(tmp).catch(() => undefined);
    }
  }

  private async remove(root: string, h: Handle, user: User): Promise<void> {
    if ((this.opts.appendOnly === true || user.appendOnly) && h.type !== 'locks') {
      throw new HttpError(403, `refusing to remove ${h.type === 'config' ? 'the config' : `${h.type} object ${h.name}`}: the user '${user.name}' is append-only`, 'append-only');
    }
    const usage = await this.usageOf(user.name);
    const { path } = objectPath(root, h);
    await this.queue.run(path, async () => {
      const st = await fsp.lstat(path).catch(() => undefined);
      await new LocalBackend(root).remove(h);
      if (st?.isFile()) usage.used -= st.size;
    });
  }
}

async function assertRepo(root: string): Promise<void> {
  const st = await fsp.stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new HttpError(404, 'no repository here', 'not-found');
}

/** Waits until a response can take more, or is gone (the caller checks which). */
function drained(res: ServerResponse): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([fsp.readFile(a), fsp.readFile(b)]);
  return x.equals(y);
}

function reply(res: ServerResponse, status: number, value: unknown): number {
  const body = Buffer.from(JSON.stringify(value) + '\n');
  res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': body.length });
  res.end(body);
  return body.length;
}

export async function startRepoServer(opts: RepoServerOptions): Promise<RunningRepoServer> {
  const { host, port } = parseListen(opts.listen ?? DEFAULT_LISTEN);
  await fsp.mkdir(opts.data, { recursive: true, mode: 0o700 });
  const repo = new RepoServer(opts);
  await repo.warmUp();
  let fingerprint: string | undefined;
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => void repo.handle(req, res);
  let server: http.Server;
  if (opts.insecureHttp) {
    server = http.createServer(onRequest);
  } else {
    if (!opts.tlsCert !== !opts.tlsKey) throw new BulwarkError('usage', 'a TLS certificate and its key go together', { hint: 'give both --tls-cert and --tls-key, or neither for a generated certificate' });
    const tls = opts.tlsCert && opts.tlsKey ? await readTlsFiles(opts.tlsCert, opts.tlsKey) : await ensureCertificate(opts.data);
    fingerprint = fingerprintOf(tls.cert);
    server = https.createServer({ ...tls, minVersion: MIN_TLS_VERSION }, onRequest);
  }
  // Longer than a client's pause between requests, so kept-alive connections are not cut under it.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 70_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const shown = addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  return {
    url: `${opts.insecureHttp ? 'http' : 'https'}://${shown}:${addr.port}/`,
    fingerprint,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
