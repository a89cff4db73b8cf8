import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFtpd, type Ftpd } from '../../test/helpers/ftpd.js';
import { BulwarkError } from '../util/errors.js';
import type { Handle } from './backend.js';
import { FtpBackend, parseFtpLocation, type FtpBackendOptions } from './ftp.js';
import { backendSuite, rejection } from './testing/suite.js';

let plain: Ftpd;
let secure: Ftpd;

beforeAll(async () => {
  [plain, secure] = await Promise.all([startFtpd(), startFtpd({ tls: true })]);
});

afterAll(async () => {
  await Promise.all([plain?.stop(), secure?.stop()]);
});

/** A new repository folder in the server's login folder, and how to remove it from this machine. */
function newRepo(d: Ftpd): { sub: string; local: string; location: string } {
  const top = `r-${randomBytes(6).toString('hex')}`;
  const scheme = d.caFile === undefined ? 'ftp' : 'ftps';
  return { sub: top, local: join(d.root, top), location: `${scheme}://${d.user}@127.0.0.1:${d.port}/${top}/repo` };
}

function backendOn(d: Ftpd, location: string, opts: FtpBackendOptions = {}): FtpBackend {
  return new FtpBackend(location, { password: d.password, ...(d.caFile === undefined ? {} : { tlsCa: d.caFile }), ...opts });
}

function hexObject(size: number): { h: Handle; data: Buffer } {
  const data = randomBytes(size);
  return { h: { type: 'data', name: createHash('sha256').update(data).digest('hex') }, data };
}

for (const [label, server] of [
  ['ftp', () => plain],
  ['ftps', () => secure],
] as const) {
  backendSuite(`FtpBackend (${label})`, async () => {
    const d = server();
    const r = newRepo(d);
    return { backend: backendOn(d, r.location), cleanup: () => rm(r.local, { recursive: true, force: true }) };
  });
}

describe('parseFtpLocation', () => {
  it('reads user, host, port, path and TLS', () => {
    expect(parseFtpLocation('ftp://bob@example.com/backups/repo')).toEqual({ secure: false, user: 'bob', password: undefined, host: 'example.com', port: 21, path: 'backups/repo' });
    expect(parseFtpLocation('ftps://bob@10.0.0.2:2121/repo/')).toEqual({ secure: true, user: 'bob', password: undefined, host: '10.0.0.2', port: 2121, path: 'repo' });
    expect(parseFtpLocation('FTPS://bob@[::1]:990/r')).toMatchObject({ secure: true, host: '::1', port: 990, path: 'r' });
    expect(parseFtpLocation('ftp://a%40b%3Ac:p%40ss%3Aw%2Fd@h/my%20repo')).toMatchObject({ user: 'a@b:c', password: 'p@ss:w/d', path: 'my repo' });
    expect(parseFtpLocation('ftp://u@h//srv/repo').path).toBe('/srv/repo');
    expect(parseFtpLocation('ftp://u@h/%2Fsrv/repo').path).toBe('/srv/repo');
  });

  it.each([
    ['sftp://u@h/r', /not an ftp/],
    ['ftp:/u@h/r', /not an ftp/],
    ['ftp://h/r', /no user/],
    ['ftp://@h/r', /empty user/],
    ['ftp://u@/r', /no host/],
    ['ftp://u@h', /no path/],
    ['ftp://u@h/', /no path/],
    ['ftp://u@h:0/r', /invalid port/],
    ['ftp://u@h:70000/r', /invalid port/],
    ['ftp://u@h:x/r', /invalid port/],
    ['ftp://u@ho st/r', /invalid host/],
    ['ftp://u@[zz]/r', /not an IPv6/],
    ['ftp://u@h/r%ZZ', /bad %-escape/],
    ['ftp://u@h/r%0D%0ADELE%20x', /line break/],
    ['ftp://u%0A@h/r', /line break/],
    ['ftp://u@h/a/../b', /'\.\.'/],
  ])('refuses %s', (location, message) => {
    let err: unknown;
    try {
      parseFtpLocation(location);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).code).toBe('usage');
    expect((err as BulwarkError).message).toMatch(message);
  });

  it('never shows the password in the location or in messages', () => {
    const b = new FtpBackend('ftp://bob:s3cret@h:21/repo');
    expect(b.properties.location).toBe('ftp://bob@h:21/repo');
    expect(() => parseFtpLocation('ftp://bob:s3cret@h:bad/repo')).toThrow(/^(?!.*s3cret)/);
  });

  it('takes TLS options for ftps only, and a well-formed fingerprint', () => {
    expect(() => new FtpBackend('ftp://u@h/r', { tlsFingerprint: 'a'.repeat(64) })).toThrow(/ftps/);
    expect(() => new FtpBackend('ftps://u@h/r', { tlsFingerprint: 'abc' })).toThrow(/SHA-256/);
    expect(new FtpBackend('ftps://u@h/r', { tlsFingerprint: `SHA256:${'AB:'.repeat(31)}AB` }).properties.location).toBe('ftps://u@h:21/r');
  });
});

