// What seals and opens the repository's objects, per format version. Version 1 seals everything with
// AES-256-GCM under one key and no associated data. Version 2 seals with XAES-256-GCM under a key derived
// from the master key, and binds each object to what it is (associated data: label and binding), so a
// blob can never be read as a snapshot, a config or a lock, nor a tree as data. See
// docs/repository-format.md (Sealing).
import { hkdfSync } from 'node:crypto';
import { compress } from 'zstd-napi';
import { BulwarkError } from '../util/errors.js';
import { IntegrityError, seal as sealV1, unseal as unsealV1, type MasterKey } from './crypto.js';
import { DOC_PLAIN, DOC_ZSTD, SEAL_OVERHEAD, V2_LABELS, V2_SEAL_KEY_INFO, V2_SEAL_OVERHEAD, type FormatVersion, type SealPurpose } from './format.js';
import { Xaes } from './xaes.js';
import { decompressBounded } from './zstd.js';

export interface Sealer {
  readonly version: FormatVersion;
  /** Bytes a seal adds to its plaintext. */
  readonly overhead: number;
  /** The key blob workers seal with (what they get depends on the version). */
  readonly workerKey: Buffer;
  /** Associated data for an object of this purpose (null in version 1, which binds nothing). */
  ad(purpose: SealPurpose, bind?: Uint8Array): Buffer | null;
  seal(purpose: SealPurpose, plain: Uint8Array, bind?: Uint8Array): Buffer;
  /** Throws IntegrityError when the object is damaged, forged, or is not an object of this purpose. */
  open(purpose: SealPurpose, sealed: Uint8Array, what: string, bind?: Uint8Array): Buffer;
}

/**
 * An object that authenticates under the other format version: left over from (or made ahead by) an
 * upgrade of the repository's format (`bulwark migrate`), not damage. Readers skip it quietly.
 */
export class OtherFormatObjectError extends BulwarkError {
  constructor(
    what: string,
    readonly otherVersion: FormatVersion,
  ) {
    super('repository-corrupt', `${what} belongs to repository format ${otherVersion} (left over from an interrupted format upgrade)`, { hint: "run 'bulwark migrate' to finish the upgrade" });
  }
}

const AD_PREFIX = Buffer.from('bulwark2\0', 'latin1');

/** Associated data of version 2: "bulwark2" 0x00 label 0x00 ‖ binding. */
export function v2AssociatedData(purpose: SealPurpose, bind?: Uint8Array): Buffer {
  return Buffer.concat([AD_PREFIX, Buffer.from(`${V2_LABELS[purpose]}\0`, 'latin1'), bind ?? Buffer.alloc(0)]);
}

export function v2SealKey(master: Pick<MasterKey, 'encrypt'>): Buffer {
  return Buffer.from(hkdfSync('sha256', master.encrypt, Buffer.alloc(0), V2_SEAL_KEY_INFO, 32));
}

class SealerV1 implements Sealer {
  readonly version = 1;
  readonly overhead = SEAL_OVERHEAD;
  constructor(readonly workerKey: Buffer) {}
  ad(): null {
    return null;
  }
  seal(_purpose: SealPurpose, plain: Uint8Array): Buffer {
    return sealV1(this.workerKey, plain);
  }
  open(_purpose: SealPurpose, sealed: Uint8Array, what: string): Buffer {
    return unsealV1(this.workerKey, sealed, what);
  }
}

export class SealerV2 implements Sealer {
  readonly version = 2;
  readonly overhead = V2_SEAL_OVERHEAD;
  private readonly xaes: Xaes;
  constructor(readonly workerKey: Buffer) {
    this.xaes = new Xaes(workerKey);
  }
  ad(purpose: SealPurpose, bind?: Uint8Array): Buffer {
    return v2AssociatedData(purpose, bind);
  }
  seal(purpose: SealPurpose, plain: Uint8Array, bind?: Uint8Array): Buffer {
    return this.xaes.seal(plain, this.ad(purpose, bind));
  }
  open(purpose: SealPurpose, sealed: Uint8Array, what: string, bind?: Uint8Array): Buffer {
    try {
      return this.xaes.open(sealed, this.ad(purpose, bind));
    } catch {
      throw new IntegrityError(what);
    }
  }
}

export function sealerFor(version: FormatVersion, master: Pick<MasterKey, 'encrypt'>): Sealer {
  return version === 1 ? new SealerV1(master.encrypt) : new SealerV2(v2SealKey(master));
}

/** Largest document (index file, snapshot, lock, config) a reader accepts once decompressed. */
export const MAX_DOCUMENT_BYTES = 256 * 1024 * 1024;

export type DocumentPurpose = Extract<SealPurpose, 'config' | 'index' | 'snapshots' | 'notes' | 'locks' | 'key-meta'>;

/** JSON documents (config, index, snapshots, locks) are framed with one format byte, then sealed. */
export function sealDocument(sealer: Sealer, purpose: DocumentPurpose, doc: unknown, bind?: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(doc), 'utf8');
  const z = compress(json, { compressionLevel: 3 });
  const framed = z.length < json.length ? Buffer.concat([Buffer.from([DOC_ZSTD]), z]) : Buffer.concat([Buffer.from([DOC_PLAIN]), json]);
  return sealer.seal(purpose, framed, bind);
}

export function unsealDocument<T>(sealer: Sealer, purpose: DocumentPurpose, sealed: Uint8Array, what: string, bind?: Uint8Array): T {
  const framed = sealer.open(purpose, sealed, what, bind);
  const body = framed.subarray(1);
  let json: Buffer;
  if (framed[0] === DOC_PLAIN) json = body;
  else if (framed[0] === DOC_ZSTD) json = decompressBounded(body, MAX_DOCUMENT_BYTES, what);
  else throw new BulwarkError('repository-corrupt', `${what} has unknown document format ${framed[0]}`);
  try {
    return JSON.parse(json.toString('utf8')) as T;
  } catch (err) {
    throw new BulwarkError('repository-corrupt', `${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/**
 * Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication with
 * PURBs", 2019): rounds a length up so that only O(log log n) bits of it remain, costing at most
 * about 12 % (under 3 % for lengths over 1 MiB).
 */
export function padme(length: number): number {
  if (length < 2) return length;
  const e = Math.floor(Math.log2(length));
  const s = Math.floor(Math.log2(e)) + 1;
  const step = 2 ** (e - s);
  return Math.ceil(length / step) * step;
}
