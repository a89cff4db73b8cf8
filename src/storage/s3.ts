// A repository in an S3 bucket (AWS, or any S3-compatible store: MinIO, Ceph RGW, Swift's s3api, …),
// under an optional prefix, with the same keys as the local backend's paths.
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type * as ClientS3 from '@aws-sdk/client-s3';
import type { GetObjectCommandOutput, ListObjectsV2CommandOutput, S3Client } from '@aws-sdk/client-s3';
import type * as LibStorage from '@aws-sdk/lib-storage';
import { lazyRequire } from '../util/lazy-require.js';
import { BulwarkError, errnoCode, unable, type ErrorCode } from '../util/errors.js';
import { FILE_TYPES, OBJECT_WORDS, isFileSource, saveSize, type Backend, type BackendProperties, type FileInfo, type FileSource, type FileType, type Handle, type SaveData } from './backend.js';

const clientS3 = lazyRequire<typeof ClientS3>('@aws-sdk/client-s3');
const libStorage = lazyRequire<typeof LibStorage>('@aws-sdk/lib-storage');

export interface S3Location {
  /** Scheme, host and port, e.g. https://s3.amazonaws.com or http://127.0.0.1:9000. */
  endpoint: string;
  bucket: string;
  /** The folder in the bucket holding the repository, without slashes at either end; '' for the bucket's root. */
  prefix: string;
}

export interface S3BackendOptions {
  /** With secretAccessKey; without both, the SDK's default chain (environment, AWS_PROFILE, ~/.aws) supplies them. */
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
  /** Default us-east-1, which S3-compatible stores accept whatever they call themselves. */
  region?: string;
  /** Requests the repository keeps in flight. Default 8. */
  connections?: number;
  /** File sources larger than this go up in parts. Default 16 MiB. */
  multipartThreshold?: number;
  /** Size of one part. Default 8 MiB (the SDK holds up to queueSize parts in memory per upload). */
  partSize?: number;
  /** Parts of one upload in flight at once. Default 4. */
  queueSize?: number;
  /** Attempts per request inside the SDK, the first included. Default 3. */
  maxAttempts?: number;
  /** A request whose connection stays silent this long (nothing sent or received) fails, transiently. Default 60 s. */
  timeoutMs?: number;
}

type Verdict = 'not-found' | 'permanent' | 'transient';

interface SdkErrorShape {
  name: string;
  Code?: unknown;
  $retryable?: unknown;
  $metadata: { httpStatusCode?: number };
}

const NAME = /^[0-9a-f]{64}$/;
// DNS-compatible names, as S3 requires outside us-east-1's legacy rules; also what MinIO and Ceph accept.
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const MiB = 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 60_000;

const NOT_FOUND_NAMES = new Set(['NoSuchKey', 'NotFound']);
// Credentials, permissions and a bucket that is not there: the same answer however often we ask.
const PERMANENT_NAMES = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'NoSuchBucket',
  'InvalidBucketName',
  'AllAccessDisabled',
  'AccountProblem',
  'InvalidToken',
  'ExpiredToken',
  'BucketAlreadyExists',
  'CredentialsProviderError',
]);
const TRANSIENT_NAMES = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'ProvisionedThroughputExceededException',
  'BandwidthLimitExceeded',
  'RequestTimeout',
  'RequestTimeoutException',
  'RequestTimeTooSkewed',
  'InternalError',
  'ServiceUnavailable',
  'TimeoutError',
]);
// Connections refused, cut or timed out: the store (or the path to it) may come back.
const NETWORK_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EAI_AGAIN', 'ENOTFOUND', 'ERR_STREAM_PREMATURE_CLOSE', 'EPROTO']);
const TRANSIENT_CODES = new Set<ErrorCode>(['io', 'timeout', 'protocol']);
const AUTH_HINT = 'check the access key and secret (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile in AWS_PROFILE) and that they may use this bucket';

/**
 * `s3:https://host[:port]/bucket[/prefix]`, `s3:http://…`, or `s3:host/bucket[/prefix]` (https).
 * Credentials never go in the location: it is shown in messages and kept in shell history.
 */
