import { createHash } from 'node:crypto';
import { readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CHEAP_KDF, createTestRepository, TEST_PASSWORD, type TestRepository } from '../../test/helpers/repo.js';
import { LocalBackend } from '../storage/local.js';
import { BulwarkError } from '../util/errors.js';
import { deriveKey, seal } from './crypto.js';
import { SCRYPT_DEFAULTS } from './format.js';
import { calibrateKdf, KDF_LIMITS, listKeys, openWithPassword, validateKdfParams, WrongPasswordError } from './keys.js';
import { Repository } from './repository.js';

let t: TestRepository | undefined;
afterEach(async () => {
  await t?.cleanup();
  t = undefined;
});

async function setup(version: 1 | 2 = 2): Promise<{ t: TestRepository; validName: string; valid: Record<string, unknown> }> {
  t = await createTestRepository({ version });
  const names = await readdir(join(t.path, 'keys'));
  expect(names).toHaveLength(1);
  const validName = names[0]!;
  return { t, validName, valid: JSON.parse(await readFile(join(t.path, 'keys', validName), 'utf8')) as Record<string, unknown> };
}

// Key files are named by the SHA-256 of their bytes; varying a filler until the hash has the wanted
// prefix puts planted files before (or after) the valid one, so the result cannot depend on list order.
async function plant(repoPath: string, make: (filler: number) => Buffer, prefix: string): Promise<string> {
  for (let i = 0; ; i++) {
    const bytes = make(i);
    const name = createHash('sha256').update(bytes).digest('hex');
    if (!name.startsWith(prefix)) continue;
    await writeFile(join(repoPath, 'keys', name), bytes);
    return name;
  }
}

function plantJson(repoPath: string, doc: Record<string, unknown>, prefix = '00'): Promise<string> {
  return plant(repoPath, (i) => Buffer.from(JSON.stringify({ ...doc, filler: i })), prefix);
}

function plantBytes(repoPath: string, bytes: Buffer, prefix = '00'): Promise<string> {
  return plant(repoPath, (i) => Buffer.concat([bytes, Buffer.from(String(i))]), prefix);
}

const backendOf = (path: string): LocalBackend => new LocalBackend(path);

describe('validateKdfParams', () => {
  it('accepts the defaults and the test KDF, refuses parameters beyond the limits', () => {
    expect(() => validateKdfParams(SCRYPT_DEFAULTS)).not.toThrow();
    expect(() => validateKdfParams(CHEAP_KDF)).not.toThrow();
    expect(() => validateKdfParams({ N: 2 ** 18, r: 8, p: 1 })).not.toThrow(); // exactly 256 MiB
    const bad = [
      { N: 0, r: 8, p: 1 },
      { N: 1000, r: 8, p: 1 },
      { N: 512, r: 8, p: 1 },
      { N: 2 ** 21, r: 1, p: 1 },
      { N: 2 ** 20, r: 8, p: 1 },
      { N: 1024, r: 0, p: 1 },
      { N: 1024, r: 33, p: 1 },
      { N: 1024, r: 8, p: 0 },
      { N: 1024, r: 8, p: 17 },
      { N: 1024, r: 8.5, p: 1 },
      { N: -1024, r: 8, p: 1 },
      { N: 2 ** 20, r: 2, p: 16 }, // 256 MiB is fine, but cost 2^25 is not
    ];
    for (const params of bad) expect(() => validateKdfParams(params), JSON.stringify(params)).toThrow(expect.objectContaining({ code: 'usage' }) as Error);
    expect(() => validateKdfParams({ N: 2 ** 20, r: 8, p: 1 })).toThrow(/asks for 1 GiB of memory; the limit is 256 MiB/);
  });

  it('keeps writeKey from writing a key it would refuse to read', async () => {
    const { t } = await setup();
    await expect(t.repo.addKey('other', { N: 1000, r: 8, p: 1 })).rejects.toMatchObject({ code: 'usage' });
    expect(await readdir(join(t.path, 'keys'))).toHaveLength(1);
  });
});

