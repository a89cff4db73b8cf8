// A repository on an SSH server, reached over SFTP (restic's sftp backend is the model). Same layout as
// the local backend, so a repository copied between a disk and a server (rsync, scp) stays usable.
//
// Refusing a host (unknown key, changed key) throws BulwarkError code 'usage' for an unknown host (a
// setup step is missing: the user adds the key and runs again) and 'failed' for a changed or revoked
// key (not something to "fix" by retrying or by a flag: it may be an attack). Both are permanent.
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { homedir, userInfo } from 'node:os';
import { posix } from 'node:path';
import type * as Ssh2 from 'ssh2';
import type { Algorithms, ConnectConfig, FileEntryWithStats, SFTPWrapper, Stats } from 'ssh2';
import { lazyRequire } from '../util/lazy-require.js';
import { BulwarkError, errnoCode, unable, type ErrorCode } from '../util/errors.js';
import { OBJECT_NAME, objectPath } from './layout.js';
import { FILE_TYPES, OBJECT_WORDS, isFileSource, saveSize, type Backend, type BackendProperties, type FileInfo, type FileType, type Handle, type SaveData } from './backend.js';

export interface SftpLocation {
  user: string;
  /** Without brackets, also for IPv6. */
  host: string;
  port: number;
  /** Absolute ('/srv/repo') or relative to the login folder ('repo'). */
  path: string;
}

export interface SftpBackendOptions {
  /** Private key file (--sftp-key, BULWARK_SFTP_KEY). */
  keyFile?: string;
  passphrase?: string;
  /** Login password (BULWARK_SFTP_PASSWORD); never part of the location. */
  password?: string;
  /** OpenSSH known_hosts file; default ~/.ssh/known_hosts. */
  knownHostsFile?: string;
  /** Requests the repository keeps in flight; all share one SSH connection. */
  connections?: number;
  /** Limit on TCP connect + SSH handshake + login. */
  readyTimeoutMs?: number;
  /** A peer that stops answering but keeps the TCP connection open is given up on after three to four of these. */
  keepaliveIntervalMs?: number;
}

type SshClient = Ssh2.Client;

const ssh2 = lazyRequire<typeof Ssh2>('ssh2');
type Callback<T> = (err: Error | undefined | null, value?: T) => void;

interface Session {
  client: SshClient;
  sftp: SFTPWrapper;
  closed: boolean;
  /** Calls waiting for an answer; rejected when the connection goes, since ssh2 drops what it cannot send. */
  pending: Set<(err: Error) => void>;
}

interface KnownHost {
  marker: 'revoked' | 'cert-authority' | undefined;
  patterns: string;
  keyType: string;
  key: Buffer;
}

/** SSH_FX_* status codes (draft-ietf-secsh-filexfer-02), as ssh2 puts them in `err.code`. */
const FX = { EOF: 1, NO_SUCH_FILE: 2, PERMISSION_DENIED: 3, FAILURE: 4, BAD_MESSAGE: 5, NO_CONNECTION: 6, CONNECTION_LOST: 7, OP_UNSUPPORTED: 8 } as const;
const TRANSIENT_STATUS = new Set<number>([FX.NO_CONNECTION, FX.CONNECTION_LOST]);
const TRANSIENT_CODES = new Set<ErrorCode>(['io', 'timeout', 'protocol']);
const LOCAL_PERMANENT_ERRNO = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'ELOOP']);

const TEMP_PREFIX = '.tmp-';
const DIR_MODE = 0o700;
const FILE_MODE = 0o444;
const DATA_SUBDIRS = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const LAYOUT_DIRS: readonly string[] = FILE_TYPES.filter((t) => t !== 'config');

// 32 KiB is what every SFTP server must accept (OpenSSH's sftp client uses it too); 32 of them in flight
// keep a long link busy while bounding what one transfer holds in memory to 1 MiB.
const CHUNK = 32 * 1024;
const WINDOW = 32;
/** Data subfolders listed ahead of the consumer: round trips overlap, memory stays bounded. */
const LIST_AHEAD = 8;
const MKDIR_PARALLEL = 32;
const DEFAULT_PORT = 22;
// The order ssh2 offers by default; a host's known key types are moved to the front (as OpenSSH does)
// so the server shows the key we can check rather than another one of its keys.
const HOST_KEY_ALGORITHMS = ['ssh-ed25519', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', 'rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] as const;
type HostKeyAlgorithm = (typeof HOST_KEY_ALGORITHMS)[number];
const ALGORITHMS_OF_KEY_TYPE: Record<string, readonly HostKeyAlgorithm[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

const LOCATION_HINT = 'write sftp:user@host:/absolute/path, sftp:user@host:relative/path or sftp://user@host:port//absolute/path';

function usage(message: string, hint = LOCATION_HINT): BulwarkError {
  return new BulwarkError('usage', message, { hint });
}

function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    // A uid without a passwd entry (some containers) has no name to ask for.
    return process.env.USER ?? process.env.LOGNAME ?? 'root';
  }
}