describe('FtpBackend against vsftpd', () => {
  it('uses a pinned certificate fingerprint instead of a CA', async () => {
    const r = newRepo(secure);
    const b = new FtpBackend(r.location, { password: secure.password, tlsFingerprint: secure.fingerprint });
    try {
      await b.create();
      const o = hexObject(5000);
      await b.save(o.h, o.data);
      expect((await b.load(o.h, 10, 100)).equals(o.data.subarray(10, 110))).toBe(true);
    } finally {
      await b.close();
      await rm(r.local, { recursive: true, force: true });
    }
  });

  it('refuses a certificate that does not match the pin, naming the fingerprint it saw', async () => {
    const r = newRepo(secure);
    const b = new FtpBackend(r.location, { password: secure.password, tlsFingerprint: '00'.repeat(32) });
    try {
      const err = await rejection(b.create());
      expect(err).toBeInstanceOf(BulwarkError);
      expect((err as Error).message).toContain(secure.fingerprint);
      expect((err as Error).message).toMatch(/not the pinned 0{64}/);
      expect(b.isPermanent(err)).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('refuses a self-signed certificate without its CA, and says how to trust it', async () => {
    const r = newRepo(secure);
    const b = new FtpBackend(r.location, { password: secure.password });
    try {
      const err = await rejection(b.create());
      expect((err as Error).message).toMatch(/certificate is not trusted/);
      expect((err as BulwarkError).hint).toMatch(/tlsCa|tlsFingerprint/);
      expect(b.isPermanent(err)).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('fails a wrong password clearly, permanently and at once', async () => {
    for (const d of [plain, secure]) {
      const r = newRepo(d);
      const b = backendOn(d, r.location, { password: 'wrong' });
      try {
        const started = Date.now();
        const err = await rejection(b.stat({ type: 'config', name: '' }));
        expect(Date.now() - started).toBeLessThan(15_000);
        expect((err as Error).message).toMatch(/refused the login.*530/);
        expect((err as Error).message).not.toContain('wrong');
        expect((err as BulwarkError).hint).toMatch(/BULWARK_FTP_PASSWORD/);
        expect(b.isPermanent(err)).toBe(true);
        expect(b.isNotFound(err)).toBe(false);
      } finally {
        await b.close();
      }
    }
  });

  it('gives a transient error when the server dies mid-transfer, and works again once it is back', async () => {
    // Throttled, so the kill lands while the upload is surely still running.
    const d = await startFtpd({ maxRate: 2 * 1024 * 1024 });
    const r = newRepo(d);
    const b = backendOn(d, r.location);
    try {
      await b.create();
      const small = hexObject(1000);
      await b.save(small.h, small.data);
      const big = hexObject(8 * 1024 * 1024);
      const saving = b.save(big.h, big.data).then(
        () => undefined,
        (err: unknown) => err,
      );
      // Killed as soon as the upload shows on the server's disk.
      const folder = join(r.local, 'repo', 'data', big.h.name.slice(0, 2));
      const end = Date.now() + 30_000;
      while (!(await readdir(folder).catch(() => [] as string[])).some((n) => n.startsWith('.tmp-'))) {
        if (Date.now() > end) throw new Error('the upload never started');
        await new Promise((res) => setTimeout(res, 2));
      }
      await d.kill();
      const err = await saving;
      expect(err, 'the save was cut off').toBeInstanceOf(BulwarkError);
      expect(b.isPermanent(err)).toBe(false);
      expect(b.isNotFound(err)).toBe(false);
      // While it is down: still transient (connection refused), not a hang.
      const down = await rejection(b.load(small.h));
      expect(b.isPermanent(down)).toBe(false);

      await d.restart();
      await expect(b.stat(big.h), 'no partial object').rejects.toSatisfy((e) => b.isNotFound(e));
      expect((await b.load(small.h)).equals(small.data)).toBe(true);
      await b.save(big.h, big.data);
      expect((await b.stat(big.h)).size).toBe(big.data.length);
    } finally {
      await b.close();
      await d.stop();
    }
  });

  it('streams a 64 MiB file to the server and back, and a range reads only about its bytes', async () => {
    const d = plain;
    const r = newRepo(d);
    const b = backendOn(d, r.location);
    const dir = await mkdtemp(join(tmpdir(), 'bulwark-ftp-test-'));
    try {
      await b.create();
      const size = 64 * 1024 * 1024;
      const path = join(dir, 'pack');
      const hash = createHash('sha256');
      const fh = await open(path, 'w');
      for (let off = 0; off < size; off += 4 * 1024 * 1024) {
        const chunk = randomBytes(4 * 1024 * 1024);
        hash.update(chunk);
        await fh.write(chunk);
      }
      await fh.close();
      const h: Handle = { type: 'data', name: hash.digest('hex') };
      await b.save(h, { path, size });
      expect(await b.stat(h)).toEqual({ name: h.name, size });

      const back = await b.load(h);
      expect(back.length).toBe(size);
      expect(createHash('sha256').update(back).digest('hex')).toBe(h.name);

      const offset = 30 * 1024 * 1024 + 123;
      const length = 1024 * 1024;
      const want = await new Promise<Buffer>((resolve, reject) => {
        const parts: Buffer[] = [];
        createReadStream(path, { start: offset, end: offset + length - 1 })
          .on('data', (c) => parts.push(c as Buffer))
          .on('end', () => resolve(Buffer.concat(parts)))
          .on('error', reject);
      });
      const before = (await readFile(d.logFile, 'utf8')).length;
      expect((await b.load(h, offset, length)).equals(want)).toBe(true);
      // vsftpd logs each download with the bytes it sent; the ranged one must be far from the 34 MiB
      // that remained after the offset.
      let line: string | undefined;
      const end = Date.now() + 10_000;
      while (line === undefined) {
        line = (await readFile(d.logFile, 'utf8'))
          .slice(before)
          .split('\n')
          .find((l) => l.includes('DOWNLOAD') && l.includes(h.name));
        if (line === undefined) {
          if (Date.now() > end) throw new Error('vsftpd logged no download');
          await new Promise((res) => setTimeout(res, 20));
        }
      }
      const sent = Number(/, (\d+) bytes/.exec(line)?.[1]);
      expect(sent).toBeGreaterThanOrEqual(length);
      expect(sent, line).toBeLessThan(length + 8 * 1024 * 1024);
      // The connection that aborted the transfer is still good for more.
      for (let i = 0; i < 8; i++) expect((await b.load(h, i * 1000, 10)).length).toBe(10);
    } finally {
      await b.close();
      await rm(dir, { recursive: true, force: true });
      await rm(r.local, { recursive: true, force: true });
    }
  });
});