describe('openWithPassword', () => {
  it('skips damaged and hostile key files, before and after the valid one, and reports them', async () => {
    const { t, validName, valid } = await setup();
    const planted: string[] = [];
    // Garbage and wrong shapes.
    planted.push(await plantBytes(t.path, Buffer.from([0xff, 0x00, 0x7b, 0x22])));
    planted.push(await plantBytes(t.path, Buffer.from('null '), 'f'));
    planted.push(await plantBytes(t.path, Buffer.from('[1,2,3] ')));
    planted.push(await plantJson(t.path, { ...valid, N: '1024' }));
    planted.push(await plantJson(t.path, { ...valid, salt: 42 }));
    planted.push(await plantJson(t.path, { ...valid, data: null }, 'f'));
    planted.push(await plantJson(t.path, { ...valid, kdf: 'argon2' }));
    planted.push(await plantJson(t.path, { ...valid, version: 3 }));
    planted.push(await plantJson(t.path, { ...valid, meta: undefined }));
    planted.push(await plantJson(t.path, { ...valid, meta: 'AAAA' }));
    // Hostile or impossible scrypt parameters.
    for (const params of [
      { N: 0 },
      { N: 1000 },
      { N: -1024 },
      { N: 1024.5 },
      { N: 2 ** 40 },
      { r: 0 },
      { r: -8 },
      { p: 100000 },
      { p: 1.5 },
      { N: 2 ** 20, r: 2, p: 16 },
    ]) {
      planted.push(await plantJson(t.path, { ...valid, ...params }));
    }
    // Salt and data that are not base64 of a sane length.
    planted.push(await plantJson(t.path, { ...valid, salt: '' }));
    planted.push(await plantJson(t.path, { ...valid, salt: 'not base64!' }));
    planted.push(await plantJson(t.path, { ...valid, salt: Buffer.alloc(8).toString('base64') }));
    planted.push(await plantJson(t.path, { ...valid, salt: Buffer.alloc(1 << 20).toString('base64') }, '0'));
    planted.push(await plantJson(t.path, { ...valid, data: Buffer.alloc(10).toString('base64') }));
    planted.push(await plantJson(t.path, { ...valid, data: Buffer.alloc(4096).toString('base64') }, 'f'));
    // Too big to be a key file at all.
    planted.push(await plantBytes(t.path, Buffer.alloc(KDF_LIMITS.maxKeyFileBytes + 1, 0x20), '0'));

    const opened = await openWithPassword(backendOf(t.path), TEST_PASSWORD);
    expect(opened.keyId).toBe(validName);
    expect(opened.master.encrypt.equals(t.repo.key.encrypt)).toBe(true);
    expect(opened.skipped.map((s) => s.name).sort()).toEqual([...planted].sort());
    for (const s of opened.skipped) expect(s.reason).toMatch(/\S/);

    // And through the normal way in, which used to end in a stack trace.
    const repo = await t.reopen();
    expect(repo.keyId).toBe(validName);
  });

  it('refuses a 1 GiB scrypt request without running scrypt', async () => {
    const { t, validName, valid } = await setup();
    const planted = await plantJson(t.path, { ...valid, N: 2 ** 20, r: 8, p: 1 });
    const started = Date.now();
    const opened = await openWithPassword(backendOf(t.path), TEST_PASSWORD);
    // Running scrypt with these parameters would take seconds and a gigabyte of memory.
    expect(Date.now() - started).toBeLessThan(3000);
    expect(opened.keyId).toBe(validName);
    expect(opened.skipped).toEqual([{ name: planted, reason: 'asks for 1 GiB of memory; the limit is 256 MiB' }]);
  });

  it('treats a key file whose payload decrypts to the wrong thing as damaged', async () => {
    const { t, validName, valid } = await setup(1);
    const salt = Buffer.alloc(32, 7);
    const derived = await deriveKey(TEST_PASSWORD, salt, CHEAP_KDF);
    const planted: string[] = [];
    for (const payload of ['not json', '"a string"', '{"encrypt":"AAAA","id":"AAAA"}', JSON.stringify({ encrypt: 5, id: Buffer.alloc(32).toString('base64') })]) {
      const data = seal(derived, Buffer.from(payload)).toString('base64');
      planted.push(await plantJson(t.path, { ...valid, ...CHEAP_KDF, salt: salt.toString('base64'), data }));
    }
    // Only scrypt finds these out, and it stops at the key that opens, so which of them are reported
    // depends on the listing order.
    const opened = await openWithPassword(backendOf(t.path), TEST_PASSWORD);
    expect(opened.keyId).toBe(validName);
    for (const s of opened.skipped) {
      expect(planted).toContain(s.name);
      expect(s.reason).toMatch(/^decrypts, but/);
    }

    await unlink(join(t.path, 'keys', validName));
    const err = await openWithPassword(backendOf(t.path), TEST_PASSWORD).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'repository-corrupt' });
    expect((err as Error).message).toMatch(/^the password opens key files whose contents are damaged: /);
    for (const name of planted) expect((err as Error).message).toContain(name.slice(0, 8));
  });

  it('says the repository is corrupt when every key file is damaged', async () => {
    const { t, validName, valid } = await setup();
    await plantJson(t.path, { ...valid, N: 1000 });
    await plantBytes(t.path, Buffer.from('garbage'));
    await unlink(join(t.path, 'keys', validName));
    const err = await openWithPassword(backendOf(t.path), TEST_PASSWORD).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'repository-corrupt' });
    expect((err as Error).message).toMatch(/^every key file in the repository is damaged: .*N = 1000.*is not JSON|^every key file in the repository is damaged: .*is not JSON.*N = 1000/);
    await expect(Repository.open(backendOf(t.path), TEST_PASSWORD)).rejects.toMatchObject({ code: 'repository-corrupt' });
  });

  it('says wrong password when valid key files do not open, and mentions the damaged ones', async () => {
    const { t, valid } = await setup();
    const planted = await plantJson(t.path, { ...valid, p: 100000 });
    const err = await openWithPassword(backendOf(t.path), 'not the password').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WrongPasswordError);
    expect(err).toMatchObject({ code: 'wrong-password' });
    expect((err as BulwarkError).hint).toContain(planted.slice(0, 8));
    expect((err as BulwarkError).hint).toContain('p = 100000');
  });

  it('keeps the plain wrong-password error when nothing was skipped', async () => {
    const { t } = await setup();
    const err = await openWithPassword(backendOf(t.path), 'not the password').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'wrong-password' });
    expect((err as BulwarkError).hint).not.toMatch(/skipped/);
  });
});