function checkHost(host: string, location: string): string {
  if (host.startsWith('[')) {
    // A zone (fe80::1%eth0) is written %25eth0 in URLs (RFC 6874).
    const inner = host.slice(1, -1).replace(/%25/g, '%');
    if (!host.endsWith(']') || !/^[0-9a-fA-F:.]+(%[\w.-]+)?$/.test(inner) || !inner.includes(':')) throw usage(`'${host}' in '${location}' is not an IPv6 address`);
    return inner;
  }
  if (!/^[A-Za-z0-9._-]+$/.test(host)) throw usage(`the location '${location}' has ${host === '' ? 'no host' : `an invalid host '${host}'`}`);
  return host;
}

function checkPath(path: string, location: string): string {
  if (path === '') throw usage(`the location '${location}' has no path`);
  if (path.includes('\0')) throw usage(`the path in '${location}' contains a NUL character`);
  // Trailing slashes would only make the folder names in messages differ from the ones in the location.
  return path.length > 1 ? path.replace(/\/+$/, '') || '/' : path;
}

function decode(part: string, location: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw usage(`the location '${location}' has a bad %-escape`);
  }
}

/**
 * Reads a location the way restic does: `sftp:user@host:/abs`, `sftp:user@host:rel` (relative to the
 * login folder), `sftp://user@host:port//abs` and `sftp://user@host:port/rel`. IPv6 hosts in brackets.
 */
export function parseSftpLocation(location: string): SftpLocation {
  const m = /^sftp:(.*)$/is.exec(location);
  if (!m) throw usage(`'${location}' is not an sftp: location`);
  const rest = m[1] ?? '';
  if (rest.startsWith('//')) {
    const afterSlashes = rest.slice(2);
    const slash = afterSlashes.indexOf('/');
    const authority = slash < 0 ? afterSlashes : afterSlashes.slice(0, slash);
    const rawPath = slash < 0 ? '' : afterSlashes.slice(slash + 1);
    const at = authority.lastIndexOf('@');
    const userInfoPart = at < 0 ? undefined : authority.slice(0, at);
    const hostPort = at < 0 ? authority : authority.slice(at + 1);
    if (userInfoPart?.includes(':')) throw usage(`the location '${redactLocation(location)}' contains a password`, 'give the password in BULWARK_SFTP_PASSWORD (or use a key with --sftp-key), never in the location');
    const hp = /^(\[[^\]]*\]|[^:[\]]*)(?::([^:]*))?$/.exec(hostPort);
    if (!hp) throw usage(`the location '${location}' has an invalid host or port '${hostPort}'`);
    const host = checkHost(hp[1] ?? '', location);
    let port = DEFAULT_PORT;
    if (hp[2] !== undefined) {
      port = /^\d{1,5}$/.test(hp[2]) ? Number(hp[2]) : NaN;
      if (!(port >= 1 && port <= 65535)) throw usage(`the location '${location}' has an invalid port '${hp[2]}'`);
    }
    const user = userInfoPart === undefined ? currentUser() : decode(userInfoPart, location);
    if (user === '') throw usage(`the location '${location}' has an empty user name`);
    return { user, host, port, path: checkPath(decode(rawPath, location), location) };
  }
  const sc = /^(?:([^@/:[\]]*)@)?(\[[^\]]*\]|[^:[\]@/]*):(.*)$/s.exec(rest);
  if (!sc) throw usage(`the location '${location}' is not of the form sftp:[user@]host:path`);
  if (sc[1] === '') throw usage(`the location '${location}' has an empty user name`);
  const host = checkHost(sc[2] ?? '', location);
  return { user: sc[1] ?? currentUser(), host, port: DEFAULT_PORT, path: checkPath(sc[3] ?? '', location) };
}

/** Messages must not carry a password someone put into a location anyway. */
function redactLocation(location: string): string {
  return location.replace(/\/\/[^/@\s]*@/, '//***@');
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host.replace(/%/g, '%25')}]` : host;
}

/** The canonical URL form: it carries the port, and `//` marks an absolute path as in restic. */
export function formatSftpLocation(loc: SftpLocation): string {
  return `sftp://${encodeURIComponent(loc.user)}@${hostForUrl(loc.host)}:${loc.port}/${loc.path}`;
}

/**
 * Credentials as the CLI gives them: the key from --sftp-key or BULWARK_SFTP_KEY, the password from
 * BULWARK_SFTP_PASSWORD (environment only, so it never shows in a process list).
 */
export function sftpOptionsFromEnv(env: NodeJS.ProcessEnv = process.env, flags: { sftpKey?: string } = {}): SftpBackendOptions {
  const opts: SftpBackendOptions = {};
  const keyFile = flags.sftpKey ?? (env.BULWARK_SFTP_KEY || undefined);
  if (keyFile !== undefined) opts.keyFile = keyFile;
  if (env.BULWARK_SFTP_PASSWORD) opts.password = env.BULWARK_SFTP_PASSWORD;
  return opts;
}

// --- known_hosts --------------------------------------------------------------------------------

/** The OpenSSH form, `SHA256:` and unpadded base64 of the key blob, as ssh and ssh-keygen -l print it. */
export function sshFingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

function keyTypeOf(blob: Buffer): string {
  if (blob.length < 4) return '';
  const len = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + len).toString('latin1');
}

