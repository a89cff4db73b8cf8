// The one small interface every storage location implements (local disk now; SFTP, FTP, S3, REST later).
//
// Guarantees a backend must give, which the repository relies on:
// - save() is atomic: a reader sees either no object or the whole object, never a part. Saving a name
//   that exists with the same bytes succeeds (uploads are idempotent and retryable); objects are never
//   modified after they are written, so the repository never asks to overwrite with other bytes. The one
//   exception is the config, which a format upgrade (`migrate`) replaces: saving it over an existing
//   config must replace it atomically (a reader sees the old or the new one, never neither).
// - After save() resolves the object is durable (fsync'd or acknowledged by the store) and visible to
//   load/stat/list from any client (read-after-write).
// - list() may run concurrently with saves by other writers; it returns some consistent subset.
// - Errors: a missing object rejects with an error for which isNotFound() is true. Permanent errors
//   (permission denied, no space) are distinguishable from transient ones by isPermanent().

// notes/: facts learnt about a snapshot after it was written (a boot proven by verify-boot); a
// snapshot itself is never rewritten.
export type FileType = 'config' | 'keys' | 'data' | 'index' | 'snapshots' | 'notes' | 'locks';

export const FILE_TYPES: readonly FileType[] = ['config', 'keys', 'data', 'index', 'snapshots', 'notes', 'locks'];

/** One object of each type, in words, for messages. */
export const OBJECT_WORDS: Record<FileType, string> = { config: 'config', keys: 'key', data: 'pack', index: 'index', snapshots: 'snapshot', notes: 'note', locks: 'lock' };

export interface Handle {
  type: FileType;
  /** Object name: a lowercase hex content hash, except for `config` whose name is empty. */
  name: string;
}

export interface FileInfo {
  name: string;
  size: number;
}

/**
 * An object's bytes in a local file the caller owns (a pack filled on disk): saved without being held
 * in memory. The file must not change once handed to save() (a local backend may link it rather than
 * copy it); it may be read more than once (retries). The caller removes its name when done.
 */
export interface FileSource {
  readonly path: string;
  readonly size: number;
}

export type SaveData = Uint8Array | FileSource;

export function isFileSource(d: SaveData): d is FileSource {
  return !(d instanceof Uint8Array);
}

export function saveSize(d: SaveData): number {
  return isFileSource(d) ? d.size : d.length;
}

export interface BackendProperties {
  /** How many requests the repository should keep in flight against this backend. */
  connections: number;
  /** A human-readable location for messages, with no secrets in it. */
  location: string;
  /**
   * A local folder on the same file system as the objects where the repository may keep temporary
   * files (dot-named, which list() never shows): a FileSource from there is saved by a link, not a
   * copy. Absent for remote backends (the repository then uses TMPDIR).
   */
  spool?: string;
}

export interface Backend {
  readonly properties: BackendProperties;
  /** Creates the layout (folders) of a new repository; fails if a config already exists. */
  create(): Promise<void>;
  save(h: Handle, data: SaveData): Promise<void>;
  /**
   * Reads the whole object, or `length` bytes from `offset`. A ranged read may go into `into` (when it
   * is at least `length` bytes) instead of a new buffer; backends are free to ignore it.
   */
  load(h: Handle, offset?: number, length?: number, into?: Buffer): Promise<Buffer>;
  stat(h: Handle): Promise<FileInfo>;
  list(type: FileType): AsyncIterable<FileInfo>;
  remove(h: Handle): Promise<void>;
  isNotFound(err: unknown): boolean;
  isPermanent(err: unknown): boolean;
  close(): Promise<void>;
}
