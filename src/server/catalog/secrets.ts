// Repository passwords given to the server, encrypted at rest. The key lives in its own file (mode
// 0600) beside the database, so a copy of the database alone (a backup of /var/lib, a support bundle)
// gives away nothing. AES-256-GCM authenticates as well as encrypts, and the additional data binds a
// ciphertext to its row, so a value moved to another repository's row fails as tampering too.
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, linkSync, openSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { errnoCode } from '../../util/errors.js';
import { CatalogError } from './schema.js';

export interface SecretBox {
  encrypt(plaintext: string, context: string): Buffer;
  /** Throws CatalogError('tampered') when the ciphertext, its context or the key do not match. */
  decrypt(ciphertext: Buffer, context: string): string;
  /** A stable fingerprint of the key, stored in the catalog to tell a wrong key file from tampering. */
  readonly keyId: string;
}

const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** First byte of every ciphertext: the format, so a later one can be told apart. */
const FORMAT_V1 = 1;

export function secretBoxFromKey(key: Buffer): SecretBox {
  if (key.length !== KEY_BYTES) throw new CatalogError('corrupt', `the catalog key must be ${KEY_BYTES} bytes, not ${key.length}`);
  const keyId = createHmac('sha256', key).update('bulwark catalog key id').digest('hex').slice(0, 32);
  return {
    keyId,
    encrypt(plaintext, context) {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      cipher.setAAD(aad(context));
      const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
      return Buffer.concat([Buffer.from([FORMAT_V1]), iv, body, cipher.getAuthTag()]);
    },
    decrypt(ciphertext, context) {
      if (ciphertext.length < 1 + IV_BYTES + TAG_BYTES || ciphertext[0] !== FORMAT_V1) {
        throw tampered(context);
      }
      const iv = ciphertext.subarray(1, 1 + IV_BYTES);
      const tag = ciphertext.subarray(ciphertext.length - TAG_BYTES);
      const body = ciphertext.subarray(1 + IV_BYTES, ciphertext.length - TAG_BYTES);
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, iv);
        decipher.setAAD(aad(context));
        decipher.setAuthTag(tag);
        return Buffer.concat([decipher.update(body), decipher.final()]).toString('utf8');
      } catch (err) {
        throw tampered(context, err);
      }
    },
  };
}

/** A key that lives only as long as the process: for the in-memory catalog. */
export function ephemeralSecretBox(): SecretBox {
  return secretBoxFromKey(randomBytes(KEY_BYTES));
}

/**
 * Reads the key file, creating it on first use. Creation writes a private temporary file and links
 * it into place, so a reader never sees a half-written key and two servers starting at once agree
 * on one key (the loser of the link race reads the winner's).
 */
export function loadOrCreateKeyFile(path: string): SecretBox {
  try {
    return secretBoxFromKey(readKeyFile(path));
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  const temp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(temp, 'wx', 0o600);
  try {
    writeSync(fd, randomBytes(KEY_BYTES));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(temp, path);
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') throw err;
  } finally {
    unlinkSync(temp);
  }
  syncDir(dirname(path));
  return secretBoxFromKey(readKeyFile(path));
}

function readKeyFile(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const mode = fstatSync(fd).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      throw new CatalogError('unavailable', `the catalog key file '${path}' can be read by others (mode ${mode.toString(8).padStart(4, '0')})`, {
        hint: `chmod 600 '${path}'; if others may have read it, re-enter the repository passwords after replacing the key`,
      });
    }
  } finally {
    closeSync(fd);
  }
  const key = readFileSync(path);
  if (key.length !== KEY_BYTES) {
    throw new CatalogError('corrupt', `the catalog key file '${path}' holds ${key.length} bytes, not ${KEY_BYTES}`, {
      hint: 'restore the key file from a backup; without it the stored repository passwords must be entered again',
    });
  }
  return key;
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some file systems refuse fsync on a directory; the key is durable on the next sync regardless.
  }
}

/** Mode bits of the key file, for callers that report on it (and for tests). */
export function keyFileMode(path: string): number {
  return statSync(path).mode & 0o777;
}

function aad(context: string): Buffer {
  return Buffer.from(`bulwark repository secret\0${context}`, 'utf8');
}

function tampered(context: string, cause?: unknown): CatalogError {
  return new CatalogError('tampered', `the stored secret for '${context}' failed its integrity check`, {
    hint: 'the catalog or its key file was altered or swapped; enter the repository password again',
    ...(cause === undefined ? {} : { cause }),
  });
}