function parseKnownHosts(text: string): KnownHost[] {
  const out: KnownHost[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    let marker: KnownHost['marker'];
    if (fields[0] === '@revoked' || fields[0] === '@cert-authority') marker = fields.shift() === '@revoked' ? 'revoked' : 'cert-authority';
    const [patterns, keyType, b64] = fields;
    if (patterns === undefined || keyType === undefined || b64 === undefined) continue;
    const key = Buffer.from(b64, 'base64');
    // A line whose blob names another type is damaged; OpenSSH skips such lines too.
    if (keyTypeOf(key) !== keyType) continue;
    out.push({ marker, patterns, keyType, key });
  }
  return out;
}

function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 'i');
}

function hashedMatches(pattern: string, name: string): boolean {
  const [, magic, salt, hash] = pattern.split('|');
  if (magic !== '1' || salt === undefined || hash === undefined) return false;
  const want = Buffer.from(hash, 'base64');
  const got = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest();
  return want.length === got.length && timingSafeEqual(want, got);
}

/** OpenSSH's rules: comma-separated globs, `!` negates (and wins), `|1|salt|hash` for hashed names. */
function hostMatches(patterns: string, name: string): boolean {
  if (patterns.startsWith('|')) return hashedMatches(patterns, name);
  let matched = false;
  for (const p of patterns.split(',')) {
    const negated = p.startsWith('!');
    if (globToRegExp(negated ? p.slice(1) : p).test(name)) {
      if (negated) return false;
      matched = true;
    }
  }
  return matched;
}

/** How known_hosts names a host: bare on port 22, `[host]:port` otherwise. */
function knownHostsName(host: string, port: number): string {
  return port === DEFAULT_PORT ? host.toLowerCase() : `[${host.toLowerCase()}]:${port}`;
}

type HostKeyVerdict = { ok: true } | { ok: false; error: BulwarkError };

class HostKeyChecker {
  private readonly name: string;
  private readonly entries: KnownHost[];

  constructor(
    private readonly file: string,
    text: string,
    private readonly host: string,
    private readonly port: number,
  ) {
    this.name = knownHostsName(host, port);
    this.entries = parseKnownHosts(text).filter((e) => e.marker !== 'cert-authority' && hostMatches(e.patterns, this.name));
  }

  algorithms(): HostKeyAlgorithm[] {
    const known = this.entries.filter((e) => e.marker === undefined).flatMap((e) => ALGORITHMS_OF_KEY_TYPE[e.keyType] ?? []);
    return [...new Set<HostKeyAlgorithm>([...known, ...HOST_KEY_ALGORITHMS])];
  }

  verify(key: Buffer): HostKeyVerdict {
    const fp = sshFingerprint(key);
    const keyType = keyTypeOf(key);
    const scan = `ssh-keyscan${this.port === DEFAULT_PORT ? '' : ` -p ${this.port}`} ${this.host} >> ${this.file}`;
    if (this.entries.some((e) => e.marker === 'revoked' && e.key.equals(key))) {
      return { ok: false, error: new BulwarkError('failed', `the ${keyType} host key of ${this.name} (${fp}) is marked revoked in ${this.file}; refusing to connect`, { hint: 'ask the server administrator for the current key' }) };
    }
    if (this.entries.some((e) => e.marker === undefined && e.key.equals(key))) return { ok: true };
    // Another key of the same type is a changed key. Keys of other types only (a server that gained an
    // algorithm, or one ssh2 cannot use) leave this key unknown, as OpenSSH treats it.
    if (this.entries.some((e) => e.marker === undefined && e.keyType === keyType)) {
      return {
        ok: false,
        error: new BulwarkError('failed', `the host key of ${this.name} has changed: the server shows ${keyType} ${fp}, which ${this.file} does not list for it; refusing to connect (someone may be intercepting the connection)`, {
          hint: `if the key was changed on purpose, check ${fp} with the server administrator, then remove the old entry (ssh-keygen -R '${this.name}' -f ${this.file}) and add the new one (${scan})`,
        }),
      };
    }
    return {
      ok: false,
      error: new BulwarkError('usage', `the host ${this.name} is not in ${this.file}${this.entries.some((e) => e.marker === undefined) ? ` with a ${keyType} key (only with keys of other types)` : ''}; its ${keyType} key is ${fp}`, {
        hint: `check that fingerprint with the server administrator, then add the key: ${scan}`,
      }),
    };
  }
}

// --- errors -------------------------------------------------------------------------------------

/** An SFTP status code from ssh2 (numeric `code`), anywhere along the cause chain. */
function sftpStatus(err: unknown): number | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; depth++, e = e.cause) {
    if (e instanceof BulwarkError) continue;
    const code = (e as Error & { code?: unknown }).code;
    if (typeof code === 'number') return code;
  }
  return undefined;
}

function connectionLost(host: string, cause?: unknown): BulwarkError {
  return new BulwarkError('io', `the SSH connection to ${host} was lost`, { ...(cause === undefined ? {} : { cause }), hint: 'check the network and the server; the operation can be retried' });
}

