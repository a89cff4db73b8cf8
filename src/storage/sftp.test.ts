import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeKeyPair, startSshd, type Sshd } from '../../test/helpers/sshd.js';
import { BulwarkError } from '../util/errors.js';
import type { Handle } from './backend.js';
import { parseSftpLocation, SftpBackend, sftpOptionsFromEnv, sshFingerprint, type SftpBackendOptions } from './sftp.js';
import { backendSuite, rejection } from './testing/suite.js';

let sshd: Sshd;
let scratch: string;
let knownHosts: string;

beforeAll(async () => {
  sshd = await startSshd();
  scratch = await mkdtemp(join(tmpdir(), 'bulwark-sftp-test-'));
  knownHosts = join(scratch, 'known_hosts');
  await writeFile(knownHosts, `${sshd.hostKeyLine}\n`);
});

afterAll(async () => {
  await sshd?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** A new repository folder on the server (the server is this machine, so the test can look inside). */
function newRepo(): { local: string; location: string } {
  const local = join(sshd.dir, randomBytes(6).toString('hex'), 'repo');
  return { local, location: `sftp://${sshd.user}@127.0.0.1:${sshd.port}/${local}` };
}

function backend(location: string, opts: SftpBackendOptions = {}): SftpBackend {
  return new SftpBackend(location, { keyFile: sshd.keyFile, knownHostsFile: knownHosts, ...opts });
}

function hexObject(size: number): { h: Handle; data: Buffer } {
  const data = randomBytes(size);
  return { h: { type: 'data', name: createHash('sha256').update(data).digest('hex') }, data };
}

function hostKeyBlob(line: string): Buffer {
  return Buffer.from(line.split(/\s+/)[2] ?? '', 'base64');
}

backendSuite('SftpBackend', async () => {
  const { local, location } = newRepo();
  return { backend: backend(location), cleanup: () => rm(join(local, '..'), { recursive: true, force: true }) };
});

describe('parseSftpLocation', () => {
  const me = userInfo().username;

  it.each([
    ['sftp:alice@example.com:/srv/repo', { user: 'alice', host: 'example.com', port: 22, path: '/srv/repo' }],
    ['sftp:alice@example.com:backups/repo', { user: 'alice', host: 'example.com', port: 22, path: 'backups/repo' }],
    ['sftp:example.com:/srv/repo/', { user: me, host: 'example.com', port: 22, path: '/srv/repo' }],
    ['sftp://alice@example.com:2222//srv/repo', { user: 'alice', host: 'example.com', port: 2222, path: '/srv/repo' }],
    ['sftp://alice@example.com:2222/repo', { user: 'alice', host: 'example.com', port: 2222, path: 'repo' }],
    ['sftp://alice@example.com/repo', { user: 'alice', host: 'example.com', port: 22, path: 'repo' }],
    ['sftp://example.com//srv/repo', { user: me, host: 'example.com', port: 22, path: '/srv/repo' }],
    ['sftp:alice@[::1]:/srv/repo', { user: 'alice', host: '::1', port: 22, path: '/srv/repo' }],
    ['sftp://alice@[::1]:2222//srv/repo', { user: 'alice', host: '::1', port: 2222, path: '/srv/repo' }],
    ['sftp://alice@[fe80::1%25eth0]/repo', { user: 'alice', host: 'fe80::1%eth0', port: 22, path: 'repo' }],
    ['sftp://al%40ice@host:22//a%20b', { user: 'al@ice', host: 'host', port: 22, path: '/a b' }],
  ])('%s', (location, want) => {
    expect(parseSftpLocation(location)).toEqual(want);
  });

  it.each([
    'sftp:',
    'sftp:host',
    'sftp:host:',
    'sftp:@host:/x',
    'sftp://host',
    'sftp://host/',
    'sftp://host:0//x',
    'sftp://host:65536//x',
    'sftp://host:port//x',
    'sftp://user:secret@host//x',
    'sftp://[::1//x',
    'sftp://[nothost]//x',
    'sftp:ho st:/x',
    'sftp://host//bad%zz',
    '/local/path',
    's3:bucket',
  ])('refuses %s with a usage error', (location) => {
    let err: unknown;
    try {
      parseSftpLocation(location);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).code).toBe('usage');
  });

  it('never repeats a password from the location in its message', () => {
    expect(() => parseSftpLocation('sftp://user:hunter2@host//x')).toThrow(/^(?!.*hunter2)/);
  });

  it('takes credentials from --sftp-key or the environment', () => {
    expect(sftpOptionsFromEnv({ BULWARK_SFTP_KEY: '/k', BULWARK_SFTP_PASSWORD: 'pw' })).toEqual({ keyFile: '/k', password: 'pw' });
    expect(sftpOptionsFromEnv({ BULWARK_SFTP_KEY: '/k' }, { sftpKey: '/flag' })).toEqual({ keyFile: '/flag' });
    expect(sftpOptionsFromEnv({})).toEqual({});
  });

  it('states a location without secrets', () => {
    const b = new SftpBackend('sftp://alice@[::1]:2222//srv/repo', { password: 'hunter2' });
    expect(b.properties.location).toBe('sftp://alice@[::1]:2222//srv/repo');
    expect(b.properties.connections).toBeGreaterThanOrEqual(4);
    expect(b.properties.connections).toBeLessThanOrEqual(8);
  });
});

describe('SftpBackend host keys', () => {
  const fingerprint = () => sshFingerprint(hostKeyBlob(sshd.hostKeyLine));

  async function refused(known: string, want: { code: string; text: RegExp }): Promise<BulwarkError> {
    const file = join(scratch, `kh-${randomBytes(4).toString('hex')}`);
    await writeFile(file, known);
    const { local, location } = newRepo();
    const b = backend(location, { knownHostsFile: file });
    const err = await rejection(b.create());
    await b.close();
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).code).toBe(want.code);
    expect((err as BulwarkError).message).toMatch(want.text);
    expect((err as BulwarkError).message).toContain(fingerprint());
    expect(b.isPermanent(err)).toBe(true);
    expect(existsSync(join(local, '..')), 'nothing was written').toBe(false);
    return err as BulwarkError;
  }

  it('prints fingerprints the way ssh-keygen -l does', () => {
    const pub = join(scratch, 'host.pub');
    execFileSync('sh', ['-c', `echo '${sshd.hostKeyLine.split(' ').slice(1).join(' ')}' > ${pub}`]);
    const out = execFileSync('ssh-keygen', ['-l', '-E', 'sha256', '-f', pub], { encoding: 'utf8' });
    expect(out).toContain(fingerprint());
    expect(fingerprint()).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it('refuses an unknown host, naming its fingerprint and how to add it', async () => {
    const file = join(scratch, 'kh-unknown');
    await writeFile(file, '# nothing here\n[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4bbvn2Y3RkUYxSy6qkETJBt0L/0QnEE0K5LZ7H8pCv\n');
    const { local, location } = newRepo();
    const b = backend(location, { knownHostsFile: file });
    const err = await rejection(b.create());
    await b.close();
    expect(err).toMatchObject({ code: 'usage' });
    expect((err as BulwarkError).message).toContain(fingerprint());
    expect((err as BulwarkError).hint).toContain(`ssh-keyscan -p ${sshd.port} 127.0.0.1 >> ${file}`);
    expect(existsSync(join(local, '..'))).toBe(false);
    // An empty or missing known_hosts file is the same case.
    await refused('', { code: 'usage', text: /not in/ });
    const missing = backend(newRepo().location, { knownHostsFile: join(scratch, 'no-such-file') });
    await expect(missing.create()).rejects.toMatchObject({ code: 'usage', message: expect.stringContaining(fingerprint()) as unknown });
    await missing.close();
  });

  it('refuses a changed host key', async () => {
    const other = await makeKeyPair(join(scratch, `other-${randomBytes(4).toString('hex')}`));
    const pub = execFileSync('cat', [`${other}.pub`], { encoding: 'utf8' }).trim().split(/\s+/).slice(0, 2).join(' ');
    const err = await refused(`[127.0.0.1]:${sshd.port} ${pub}\n`, { code: 'failed', text: /has changed/ });
    expect(err.hint).toContain(`ssh-keyscan -p ${sshd.port} 127.0.0.1`);
  });

  it('treats a key of a type not listed for the host as unknown, not changed', async () => {
    const other = await makeKeyPair(join(scratch, `ecdsa-${randomBytes(4).toString('hex')}`), 'ecdsa');
    const pub = execFileSync('cat', [`${other}.pub`], { encoding: 'utf8' }).trim().split(/\s+/).slice(0, 2).join(' ');
    await refused(`[127.0.0.1]:${sshd.port} ${pub}\n`, { code: 'usage', text: /only with keys of other types/ });
  });

  it('refuses a key marked @revoked even when it is also listed', async () => {
    await refused(`@revoked * ${sshd.hostKeyLine.split(' ').slice(1).join(' ')}\n${sshd.hostKeyLine}\n`, { code: 'failed', text: /revoked/ });
  });

  it('accepts hashed entries (ssh-keygen -H) and wildcard patterns', async () => {
    const hashed = join(scratch, 'kh-hashed');
    await writeFile(hashed, `${sshd.hostKeyLine}\n`);
    execFileSync('ssh-keygen', ['-H', '-f', hashed], { stdio: 'ignore' });
    const keyPart = sshd.hostKeyLine.split(' ').slice(1).join(' ');
    const wildcard = join(scratch, 'kh-wild');
    await writeFile(wildcard, `[127.0.0.?]:${sshd.port},!never.example ${keyPart}\n`);
    for (const file of [hashed, wildcard]) {
      const { location } = newRepo();
      const b = backend(location, { knownHostsFile: file });
      try {
        await b.create();
      } finally {
        await b.close();
      }
    }
    expect(await readFile(hashed, 'utf8')).toMatch(/^\|1\|/);
  });
});

describe('SftpBackend logins', () => {
  it('fails clearly, and quickly, with a key the server does not know', async () => {
    const wrong = await makeKeyPair(join(scratch, `wrong-${randomBytes(4).toString('hex')}`));
    const b = backend(newRepo().location, { keyFile: wrong });
    const started = Date.now();
    const err = await rejection(b.create());
    await b.close();
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(err).toMatchObject({ code: 'usage' });
    expect((err as Error).message).toMatch(/refused the login/);
    expect(b.isPermanent(err)).toBe(true);
  });

  it('fails clearly with an unreadable key file', async () => {
    const b = backend(newRepo().location, { keyFile: join(scratch, 'no-such-key') });
    await expect(b.create()).rejects.toMatchObject({ code: 'usage' });
    await b.close();
  });

  it('logs in with a password, and fails clearly with a wrong one', async (ctx) => {
    if (sshd.password === undefined) ctx.skip();
    const { location } = newRepo();
    const good = new SftpBackend(location, { password: sshd.password, knownHostsFile: knownHosts });
    try {
      await good.create();
    } finally {
      await good.close();
    }
    const bad = new SftpBackend(newRepo().location, { password: 'not-the-password', knownHostsFile: knownHosts });
    const started = Date.now();
    const err = await rejection(bad.create());
    await bad.close();
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(err).toMatchObject({ code: 'usage' });
    expect((err as Error).message).toMatch(/refused the login/);
  });
});

/** A full collection on demand, so a sample counts what is held rather than garbage not yet collected. */
function collector(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

/** Peak growth of live memory while `fn` runs, sampled on a timer. */
async function peakGrowth<T>(fn: () => Promise<T>): Promise<{ result: T; rss: number; arrayBuffers: number }> {
  const gc = collector();
  gc();
  gc();
  const base = process.memoryUsage();
  let rss = 0;
  let arrayBuffers = 0;
  const sample = () => {
    // Twice: the first collection finds dead buffers, but their memory is only swept on the next one.
    gc();
    gc();
    const m = process.memoryUsage();
    rss = Math.max(rss, m.rss - base.rss);
    arrayBuffers = Math.max(arrayBuffers, m.arrayBuffers - base.arrayBuffers);
  };
  const timer = setInterval(sample, 100);
  try {
    const result = await fn();
    sample();
    return { result, rss, arrayBuffers };
  } finally {
    clearInterval(timer);
  }
}

describe('SftpBackend on the server', () => {
  it('lists only objects: no temp files, strangers or folders', async () => {
    const { local, location } = newRepo();
    const b = backend(location);
    try {
      await b.create();
      const o = hexObject(10);
      await b.save(o.h, o.data);
      const sub = join(local, 'data', o.h.name.slice(0, 2));
      await writeFile(join(sub, `.tmp-${'0'.repeat(16)}`), 'partial');
      await writeFile(join(sub, 'stranger'), 'x');
      await mkdir(join(sub, 'f'.repeat(64)));
      const listed = [];
      for await (const f of b.list('data')) listed.push(f);
      expect(listed).toEqual([{ name: o.h.name, size: 10 }]);
      expect(await readdir(sub)).toContain(o.h.name);
    } finally {
      await b.close();
    }
  });

  it('recreates a missing notes/ or data subfolder, not other type folders', async () => {
    const { local, location } = newRepo();
    const b = backend(location);
    try {
      await b.create();
      await rm(join(local, 'notes'), { recursive: true });
      const note = hexObject(20);
      await b.save({ type: 'notes', name: note.h.name }, note.data);
      expect((await b.load({ type: 'notes', name: note.h.name })).equals(note.data)).toBe(true);
      await rm(join(local, 'index'), { recursive: true });
      const err = await rejection(b.save({ type: 'index', name: note.h.name }, note.data));
      expect(b.isNotFound(err)).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('reports permission denied as permanent', async (ctx) => {
    if (sshd.user === 'root') ctx.skip(); // root writes anywhere
    const { local, location } = newRepo();
    const b = backend(location);
    try {
      await b.create();
      const o = hexObject(10);
      await chmod(join(local, 'data', o.h.name.slice(0, 2)), 0o555);
      const err = await rejection(b.save(o.h, o.data));
      expect(err).toBeInstanceOf(BulwarkError);
      expect((err as Error).message).toMatch(/permission denied/);
      expect(b.isPermanent(err)).toBe(true);
      expect(b.isNotFound(err)).toBe(false);
    } finally {
      await b.close();
    }
  });

  it('does nothing after close()', async () => {
    const b = backend(newRepo().location);
    await b.close();
    const err = await rejection(b.stat(hexObject(1).h));
    expect(b.isPermanent(err)).toBe(true);
  });
});

describe('SftpBackend streaming and failures', () => {
  it('saves a 64 MiB file without holding it, and reads it back whole and by range', async () => {
    const size = 64 * 1024 * 1024;
    const src = join(scratch, 'big');
    const hash = createHash('sha256');
    const fh = await open(src, 'w');
    const block = randomBytes(1024 * 1024);
    for (let i = 0; i < 64; i++) {
      block.writeUInt32LE(i, 0); // no two MiB alike, so a misplaced range shows
      hash.update(block);
      await fh.write(block, 0, block.length, i * block.length);
    }
    await fh.close();
    const name = hash.digest('hex');
    const { local, location } = newRepo();
    const b = backend(location);
    try {
      await b.create();
      const h: Handle = { type: 'data', name };
      const growth = await peakGrowth(() => b.save(h, { path: src, size }));
      // What stays live is the window of writes in flight (1 MiB), not the object.
      expect(growth.arrayBuffers, 'buffers held while saving').toBeLessThan(8 * 1024 * 1024);
      expect(growth.rss, 'resident memory growth while saving').toBeLessThan(48 * 1024 * 1024);
      expect(await b.stat(h)).toEqual({ name, size });
      const whole = await b.load(h);
      expect(createHash('sha256').update(whole).digest('hex')).toBe(name);
      const offset = 30 * 1024 * 1024 + 12345;
      const part = await b.load(h, offset, 3 * 1024 * 1024 + 7);
      expect(part.equals(whole.subarray(offset, offset + part.length))).toBe(true);
      expect(await readdir(join(local, 'data', name.slice(0, 2)))).toEqual([name]);
    } finally {
      await b.close();
      await rm(src, { force: true });
    }
    // 64 MiB through a real sshd twice: well within two minutes on an idle machine, not on a busy one.
  }, 300_000);

  it('gives a transient error when the server dies mid-save, and reconnects to a new one', async () => {
    const { local, location } = newRepo();
    const b = backend(location);
    const src = join(scratch, 'mid');
    const size = 48 * 1024 * 1024;
    const fh = await open(src, 'w');
    const block = randomBytes(1024 * 1024);
    for (let i = 0; i < 48; i++) await fh.write(block, 0, block.length, i * block.length);
    await fh.close();
    try {
      await b.create();
      const before = hexObject(1000);
      await b.save(before.h, before.data);
      const name = 'ab'.repeat(32);
      // Observed from the start: it fails while the test is busy killing the server.
      const saving = rejection(b.save({ type: 'data', name }, { path: src, size }));
      // Killed once the upload is under way: its temp file has appeared on the server.
      const dir = join(local, 'data', 'ab');
      const end = Date.now() + 30_000;
      while (!(await readdir(dir)).some((n) => n.startsWith('.tmp-'))) {
        if (Date.now() > end) throw new Error('the upload never started');
        await new Promise((r) => setTimeout(r, 5));
      }
      await sshd.kill();
      const err = await saving;
      expect(err).toBeInstanceOf(BulwarkError);
      expect(b.isPermanent(err), String(err)).toBe(false);
      expect(b.isNotFound(err)).toBe(false);
      // While the server is down, calls fail as transient too (connection refused), not hang.
      const down = await rejection(b.stat(before.h));
      expect(b.isPermanent(down), String(down)).toBe(false);

      await sshd.restart();
      expect(await b.stat(before.h)).toEqual({ name: before.h.name, size: 1000 });
      const after = hexObject(2000);
      await b.save(after.h, after.data);
      expect((await b.load(after.h)).equals(after.data)).toBe(true);
    } finally {
      await b.close();
      await rm(src, { force: true });
    }
  });

  it('reconnects once, transparently, when the connection dropped between calls', async () => {
    const { location } = newRepo();
    const b = backend(location);
    try {
      await b.create();
      const o = hexObject(500);
      await b.save(o.h, o.data);
      await sshd.restart();
      // The client has seen its connection close by now; the next call opens a new one.
      await new Promise((r) => setTimeout(r, 100));
      expect((await b.load(o.h)).equals(o.data)).toBe(true);
    } finally {
      await b.close();
    }
  });
});