describe('listKeys', () => {
  it('lists damaged key files with the reason instead of failing', async () => {
    const { t, validName, valid } = await setup(1);
    const hostile = await plantJson(t.path, { ...valid, N: 2 ** 20, r: 8 });
    const garbage = await plantBytes(t.path, Buffer.from([0xde, 0xad]));
    const keys = await listKeys(backendOf(t.path));
    expect(keys).toHaveLength(3);
    expect(keys[0]).toMatchObject({ id: validName, created: valid.created, hostname: valid.hostname, username: valid.username });
    expect(keys[0]!.damaged).toBeUndefined();
    const byId = new Map(keys.map((k) => [k.id, k]));
    expect(byId.get(hostile)).toMatchObject({ created: valid.created, damaged: 'asks for 1 GiB of memory; the limit is 256 MiB' });
    expect(byId.get(garbage)).toMatchObject({ created: '?', damaged: 'is not JSON' });
  });

  it('keeps the creation time, host and user of a format 2 key file sealed, for the master key to open', async () => {
    const { t, validName, valid } = await setup(2);
    expect(Object.keys(valid).sort()).toEqual(['N', 'data', 'kdf', 'meta', 'p', 'r', 'salt', 'version']);
    // (Not a substring test: a short host name turns up in random base64.)
    expect(Object.values(valid)).not.toContain(hostname());
    const [open] = await listKeys(backendOf(t.path), t.repo.key);
    expect(open).toMatchObject({ id: validName, hostname: hostname() });
    expect(Date.parse(open!.created)).toBeGreaterThan(Date.now() - 60_000);
    const [closed] = await listKeys(backendOf(t.path));
    expect(closed).toMatchObject({ id: validName, created: '?', damaged: 'its details cannot be opened: sealed' });
    // Metadata moved from another key file does not open: it is bound to its own file's salt.
    const other = await plantJson(t.path, { ...valid, salt: Buffer.alloc(32, 1).toString('base64') });
    const keys = await listKeys(backendOf(t.path), t.repo.key);
    expect(keys.find((k) => k.id === other)?.damaged).toMatch(/cannot be opened: key metadata failed authentication/);
  });

  it('opens a format 1 key file in a format 2 repository, and a format 2 key file is refused a format 1 config', async () => {
    const { t } = await setup(2);
    const v1 = await createTestRepository({ version: 1 });
    try {
      // A format 2 key for the v1 repository's master key, planted there: its config must not open with it.
      const { writeKey } = await import('./keys.js');
      const { systemClock } = await import('../util/clock.js');
      for (const f of await readdir(join(v1.path, 'keys'))) await unlink(join(v1.path, 'keys', f));
      await writeKey(backendOf(v1.path), v1.repo.key, TEST_PASSWORD, systemClock, CHEAP_KDF, 2);
      await expect(v1.reopen()).rejects.toThrow(/sealed as format 1 but the key file was made for format 2: a forged or rolled-back config/);
    } finally {
      await v1.cleanup();
    }
    expect((await t.reopen()).config.version).toBe(2);
  });
});

describe('calibrateKdf', () => {
  it('asks for 64 MiB and at least half a second on this machine, within the limits a reader accepts', async () => {
    const params = await calibrateKdf();
    expect(params.N * params.r * 128).toBe(64 * 1024 * 1024);
    expect(() => validateKdfParams(params)).not.toThrow();
    const started = Date.now();
    await deriveKey('x', Buffer.alloc(32), params);
    // p is chosen from one measured run; the check leaves room for that measurement's noise.
    expect(Date.now() - started).toBeGreaterThan(300);
  }, 30_000);
});