function notRegular(st: Stats): BulwarkError {
  const kind = st.isSymbolicLink() ? 'a symbolic link' : st.isDirectory() ? 'a directory' : 'not a regular file';
  return new BulwarkError('repository-corrupt', `it is ${kind}; it was not read`, { hint: "remove it or run 'bulwark check'" });
}

function beyondEnd(size: number, offset: number, length: number): BulwarkError {
  return new BulwarkError('repository-corrupt', `it has ${size} bytes, so ${length} bytes at offset ${offset} lie beyond its end`, {
    hint: "the index and the stored object disagree: run 'bulwark check'",
  });
}

// --- the backend --------------------------------------------------------------------------------

export class SftpBackend implements Backend {
  readonly properties: BackendProperties;
  private readonly loc: SftpLocation;
  private readonly opts: SftpBackendOptions;
  private readonly root: string;
  private current: Promise<Session> | undefined;
  private closing = false;

  constructor(location: string | SftpLocation, opts: SftpBackendOptions = {}) {
    this.loc = typeof location === 'string' ? parseSftpLocation(location) : { ...location, path: checkPath(location.path, formatSftpLocation(location)) };
    this.opts = opts;
    const connections = opts.connections ?? 5;
    if (!Number.isInteger(connections) || connections < 1) throw new Error(`connections must be a positive integer, not ${connections}`);
    this.root = this.loc.path;
    this.properties = { connections, location: formatSftpLocation(this.loc) };
  }

  private get hostName(): string {
    return `${hostForUrl(this.loc.host)}:${this.loc.port}`;
  }

  private pathOf(h: Handle): { dir: string; path: string } {
    return objectPath(this.root, h);
  }

  // --- connection -------------------------------------------------------------------------------

  /**
   * The one live session. A connection that dropped since the last call is replaced once, here, so an
   * idle repository does not fail its next call; a drop during a call fails that call (transient), and
   * the retry layer decides.
   */
  private async session(): Promise<Session> {
    if (this.closing) throw new Error('the SFTP backend is closed');
    for (let attempt = 0; ; attempt++) {
      const p = (this.current ??= this.connect());
      let s: Session;
      try {
        s = await p;
      } catch (err) {
        if (this.current === p) this.current = undefined;
        throw err;
      }
      if (!s.closed) return s;
      if (this.current === p) this.current = undefined;
      if (attempt >= 1) throw connectionLost(this.hostName);
    }
  }

  private async credentials(): Promise<Pick<ConnectConfig, 'privateKey' | 'passphrase' | 'password'>> {
    const { keyFile, passphrase, password } = this.opts;
    const out: Pick<ConnectConfig, 'privateKey' | 'passphrase' | 'password'> = {};
    if (password !== undefined) out.password = password;
    if (keyFile !== undefined) {
      let key: Buffer;
      try {
        key = await fsp.readFile(keyFile);
      } catch (err) {
        throw new BulwarkError('usage', `unable to read the SSH key file '${keyFile}': ${err instanceof Error ? err.message : String(err)}`, { cause: err, hint: 'check --sftp-key / BULWARK_SFTP_KEY' });
      }
      // Parsed here, so a wrong passphrase or a public key given by mistake says so instead of failing
      // somewhere inside the handshake.
      const parsed = ssh2().utils.parseKey(key, passphrase);
      if (parsed instanceof Error) {
        throw new BulwarkError('usage', `unable to use the SSH key file '${keyFile}': ${parsed.message}`, { hint: passphrase === undefined ? 'if the key is encrypted, give its passphrase' : 'check the key and its passphrase' });
      }
      out.privateKey = key;
      if (passphrase !== undefined) out.passphrase = passphrase;
    }
    if (out.password === undefined && out.privateKey === undefined) {
      throw new BulwarkError('usage', `no SSH credentials for ${this.properties.location}`, { hint: 'give a private key with --sftp-key (or BULWARK_SFTP_KEY), or a password in BULWARK_SFTP_PASSWORD' });
    }
    return out;
  }