export function parseS3Location(location: string): S3Location {
  const usage = (why: string): BulwarkError =>
    new BulwarkError('usage', `invalid S3 location '${redact(location)}': ${why}`, { hint: 'write s3:https://host[:port]/bucket[/prefix] or s3:s3.amazonaws.com/bucket[/prefix]' });
  if (!location.startsWith('s3:')) throw usage("it does not start with 's3:'");
  let rest = location.slice(3);
  if (rest === '') throw usage('it names no endpoint or bucket');
  if (!/^https?:\/\//i.test(rest)) {
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(rest)) throw usage('only http:// and https:// endpoints are supported');
    if (rest.startsWith('/')) throw usage('it names no endpoint host');
    rest = `https://${rest}`;
  }
  let url: URL;
  try {
    url = new URL(rest);
  } catch {
    throw usage('the endpoint is not a valid URL');
  }
  if (url.username !== '' || url.password !== '') {
    throw new BulwarkError('usage', `invalid S3 location '${redact(location)}': it must not contain credentials`, {
      hint: 'give the keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead',
    });
  }
  if (url.hostname === '') throw usage('it names no endpoint host');
  if (url.search !== '' || url.hash !== '' || rest.includes('?') || rest.includes('#')) throw usage('it must not have a query or fragment');
  // The raw path, not url.pathname: URL would resolve '..' and percent-decoding would hide odd names.
  const rawPath = rest.slice(rest.indexOf('//') + 2).replace(/^[^/]*/, '');
  const segments = rawPath.replace(/^\/+/, '').replace(/\/+$/, '').split('/');
  const bucket = segments.shift() ?? '';
  if (bucket === '') throw usage('it names no bucket');
  if (!BUCKET.test(bucket) || bucket.includes('..')) throw usage(`'${bucket}' is not a valid bucket name (3 to 63 lowercase letters, digits, dots and hyphens)`);
  for (const s of segments) {
    if (s === '' || s === '.' || s === '..') throw usage('the prefix must not have empty, "." or ".." parts');
    if (/[\p{Cc}\\%]/u.test(s)) throw usage('the prefix must not contain control characters, backslashes or percent signs');
  }
  return { endpoint: url.origin, bucket, prefix: segments.join('/') };
}

/** Locations may carry credentials by mistake (s3:https://key:secret@host/…); messages must not. */
function redact(location: string): string {
  return location.replace(/\/\/[^/@\s]*@/, '//***@');
}

function asSdkError(e: unknown): SdkErrorShape | undefined {
  if (!(e instanceof Error) || !('$metadata' in e)) return undefined;
  const meta = (e as { $metadata: unknown }).$metadata;
  return typeof meta === 'object' && meta !== null ? (e as unknown as SdkErrorShape) : undefined;
}

/** What the store's answer means for the caller, from the first link in the cause chain that says. */
function verdict(err: unknown): Verdict {
  let fallback: Verdict = 'permanent';
  for (let e: unknown = err, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    if (e instanceof BulwarkError) {
      // Damage and misuse stay whatever lies beneath; otherwise the innermost cause knows best.
      if (e.code === 'repository-corrupt' || e.code === 'usage') return 'permanent';
      if (depth === 0) fallback = TRANSIENT_CODES.has(e.code) ? 'transient' : 'permanent';
    } else {
      const sdk = asSdkError(e);
      if (sdk !== undefined) {
        const name = typeof sdk.Code === 'string' ? sdk.Code : sdk.name;
        const status = sdk.$metadata.httpStatusCode;
        if (NOT_FOUND_NAMES.has(name)) return 'not-found';
        if (PERMANENT_NAMES.has(name)) return 'permanent';
        if (TRANSIENT_NAMES.has(name)) return 'transient';
        if (status === 404) return 'not-found';
        if (status !== undefined && (status >= 500 || status === 429)) return 'transient';
        if (status !== undefined && status >= 400) return 'permanent';
        if (sdk.$retryable) return 'transient';
      }
      const code = errnoCode(e);
      if (code !== undefined && NETWORK_ERRNO.has(code)) return 'transient';
      if (e instanceof Error && (e.name === 'TimeoutError' || TRANSIENT_NAMES.has(e.name))) return 'transient';
      if (sdk !== undefined || (code !== undefined && /^E[A-Z0-9]+$/.test(code))) return 'permanent';
    }
    e = e instanceof Error ? e.cause : undefined;
  }
  return fallback;
}

