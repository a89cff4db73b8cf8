// Key files: the master key sealed under a password-derived key. Several key files may hold the same
// master key, one per password; removing a key file revokes that password only.
import { createHash, randomBytes } from 'node:crypto';
import { hostname, userInfo } from 'node:os';
import type { Backend } from '../storage/backend.js';
import { BulwarkError } from '../util/errors.js';
import type { Clock } from '../util/clock.js';
import { deriveKey, seal, unseal, type MasterKey, type ScryptParams } from './crypto.js';
import { SCRYPT_DEFAULTS } from './format.js';

export interface KeyFile {
  version: 1;
  created: string;
  hostname: string;
  username: string;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  /** base64 of seal(derivedKey, JSON {encrypt, id} with base64 keys) */
  data: string;
}

export interface KeyInfo {
  id: string;
  created: string;
  hostname: string;
  username: string;
}

export class WrongPasswordError extends BulwarkError {
  constructor(location: string) {
    super('wrong-password', `no key in repository '${location}' opens with the given password`, {
      hint: 'check --password-file / BULWARK_PASSWORD; ask whoever created the repository for a valid password',
    });
  }
}

export async function writeKey(backend: Backend, master: MasterKey, password: string, clock: Clock, params: ScryptParams = SCRYPT_DEFAULTS): Promise<string> {
  if (password.length === 0) throw new BulwarkError('usage', 'empty passwords are not allowed', { hint: 'choose a password of at least one character (better: a long passphrase)' });
  const salt = randomBytes(32);
  const derived = await deriveKey(password, salt, params);
  const payload = Buffer.from(JSON.stringify({ encrypt: master.encrypt.toString('base64'), id: master.id.toString('base64') }));
  let username = 'unknown';
  try {
    username = userInfo().username;
  } catch {
    // no passwd entry for this uid: keep 'unknown'
  }
  const file: KeyFile = {
    version: 1,
    created: clock.now().toISOString(),
    hostname: hostname(),
    username,
    kdf: 'scrypt',
    ...params,
    salt: salt.toString('base64'),
    data: seal(derived, payload).toString('base64'),
  };
  const bytes = Buffer.from(JSON.stringify(file, null, 1));
  const name = createHash('sha256').update(bytes).digest('hex');
  await backend.save({ type: 'keys', name }, bytes);
  return name;
}

function parseKeyFile(bytes: Buffer, name: string): KeyFile {
  try {
    const k = JSON.parse(bytes.toString('utf8')) as KeyFile;
    if (k.kdf !== 'scrypt' || typeof k.salt !== 'string' || typeof k.data !== 'string') throw new Error('unexpected fields');
    return k;
  } catch (err) {
    throw new BulwarkError('repository-corrupt', `key file '${name}' is not readable: ${(err as Error).message}`);
  }
}

/** Tries each key file until one opens; returns the master key and the id of the key that opened it. */
export async function openWithPassword(backend: Backend, password: string): Promise<{ master: MasterKey; keyId: string }> {
  const names: string[] = [];
  for await (const f of backend.list('keys')) names.push(f.name);
  for (const name of names) {
    const file = parseKeyFile(await backend.load({ type: 'keys', name }), name);
    const derived = await deriveKey(password, Buffer.from(file.salt, 'base64'), { N: file.N, r: file.r, p: file.p });
    let payload: Buffer;
    try {
      payload = unseal(derived, Buffer.from(file.data, 'base64'), `key ${name}`);
    } catch {
      continue; // not this password
    }
    const k = JSON.parse(payload.toString('utf8')) as { encrypt: string; id: string };
    return { master: { encrypt: Buffer.from(k.encrypt, 'base64'), id: Buffer.from(k.id, 'base64') }, keyId: name };
  }
  throw new WrongPasswordError(backend.properties.location);
}

export async function listKeys(backend: Backend): Promise<KeyInfo[]> {
  const out: KeyInfo[] = [];
  for await (const f of backend.list('keys')) {
    const k = parseKeyFile(await backend.load({ type: 'keys', name: f.name }), f.name);
    out.push({ id: f.name, created: k.created, hostname: k.hostname, username: k.username });
  }
  return out.sort((a, b) => a.created.localeCompare(b.created));
}
