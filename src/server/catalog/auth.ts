// Password hashing and token secrets for the server's users. Passwords get scrypt (memory-hard, in
// node:crypto) with a salt per user; the parameters are stored with each hash so they can be raised
// later without locking anyone out. Tokens and session ids are 256 random bits, so one fast hash is
// enough for them: nothing can be guessed by brute force, only read from a stolen database.
import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

export interface ScryptParams {
  /** CPU/memory cost, a power of two. */
  N: number;
  r: number;
  p: number;
}

/** About 32 MiB and tens of milliseconds per check: OWASP's floor for scrypt. */
export const DEFAULT_SCRYPT: ScryptParams = { N: 2 ** 15, r: 8, p: 1 };

const KEY_LEN = 32;
const SALT_LEN = 16;
const PREFIX = 'scrypt';

export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<string> {
  const salt = randomBytes(SALT_LEN);
  const key = await derive(password, salt, params);
  return [PREFIX, params.N, params.r, params.p, salt.toString('base64'), key.toString('base64')].join('$');
}

/**
 * True when `password` matches `stored`. A missing or malformed hash is checked against a dummy
 * costing `dummyParams` (those new hashes get), so the time taken says nothing about which case it was.
 */
export async function verifyPassword(password: string, stored: string | undefined, dummyParams: ScryptParams = DEFAULT_SCRYPT): Promise<boolean> {
  const parsed = stored === undefined ? undefined : parseHash(stored);
  const params = parsed?.params ?? dummyParams;
  const salt = parsed?.salt ?? DUMMY_SALT;
  const expected = parsed?.key ?? Buffer.alloc(KEY_LEN);
  const actual = await derive(password, salt, params);
  return timingSafeEqual(actual, expected) && parsed !== undefined;
}

/** True when the stored hash used weaker parameters than `params`, so it should be replaced at the next login. */
export function needsRehash(stored: string, params: ScryptParams = DEFAULT_SCRYPT): boolean {
  const parsed = parseHash(stored);
  return !parsed || parsed.params.N < params.N || parsed.params.r < params.r || parsed.params.p < params.p;
}

const DUMMY_SALT = randomBytes(SALT_LEN);

function parseHash(stored: string): { params: ScryptParams; salt: Buffer; key: Buffer } | undefined {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== PREFIX) return undefined;
  const [N, r, p] = [Number(parts[1]), Number(parts[2]), Number(parts[3])];
  if (![N, r, p].every((n) => Number.isSafeInteger(n) && n > 0) || (N & (N - 1)) !== 0 || N > 2 ** 20 || r > 32 || p > 16) return undefined;
  const salt = Buffer.from(parts[4]!, 'base64');
  const key = Buffer.from(parts[5]!, 'base64');
  if (salt.length < 8 || key.length !== KEY_LEN) return undefined;
  return { params: { N, r, p }, salt, key };
}

function derive(password: string, salt: Buffer, { N, r, p }: ScryptParams): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // Node's default maxmem (32 MiB) is exactly the default cost's need, which scrypt's own overhead exceeds.
    scrypt(password.normalize('NFC'), salt, KEY_LEN, { N, r, p, maxmem: 256 * N * r + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** 256 random bits, URL-safe. */
export function randomSecret(): string {
  return randomBytes(32).toString('base64url');
}

export function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

export function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
