// Key files: the master key sealed under a password-derived key. Several key files may hold the same
// master key, one per password; removing a key file revokes that password only.
import { createHash, randomBytes } from 'node:crypto';
import { hostname, userInfo } from 'node:os';
import type { Backend, FileInfo } from '../storage/backend.js';
import { BulwarkError, unable } from '../util/errors.js';
import type { Clock } from '../util/clock.js';
import { deriveKey, seal, unseal, type MasterKey, type ScryptParams } from './crypto.js';
import { KEY_BYTES, SEAL_OVERHEAD, V2_SEAL_OVERHEAD, type FormatVersion } from './format.js';
import { sealDocument, sealerFor, unsealDocument, v2AssociatedData } from './sealer.js';
import { Xaes } from './xaes.js';

/**
 * Version 1 (repositories of format 1): created, hostname and username in clear; `data` is
 * AES-256-GCM(derived, JSON {encrypt, id}). Version 2: nothing but the KDF in clear; `data` is
 * XAES-256-GCM(derived, JSON {encrypt, id, format}) bound to "key" and the salt, and `meta` the
 * creation time, host and user sealed with the repository's own sealing key (so anyone who opens the
 * repository can list who made each key, and nobody else).
 */
export interface KeyFile {
  version: 1 | 2;
  created?: string;
  hostname?: string;
  username?: string;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  data: string;
  meta?: string;
  /** Version 1 only, informational (the sealed payload is what counts). */
  appendOnly?: boolean;
}

interface KeyMeta {
  created: string;
  hostname: string;
  username: string;
  appendOnly?: boolean;
}

export interface KeyInfo {
  id: string;
  created: string;
  hostname: string;
  username: string;
  /** A key that may add data and snapshots but never delete (see AppendOnlyBackend). */
  appendOnly?: boolean;
  /** Set when the key file cannot be used (why); its other fields are then '?' where unreadable. */
  damaged?: string;
}

/** A key file openWithPassword could not use; the caller shows these as warnings. */
export interface SkippedKey {
  name: string;
  reason: string;
}

export interface OpenedKey {
  master: MasterKey;
  keyId: string;
  skipped: SkippedKey[];
  /** Key file version 2 records the repository format it was made for; a version 1 key file says nothing. */
  format: FormatVersion | undefined;
  /** Version of the key file that opened. */
  keyVersion: 1 | 2;
  /** The key may add, never delete. */
  appendOnly: boolean;
}

const MiB = 1024 * 1024;

// Anyone who can write to keys/ can plant a key file, and a key file is read before anything is
// authenticated: these bounds keep such a file from making us allocate gigabytes or spin for hours.
// They are generous for keys made by this program (calibrateKdf: 64 MiB, cost at most 2^23).
export const KDF_LIMITS = {
  minN: 2 ** 10,
  maxN: 2 ** 20,
  minR: 1,
  maxR: 32,
  minP: 1,
  maxP: 16,
  /** scrypt needs 128·N·r bytes. */
  maxMemoryBytes: 256 * MiB,
  /** N·r·p, the work scrypt does. */
  maxCost: 2 ** 24,
  minSaltBytes: 16,
  maxSaltBytes: 64,
  /** A sealed payload of two base64 keys is about 130 bytes. */
  maxSealedBytes: 512,
  /** Key files written here are well under 1 KiB; a bigger one is not worth loading. */
  maxKeyFileBytes: 16 * 1024,
} as const;

function formatBytes(n: number): string {
  if (n >= 1024 * MiB) return `${+(n / (1024 * MiB)).toFixed(1)} GiB`;
  return `${+(n / MiB).toFixed(1)} MiB`;
}