/** The SDK's own messages can be empty (a HEAD has no body to carry one), so the status is spelled out. */
function reason(err: unknown): string {
  const sdk = asSdkError(err);
  if (sdk === undefined) return err instanceof Error ? err.message : String(err);
  const status = sdk.$metadata.httpStatusCode;
  const message = err instanceof Error && err.message !== '' && err.message !== 'UnknownError' ? err.message : status === 403 ? 'access denied' : status === 404 ? 'not found' : 'request failed';
  const name = typeof sdk.Code === 'string' ? sdk.Code : sdk.name;
  // 'Unknown' (a HEAD's error has no code) and 'Error' (a network error) name nothing worth showing.
  return `${name === 'Unknown' || name === 'Error' ? '' : `${name}: `}${message}${status === undefined ? '' : ` (HTTP ${status})`}`;
}

function beyondEnd(size: number, offset: number, length: number): BulwarkError {
  return new BulwarkError('repository-corrupt', `it has ${size} bytes, so ${length} bytes at offset ${offset} lie beyond its end`, {
    hint: "the index and the stored object disagree: run 'bulwark check'",
  });
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** The SDK logs a warning through its logger when it may not retry a streamed body; our retry wrapper does. */
const QUIET = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

export class S3Backend implements Backend {
  readonly properties: BackendProperties;
  private readonly client: S3Client;
  private readonly s3 = clientS3();
  private readonly bucket: string;
  /** '' or the prefix with one trailing slash. */
  private readonly base: string;
  /** <endpoint>/<bucket>, to which keys (which carry the prefix) are appended in messages. */
  private readonly root: string;
  private readonly multipartThreshold: number;
  private readonly partSize: number;
  private readonly queueSize: number;

  constructor(location: S3Location | string, opts: S3BackendOptions = {}) {
    const loc = typeof location === 'string' ? parseS3Location(location) : location;
    const connections = opts.connections ?? 8;
    if (!Number.isInteger(connections) || connections < 1) throw new Error(`connections must be a positive integer, not ${connections}`);
    if ((opts.accessKeyId === undefined) !== (opts.secretAccessKey === undefined)) {
      throw new BulwarkError('usage', 'an S3 access key id needs its secret access key, and the other way round', { hint: AUTH_HINT });
    }
    this.bucket = loc.bucket;
    this.base = loc.prefix === '' ? '' : `${loc.prefix}/`;
    this.root = `${loc.endpoint}/${loc.bucket}`;
    this.partSize = opts.partSize ?? 8 * MiB;
    this.queueSize = opts.queueSize ?? 4;
    this.multipartThreshold = Math.max(opts.multipartThreshold ?? 16 * MiB, this.partSize);
    // S3 refuses parts under 5 MiB (but the last); a smaller setting would fail only on the first big pack.
    if (this.partSize < 5 * MiB) throw new Error(`partSize must be at least 5 MiB, not ${this.partSize}`);
    this.properties = { connections, location: `s3:${loc.endpoint}/${loc.bucket}${loc.prefix === '' ? '' : `/${loc.prefix}`}` };
    // Sockets for every request in flight: each connection may be a multipart upload with its own queue.
    const sockets = connections * this.queueSize + 4;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(timeoutMs > 0)) throw new Error(`timeoutMs must be positive, not ${timeoutMs}`);
    this.client = new this.s3.S3Client({
      endpoint: loc.endpoint,
      region: opts.region ?? 'us-east-1',
      forcePathStyle: true,
      ...(opts.accessKeyId !== undefined && opts.secretAccessKey !== undefined
        ? { credentials: { accessKeyId: opts.accessKeyId, secretAccessKey: opts.secretAccessKey, ...(opts.sessionToken === undefined ? {} : { sessionToken: opts.sessionToken }) } }
        : {}),
      // Few: a long outage is Bulwark's retry wrapper's business, which backs off for minutes and reports.
      maxAttempts: opts.maxAttempts ?? 3,
      // The SDK's default adds CRC trailers in aws-chunked bodies that many S3-compatible stores (Swift
      // before 2.35, older MinIO and Ceph) refuse. Buffers carry a Content-MD5 instead, and every
      // object is checked against its hash name by the repository when read.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        connectionTimeout: Math.min(10_000, timeoutMs),
        // Idle time on the socket. Not requestTimeout: that one limits a whole request (a big part on a
        // slow link may rightly take longer), and without throwOnRequestTimeout it only logs a warning,
        // so a store that stops answering but keeps the connection open would be waited on for ever.
        socketTimeout: timeoutMs,
        httpAgent: new HttpAgent({ keepAlive: true, maxSockets: sockets }),
        httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: sockets }),
      },
      logger: QUIET,
    });
  }

  /** The only way a handle becomes a key; see LocalBackend.pathOf for why names are checked this strictly. */
  private keyOf(h: Handle): string {
    if (!FILE_TYPES.includes(h.type)) throw new Error(`invalid file type '${String(h.type)}'`);
    if (typeof h.name !== 'string') throw new Error(`invalid object name for ${h.type}`);
    if (h.type === 'config') {
      if (h.name !== '') throw new Error(`invalid name '${h.name}' for config (it has none)`);
      return `${this.base}config`;
    }
    if (!NAME.test(h.name)) throw new Error(`invalid ${h.type} name '${h.name}' (want 64 lowercase hex characters)`);
    return h.type === 'data' ? `${this.base}data/${h.name.slice(0, 2)}/${h.name}` : `${this.base}${h.type}/${h.name}`;
  }

  /** "unable to <verb> <object> '<s3:…/key>': <reason>", with the SDK error kept as cause for isNotFound/isPermanent. */
  private fail(verb: string, object: string, key: string, err: unknown): BulwarkError {
    const id = `s3:${this.root}/${key}`;
    if (err instanceof BulwarkError) return unable(verb, object, id, err);
    const v = verdict(err);
    const sdk = asSdkError(err);
    const status = sdk?.$metadata.httpStatusCode;
    const name = sdk === undefined ? undefined : typeof sdk.Code === 'string' ? sdk.Code : sdk.name;
    let hint: string | undefined;
    // No keys anywhere in the SDK's chain: it says so with a CredentialsProviderError (no $metadata).
    if (status === 403 || (err instanceof Error && err.name === 'CredentialsProviderError') || (name !== undefined && ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken'].includes(name))) hint = AUTH_HINT;
    else if (name === 'NoSuchBucket') hint = `check the bucket name '${this.bucket}' in the repository location, or run 'bulwark init' to create it`;
    else if (v === 'transient') hint = 'the S3 store did not answer properly; it may be down or overloaded, or the network is interrupted';
    const code: ErrorCode = v === 'not-found' ? 'not-found' : v === 'transient' ? 'io' : 'failed';
    return new BulwarkError(code, `unable to ${verb} ${object} '${id}': ${reason(err)}`, { cause: err, ...(hint === undefined ? {} : { hint }) });
  }

  /** The object's size, or undefined when there is none. */
  private async head(key: string): Promise<number | undefined> {
    try {
      const res = await this.client.send(new this.s3.HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return res.ContentLength ?? 0;
    } catch (err) {
      if (verdict(err) === 'not-found') return undefined;
      throw err;
    }
  }

  async create(): Promise<void> {
    const configKey = `${this.base}config`;
    try {
      await this.ensureBucket();
      if ((await this.head(configKey)) !== undefined) {
        throw new BulwarkError('repository-exists', `a repository already exists at '${this.properties.location}'`, { hint: 'use it as it is, or choose another location' });
      }
      // Another tool's objects, or keys from an init that died before its config (which would unlock a
      // master key no config was sealed with): either way not a place for a new repository.
      const res = await this.client.send(new this.s3.ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.base, MaxKeys: 3 }));
      const strangers = (res.Contents ?? []).map((o) => (o.Key ?? '').slice(this.base.length));
      if (strangers.length > 0) {
        throw new BulwarkError('usage', `the location is not empty and not a repository (it holds ${strangers.slice(0, 2).join(', ')}${strangers.length > 2 ? ', …' : ''})`, {
          hint: 'create a repository under an empty prefix or in a new bucket (if an earlier init was interrupted, remove its objects and run init again)',
        });
      }
    } catch (err) {
      if (err instanceof BulwarkError) throw err;
      throw this.fail('create', 'repository', configKey, err);
    }
  }

  private async ensureBucket(): Promise<void> {
    try {
      await this.client.send(new this.s3.HeadBucketCommand({ Bucket: this.bucket }));
      return;
    } catch (err) {
      if (asSdkError(err)?.$metadata.httpStatusCode !== 404) throw err;
    }
    try {
      await this.client.send(new this.s3.CreateBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      // Made by a create() whose reply was lost, or by a concurrent init: ours either way.
      if (asSdkError(err)?.name !== 'BucketAlreadyOwnedByYou') throw err;
    }
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    const key = this.keyOf(h);
    const object = OBJECT_WORDS[h.type];
    const size = saveSize(data);
    try {
      // Objects are content-addressed and never change, so one already there with this size is this
      // one (a retried or concurrent save); another size is damage, and overwriting would hide it. The
      // config is the exception the contract allows: a PUT replaces it atomically.
      if (h.type !== 'config') {
        const existing = await this.head(key);
        if (existing !== undefined) {
          if (existing === size) return;
          throw new BulwarkError('repository-corrupt', `it exists with ${existing} bytes, not ${size}`, { hint: "run 'bulwark check'" });
        }
      }
      if (!isFileSource(data)) {
        const body = asBuffer(data);
        // Content-MD5 makes the store refuse bytes damaged on the way (BadDigest) rather than keep them.
        const md5 = createHash('md5').update(body).digest('base64');
        await this.client.send(new this.s3.PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ContentMD5: md5 }));
      } else {
        await this.saveFile(key, data);
      }
    } catch (err) {
      throw this.fail('write', object, key, err);
    }
  }

  /** Streams a local file: one PUT when small, else a multipart upload holding only a few parts in memory. */
  private async saveFile(key: string, src: FileSource): Promise<void> {
    const st = await fsp.stat(src.path);
    // A short file would make a PUT wait for bytes that never come (or a multipart upload miscount).
    if (!st.isFile() || st.size !== src.size) {
      throw new BulwarkError('failed', `${src.path} holds ${st.isFile() ? `${st.size} bytes, not ${src.size}` : 'no regular file'}`);
    }
    if (src.size === 0) {
      await this.client.send(new this.s3.PutObjectCommand({ Bucket: this.bucket, Key: key, Body: Buffer.alloc(0), ContentLength: 0 }));
      return;
    }
    const stream = () => createReadStream(src.path, { start: 0, end: src.size - 1, highWaterMark: MiB });
    if (src.size <= this.multipartThreshold) {
      // A streamed body is sent once (the SDK cannot rewind it); a failure goes back to our retry
      // wrapper, which opens the file again.
      const body = stream();
      try {
        await this.client.send(new this.s3.PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: src.size }));
      } finally {
        body.destroy();
      }
      return;
    }
    const body = stream();
    const upload = new (libStorage().Upload)({
      client: this.client,
      params: { Bucket: this.bucket, Key: key, Body: body, ContentLength: src.size },
      partSize: this.partSize,
      queueSize: this.queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (err) {
      // The SDK aborts a failed upload itself, but its abort can fail too (the store went away mid-way).
      // Parts of an upload nobody completes or aborts are kept, and billed, until a lifecycle rule
      // clears them: one more try here; a bucket lifecycle rule is the only sure cure.
      if (upload.uploadId !== undefined) {
        await this.client.send(new this.s3.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: upload.uploadId })).catch(() => undefined);
      }
      throw err;
    } finally {
      body.destroy();
    }
  }

  async load(h: Handle, offset?: number, length?: number): Promise<Buffer> {
    const key = this.keyOf(h);
    const object = OBJECT_WORDS[h.type];
    if (offset !== undefined && (!Number.isSafeInteger(offset) || offset < 0)) throw new Error(`invalid offset ${offset}`);
    if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new Error(`invalid length ${length}`);
    try {
      if (offset === undefined && length === undefined) {
        const res = await this.client.send(new this.s3.GetObjectCommand({ Bucket: this.bucket, Key: key }));
        const body = await bodyOf(res);
        if (res.ContentLength !== undefined && body.length !== res.ContentLength) throw new BulwarkError('io', `the store sent ${body.length} of ${res.ContentLength} bytes`);
        return body;
      }
      const start = offset ?? 0;
      // HTTP has no empty range: the object's size alone decides.
      if (length === 0) {
        const size = await this.head(key);
        if (size === undefined) throw new BulwarkError('not-found', 'it does not exist');
        if (start > size) throw beyondEnd(size, start, 0);
        return Buffer.alloc(0);
      }
      let res: GetObjectCommandOutput;
      try {
        res = await this.client.send(new this.s3.GetObjectCommand({ Bucket: this.bucket, Key: key, Range: length === undefined ? `bytes=${start}-` : `bytes=${start}-${start + length - 1}` }));
      } catch (err) {
        if (asSdkError(err)?.$metadata.httpStatusCode !== 416) throw err;
        // The range starts at or past the end. Reading "the rest" from exactly the end is empty, as
        // on a local disk; anything else is a range the index should never have asked for.
        const size = await this.head(key);
        if (size === undefined) throw err;
        if (length === undefined && start === size) return Buffer.alloc(0);
        throw beyondEnd(size, start, length ?? 0);
      }
      let body = await bodyOf(res);
      const total = /\/(\d+)$/.exec(res.ContentRange ?? '')?.[1];
      // A store that ignores Range sends the whole object (200, no Content-Range): cut it here.
      if (res.ContentRange === undefined) body = body.subarray(start, length === undefined ? undefined : start + length);
      const size = total !== undefined ? Number(total) : undefined;
      const want = length ?? (size !== undefined ? size - start : body.length);
      if (body.length < want) {
        if (size !== undefined && start + want > size) throw beyondEnd(size, start, want);
        throw new BulwarkError('io', `the store sent ${body.length} of ${want} bytes`);
      }
      return body;
    } catch (err) {
      throw this.fail('read', object, key, err);
    }
  }

  async stat(h: Handle): Promise<FileInfo> {
    const key = this.keyOf(h);
    try {
      const res = await this.client.send(new this.s3.HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { name: h.name, size: res.ContentLength ?? 0 };
    } catch (err) {
      throw this.fail('stat', OBJECT_WORDS[h.type], key, err);
    }
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    if (!FILE_TYPES.includes(type)) throw new Error(`invalid file type '${String(type)}'`);
    if (type === 'config') {
      const key = `${this.base}config`;
      let size: number | undefined;
      try {
        size = await this.head(key);
      } catch (err) {
        throw this.fail('list', 'config', key, err);
      }
      if (size !== undefined) yield { name: '', size };
      return;
    }
    const prefix = `${this.base}${type}/`;
    let token: string | undefined;
    do {
      let page: ListObjectsV2CommandOutput;
      try {
        page = await this.client.send(new this.s3.ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ...(token === undefined ? {} : { ContinuationToken: token }) }));
      } catch (err) {
        throw this.fail('list', `${type} folder`, prefix, err);
      }
      for (const o of page.Contents ?? []) {
        const rest = (o.Key ?? '').slice(prefix.length);
        // Only keys load() would read: strangers and packs under the wrong two-letter folder are not
        // objects of this repository.
        const name = type === 'data' ? /^([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(rest) : /^()([0-9a-f]{64})$/.exec(rest);
        if (name === null || (type === 'data' && !name[2]!.startsWith(name[1]!))) continue;
        yield { name: name[2]!, size: o.Size ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async remove(h: Handle): Promise<void> {
    const key = this.keyOf(h);
    const object = OBJECT_WORDS[h.type];
    try {
      // DELETE of a missing key succeeds in S3; the contract wants "not found" for it.
      if ((await this.head(key)) === undefined) throw new BulwarkError('not-found', 'it does not exist');
      await this.client.send(new this.s3.DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      throw this.fail('remove', object, key, err);
    }
  }

  isNotFound(err: unknown): boolean {
    // Our own "it does not exist" (a DELETE cannot say so), or the store's 404.
    for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; depth++, e = e.cause) {
      if (e instanceof BulwarkError && e.code === 'not-found' && !(e.cause instanceof Error)) return true;
    }
    return verdict(err) === 'not-found';
  }

  isPermanent(err: unknown): boolean {
    return verdict(err) !== 'transient';
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

async function bodyOf(res: GetObjectCommandOutput): Promise<Buffer> {
  if (res.Body === undefined) return Buffer.alloc(0);
  return asBuffer(await res.Body.transformToByteArray());
}
