// Format constants of repository versions 1 and 2 — DO NOT MODIFY: repositories written with these
// values exist on users' disks. A change here is a new format version, documented in
// docs/repository-format.md.

/** The version new repositories get. */
export const REPOSITORY_VERSION = 2;
export const SUPPORTED_VERSIONS: readonly number[] = [1, 2];
export type FormatVersion = 1 | 2;

/** Version 1, AES-256-GCM: a sealed object is nonce ‖ ciphertext ‖ tag. */
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

// ---- version 2 ----

/** Version 2 seals with XAES-256-GCM (xaes.ts): nonce(24) ‖ ciphertext ‖ tag(16). */
export const V2_SEAL_OVERHEAD = 40;
/** HKDF-SHA256 info that derives the version 2 sealing key from the master key's `encrypt` half. */
export const V2_SEAL_KEY_INFO = 'bulwark2 xaes-256-gcm';
/**
 * What an object is, bound into its seal as associated data: "bulwark2" 0x00 label 0x00 ‖ binding.
 * The binding is the blob id for blobs, the salt for key metadata, empty otherwise.
 */
export const V2_LABELS = {
  data: 'data',
  tree: 'tree',
  'pack-header': 'pack-header',
  config: 'config',
  index: 'index',
  snapshots: 'snapshot',
  notes: 'note',
  locks: 'lock',
  key: 'key',
  'key-meta': 'key-meta',
} as const;
export type SealPurpose = keyof typeof V2_LABELS;

/** Pack header plaintext: u32le count ‖ u32le filler bytes ‖ count × entry ‖ zeros, at least this long. */
export const V2_PACK_HEADER_MIN_BYTES = 2048;
export const V2_PACK_HEADER_FIXED_BYTES = 8;
/** Blobs of one type are spread at random over this many packs being filled. */
export const V2_PACKERS_PER_TYPE = 2;
