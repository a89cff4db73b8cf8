// The S3 backend against a real S3 server: OpenStack Swift with s3api (see test/helpers/s3server.ts for
// the Debian packages it needs), started once for this file.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startS3Server, type S3Server } from '../../test/helpers/s3server.js';
import { BulwarkError } from '../util/errors.js';
import { RetryBackend } from './retry.js';
import { S3Backend, parseS3Location, type S3BackendOptions } from './s3.js';
import { backendSuite, rejection } from './testing/suite.js';

interface Relay {
  endpoint: string;
  close(): Promise<void>;
}

const MiB = 1024 * 1024;
const BUCKET = 'bulwark-tests';

let server: S3Server;
let raw: S3Client;
let prefixes = 0;

beforeAll(async () => {
  server = await startS3Server();
  raw = new S3Client({ endpoint: server.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
}, 180_000);

afterAll(async () => {
  raw?.destroy();
  await server?.stop();
});

function backend(prefix: string, opts: S3BackendOptions = {}, endpoint = server.endpoint): S3Backend {
  return new S3Backend({ endpoint, bucket: BUCKET, prefix }, { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey, ...opts });
}

/** A prefix no other test uses, so each starts from an empty location without a bucket per test. */
function freshPrefix(what: string): string {
  return `${what}-${++prefixes}-${randomBytes(4).toString('hex')}`;
}

async function removePrefix(prefix: string): Promise<void> {
  let token: string | undefined;
  do {
    const page = await raw.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${prefix}/`, ...(token === undefined ? {} : { ContinuationToken: token }) }));
    await Promise.all((page.Contents ?? []).map((o) => raw.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: o.Key }))));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token !== undefined);
}

/**
 * A TCP relay in front of the server that reports how many request bytes went through, so a test can
 * stop the server at a known point of an upload rather than after a guessed delay.
 */
function relay(target: string, onBytes: (total: number) => void): Promise<Relay> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<net.Socket>();
  let total = 0;
  const srv = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client).add(upstream);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) s.on('error', end).on('close', end);
    client.on('data', (d: Buffer) => {
      total += d.length;
      onBytes(total);
    });
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address() as net.AddressInfo;
      resolve({
        endpoint: `http://127.0.0.1:${addr.port}`,
        close: () =>
          new Promise<void>((done) => {
            for (const s of sockets) s.destroy();
            srv.close(() => done());
          }),
      });
    });
  });
}

backendSuite('S3Backend', async () => {
  const prefix = freshPrefix('suite');
  return { backend: backend(prefix), cleanup: () => removePrefix(prefix) };
});

describe('parseS3Location', () => {
  it.each([
    ['s3:https://s3.example.com/bucket', { endpoint: 'https://s3.example.com', bucket: 'bucket', prefix: '' }],
    ['s3:https://s3.example.com/bucket/', { endpoint: 'https://s3.example.com', bucket: 'bucket', prefix: '' }],
    ['s3:https://s3.example.com:8443/my.bucket/some/prefix/', { endpoint: 'https://s3.example.com:8443', bucket: 'my.bucket', prefix: 'some/prefix' }],
    ['s3:http://127.0.0.1:9000/backups/host-1', { endpoint: 'http://127.0.0.1:9000', bucket: 'backups', prefix: 'host-1' }],
    ['s3:HTTP://Minio.Local:9000/bkt', { endpoint: 'http://minio.local:9000', bucket: 'bkt', prefix: '' }],
    ['s3:s3.amazonaws.com/bucket/prefix', { endpoint: 'https://s3.amazonaws.com', bucket: 'bucket', prefix: 'prefix' }],
    ['s3:s3.eu-west-1.amazonaws.com/bucket-1/a/b', { endpoint: 'https://s3.eu-west-1.amazonaws.com', bucket: 'bucket-1', prefix: 'a/b' }],
    ['s3:https://[::1]:9000/bucket', { endpoint: 'https://[::1]:9000', bucket: 'bucket', prefix: '' }],
  ])('%s', (location, expected) => {
    expect(parseS3Location(location)).toEqual(expected);
  });

  it.each([
    ['', "does not start with 's3:'"],
    ['https://host/bucket', "does not start with 's3:'"],
    ['s3:', 'no endpoint'],
    ['s3:https://host', 'no bucket'],
    ['s3:https://host/', 'no bucket'],
    ['s3:host', 'no bucket'],
    ['s3:/bucket/prefix', 'no endpoint host'],
    ['s3:ftp://host/bucket', 'only http'],
    ['s3:https://host/Bucket', 'not a valid bucket name'],
    ['s3:https://host/ab', 'not a valid bucket name'],
    ['s3:https://host/bucket_name', 'not a valid bucket name'],
    ['s3:https://host/bucket/a//b', 'empty'],
    ['s3:https://host/bucket/../other', '".."'],
    ['s3:https://host/bucket/./x', '"."'],
    ['s3:https://host/bucket/a%2Fb', 'percent'],
    ['s3:https://host/bucket?x=1', 'query'],
    ['s3:https://host/bucket#frag', 'fragment'],
    ['s3:https://host:99999/bucket', 'not a valid URL'],
    ['s3:https://key:secret@host/bucket', 'credentials'],
  ])('refuses %j', (location, why) => {
    let err: unknown;
    try {
      parseS3Location(location);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'usage' });
    expect((err as Error).message).toContain(why);
    expect((err as Error).message, 'no secret in the message').not.toContain('secret@');
  });

  it('keeps the location in properties without secrets', () => {
    const b = new S3Backend('s3:https://s3.example.com/bucket/pre', { accessKeyId: 'AKIAEXAMPLE', secretAccessKey: 'sEcReT' });
    expect(b.properties.location).toBe('s3:https://s3.example.com/bucket/pre');
    expect(b.properties.connections).toBe(8);
    expect(JSON.stringify(b.properties)).not.toMatch(/sEcReT|AKIAEXAMPLE/);
    expect(() => new S3Backend('s3:https://s3.example.com/bucket', { accessKeyId: 'x' })).toThrow(expect.objectContaining({ code: 'usage' }) as Error);
    void b.close();
  });
});

