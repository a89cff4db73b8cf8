import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend, FileInfo, FileType } from '../storage/backend.js';
import { RestBackend, RestError, parseRestLocation } from '../storage/rest.js';
import { backendSuite, rejection } from '../storage/testing/suite.js';
import { BulwarkError } from '../util/errors.js';
import { addUser, startRepoServer, type RunningRepoServer } from './repo-server.js';

const PASSWORDS = { alice: 'alice-secret', bob: 'bob-secret', carol: 'carol-secret', dave: 'dave-secret' } as const;
type UserName = keyof typeof PASSWORDS;
const QUOTA = 1024 * 1024;

let data: string;
let srv: RunningRepoServer;
const logLines: string[] = [];
let repoCounter = 0;

function hostPort(): string {
  return new URL(srv.url).host;
}

function backend(user: UserName, repo: string, password: string = PASSWORDS[user], fingerprint = srv.fingerprint): RestBackend {
  return new RestBackend(`rest:https://${user}@${hostPort()}/${repo}`, { password, ...(fingerprint ? { tlsFingerprint: fingerprint } : {}) });
}

function object(size: number): { name: string; data: Buffer } {
  const bytes = randomBytes(size);
  return { name: createHash('sha256').update(bytes).digest('hex'), data: bytes };
}

async function listAll(b: Backend, type: FileType): Promise<FileInfo[]> {
  const out: FileInfo[] = [];
  for await (const f of b.list(type)) out.push(f);
  return out.sort((x, y) => x.name.localeCompare(y.name));
}