/** Why scrypt must not run with these parameters, or undefined when they are within KDF_LIMITS. */
export function kdfParamsProblem(params: { N: unknown; r: unknown; p: unknown }): string | undefined {
  const L = KDF_LIMITS;
  const { N, r, p } = params;
  if (typeof N !== 'number' || !Number.isSafeInteger(N)) return `N = ${JSON.stringify(N)} is not an integer`;
  if (typeof r !== 'number' || !Number.isSafeInteger(r)) return `r = ${JSON.stringify(r)} is not an integer`;
  if (typeof p !== 'number' || !Number.isSafeInteger(p)) return `p = ${JSON.stringify(p)} is not an integer`;
  if (N < L.minN || N > L.maxN || (N & (N - 1)) !== 0) return `N = ${N} is not a power of two from 2^10 to 2^20`;
  if (r < L.minR || r > L.maxR) return `r = ${r} is outside ${L.minR}..${L.maxR}`;
  if (p < L.minP || p > L.maxP) return `p = ${p} is outside ${L.minP}..${L.maxP}`;
  const memory = 128 * N * r;
  if (memory > L.maxMemoryBytes) return `asks for ${formatBytes(memory)} of memory; the limit is ${formatBytes(L.maxMemoryBytes)}`;
  if (N * r * p > L.maxCost) return `asks for scrypt cost N·r·p = 2^${Math.log2(N * r * p).toFixed(1).replace(/\.0$/, '')}; the limit is 2^24`;
  return undefined;
}

/** Throws a usage error for parameters we would refuse to read back (so we never write such a key). */
export function validateKdfParams(params: ScryptParams): void {
  const problem = kdfParamsProblem(params);
  if (problem !== undefined) {
    throw new BulwarkError('usage', `scrypt parameters N=${params.N}, r=${params.r}, p=${params.p} are not allowed: ${problem}`, {
      hint: `use N a power of two from 2^10 to 2^20, r 1..32, p 1..16, with 128·N·r at most ${formatBytes(KDF_LIMITS.maxMemoryBytes)} and N·r·p at most 2^24`,
    });
  }
}

function shortName(name: string): string {
  return `${name.slice(0, 8)}…`;
}

function describeSkipped(skipped: readonly SkippedKey[]): string {
  return skipped.map((s) => `key file '${shortName(s.name)}' (${s.reason})`).join('; ');
}

export class WrongPasswordError extends BulwarkError {
  constructor(location: string, skipped: readonly SkippedKey[] = []) {
    const base = 'check --password-file / BULWARK_PASSWORD; ask whoever created the repository for a valid password';
    // If the password belonged to a damaged key file, "wrong password" alone would send the user hunting
    // for another password instead of restoring the file.
    const damaged =
      skipped.length === 0
        ? ''
        : `; ${skipped.length === 1 ? 'one key file was' : `${skipped.length} key files were`} skipped as damaged and may hold this password: ${describeSkipped(skipped)}`;
    super('wrong-password', `no key in repository '${location}' opens with the given password`, { hint: base + damaged });
  }
}

/** What a new key costs an attacker per guess, at least: half a second here and 64 MiB (as restic asks). */
const CALIBRATE_TARGET_MS = 500;
const CALIBRATE_N = 2 ** 16;
const CALIBRATE_R = 8;

/**
 * Scrypt parameters for a new key, measured on this machine: 64 MiB (N = 2^16, r = 8), and p raised
 * until one derivation takes at least half a second, within KDF_LIMITS. Memory stays at 64 MiB so that
 * opening a repository does not take more than that from a host whose memory belongs to its VMs.
 */
export async function calibrateKdf(targetMs = CALIBRATE_TARGET_MS): Promise<ScryptParams> {
  const probe = { N: CALIBRATE_N, r: CALIBRATE_R, p: 1 };
  const started = process.hrtime.bigint();
  await deriveKey('calibration', randomBytes(32), probe);
  const ms = Math.max(1, Number(process.hrtime.bigint() - started) / 1e6);
  const maxP = Math.min(KDF_LIMITS.maxP, Math.floor(KDF_LIMITS.maxCost / (CALIBRATE_N * CALIBRATE_R)));
  return { ...probe, p: Math.min(maxP, Math.max(1, Math.ceil(targetMs / ms))) };
}

function currentUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown'; // no passwd entry for this uid
  }
}

/**
 * Seals the master key under `password` in a new key file of the layout that goes with the repository's
 * format; `params` default to calibrateKdf().
 */
