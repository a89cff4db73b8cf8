// Format constants of repository version 1 — DO NOT MODIFY: repositories written with these values
// exist on users' disks. A change here is a new format version, documented in docs/repository-format.md.

export const REPOSITORY_VERSION = 1;

/** AES-256-GCM: a sealed object is nonce ‖ ciphertext ‖ tag. */
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
export const KEY_BYTES = 32;
export const ID_BYTES = 32;

/** First byte of a sealed document's plaintext (config, index, snapshot, lock, key payload). */
export const DOC_PLAIN = 0x00;
export const DOC_ZSTD = 0x01;

/** Pack header entry: type u8 ‖ sealed length u32le ‖ plaintext length u32le (0 = stored uncompressed) ‖ id[32]. */
export const PACK_ENTRY_BYTES = 1 + 4 + 4 + ID_BYTES;
export const PACK_TRAILER_BYTES = 4;

export type BlobType = 'data' | 'tree';
export const BLOB_TYPE_CODES: Record<BlobType, number> = { data: 0, tree: 1 };
export const BLOB_TYPES_BY_CODE: readonly BlobType[] = ['data', 'tree'];

/** Fixed-block index pages of disk snapshots: magic ‖ u32le version ‖ u32le count ‖ count × id (all-zero id = hole). */
export const FIXED_INDEX_MAGIC = Buffer.from('BWFI', 'latin1');
export const FIXED_INDEX_VERSION = 1;
export const FIXED_INDEX_HEADER_BYTES = 12;
export const FIXED_INDEX_PAGE_ENTRIES = 4096;

/** Key derivation of the first key files (scrypt); new keys are calibrated (keys.ts), and the parameters used are stored in each key file. */
export const SCRYPT_DEFAULTS = { N: 2 ** 15, r: 8, p: 1 } as const;

export const DEFAULT_BLOCK_SIZE = 1024 * 1024;
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_ZSTD_LEVEL = 3;