/** A request the client never makes: raw paths, to see what the server itself refuses. */
function raw(method: string, path: string, user: UserName = 'alice', password: string = PASSWORDS[user]): Promise<{ status: number; body: string }> {
  const u = new URL(srv.url);
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: u.hostname, port: u.port, method, path, rejectUnauthorized: false, headers: { Authorization: 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64') } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Every dot-named file left in a folder tree (upload and temp files). */
async function leftovers(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile() && e.name.startsWith('.')) out.push(e.name);
  return out;
}

beforeAll(async () => {
  data = await mkdtemp(join(tmpdir(), 'bulwark-repo-server-'));
  await addUser(data, 'alice', PASSWORDS.alice);
  await addUser(data, 'bob', PASSWORDS.bob);
  await addUser(data, 'carol', PASSWORDS.carol, { quotaBytes: QUOTA });
  await addUser(data, 'dave', PASSWORDS.dave, { appendOnly: true });
  srv = await startRepoServer({ data, listen: '127.0.0.1:0', log: (l) => logLines.push(l) });
}, 60_000);

afterAll(async () => {
  await srv?.close();
  if (data) await rm(data, { recursive: true, force: true });
});

describe('RestBackend against the repository server', () => {
  backendSuite('RestBackend', async () => {
    const repo = `suite-${++repoCounter}`;
    return {
      backend: backend('alice', repo),
      cleanup: () => rm(join(data, 'alice', repo), { recursive: true, force: true }),
    };
  });
});

describe('parseRestLocation', () => {
  it('reads user, host, port and path', () => {
    expect(parseRestLocation('rest:https://alice@backup.example:8443/a/b-1/')).toEqual({ secure: true, user: 'alice', host: 'backup.example', port: 8443, path: ['a', 'b-1'] });
    expect(parseRestLocation('rest:https://alice@backup.example/repo')).toMatchObject({ port: 443, path: ['repo'] });
    expect(parseRestLocation('rest:https://alice@[::1]:9000/repo')).toMatchObject({ host: '::1', port: 9000 });
    expect(parseRestLocation('rest:http://alice@127.0.0.1:8000/repo')).toMatchObject({ secure: false, port: 8000 });
    expect(parseRestLocation('rest:http://alice@localhost/repo')).toMatchObject({ secure: false, port: 80 });
  });

  it.each([
    ['rest:http://alice@backup.example:8000/repo', /plain http/],
    ['rest:https://backup.example/repo', /no user name/],
    ['rest:https://alice@backup.example:8443/', /no repository path/],
    ['rest:https://alice@backup.example/../bob', /invalid part/],
    ['rest:https://alice@backup.example/a/%2e%2e/b', /invalid part/],
    ['rest:https://alice@backup.example/a%2fb', /invalid part/],
    ['rest:https://alice@backup.example:99999/repo', /invalid port/],
    ['rest:https://alice@bad_host!/repo', /invalid host/],
    ['rest:ftp://alice@backup.example/repo', /not a rest/],
    ['https://alice@backup.example/repo', /not a rest/],
  ])('refuses %s', (location, message) => {
    const err = (() => {
      try {
        parseRestLocation(location);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).code).toBe('usage');
    expect((err as BulwarkError).message).toMatch(message);
  });

  it('refuses a password in the location without repeating it', () => {
    expect(() => parseRestLocation('rest:https://alice:hunter2@backup.example/repo')).toThrow(/contains a password/);
    try {
      parseRestLocation('rest:https://alice:hunter2@backup.example/repo');
    } catch (err) {
      expect(String((err as Error).message)).not.toContain('hunter2');
    }
  });

  it('refuses a malformed fingerprint, and TLS options with http', () => {
    expect(() => new RestBackend('rest:https://alice@backup.example/repo', { tlsFingerprint: 'abc' })).toThrow(/not a SHA-256 fingerprint/);
    expect(() => new RestBackend('rest:http://alice@127.0.0.1/repo', { tlsFingerprint: 'a'.repeat(64) })).toThrow(/rest:https/);
  });
});

describe('logins, users and paths', () => {
  it('refuses a wrong password permanently and promptly', async () => {
    const b = backend('alice', 'login', 'wrong');
    const t0 = Date.now();
    const err = await rejection(b.stat({ type: 'config', name: '' }));
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(err).toMatchObject({ code: 'usage' });
    expect((err as Error).message).toMatch(/refused the login of 'alice'/);
    expect(b.isPermanent(err)).toBe(true);
    expect(b.isNotFound(err)).toBe(false);
    await b.close();
    const unknown = await raw('GET', '/login/config', 'alice', 'wrong');
    expect(unknown.status).toBe(401);
  });

  it('refuses a server whose certificate does not match the pin, before sending the password', async () => {
    const before = logLines.length;
    const b = backend('alice', 'pinned', PASSWORDS.alice, 'ab'.repeat(32));
    const err = await rejection(b.stat({ type: 'config', name: '' }));
    expect((err as Error).message).toContain(`fingerprint ${srv.fingerprint}`);
    expect(b.isPermanent(err)).toBe(true);
    expect(logLines.slice(before).filter((l) => l.includes('/pinned/')), 'no request reached the server').toEqual([]);
    await b.close();
  });

  it('checks the certificate against a CA file, and refuses it with neither CA nor pin', async () => {
    const withCa = new RestBackend(`rest:https://alice@${hostPort()}/ca`, { password: PASSWORDS.alice, tlsCa: join(data, '.tls', 'cert.pem') });
    await withCa.create();
    expect(await listAll(withCa, 'keys')).toEqual([]);
    await withCa.close();
    const before = logLines.length;
    const system = new RestBackend(`rest:https://alice@${hostPort()}/ca`, { password: PASSWORDS.alice });
    const err = await rejection(system.stat({ type: 'config', name: '' }));
    expect(err).toMatchObject({ code: 'failed' });
    expect((err as Error).message).toMatch(/could not be verified/);
    expect(system.isPermanent(err)).toBe(true);
    expect(logLines.slice(before).filter((l) => l.includes('HEAD /ca/config'))).toEqual([]);
    await system.close();
  });

  it("keeps each user in its own folder: another user's repository is unreachable", async () => {
    const bob = backend('bob', 'shared');
    await bob.create();
    const secret = Buffer.from('bob config');
    await bob.save({ type: 'config', name: '' }, secret);
    const alice = backend('alice', 'shared');
    expect(alice.isNotFound(await rejection(alice.load({ type: 'config', name: '' })))).toBe(true);
    await bob.close();
    await alice.close();
    for (const path of ['/../bob/shared/config', '/%2e%2e/bob/shared/config', '/shared/..%2f..%2fbob%2fshared/config', '/x/%2E%2E/%2E%2E/bob/shared/config', '/.users', '/../.users', '/..%2f.users/config', '/.tls/config', '//bob/shared/config']) {
      const r = await raw('GET', path);
      expect([403, 404], `${path}: ${r.status} ${r.body}`).toContain(r.status);
      expect(r.body).not.toContain('bob config');
      expect(r.body).not.toContain('scrypt');
    }
    const del = await raw('DELETE', '/../bob/shared/config');
    expect(del.status).toBe(403);
    expect((await readFile(join(data, 'bob', 'shared', 'config'))).equals(secret)).toBe(true);
  });

  it('logs one line per request, without the password', () => {
    expect(logLines.length).toBeGreaterThan(0);
    expect(logLines.some((l) => / GET \/\.\.\/bob\/shared\/config 403 /.test(l))).toBe(true);
    for (const l of logLines) for (const pw of Object.values(PASSWORDS)) expect(l).not.toContain(pw);
  });
});

describe('quota', () => {
  it('refuses an upload over the quota with no-space, leaves nothing behind, and the repository stays usable', async () => {
    const b = backend('carol', 'repo');
    await b.create();
    await b.save({ type: 'config', name: '' }, randomBytes(100));
    const saved = [object(300 * 1024), object(300 * 1024), object(300 * 1024)];
    for (const o of saved) await b.save({ type: 'data', name: o.name }, o.data);
    const big = object(200 * 1024);
    const err = await rejection(b.save({ type: 'data', name: big.name }, big.data));
    expect(err).toMatchObject({ code: 'no-space' });
    expect((err as Error).message).toMatch(/quota exceeded/);
    expect(b.isPermanent(err)).toBe(true);
    expect(b.isNotFound(err)).toBe(false);
    expect(await leftovers(join(data, 'carol'))).toEqual([]);
    // A retry of an object already there adds nothing, so a full quota does not refuse it.
    await b.save({ type: 'data', name: saved[1]!.name }, saved[1]!.data);
    expect(b.isNotFound(await rejection(b.stat({ type: 'data', name: big.name })))).toBe(true);
    expect((await listAll(b, 'data')).map((f) => f.name)).toEqual(saved.map((o) => o.name).sort());
    for (const o of saved) expect((await b.load({ type: 'data', name: o.name })).equals(o.data)).toBe(true);
    // The running total follows removals: the space freed takes the upload.
    const first = saved[0]!;
    await b.remove({ type: 'data', name: first.name });
    await b.save({ type: 'data', name: big.name }, big.data);
    expect((await b.load({ type: 'data', name: big.name })).equals(big.data)).toBe(true);
    await b.close();
  });
});

describe('append-only user', () => {
  it('refuses removing data, index and snapshots, and replacing the config; locks come and go; new objects save', async () => {
    const b = backend('dave', 'repo');
    await b.create();
    await b.save({ type: 'config', name: '' }, Buffer.from('config'));
    const objects = new Map<FileType, ReturnType<typeof object>>();
    for (const type of ['data', 'index', 'snapshots', 'locks', 'keys'] as const) {
      const o = object(500);
      objects.set(type, o);
      await b.save({ type, name: o.name }, o.data);
    }
    for (const type of ['data', 'index', 'snapshots', 'keys'] as const) {
      const err = await rejection(b.remove({ type, name: objects.get(type)!.name }));
      expect(err, type).toMatchObject({ code: 'append-only' });
      expect(b.isPermanent(err)).toBe(true);
      expect((await b.load({ type, name: objects.get(type)!.name })).equals(objects.get(type)!.data)).toBe(true);
    }
    expect(await rejection(b.remove({ type: 'config', name: '' }))).toMatchObject({ code: 'append-only' });
    expect(await rejection(b.save({ type: 'config', name: '' }, Buffer.from('other config')))).toMatchObject({ code: 'append-only' });
    // A retry of the very same config is no replacement.
    await b.save({ type: 'config', name: '' }, Buffer.from('config'));
    expect((await b.load({ type: 'config', name: '' })).toString()).toBe('config');
    await b.remove({ type: 'locks', name: objects.get('locks')!.name });
    expect(await listAll(b, 'locks')).toEqual([]);
    const fresh = object(700);
    await b.save({ type: 'data', name: fresh.name }, fresh.data);
    await b.save({ type: 'data', name: fresh.name }, fresh.data);
    expect((await listAll(b, 'data')).length).toBe(2);
    await b.close();
  });
});

describe('large objects and content addressing', () => {
  it('saves 64 MiB from a file with bounded memory, and loads it and ranges of it back', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-rest-big-'));
    const b = backend('alice', 'big');
    try {
      await b.create();
      const size = 64 * 1024 * 1024;
      const path = join(dir, 'pack');
      const hash = createHash('sha256');
      const fh = await open(path, 'w');
      for (let off = 0; off < size; off += 1024 * 1024) {
        const chunk = randomBytes(1024 * 1024);
        hash.update(chunk);
        await fh.write(chunk, 0, chunk.length, off);
      }
      await fh.close();
      const name = hash.digest('hex');
      const base = process.memoryUsage().rss;
      let peak = base;
      const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
      try {
        await b.save({ type: 'data', name }, { path, size });
      } finally {
        clearInterval(timer);
      }
      peak = Math.max(peak, process.memoryUsage().rss);
      expect(peak - base, `rss grew by ${((peak - base) / 1048576).toFixed(1)} MiB`).toBeLessThan(32 * 1024 * 1024);
      expect(await b.stat({ type: 'data', name })).toEqual({ name, size });
      const back = await b.load({ type: 'data', name });
      expect(createHash('sha256').update(back).digest('hex')).toBe(name);
      const at = 10 * 1024 * 1024 + 3;
      const want = Buffer.alloc(1000);
      const src = await open(path, 'r');
      await src.read(want, 0, 1000, at);
      await src.close();
      expect((await b.load({ type: 'data', name }, at, 1000)).equals(want)).toBe(true);
      const tail = await b.load({ type: 'data', name }, size - 10);
      expect(tail.equals(back.subarray(size - 10))).toBe(true);
      // The stored file is the uploaded one, byte for byte.
      const stored = createHash('sha256');
      for await (const c of createReadStream(join(data, 'alice', 'big', 'data', name.slice(0, 2), name))) stored.update(c as Buffer);
      expect(stored.digest('hex')).toBe(name);
    } finally {
      await b.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('refuses an object whose bytes do not hash to its name (400)', async () => {
    const b = backend('alice', 'hashes');
    await b.create();
    const o = object(1000);
    const wrongName = object(1000).name;
    const err = await rejection(b.save({ type: 'index', name: wrongName }, o.data));
    expect(err).toBeInstanceOf(RestError);
    expect((err as RestError).status).toBe(400);
    expect((err as Error).message).toMatch(/content-addressed/);
    expect(b.isPermanent(err)).toBe(true);
    expect(b.isNotFound(await rejection(b.stat({ type: 'index', name: wrongName })))).toBe(true);
    expect(await leftovers(join(data, 'alice', 'hashes'))).toEqual([]);
    await b.close();
  });
});

describe('edges', () => {
  it('reads empty objects and empty tails, and refuses an offset past the end', async () => {
    const b = backend('alice', 'edges');
    await b.create();
    const empty = object(0);
    await b.save({ type: 'data', name: empty.name }, empty.data);
    expect((await b.load({ type: 'data', name: empty.name }, 0)).length).toBe(0);
    const o = object(1000);
    await b.save({ type: 'data', name: o.name }, o.data);
    expect((await b.load({ type: 'data', name: o.name }, 1000)).length).toBe(0);
    expect((await b.load({ type: 'data', name: o.name }, 0)).equals(o.data)).toBe(true);
    const err = await rejection(b.load({ type: 'data', name: o.name }, 1001));
    expect(b.isNotFound(err)).toBe(false);
    expect(b.isPermanent(err)).toBe(true);
    await b.close();
  });

  it('drops an upload cut off midway, leaving no temp file and no quota held', async () => {
    // Added while the server runs (it re-reads the users file), with room for one such upload only.
    await addUser(data, 'frank', 'frank-secret', { quotaBytes: QUOTA });
    const b = new RestBackend(`rest:https://frank@${hostPort()}/cut`, { password: 'frank-secret', tlsFingerprint: srv.fingerprint! });
    await b.create();
    const o = object(600 * 1024);
    const u = new URL(srv.url);
    await new Promise<void>((resolve) => {
      const req = https.request({
        host: u.hostname,
        port: u.port,
        method: 'POST',
        path: `/cut/data/${o.name}`,
        rejectUnauthorized: false,
        headers: { Authorization: 'Basic ' + Buffer.from('frank:frank-secret').toString('base64'), 'Content-Length': o.data.length },
      });
      req.on('error', () => undefined);
      req.on('close', () => resolve());
      req.write(o.data.subarray(0, 200 * 1024), () => setTimeout(() => req.destroy(), 200));
    });
    // The server notices the cut and cleans up on its own time.
    for (let i = 0; i < 50 && (await leftovers(join(data, 'frank', 'cut'))).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await leftovers(join(data, 'frank', 'cut'))).toEqual([]);
    expect(b.isNotFound(await rejection(b.stat({ type: 'data', name: o.name })))).toBe(true);
    // Had the cut upload kept its reservation, this one would not fit.
    await b.save({ type: 'data', name: o.name }, o.data);
    expect((await b.load({ type: 'data', name: o.name })).equals(o.data)).toBe(true);
    await b.close();
  });
});

describe('plain HTTP on loopback', () => {
  it('serves when told to, for tests', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-repo-http-'));
    await addUser(dir, 'erin', 'pw');
    const plain = await startRepoServer({ data: dir, listen: '127.0.0.1:0', insecureHttp: true });
    try {
      expect(plain.fingerprint).toBeUndefined();
      const b = new RestBackend(`rest:http://erin@${new URL(plain.url).host}/r`, { password: 'pw' });
      await b.create();
      const o = object(10);
      await b.save({ type: 'keys', name: o.name }, o.data);
      expect(await listAll(b, 'keys')).toEqual([{ name: o.name, size: 10 }]);
      await b.close();
    } finally {
      await plain.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