export async function writeKey(backend: Backend, master: MasterKey, password: string, clock: Clock, params: ScryptParams | undefined, format: FormatVersion, opts: { appendOnly?: boolean } = {}): Promise<string> {
  const appendOnly = opts.appendOnly ? { appendOnly: true } : {};
  params ??= await calibrateKdf();
  if (password.length === 0) throw new BulwarkError('usage', 'empty passwords are not allowed', { hint: 'choose a password of at least one character (better: a long passphrase)' });
  validateKdfParams(params);
  const salt = randomBytes(32);
  const derived = await deriveKey(password, salt, params);
  const meta: KeyMeta = { created: clock.now().toISOString(), hostname: hostname(), username: currentUser(), ...appendOnly };
  // Only the three numbers: a params object with more fields must not leak them into the file.
  const kdf = { kdf: 'scrypt' as const, N: params.N, r: params.r, p: params.p, salt: salt.toString('base64') };
  let file: KeyFile;
  if (format === 1) {
    const payload = Buffer.from(JSON.stringify({ encrypt: master.encrypt.toString('base64'), id: master.id.toString('base64'), ...appendOnly }));
    file = { version: 1, ...meta, ...kdf, data: seal(derived, payload).toString('base64') };
  } else {
    const payload = Buffer.from(JSON.stringify({ encrypt: master.encrypt.toString('base64'), id: master.id.toString('base64'), format, ...appendOnly }));
    file = {
      version: 2,
      ...kdf,
      data: new Xaes(derived).seal(payload, v2AssociatedData('key', salt)).toString('base64'),
      meta: sealDocument(sealerFor(2, master), 'key-meta', meta, salt).toString('base64'),
    };
  }
  const bytes = Buffer.from(JSON.stringify(file, null, 1));
  const name = createHash('sha256').update(bytes).digest('hex');
  await backend.save({ type: 'keys', name }, bytes);
  return name;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict base64 decoding: Buffer.from(…, 'base64') silently drops what it does not understand. */
function decodeBase64(value: unknown, field: string, min: number, max: number): Buffer | string {
  if (typeof value !== 'string') return `${field} is not a string`;
  // Checked before the regex so a huge string costs nothing.
  if (value.length > Math.ceil(max / 3) * 4) return `${field} is longer than ${max} bytes`;
  if (!BASE64.test(value)) return `${field} is not base64`;
  const bytes = Buffer.from(value, 'base64');
  if (bytes.length < min || bytes.length > max) return `${field} is ${bytes.length} bytes, expected ${min === max ? min : `${min}..${max}`}`;
  return bytes;
}

interface ParsedKey {
  file: KeyFile;
  salt: Buffer;
  sealed: Buffer;
}

function metadata(k: Record<string, unknown>): Pick<KeyInfo, 'created' | 'hostname' | 'username' | 'appendOnly'> {
  const str = (v: unknown): string => (typeof v === 'string' ? v : '?');
  return { created: str(k.created), hostname: str(k.hostname), username: str(k.username), ...(k.appendOnly === true ? { appendOnly: true } : {}) };
}

/** The key file's contents, or why it cannot be used. Never throws: a bad key file must not stop the others. */
function parseKeyFile(bytes: Buffer): { key: ParsedKey; raw: Record<string, unknown> } | { reason: string; raw?: Record<string, unknown> } {
  if (bytes.length > KDF_LIMITS.maxKeyFileBytes) return { reason: `is ${bytes.length} bytes; a key file is at most ${KDF_LIMITS.maxKeyFileBytes}` };
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch {
    return { reason: 'is not JSON' };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { reason: 'is not a JSON object' };
  const k = raw as Record<string, unknown>;
  const fail = (reason: string): { reason: string; raw: Record<string, unknown> } => ({ reason, raw: k });
  if (k.version !== 1 && k.version !== 2) return fail(`has unsupported version ${JSON.stringify(k.version)}`);
  if (k.kdf !== 'scrypt') return fail(`has unsupported kdf ${JSON.stringify(k.kdf)}`);
  const problem = kdfParamsProblem({ N: k.N, r: k.r, p: k.p });
  if (problem !== undefined) return fail(problem);
  const salt = decodeBase64(k.salt, 'salt', KDF_LIMITS.minSaltBytes, KDF_LIMITS.maxSaltBytes);
  if (typeof salt === 'string') return fail(salt);
  const sealed = decodeBase64(k.data, 'data', (k.version === 1 ? SEAL_OVERHEAD : V2_SEAL_OVERHEAD) + 1, KDF_LIMITS.maxSealedBytes);
  if (typeof sealed === 'string') return fail(sealed);
  const kdf = { kdf: 'scrypt' as const, N: k.N as number, r: k.r as number, p: k.p as number, salt: k.salt as string, data: k.data as string };
  if (k.version === 1) return { key: { file: { version: 1, ...metadata(k), ...kdf }, salt, sealed }, raw: k };
  const meta = decodeBase64(k.meta, 'meta', V2_SEAL_OVERHEAD + 1, KDF_LIMITS.maxSealedBytes);
  if (typeof meta === 'string') return fail(meta);
  return { key: { file: { version: 2, ...kdf, meta: k.meta as string }, salt, sealed }, raw: k };
}

/** The master key from a decrypted payload, or why it is not one. */
function parsePayload(payload: Buffer): { master: MasterKey; format: FormatVersion | undefined; appendOnly: boolean } | string {
  let k: unknown;
  try {
    k = JSON.parse(payload.toString('utf8'));
  } catch {
    return 'decrypts, but its payload is not JSON';
  }
  if (typeof k !== 'object' || k === null) return 'decrypts, but its payload is not a JSON object';
  const { encrypt, id } = k as Record<string, unknown>;
  const e = decodeBase64(encrypt, 'payload field encrypt', KEY_BYTES, KEY_BYTES);
  if (typeof e === 'string') return `decrypts, but its ${e}`;
  const i = decodeBase64(id, 'payload field id', KEY_BYTES, KEY_BYTES);
  if (typeof i === 'string') return `decrypts, but its ${i}`;
  const { format, appendOnly } = k as Record<string, unknown>;
  if (format !== undefined && format !== 1 && format !== 2) return `decrypts, but names an unknown repository format ${JSON.stringify(format)}`;
  if (appendOnly !== undefined && typeof appendOnly !== 'boolean') return 'decrypts, but its append-only flag is not true or false';
  return { master: { encrypt: e, id: i }, format, appendOnly: appendOnly === true };
}

/** Loads a key file, or says why not; undefined when it was removed since the listing. */
async function loadKeyFile(backend: Backend, f: FileInfo): Promise<Buffer | { reason: string; error: unknown } | undefined> {
  // The listed size spares loading a planted multi-gigabyte "key file" into memory.
  if (f.size > KDF_LIMITS.maxKeyFileBytes) return { reason: `is ${f.size} bytes; a key file is at most ${KDF_LIMITS.maxKeyFileBytes}`, error: undefined };
  try {
    return await backend.load({ type: 'keys', name: f.name });
  } catch (err) {
    // Another client may remove a key (key passwd) while we look: that file is simply not there.
    if (backend.isNotFound(err)) return undefined;
    return { reason: `cannot be read: ${err instanceof Error ? err.message : String(err)}`, error: err };
  }
}

/**
 * Tries each key file until one opens; returns the master key, the id of the key that opened it, and the
 * key files skipped because they cannot be used (damaged, hostile or unreadable), for the caller to warn about.
 */
export async function openWithPassword(backend: Backend, password: string): Promise<OpenedKey> {
  const files: FileInfo[] = [];
  for await (const f of backend.list('keys')) files.push(f);
  const skipped: SkippedKey[] = [];
  let readError: { name: string; error: unknown } | undefined;
  // Every file is checked before any scrypt runs: checking is cheap, and so the warnings name every
  // damaged file whatever order the backend lists them in, not just those before the one that opens.
  const usable: { name: string; key: ParsedKey }[] = [];
  for (const f of files) {
    const bytes = await loadKeyFile(backend, f);
    if (bytes === undefined) continue;
    if (!Buffer.isBuffer(bytes)) {
      if (bytes.error !== undefined) readError ??= { name: f.name, error: bytes.error };
      skipped.push({ name: f.name, reason: bytes.reason });
      continue;
    }
    const parsed = parseKeyFile(bytes);
    if ('key' in parsed) usable.push({ name: f.name, key: parsed.key });
    else skipped.push({ name: f.name, reason: parsed.reason });
  }
  let tried = 0;
  // The password was right for these, so "wrong password" would be the wrong thing to say.
  const openedDamaged: SkippedKey[] = [];
  for (const { name, key } of usable) {
    const { file, salt, sealed } = key;
    let derived: Buffer;
    try {
      derived = await deriveKey(password, salt, { N: file.N, r: file.r, p: file.p });
    } catch (err) {
      skipped.push({ name, reason: `scrypt refused its parameters: ${(err as Error).message}` });
      continue;
    }
    tried++;
    let payload: Buffer;
    try {
      payload = file.version === 1 ? unseal(derived, sealed, `key ${name}`) : new Xaes(derived).open(sealed, v2AssociatedData('key', salt));
    } catch {
      continue; // not this password
    }
    const parsed = parsePayload(payload);
    if (typeof parsed === 'string') {
      skipped.push({ name, reason: parsed });
      openedDamaged.push({ name, reason: parsed });
      continue;
    }
    return { master: parsed.master, format: parsed.format, keyId: name, skipped, keyVersion: file.version, appendOnly: parsed.appendOnly };
  }
  if (openedDamaged.length > 0) {
    throw new BulwarkError('repository-corrupt', `the password opens ${openedDamaged.length === 1 ? 'a key file' : 'key files'} whose contents are damaged: ${describeSkipped(openedDamaged)}`, {
      hint: "restore the repository's keys/ folder from a copy, or open the repository with another password",
    });
  }
  if (tried > 0 || skipped.length === 0) throw new WrongPasswordError(backend.properties.location, skipped);
  // No key file could even be tried: an I/O failure is not damage, so it is reported as what it is.
  if (readError !== undefined) throw unable('read', 'key file', readError.name, readError.error, 'io');
  throw new BulwarkError('repository-corrupt', `every key file in the repository is damaged: ${describeSkipped(skipped)}`, {
    hint: "restore the repository's keys/ folder from a copy; the data cannot be opened without an intact key file",
  });
}

/** Creation time, host and user of a version 2 key file, opened with the repository's master key. */
function sealedMetadata(file: KeyFile, salt: Buffer, master: MasterKey | undefined): Pick<KeyInfo, 'created' | 'hostname' | 'username' | 'appendOnly'> | string {
  if (!master) return 'sealed';
  try {
    const m = unsealDocument<KeyMeta>(sealerFor(2, master), 'key-meta', Buffer.from(file.meta ?? '', 'base64'), 'key metadata', salt);
    return metadata(m as unknown as Record<string, unknown>);
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * All key files, oldest first; ones that cannot be used are listed last, with `damaged` saying why.
 * The details of version 2 key files are sealed: `master` opens them.
 */
export async function listKeys(backend: Backend, master?: MasterKey): Promise<KeyInfo[]> {
  const good: KeyInfo[] = [];
  const bad: KeyInfo[] = [];
  for await (const f of backend.list('keys')) {
    const bytes = await loadKeyFile(backend, f);
    if (bytes === undefined) continue;
    if (!Buffer.isBuffer(bytes)) {
      bad.push({ id: f.name, created: '?', hostname: '?', username: '?', damaged: bytes.reason });
      continue;
    }
    const parsed = parseKeyFile(bytes);
    if ('key' in parsed) {
      const { file, salt } = parsed.key;
      const meta = file.version === 1 ? metadata(file as unknown as Record<string, unknown>) : sealedMetadata(file, salt, master);
      if (typeof meta === 'string') bad.push({ id: f.name, created: '?', hostname: '?', username: '?', damaged: `its details cannot be opened: ${meta}` });
      else good.push({ id: f.name, ...meta });
    } else {
      const meta = parsed.raw ? metadata(parsed.raw) : { created: '?', hostname: '?', username: '?' };
      bad.push({ id: f.name, ...meta, damaged: parsed.reason });
    }
  }
  good.sort((a, b) => a.created.localeCompare(b.created));
  bad.sort((a, b) => a.id.localeCompare(b.id));
  return [...good, ...bad];
}