describe('S3Backend against Swift', () => {
  it('refuses a wrong secret clearly, and permanently', async () => {
    const prefix = freshPrefix('auth');
    const good = backend(prefix);
    await good.create();
    await good.save({ type: 'config', name: '' }, Buffer.from('cfg'));
    const bad = new S3Backend({ endpoint: server.endpoint, bucket: BUCKET, prefix }, { accessKeyId: server.accessKeyId, secretAccessKey: 'not-the-secret' });
    let retries = 0;
    const retried = new RetryBackend(bad, { sleep: async () => undefined, onRetry: () => retries++ });
    try {
      const name = 'a'.repeat(64);
      for (const [what, call] of [
        ['create', () => retried.create()],
        ['save', () => retried.save({ type: 'data', name }, Buffer.from('x'))],
        ['load', () => retried.load({ type: 'config', name: '' })],
        ['stat', () => retried.stat({ type: 'config', name: '' })],
        ['list', async () => {
          for await (const _ of retried.list('snapshots')) void _;
        }],
      ] as const) {
        const err = await rejection(call());
        expect(err, what).toBeInstanceOf(BulwarkError);
        expect(bad.isPermanent(err), what).toBe(true);
        expect(bad.isNotFound(err), what).toBe(false);
        expect((err as Error).message, what).toMatch(/403|SignatureDoesNotMatch|access denied/);
        expect((err as BulwarkError).hint, what).toMatch(/access key and secret/);
        expect((err as Error).message, 'the secret is not shown').not.toContain('not-the-secret');
      }
      expect(retries, 'a refusal is not retried').toBe(0);
    } finally {
      await retried.close();
      await good.close();
      await removePrefix(prefix);
    }
  });

  it('takes credentials from the environment, or a profile, when none are given', async () => {
    const prefix = freshPrefix('env');
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-s3-aws-'));
    const vars = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_CONFIG_FILE', 'AWS_EC2_METADATA_DISABLED'];
    const saved = new Map(vars.map((v) => [v, process.env[v]]));
    const at = { endpoint: server.endpoint, bucket: BUCKET, prefix };
    try {
      for (const v of vars) delete process.env[v];
      // Nowhere else to look: without this the chain would wait for an EC2 metadata service.
      process.env.AWS_EC2_METADATA_DISABLED = 'true';
      process.env.AWS_CONFIG_FILE = join(dir, 'none');
      process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'none');
      const none = new S3Backend(at);
      const err = await rejection(none.stat({ type: 'config', name: '' }));
      expect(none.isPermanent(err), String(err)).toBe(true);
      expect((err as BulwarkError).hint).toMatch(/access key and secret/);
      await none.close();

      process.env.AWS_ACCESS_KEY_ID = server.accessKeyId;
      process.env.AWS_SECRET_ACCESS_KEY = server.secretAccessKey;
      const fromEnv = new S3Backend(at);
      await fromEnv.create();
      await fromEnv.save({ type: 'config', name: '' }, Buffer.from('env'));
      await fromEnv.close();
      delete process.env.AWS_ACCESS_KEY_ID;
      delete process.env.AWS_SECRET_ACCESS_KEY;

      await writeFile(join(dir, 'credentials'), `[other]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[bulwark]\naws_access_key_id = ${server.accessKeyId}\naws_secret_access_key = ${server.secretAccessKey}\n`);
      process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'credentials');
      process.env.AWS_PROFILE = 'bulwark';
      const fromProfile = new S3Backend(at);
      expect((await fromProfile.load({ type: 'config', name: '' })).toString()).toBe('env');
      await fromProfile.close();
    } finally {
      for (const [v, value] of saved) {
        if (value === undefined) delete process.env[v];
        else process.env[v] = value;
      }
      await removePrefix(prefix);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('creates the bucket when missing, and refuses a prefix holding other objects', async () => {
    const bucket = `fresh-${randomBytes(4).toString('hex')}`;
    const b = new S3Backend({ endpoint: server.endpoint, bucket, prefix: 'repo' }, { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey });
    try {
      await b.create();
      await b.save({ type: 'config', name: '' }, Buffer.from('c'));
      expect((await b.load({ type: 'config', name: '' })).toString()).toBe('c');
      const other = new S3Backend({ endpoint: server.endpoint, bucket, prefix: '' }, { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey });
      await expect(other.create()).rejects.toMatchObject({ code: 'usage' });
      await other.close();
      await b.remove({ type: 'config', name: '' }).catch(() => undefined);
    } finally {
      await b.close();
    }
  });

  it('saves a 100 MiB file in parts with bounded memory, and loads it and a range back exactly', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-s3-big-'));
    const prefix = freshPrefix('big');
    const b = backend(prefix);
    try {
      await b.create();
      const size = 100 * MiB;
      const path = join(dir, 'pack');
      // Written a MiB at a time, so the test itself holds no 100 MiB buffer while memory is measured.
      const hash = createHash('sha256');
      const fh = await open(path, 'w');
      for (let off = 0; off < size; off += MiB) {
        const chunk = randomBytes(MiB);
        hash.update(chunk);
        await fh.write(chunk, 0, chunk.length, off);
      }
      await fh.close();
      const name = hash.digest('hex');

      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      const before = process.memoryUsage().rss;
      let peak = before;
      const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
      try {
        await b.save({ type: 'data', name }, { path, size });
      } finally {
        clearInterval(sampler);
      }
      peak = Math.max(peak, process.memoryUsage().rss);
      const growth = peak - before;
      // 8 MiB parts, 4 in flight, plus the read stream's buffers and the SDK's copies: far below 100 MiB.
      expect(growth, `rss grew by ${(growth / MiB).toFixed(1)} MiB`).toBeLessThan(60 * MiB);

      // The server's own record: a multipart object's ETag is "<md5 of part md5s>-<parts>".
      const key = `${prefix}/data/${name.slice(0, 2)}/${name}`;
      const head = await raw.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }));
      expect(head.ETag).toMatch(/^"?[0-9a-f]{32}-13"?$/);
      expect(head.ContentLength).toBe(size);
      const uploads = await raw.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: `${prefix}/` }));
      expect(uploads.Uploads ?? [], 'no unfinished upload is left').toEqual([]);

      expect(await b.stat({ type: 'data', name })).toEqual({ name, size });
      const whole = await b.load({ type: 'data', name });
      expect(whole.length).toBe(size);
      expect(createHash('sha256').update(whole).digest('hex')).toBe(name);

      // A range across a part boundary (parts are 8 MiB).
      const offset = 8 * MiB - 12_345;
      const length = MiB + 777;
      const range = await b.load({ type: 'data', name }, offset, length);
      expect(range.equals(whole.subarray(offset, offset + length))).toBe(true);
      const tailBytes = await b.load({ type: 'data', name }, size - 10);
      expect(tailBytes.equals(whole.subarray(size - 10))).toBe(true);
    } finally {
      await b.close();
      await removePrefix(prefix);
      await rm(dir, { recursive: true, force: true });
    }
  });

  // Last: it stops the server.
  it('reports the server going away mid-upload as transient', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-s3-outage-'));
    const prefix = freshPrefix('outage');
    await backend(prefix).create();
    let stopping: Promise<void> | undefined;
    // Stopped once the upload is well under way: some parts sent, more to come.
    const r = await relay(server.endpoint, (total) => {
      if (total > 12 * MiB && stopping === undefined) stopping = server.stopProxy();
    });
    const b = backend(prefix, { maxAttempts: 2 }, r.endpoint);
    try {
      const size = 40 * MiB;
      const path = join(dir, 'pack');
      const data = randomBytes(size);
      const fh = await open(path, 'w');
      await fh.write(data, 0, size, 0);
      await fh.close();
      const name = createHash('sha256').update(data).digest('hex');

      const err = await rejection(b.save({ type: 'data', name }, { path, size }));
      expect(stopping, 'the server was stopped during the upload').toBeDefined();
      await stopping;
      expect(err).toBeInstanceOf(BulwarkError);
      expect(b.isPermanent(err), String(err)).toBe(false);
      expect(b.isNotFound(err)).toBe(false);

      // And every other call while it is down.
      const direct = backend(prefix, { maxAttempts: 1 });
      for (const call of [() => direct.stat({ type: 'data', name }), () => direct.load({ type: 'data', name }, 0, 10), () => direct.save({ type: 'locks', name }, Buffer.from('x'))]) {
        const e = await rejection(call());
        expect(direct.isPermanent(e), String(e)).toBe(false);
        expect(direct.isNotFound(e)).toBe(false);
        expect((e as BulwarkError).hint).toMatch(/down|network/);
      }
      await direct.close();
    } finally {
      await b.close();
      await r.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