  private async hostKeyChecker(): Promise<HostKeyChecker> {
    const file = this.opts.knownHostsFile ?? posix.join(homedir(), '.ssh', 'known_hosts');
    const text = await fsp.readFile(file, 'utf8').catch((err: unknown) => {
      // A missing file is a host not yet known, which verify() explains with the fingerprint.
      if ((err as { code?: unknown }).code === 'ENOENT') return '';
      throw new BulwarkError('usage', `unable to read the known hosts file '${file}': ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    });
    return new HostKeyChecker(file, text, this.loc.host, this.loc.port);
  }

  private async connect(): Promise<Session> {
    const creds = await this.credentials();
    const checker = await this.hostKeyChecker();
    const client = new (ssh2().Client)();
    let refusal: BulwarkError | undefined;
    const algorithms: Algorithms = { serverHostKey: checker.algorithms() };
    const config: ConnectConfig = {
      host: this.loc.host,
      port: this.loc.port,
      username: this.loc.user,
      ...creds,
      algorithms,
      readyTimeout: this.opts.readyTimeoutMs ?? 20_000,
      keepaliveInterval: this.opts.keepaliveIntervalMs ?? 15_000,
      keepaliveCountMax: 3,
      hostVerifier: (key: Buffer): boolean => {
        const verdict = checker.verify(key);
        if (!verdict.ok) refusal = verdict.error;
        return verdict.ok;
      },
    };
    return new Promise<Session>((resolve, reject) => {
      let session: Session | undefined;
      let settled = false;
      const fail = (err: BulwarkError) => {
        if (settled) return;
        settled = true;
        client.end();
        reject(err);
      };
      const lost = (cause?: unknown) => {
        if (!session) return fail(this.connectError(refusal, cause));
        if (session.closed) return;
        session.closed = true;
        const err = connectionLost(this.hostName, cause);
        for (const r of session.pending) r(err);
        session.pending.clear();
        client.end();
      };
      client.on('ready', () => {
        client.sftp((err, sftp) => {
          if (err) return fail(new BulwarkError('failed', `the server ${this.hostName} refused the SFTP subsystem: ${err.message}`, { cause: err, hint: 'check that the server allows SFTP for this user (Subsystem sftp in sshd_config)' }));
          session = { client, sftp, closed: false, pending: new Set() };
          sftp.on('close', () => lost());
          settled = true;
          resolve(session);
        });
      });
      client.on('error', (err) => lost(err));
      client.on('close', () => lost());
      try {
        client.connect(config);
        // Every SFTP request is a small packet answered before the next one depends on it; with Nagle's
        // algorithm each would wait out the peer's delayed ACK (~40 ms): 20 times slower on a LAN.
        client.setNoDelay(true);
      } catch (err) {
        fail(new BulwarkError('usage', `unable to connect to ${this.hostName}: ${err instanceof Error ? err.message : String(err)}`, { cause: err }));
      }
    });
  }

  private connectError(refusal: BulwarkError | undefined, cause: unknown): BulwarkError {
    if (refusal) return refusal;
    const level = (cause as { level?: unknown } | undefined)?.level;
    const reason = cause instanceof Error ? cause.message : 'the connection closed';
    if (level === 'client-authentication') {
      const tried = [this.opts.keyFile === undefined ? undefined : `key ${this.opts.keyFile}`, this.opts.password === undefined ? undefined : 'password'].filter((x) => x !== undefined).join(' and ');
      return new BulwarkError('usage', `the server ${this.hostName} refused the login of '${this.loc.user}' with ${tried}`, { cause, hint: 'check the user name, the key (--sftp-key) or the password (BULWARK_SFTP_PASSWORD)' });
    }
    if (level === 'client-timeout') return new BulwarkError('timeout', `no SSH handshake with ${this.hostName} in time`, { cause, hint: 'check the host, port and network' });
    return new BulwarkError('io', `unable to connect to ${this.hostName}: ${reason}`, { cause, hint: 'check the host, port and network' });
  }

  /** One SFTP request; a connection that goes away rejects it rather than leaving it unanswered. */
  private call<T>(s: Session, fn: (cb: Callback<T>) => void): Promise<T> {
    if (s.closed) return Promise.reject(connectionLost(this.hostName));
    return new Promise<T>((resolve, reject) => {
      const onLost = (err: Error) => reject(err);
      s.pending.add(onLost);
      const done: Callback<T> = (err, value) => {
        s.pending.delete(onLost);
        if (err) reject(err);
        else resolve(value as T);
      };
      try {
        fn(done);
      } catch (err) {
        s.pending.delete(onLost);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }

  /** Runs `fn` on the session and words any failure as "unable to <verb> <object> '<path>'". */
  private async op<T>(verb: string, object: string, path: string, fn: (s: Session) => Promise<T>): Promise<T> {
    // Outside the wrapping: use after close() is a bug, not a transient failure to retry.
    if (this.closing) throw new Error('the SFTP backend is closed');
    let s: Session | undefined;
    try {
      s = await this.session();
      return await fn(s);
    } catch (err) {
      throw this.wrap(verb, object, path, err, s);
    }
  }

  private wrap(verb: string, object: string, path: string, err: unknown, s: Session | undefined): BulwarkError {
    const where = `${this.hostName}:${path}`;
    if (err instanceof BulwarkError) return unable(verb, object, where, err);
    const status = sftpStatus(err);
    if (status === FX.NO_SUCH_FILE) return unable(verb, object, where, err, 'not-found');
    if (status === FX.PERMISSION_DENIED) {
      return unable(verb, object, where, new BulwarkError('io', `permission denied`, { cause: err, hint: `check that '${this.loc.user}' may read and write the repository folder on the server` }));
    }
    // ssh2 answers requests cut off by a closed channel with a status-less "No response from server",
    // possibly before its close event reaches us.
    if (status === undefined && (s?.closed || (err instanceof Error && err.message === 'No response from server'))) {
      return unable(verb, object, where, connectionLost(this.hostName, err));
    }
    // Only the local side (reading a FileSource) fails with an errno; these no retry can fix.
    if (LOCAL_PERMANENT_ERRNO.has(errnoCode(err) ?? '')) return unable(verb, object, where, err, 'failed');
    return unable(verb, object, where, err, 'io');
  }

  // --- small SFTP helpers -----------------------------------------------------------------------

  private lstat(s: Session, path: string): Promise<Stats> {
    return this.call<Stats>(s, (cb) => s.sftp.lstat(path, cb));
  }

  private async lstatOrUndefined(s: Session, path: string): Promise<Stats | undefined> {
    try {
      return await this.lstat(s, path);
    } catch (err) {
      if (sftpStatus(err) === FX.NO_SUCH_FILE) return undefined;
      throw err;
    }
  }

  private closeHandle(s: Session, handle: Buffer): Promise<void> {
    return this.call<void>(s, (cb) => s.sftp.close(handle, cb));
  }

  /** Calls an OpenSSH extension; false when the server does not offer it (ssh2 then throws at once). */
  private async ext(s: Session, fn: (cb: Callback<void>) => void): Promise<boolean> {
    try {
      await this.call<void>(s, fn);
      return true;
    } catch (err) {
      if (sftpStatus(err) === FX.OP_UNSUPPORTED || (err instanceof Error && /does not support this extended request/.test(err.message))) return false;
      throw err;
    }
  }

  private async mkdirIfMissing(s: Session, path: string): Promise<void> {
    try {
      await this.call<void>(s, (cb) => s.sftp.mkdir(path, { mode: DIR_MODE }, cb));
    } catch (err) {
      // SFTP v3 has no "exists" status (OpenSSH says FAILURE), so a folder already there is asked about.
      const st = await this.lstatOrUndefined(s, path);
      if (st?.isDirectory()) return;
      throw err;
    }
  }

  private async mkdirAll(s: Session, path: string): Promise<void> {
    const st = await this.lstatOrUndefined(s, path);
    if (st?.isDirectory()) return;
    const parent = posix.dirname(path);
    if (st === undefined && parent !== path && parent !== '.') await this.mkdirAll(s, parent);
    await this.mkdirIfMissing(s, path);
  }

  private async readDir(s: Session, dir: string): Promise<FileEntryWithStats[] | undefined> {
    let handle: Buffer;
    try {
      handle = await this.call<Buffer>(s, (cb) => s.sftp.opendir(dir, cb));
    } catch (err) {
      if (sftpStatus(err) === FX.NO_SUCH_FILE) return undefined;
      throw err;
    }
    const entries: FileEntryWithStats[] = [];
    try {
      for (;;) {
        let batch: FileEntryWithStats[] | false;
        try {
          batch = await this.call<FileEntryWithStats[] | false>(s, (cb) => s.sftp.readdir(handle, cb));
        } catch (err) {
          if (sftpStatus(err) === FX.EOF) break;
          throw err;
        }
        if (batch === false) break;
        entries.push(...batch);
      }
    } finally {
      await this.closeHandle(s, handle).catch(() => undefined);
    }
    return entries;
  }

  // --- Backend ----------------------------------------------------------------------------------

  async create(): Promise<void> {
    const config = posix.join(this.root, 'config');
    await this.op('create', 'repository', this.root, async (s) => {
      if (await this.lstatOrUndefined(s, config)) {
        throw new BulwarkError('repository-exists', `a repository already exists at '${this.properties.location}'`, { hint: 'use it as it is, or choose another location' });
      }
      await this.mkdirAll(s, this.root);
      await this.assertNoStrangers(s);
      await Promise.all(LAYOUT_DIRS.map((d) => this.mkdirIfMissing(s, posix.join(this.root, d))));
      // Creating an existing folder is fine, so a create() repeated after a partial one finishes it.
      const subdirs = DATA_SUBDIRS.map((sub) => posix.join(this.root, 'data', sub));
      for (let i = 0; i < subdirs.length; i += MKDIR_PARALLEL) await Promise.all(subdirs.slice(i, i + MKDIR_PARALLEL).map((d) => this.mkdirIfMissing(s, d)));
    });
  }

  /** As in the local backend: a folder holding other things is almost certainly the wrong place. */
  private async assertNoStrangers(s: Session): Promise<void> {
    const strangers: string[] = [];
    for (const e of (await this.readDir(s, this.root)) ?? []) {
      if (e.filename.startsWith('.') || e.filename === 'lost+found') continue;
      if (!LAYOUT_DIRS.includes(e.filename) || !e.attrs.isDirectory()) {
        strangers.push(e.filename);
        continue;
      }
      // A key without a config (an init that died half way) would unlock a master key no config uses.
      if (e.filename === 'data') continue;
      const inside = (await this.readDir(s, posix.join(this.root, e.filename))) ?? [];
      if (inside.some((x) => !x.filename.startsWith('.'))) strangers.push(e.filename);
    }
    if (strangers.length > 0) {
      throw new BulwarkError('usage', `the folder is not empty and not a repository (it holds ${strangers.slice(0, 3).join(', ')}${strangers.length > 3 ? ', …' : ''})`, {
        hint: 'create a repository in an empty or new folder (if an earlier init was interrupted, remove the folder and run init again)',
      });
    }
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    const { dir, path } = this.pathOf(h);
    const object = OBJECT_WORDS[h.type];
    const size = saveSize(data);
    await this.op('write', object, path, async (s) => {
      const existing = await this.lstatOrUndefined(s, path);
      if (existing !== undefined && !(h.type === 'config' && existing.isFile())) {
        // Content-addressed: the same name and size means the same bytes (a retried upload).
        if (existing.isFile() && existing.size === size) return;
        throw new BulwarkError('repository-corrupt', `it exists with ${existing.isFile() ? `${existing.size} bytes, not ${size}` : 'a different kind (not a file)'}`, { hint: "run 'bulwark check'" });
      }
      // Atomicity: the bytes go to a dot-named temp file in the target folder (list() never shows it),
      // and only a rename publishes the whole object. A dropped connection leaves just the temp file.
      const tmp = posix.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
      let created = false;
      try {
        const handle = await this.openTemp(s, tmp, dir, h.type);
        created = true;
        try {
          await this.upload(s, handle, data);
          // Durable before it is published, when the server can say so (OpenSSH's fsync@openssh.com);
          // servers without it acknowledge writes only as far as their own file system does.
          await this.ext(s, (cb) => s.sftp.ext_openssh_fsync(handle, (err) => cb(err)));
          // No reader should ever see an object writable; some servers refuse modes, which is harmless.
          await this.call<void>(s, (cb) => s.sftp.fchmod(handle, FILE_MODE, cb)).catch(() => undefined);
        } finally {
          await this.closeHandle(s, handle).catch(() => undefined);
        }
        await this.publish(s, tmp, path, size, h.type === 'config');
        created = false;
      } finally {
        // A failed save must not leave partial bytes: on a full disk they hold the space needed to recover.
        if (created && !s.closed) await this.call<void>(s, (cb) => s.sftp.unlink(tmp, cb)).catch(() => undefined);
      }
    });
  }

  private async openTemp(s: Session, tmp: string, dir: string, type: FileType): Promise<Buffer> {
    const open = () => this.call<Buffer>(s, (cb) => s.sftp.open(tmp, 'wx', { mode: 0o600 }, cb));
    try {
      return await open();
    } catch (err) {
      // A copy tool that drops empty folders can lose a data subfolder, and repositories made before
      // notes/ existed lack it; the other type folders must exist, or this is not a repository.
      if (sftpStatus(err) !== FX.NO_SUCH_FILE || (type !== 'data' && type !== 'notes')) throw err;
      await this.mkdirIfMissing(s, dir);
      return open();
    }
  }

  /** Writes with up to WINDOW requests in flight; a FileSource is read a chunk at a time, never whole. */
  private async upload(s: Session, handle: Buffer, data: SaveData): Promise<void> {
    if (!isFileSource(data)) {
      const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      await pipelined(buf.length, async (off, len) => () => this.call<void>(s, (cb) => s.sftp.write(handle, buf, off, len, off, cb)));
      return;
    }
    const src = await fsp.open(data.path, 'r');
    try {
      await pipelined(data.size, async (off, len) => {
        // Its own buffer per chunk: ssh2 may still hold a chunk's bytes while later ones are read.
        const chunk = Buffer.allocUnsafe(len);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await src.read(chunk, got, len - got, off + got);
          if (bytesRead === 0) throw new Error(`${data.path} ended after ${off + got} of ${data.size} bytes`);
          got += bytesRead;
        }
        return () => this.call<void>(s, (cb) => s.sftp.write(handle, chunk, 0, len, off, cb));
      });
    } finally {
      await src.close();
    }
  }

  /** Renames the finished temp file onto its name. */
  private async publish(s: Session, tmp: string, path: string, size: number, replace: boolean): Promise<void> {
    // posix-rename replaces the target atomically: concurrent savers of one name all succeed (identical
    // bytes replace identical bytes), and the config is swapped without a moment of having none.
    if (await this.ext(s, (cb) => s.sftp.ext_openssh_rename(tmp, path, cb))) return;
    // Plain SFTP v3 rename refuses an existing target.
    try {
      await this.call<void>(s, (cb) => s.sftp.rename(tmp, path, cb));
      return;
    } catch (err) {
      const st = await this.lstatOrUndefined(s, path);
      if (st === undefined) throw err;
      if (!replace) {
        if (st.isFile() && st.size === size) {
          await this.call<void>(s, (cb) => s.sftp.unlink(tmp, cb)).catch(() => undefined);
          return;
        }
        throw err;
      }
    }
    // Without posix-rename the config cannot be replaced atomically: move the old one aside first, so
    // a failure leaves it recoverable, and accept a moment in which readers see no config.
    const aside = `${posix.dirname(path)}/${TEMP_PREFIX}old-${randomBytes(8).toString('hex')}`;
    await this.call<void>(s, (cb) => s.sftp.rename(path, aside, cb));
    await this.call<void>(s, (cb) => s.sftp.rename(tmp, path, cb));
    await this.call<void>(s, (cb) => s.sftp.unlink(aside, cb)).catch(() => undefined);
  }

  async load(h: Handle, offset?: number, length?: number): Promise<Buffer> {
    const { path } = this.pathOf(h);
    if (offset !== undefined && (!Number.isSafeInteger(offset) || offset < 0)) throw new Error(`invalid offset ${offset}`);
    if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new Error(`invalid length ${length}`);
    return this.op('read', OBJECT_WORDS[h.type], path, async (s) => {
      // lstat before open: opening a FIFO would block the server's single SFTP process, and a symlink
      // could point anywhere on the server. (Something swapped in between is a hostile server side.)
      const st = await this.lstat(s, path);
      if (!st.isFile()) throw notRegular(st);
      const start = offset ?? 0;
      const len = length ?? Math.max(0, st.size - start);
      // Checked before allocating: a bogus length from a damaged index must not become a huge buffer.
      if (start + len > st.size) throw beyondEnd(st.size, start, len);
      const buf = Buffer.allocUnsafe(len);
      if (len === 0) return buf;
      const handle = await this.call<Buffer>(s, (cb) => s.sftp.open(path, 'r', cb));
      try {
        await pipelined(len, async (off, n) => async () => {
          let got = 0;
          // Servers may answer a read with fewer bytes than asked; only zero means the end.
          while (got < n) {
            const bytesRead = await this.call<number>(s, (cb) => s.sftp.read(handle, buf, off + got, n - got, start + off + got, (err, nb) => cb(err, nb)));
            if (!bytesRead) throw beyondEnd(start + off + got, start, len);
            got += bytesRead;
          }
        });
      } finally {
        await this.closeHandle(s, handle).catch(() => undefined);
      }
      return buf;
    });
  }

  async stat(h: Handle): Promise<FileInfo> {
    const { path } = this.pathOf(h);
    return this.op('stat', OBJECT_WORDS[h.type], path, async (s) => {
      const st = await this.lstat(s, path);
      if (!st.isFile()) throw notRegular(st);
      return { name: h.name, size: st.size };
    });
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (!FILE_TYPES.includes(type)) throw new Error(`invalid file type '${String(type)}'`);
    if (type === 'config') {
      const path = posix.join(this.root, 'config');
      const st = await this.op('list', 'config', path, (s) => this.lstatOrUndefined(s, path));
      if (st?.isFile()) yield { name: '', size: st.size };
      return;
    }
    const dirs = type === 'data' ? DATA_SUBDIRS.map((sub) => ({ dir: posix.join(this.root, 'data', sub), prefix: sub })) : [{ dir: posix.join(this.root, type), prefix: '' }];
    const listDir = ({ dir, prefix }: { dir: string; prefix: string }): Promise<FileInfo[]> =>
      this.op('list', `${type} folder`, dir, async (s) => {
        // Only names load() would find: not temp files, strangers, objects in the wrong subfolder, or
        // anything that is not a regular file (the server's readdir reports lstat attributes).
        const entries = (await this.readDir(s, dir)) ?? [];
        return entries.filter((e) => OBJECT_NAME.test(e.filename) && e.filename.startsWith(prefix) && e.attrs.isFile()).map((e) => ({ name: e.filename, size: e.attrs.size }));
      });
    const ahead: Promise<FileInfo[]>[] = [];
    let next = 0;
    const fill = () => {
      while (ahead.length < LIST_AHEAD && next < dirs.length) {
        const p = listDir(dirs[next++]!);
        // Marked handled: a consumer that stops early never awaits the ones listed ahead.
        p.catch(() => undefined);
        ahead.push(p);
      }
    };
    fill();
    while (ahead.length > 0) {
      const files = await ahead.shift()!;
      fill();
      yield* files;
    }
  }

  async remove(h: Handle): Promise<void> {
    const { path } = this.pathOf(h);
    await this.op('remove', OBJECT_WORDS[h.type], path, (s) => this.call<void>(s, (cb) => s.sftp.unlink(path, cb)));
  }

  isNotFound(err: unknown): boolean {
    return sftpStatus(err) === FX.NO_SUCH_FILE;
  }

  isPermanent(err: unknown): boolean {
    if (err instanceof BulwarkError && err.code === 'repository-corrupt') return true;
    const status = sftpStatus(err);
    if (status !== undefined) return !TRANSIENT_STATUS.has(status);
    if (err instanceof BulwarkError) return !TRANSIENT_CODES.has(err.code);
    // Not ours and no status: a programmer error (bad name, bad offset), which no retry fixes.
    return true;
  }

  async close(): Promise<void> {
    this.closing = true;
    const p = this.current;
    this.current = undefined;
    const s = await p?.catch(() => undefined);
    if (!s || s.closed) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5_000);
      s.client.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      s.client.end();
    });
  }
}

/**
 * Runs over [0, total) in CHUNK-sized pieces with at most WINDOW sends unfinished. `prepare` (a local
 * read, say) is awaited in order; the send it returns runs alongside the others.
 */
async function pipelined(total: number, prepare: (off: number, len: number) => Promise<() => Promise<void>>): Promise<void> {
  const inflight = new Set<Promise<void>>();
  let failure: { err: unknown } | undefined;
  try {
    for (let off = 0; off < total && !failure; off += CHUNK) {
      const send = await prepare(off, Math.min(CHUNK, total - off));
      const p: Promise<void> = send().then(
        () => {
          inflight.delete(p);
        },
        (err: unknown) => {
          inflight.delete(p);
          failure ??= { err };
        },
      );
      inflight.add(p);
      while (inflight.size >= WINDOW) await Promise.race(inflight);
    }
  } finally {
    await Promise.allSettled(inflight);
  }
  if (failure) throw failure.err;
}
