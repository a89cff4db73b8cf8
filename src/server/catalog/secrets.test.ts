import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Catalog } from './catalog.js';
import { keyFileMode, loadOrCreateKeyFile } from './secrets.js';
import { thrown } from '../../../test/helpers/thrown.js';

const Database = createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
const FAST = { scrypt: { N: 2 ** 10, r: 8, p: 1 } };

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'bulwark-secrets-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('repository passwords at rest', () => {
  it('round-trips through a reopened catalog; the table holds only ciphertext; the key file is 0600', () => {
    const path = join(dir, 'catalog.db');
    const c = Catalog.open(path, FAST);
    expect(c.getRepositoryPassword('sftp:backup@nas/repo')).toBeUndefined();
    c.setRepositoryPassword('sftp:backup@nas/repo', 'hunter2 très secret');
    c.setRepositoryPassword('/srv/other', 'second');
    c.setRepositoryPassword('/srv/other', 'replaced');
    c.close();

    expect(keyFileMode(`${path}.key`)).toBe(0o600);
    expect(readFileSync(`${path}.key`)).toHaveLength(32);
    const raw = new Database(path, { readonly: true });
    const rows = raw.prepare('SELECT * FROM repository_secrets').all() as { ciphertext: Buffer }[];
    raw.close();
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row.ciphertext.toString('latin1')).not.toMatch(/hunter2|second|replaced/);
    const files = Buffer.concat([readFileSync(path), readFileSync(`${path}-wal`, { flag: 'a+' })]);
    expect(files.includes(Buffer.from('hunter2'))).toBe(false);

    const again = Catalog.open(path, FAST);
    expect(again.getRepositoryPassword('sftp:backup@nas/repo')).toBe('hunter2 très secret');
    expect(again.getRepositoryPassword('/srv/other')).toBe('replaced');
    expect(again.listRepositorySecrets()).toEqual(['/srv/other', 'sftp:backup@nas/repo']);
    expect(again.deleteRepositoryPassword('/srv/other')).toBe(true);
    expect(again.getRepositoryPassword('/srv/other')).toBeUndefined();
    again.close();
  });

  it('detects a flipped bit, a truncated value, and a value moved to another row', () => {
    const path = join(dir, 'catalog.db');
    const c = Catalog.open(path, FAST);
    c.setRepositoryPassword('a', 'password-a');
    c.setRepositoryPassword('b', 'password-b');
    c.close();

    const raw = new Database(path);
    const ct = (raw.prepare("SELECT ciphertext FROM repository_secrets WHERE name = 'a'").get() as { ciphertext: Buffer }).ciphertext;
    const flipped = Buffer.from(ct);
    flipped[20]! ^= 1;
    raw.prepare("UPDATE repository_secrets SET ciphertext = ? WHERE name = 'a'").run(flipped);
    raw.prepare("UPDATE repository_secrets SET ciphertext = ? WHERE name = 'b'").run(ct);
    raw.prepare("INSERT INTO repository_secrets (name, ciphertext, updated_at) VALUES ('c', ?, 0)").run(ct.subarray(0, 10));
    raw.close();

    const again = Catalog.open(path, FAST);
    for (const name of ['a', 'b', 'c']) {
      expect(thrown(() => again.getRepositoryPassword(name))).toMatchObject({ reason: 'tampered', code: 'failed' });
    }
    again.close();
  });

  it('tells a replaced key file from tampering, and refuses a key file others can read', () => {
    const path = join(dir, 'catalog.db');
    const c = Catalog.open(path, FAST);
    c.setRepositoryPassword('a', 'password-a');
    c.close();

    chmodSync(`${path}.key`, 0o644);
    const loose = Catalog.open(path, FAST);
    expect(thrown(() => loose.getRepositoryPassword('a'))).toMatchObject({ reason: 'unavailable', hint: /chmod 600/ });
    loose.close();

    rmSync(`${path}.key`);
    const other = Catalog.open(path, FAST);
    expect(thrown(() => other.getRepositoryPassword('a'))).toMatchObject({ reason: 'tampered', message: /key file/ });
    other.close();
  });

  it('a second loader reads the key the first created; a short key file is refused', () => {
    const keyPath = join(dir, 'k.key');
    const a = loadOrCreateKeyFile(keyPath);
    const b = loadOrCreateKeyFile(keyPath);
    expect(a.keyId).toBe(b.keyId);
    expect(b.decrypt(a.encrypt('x', 'ctx'), 'ctx')).toBe('x');
    writeFileSync(join(dir, 'short.key'), Buffer.alloc(5), { mode: 0o600 });
    expect(thrown(() => loadOrCreateKeyFile(join(dir, 'short.key')))).toMatchObject({ reason: 'corrupt' });
  });

  it('an in-memory catalog keeps secrets under a key that is never written', () => {
    const c = Catalog.openInMemory(FAST);
    c.setRepositoryPassword('r', 'pw');
    expect(c.getRepositoryPassword('r')).toBe('pw');
    c.close();
  });
});
