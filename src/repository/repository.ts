// The repository: keys, config, blobs in packs, the index, and sealed documents (snapshots, locks).
//
// Crash safety rests on the write order, packs → index → snapshot: a pack is listed in an index file
// only after the pack is durable, and a snapshot is written only after flush() made every blob it
// references durable and indexed. A crash at any point leaves unreferenced packs (removed by prune),
// never a snapshot that points at missing data.
import { createHash, randomBytes, randomInt } from 'node:crypto';
import type { Backend, FileType } from '../storage/backend.js';
import { Budget } from '../util/budget.js';
import type { Clock } from '../util/clock.js';
import { systemClock } from '../util/clock.js';
import { BulwarkError, unable } from '../util/errors.js';
import { blobId, IntegrityError, newMasterKey, zeroBlobId, type MasterKey } from './crypto.js';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_PACK_SIZE,
  DEFAULT_ZSTD_LEVEL,
  PACK_TRAILER_BYTES,
  REPOSITORY_VERSION,
  SUPPORTED_VERSIONS,
  V2_PACKERS_PER_TYPE,
  type BlobType,
  type FormatVersion,
} from './format.js';
import type { FreshnessRecord } from './freshness.js';
import { IndexCache, IndexFileVanishedError } from './index-cache.js';
import { MasterIndex, validateIndexFile, type IndexEntry, type IndexFile, type IndexWatcher } from './index.js';
import { openWithPassword, writeKey } from './keys.js';
import { parsePackHeader, type PackBlob, type PackEntry } from './pack.js';
import { PackSpool, type FinishedPack, type PackWriter } from './pack-writer.js';
import { OtherFormatObjectError, sealDocument, sealerFor, unsealDocument, type Sealer } from './sealer.js';
import { ReadAhead } from './read-ahead.js';
import { BlobReader, LOCAL_MAX_RUN_BYTES, restoreMemoryBytes } from './blob-reader.js';
import { UploadJournal } from './upload-journal.js';
import { Chunker, gearTable } from './chunker.js';
import { MAX_TREE_BYTES } from './tree.js';
import { decompressBounded } from './zstd.js';
import { BlobWorkers } from './workers.js';
import { AppendOnlyBackend, AppendOnlyError } from '../storage/append-only.js';

export interface RepositoryConfig {
  version: FormatVersion;
  id: string;
  created: string;
  chunker: { seed: string; minSize: number; avgSize: number; maxSize: number };
  blockSize: number;
  zstdLevel: number;
  packSize: number;
  /** Every command may add, none may delete, until a full key turns it off (`append-only off`). */
  appendOnly?: boolean;
}

export interface InitOptions {
  clock?: Clock;
  blockSize?: number;
  zstdLevel?: number;
  packSize?: number;
  chunker?: { minSize: number; avgSize: number; maxSize: number };
  /** Lower scrypt cost, for tests only. */
  kdf?: { N: number; r: number; p: number };
  /** Format version; the newest unless a repository for older Bulwark versions is wanted. */
  version?: FormatVersion;
  appendOnly?: boolean;
}

export interface OpenOptions {
  clock?: Clock;
  /** Folder for the on-disk index cache (index-cache.ts); without one, a private temporary folder. */
  indexCache?: string;
  workers?: number;
  /** Told about damage that was worked around (a skipped key, index or snapshot file). */
  onWarning?: (message: string) => void;
}

export interface SaveResult {
  id: string;
  /** True when the blob was new and is being stored; false when it was already there (deduplicated). */
  stored: boolean;
}

export class RepositoryNotFoundError extends BulwarkError {
  constructor(location: string, cause?: unknown) {
    super('repository-not-found', `no repository at '${location}'`, {
      hint: "check --repo / BULWARK_REPOSITORY, or create one with 'bulwark init'",
      cause,
    });
  }
}

/** Sealed documents other than the config. */
export type DocType = Exclude<FileType, 'config' | 'keys' | 'data'>;

const INDEX_PACKS_PER_FILE = 64;
/**
 * Or once the packs waiting hold this many blobs: an index document is built whole in memory (its JSON,
 * compressed, sealed), and one for a whole tree of small files (40 000 blobs in a few packs) took tens of
 * MB at the end of the backup, more than the backup itself used.
 */
const INDEX_BLOBS_PER_FILE = 8192;
/** Largest plaintext of a data blob a reader accepts: well above any chunk or block size we write. */
const MAX_DATA_BLOB_BYTES = 64 * 1024 * 1024;

/** Largest plaintext a reader accepts for a blob of this type. */
export function maxBlobBytes(type: BlobType): number {
  return type === 'tree' ? MAX_TREE_BYTES : MAX_DATA_BLOB_BYTES;
}

async function hasAnyObject(backend: Backend, types: readonly FileType[]): Promise<boolean> {
  for (const type of types) {
    try {
      for await (const _ of backend.list(type)) return true;
    } catch {
      // no such folder: nothing of that type
    }
  }
  return false;
}
const HEX_ID = /^[0-9a-f]{64}$/;

/** Checks a config before anything is done with it: a hostile one could ask for absurd chunk or pack sizes. */
export function validateConfig(c: RepositoryConfig): void {
  const int = (v: unknown, lo: number, hi: number): boolean => typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi;
  const ch = c?.chunker;
  const ok =
    typeof c === 'object' &&
    c !== null &&
    typeof c.id === 'string' &&
    HEX_ID.test(c.id) &&
    typeof ch === 'object' &&
    ch !== null &&
    typeof ch.seed === 'string' &&
    HEX_ID.test(ch.seed) &&
    int(ch.minSize, 4096, 64 * 1024 * 1024) &&
    int(ch.avgSize, ch.minSize, 64 * 1024 * 1024) &&
    int(ch.maxSize, ch.avgSize, 64 * 1024 * 1024) &&
    int(c.blockSize, 4096, 64 * 1024 * 1024) &&
    int(c.zstdLevel, -7, 22) &&
    int(c.packSize, 64 * 1024, 1024 * 1024 * 1024) &&
    (c.appendOnly === undefined || typeof c.appendOnly === 'boolean');
  if (!ok) throw new BulwarkError('repository-corrupt', 'the repository config holds invalid values (damaged or tampered with)', { hint: 'restore the config file from a copy of the repository' });
}
/** Data blobs up to this size (sealed) are read ahead and opened in batches. */
const SMALL_BLOB_BYTES = 64 * 1024;
/** Memory for whole tree packs kept while walking snapshots. */
const TREE_CACHE_BYTES = 16 * 1024 * 1024;
/**
 * Charged per blob on top of its bytes: its buffers and bookkeeping. A page, so that a tree of tiny
 * files does not put tens of thousands of blobs in flight at once.
 */
const BLOB_OVERHEAD = 4096;
/** Memory for blobs between saveBlob and their pack's file. */
const SAVE_BUDGET_BYTES = 8 * 1024 * 1024;

interface Packer {
  type: BlobType;
  slot: number;
  /** The pack's temporary file (pack-writer.ts): blobs go to disk as they come, not into memory. */
  writer: Promise<PackWriter>;
  /** Bytes of blobs sent to it (written or being written). */
  bytes: number;
  /** The writes so far, in order: each blob's write starts after the one before it. */
  tail: Promise<void>;
}

export class Repository {
  readonly index = new MasterIndex();
  /** Seals and opens this repository's objects, as its format version says. */
  readonly sealer: Sealer;
  private readonly workers: BlobWorkers;
  /**
   * Packs being filled. Format 1 fills one per type in arrival order; format 2 fills several per type
   * and sends each blob to one at random, so a pack's size is not the sum of consecutive chunks.
   */
  private readonly packers = new Map<string, Packer>();
  private readonly pendingBlobs = new Set<string>();
  private readonly pendingIndex: IndexFile['packs'] = [];
  /** Sizes of the packs saved (or adopted) and in no index file yet: what the upload journal holds. */
  private readonly unindexedPacks = new Map<string, number>();
  private readonly tasks = new Set<Promise<void>>();
  private readonly budget: Budget;
  private readonly spool: PackSpool;
  private failure: unknown;
  private readonly treePacks = new Map<string, Promise<Buffer>>();
  /** Small data blobs are cut from windows of their packs read ahead (a restore reads them in order). */
  private readonly readAhead = new ReadAhead((pack, offset, length) => this.loadRange(pack, offset, length));
  private treePackBytes = 0;
  private closed = false;
  /** Bytes of new packs written by this process (for summaries). */
  bytesWritten = 0;
  /** Where warnings about worked-around damage go; the CLI prints them. */
  onWarning: (message: string) => void = () => undefined;
  /** Snapshots this process removed (forget): their absence is no rollback. */
  readonly forgotten = new Set<string>();
  /** This host's record of the snapshots it saw (rollback detection); set by the CLI. */
  freshness: FreshnessRecord | undefined;
  /** This host's record of packs sent and not yet indexed (upload-journal.ts); set by the CLI. */
  uploadJournal: UploadJournal | undefined;
  /** Locks this process holds: told the prune generation of every index it loads (see prune.ts). */
  readonly heldLocks = new Set<IndexWatcher>();
  /** Why this repository may only be added to (an append-only key or setting), or undefined. */
  appendOnly: string | undefined;
  /** The key in use is append-only: new keys made with it are too. */
  appendOnlyKey = false;
  /** Layout version of the key file that opened the repository (format 2 seals its details). */
  keyFileVersion: 1 | 2 = 2;
  /** Every blob a backup reuses is read and checked first; a damaged one is stored again. */
  verifyReused = false;
  private readonly verified = new Set<string>();
  /** Where the index cache lives (index-cache.ts); undefined: a private temporary folder. */
  indexCacheDir: string | undefined;
  private indexCache: IndexCache | undefined;

  private constructor(
    readonly backend: Backend,
    readonly key: MasterKey,
    readonly keyId: string,
    readonly config: RepositoryConfig,
    readonly clock: Clock,
    workers?: number,
    /** False for a view (withFormat) that shares another Repository's backend. */
    private readonly ownsBackend = true,
  ) {
    this.sealer = sealerFor(config.version, key);
    this.workers = new BlobWorkers(this.sealer, key.id, config.zstdLevel, workers);
    // Blobs being sealed and written to their pack's file; packs themselves are on disk. More buys no
    // speed (two workers keep busy with a few blobs each) and costs memory.
    this.budget = new Budget(SAVE_BUDGET_BYTES);
    this.spool = new PackSpool(backend.properties.spool);
  }

  /**
   * The same repository (backend, keys, settings) seen as another format version, before its config says
   * so: `migrate` writes the new format's objects through it. Closing it leaves the backend open.
   */
  withFormat(version: FormatVersion): Repository {
    const view = new Repository(this.backend, this.key, this.keyId, { ...this.config, version }, this.clock, undefined, false);
    view.onWarning = this.onWarning;
    return view;
  }

  static async init(backend: Backend, password: string, opts: InitOptions = {}): Promise<Repository> {
    const clock = opts.clock ?? systemClock;
    const master = newMasterKey();
    const version = opts.version ?? (REPOSITORY_VERSION as FormatVersion);
    if (!SUPPORTED_VERSIONS.includes(version)) throw new BulwarkError('usage', `repository format version ${version} does not exist`, { hint: `choose one of ${SUPPORTED_VERSIONS.join(', ')}` });
    const config: RepositoryConfig = {
      version,
      id: randomBytes(32).toString('hex'),
      created: clock.now().toISOString(),
      chunker: { seed: randomBytes(32).toString('hex'), ...(opts.chunker ?? { minSize: 512 * 1024, avgSize: 1024 * 1024, maxSize: 8 * 1024 * 1024 }) },
      blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE,
      zstdLevel: opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL,
      packSize: opts.packSize ?? DEFAULT_PACK_SIZE,
      ...(opts.appendOnly ? { appendOnly: true } : {}),
    };
    await backend.create();
    const keyId = await writeKey(backend, master, password, clock, opts.kdf, version);
    // The config is written last: a repository without config is not a repository, so an interrupted
    // init never leaves something that half-opens.
    await backend.save({ type: 'config', name: '' }, sealDocument(sealerFor(version, master), 'config', config));
    return new Repository(backend, master, keyId, config, clock);
  }

  static async open(backend: Backend, password: string, opts: OpenOptions = {}): Promise<Repository> {
    await Repository.assertExists(backend);
    const opened = await openWithPassword(backend, password);
    const { master, keyId } = opened;
    for (const s of opened.skipped) {
      opts.onWarning?.(`key file ${s.name.slice(0, 8)} is damaged and was skipped: ${s.reason}`);
    }
    const config = await Repository.loadConfig(backend, master, opened.format);
    validateConfig(config);
    // Append-only: enforced below everything, in the storage wrapper, so no command can delete by mistake.
    const appendOnly = opened.appendOnly ? 'the key in use is append-only' : config.appendOnly ? 'the repository is append-only' : undefined;
    const store = appendOnly ? new AppendOnlyBackend(backend, appendOnly, !opened.appendOnly) : backend;
    const repo = new Repository(store, master, keyId, config, opts.clock ?? systemClock, opts.workers);
    repo.keyFileVersion = opened.keyVersion;
    repo.appendOnly = appendOnly;
    repo.appendOnlyKey = opened.appendOnly;
    if (opts.onWarning) repo.onWarning = opts.onWarning;
    repo.indexCacheDir = opts.indexCache;
    return repo;
  }

  /**
   * Reads the config, sealed as format 2 (bound to "config") or format 1 (bound to nothing), and checks
   * that it names the format it is sealed in. A key file made for format 2 never opens a format 1
   * config: otherwise someone who kept an old format 1 object could downgrade the repository to the
   * format that cannot tell documents from data.
   */
  static async loadConfig(backend: Backend, master: MasterKey, keyFormat: FormatVersion | undefined): Promise<RepositoryConfig> {
    const bytes = await backend.load({ type: 'config', name: '' });
    let config: RepositoryConfig;
    let sealedAs: FormatVersion = 2;
    try {
      config = unsealDocument<RepositoryConfig>(sealerFor(2, master), 'config', bytes, 'repository config');
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err;
      sealedAs = 1;
      config = unsealDocument<RepositoryConfig>(sealerFor(1, master), 'config', bytes, 'repository config');
    }
    if (typeof config !== 'object' || config === null || typeof config.version !== 'number') throw new BulwarkError('repository-corrupt', 'the repository config is damaged (no format version)');
    if (!SUPPORTED_VERSIONS.includes(config.version)) {
      throw new BulwarkError('failed', `repository format version ${config.version} is not supported by this Bulwark (supports ${SUPPORTED_VERSIONS.join(', ')})`, {
        hint: 'upgrade Bulwark',
      });
    }
    if (config.version !== sealedAs || (keyFormat !== undefined && keyFormat > sealedAs)) {
      const why = config.version !== sealedAs ? `says format ${config.version}` : `the key file was made for format ${keyFormat}`;
      throw new BulwarkError('repository-corrupt', `the repository config is sealed as format ${sealedAs} but ${why}: a forged or rolled-back config`, {
        hint: 'restore the config file from a copy of the repository; do not back up to it until then',
      });
    }
    return config;
  }

  /**
   * Throws RepositoryNotFoundError when there is no repository, and a clear error when there is one
   * that lost its config (which would otherwise look like no repository at all).
   */
  static async assertExists(backend: Backend): Promise<void> {
    try {
      await backend.stat({ type: 'config', name: '' });
      return;
    } catch (err) {
      if (!backend.isNotFound(err)) throw unable('open', 'repository', backend.properties.location, err, 'io');
      if (await hasAnyObject(backend, ['keys', 'snapshots', 'index'])) {
        throw new BulwarkError('repository-corrupt', `the config of the repository at '${backend.properties.location}' is missing, but keys, index or snapshots are present`, {
          hint: 'the repository is damaged: restore its config file from a copy (it cannot be recreated without losing access to the data)',
          cause: err,
        });
      }
      throw new RepositoryNotFoundError(backend.properties.location, err);
    }
  }

  // ---- index ----

  /**
   * Loads every index file. A damaged one is skipped with a warning, and the packs it described are
   * found again by reading their own headers, so one bad file never takes the repository down.
   * Returns the names and reasons of the index files that could not be read.
   */
  async loadIndex(): Promise<{ name: string; reason: string }[]> {
    const damaged = await this.loadIndexFiles();
    for (const lock of this.heldLocks) await lock.sawIndex(this.index.generation);
    if (damaged.length > 0) {
      for (const d of damaged) this.onWarning(`index file ${d.name.slice(0, 8)} is damaged and was skipped (${d.reason}); run 'bulwark repair index'`);
      const found = await this.indexUnlistedPacks();
      if (found > 0) this.onWarning(`${found} pack(s) missing from the index were read from their own headers`);
    }
    return damaged;
  }

  /** Loads the index files that can be read; returns the damaged ones, without working around them. */
  async loadIndexFiles(): Promise<{ name: string; reason: string }[]> {
    // A listed file that is gone by the time it is read means a prune (or repair) rewrote the index
    // meanwhile: it writes the new files before removing the old ones, so a fresh listing finds a whole
    // set. Starting over matters: half of the old set (packs without the marks that condemn them) and
    // half of the new would let a backup reuse a pack prune is removing (prune.ts).
    for (let attempt = 1; ; attempt++) {
      const { damaged, vanished } = await this.loadIndexListing();
      if (!vanished) return damaged;
      if (attempt >= 5) throw new BulwarkError('io', 'the index kept changing while it was read (a prune or repair running at the same time?)', { hint: 'run the command again' });
    }
  }

  private async loadIndexListing(): Promise<{ damaged: { name: string; reason: string }[]; vanished: boolean }> {
    const names: string[] = [];
    for await (const f of this.backend.list('index')) names.push(f.name);
    const damaged: { name: string; reason: string }[] = [];
    this.indexCache ??= IndexCache.forRepository(this.indexCacheDir, this.config.id, this.config.version, (m) => this.onWarning(m));
    const read = async (name: string): Promise<IndexFile | undefined> => {
      try {
        const file = await this.loadDocument<IndexFile>('index', name);
        validateIndexFile(file, name);
        return file;
      } catch (err) {
        if (this.backend.isNotFound(err)) throw new IndexFileVanishedError(name);
        if (err instanceof OtherFormatObjectError) return undefined;
        if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
        damaged.push({ name, reason: err.message });
        return undefined;
      }
    };
    // Loading again replaces what the index files said; what this process added stays.
    this.index.detachRuns();
    try {
      const { runs, meta } = await this.indexCache.update(names, read);
      this.index.attach(runs, meta.values());
    } catch (err) {
      if (err instanceof IndexFileVanishedError) return { damaged, vanished: true };
      throw err;
    }
    return { damaged, vanished: false };
  }

  /** Adds packs that are in storage but in no index file, from their own headers. Returns how many. */
  async indexUnlistedPacks(onDamaged?: (pack: string, reason: string) => void): Promise<number> {
    let found = 0;
    for await (const f of this.backend.list('data')) {
      if (this.index.hasPack(f.name)) continue;
      try {
        const entries = await this.readPackEntries(f.name, f.size);
        this.index.addFile(packIndexFile(f.name, entries));
        found++;
      } catch (err) {
        if (err instanceof OtherFormatObjectError) continue;
        if (!(err instanceof BulwarkError)) throw err;
        onDamaged?.(f.name, err.message);
      }
    }
    return found;
  }

  /** A pack's own list of its blobs, read from its trailer and header (two ranged reads). */
  async readPackEntries(pack: string, size: number): Promise<PackEntry[]> {
    if (size < PACK_TRAILER_BYTES) throw new BulwarkError('repository-corrupt', `pack ${pack} is truncated`);
    const trailer = await this.loadRange(pack, size - PACK_TRAILER_BYTES, PACK_TRAILER_BYTES);
    const hlen = trailer.readUInt32LE(0);
    if (hlen > size - PACK_TRAILER_BYTES) throw new BulwarkError('repository-corrupt', `pack ${pack} has an invalid header length`);
    const header = await this.loadRange(pack, size - PACK_TRAILER_BYTES - hlen, hlen);
    try {
      return parsePackHeader(this.sealer, header, pack, size - PACK_TRAILER_BYTES - hlen);
    } catch (err) {
      if (err instanceof IntegrityError && this.opensAsOtherFormat('pack-header', header)) throw new OtherFormatObjectError(`pack ${pack}`, this.otherSealer.version);
      throw err;
    }
  }

  private otherSealerCache: Sealer | undefined;
  /** The sealer of the other format version, to recognise what an upgrade left behind. */
  get otherSealer(): Sealer {
    this.otherSealerCache ??= sealerFor(this.sealer.version === 2 ? 1 : 2, this.key);
    return this.otherSealerCache;
  }

  /** Whether these sealed bytes authenticate under the other format version (never accepted, only recognised). */
  opensAsOtherFormat(purpose: 'pack-header' | DocType, sealed: Uint8Array): boolean {
    try {
      this.otherSealer.open(purpose, sealed, 'object');
      return true;
    } catch {
      return false;
    }
  }

  private zeroChunkCache: { length: number; id: string } | undefined;
  /**
   * The chunk every long run of zero bytes (a hole of a sparse file) is cut into, and its blob id:
   * backups store holes without hashing them, and restores leave them as holes without loading them.
   */
  zeroChunk(): { length: number; id: string } {
    if (!this.zeroChunkCache) {
      const c = this.config.chunker;
      const length = new Chunker(c, gearTable(Buffer.from(c.seed, 'hex'))).zeroLength;
      this.zeroChunkCache = { length, id: zeroBlobId(this.key, length).toString('hex') };
    }
    return this.zeroChunkCache;
  }

  /** The work of this process's own thread is CPU-bound too (a file walk): one core is left to it (workers.ts). */
  leaveCoreForCaller(): void {
    this.workers.leaveCoreForCaller();
  }

  blobId(plain: Uint8Array): string {
    return blobId(this.key, plain).toString('hex');
  }

  /** Known to the repository or being stored by this process. */
  hasBlob(id: string): boolean {
    return this.index.has(id) || this.pendingBlobs.has(id);
  }

  // ---- blobs ----

  /**
   * Stores a blob unless an identical one exists. Returns once the blob is queued: sealing and upload
   * continue in the background, bounded by a byte budget, and become durable at flush(). A background
   * failure is thrown by the next saveBlob or flush. The caller may reuse `plain` once this returns:
   * what is kept of it is copied by then (file and disk readers refill one buffer).
   */
  async saveBlob(type: BlobType, plain: Buffer, knownId?: string, opts: { force?: boolean } = {}): Promise<SaveResult> {
    this.throwIfFailed();
    const id = knownId ?? this.blobId(plain);
    // force: a new copy even though one exists (prune moving needed blobs out of a pack it condemns).
    if (!opts.force && this.hasBlob(id) && (!this.verifyReused || (await this.reusable(id)))) return { id, stored: false };
    if (this.pendingBlobs.has(id)) return { id, stored: false };
    this.pendingBlobs.add(id);
    // Memory accounting: the plaintext is charged until its sealed form is in the pack's file (the
    // sealed form is smaller or about as large).
    const cost = plain.length + BLOB_OVERHEAD;
    await this.budget.acquire(cost);
    this.track(
      (async () => {
        try {
          const { sealed, ulen, release } = await this.workers.seal(plain, true, this.sealer.ad(type, Buffer.from(id, 'hex')));
          try {
            await this.addToPacker({ type, id: Buffer.from(id, 'hex'), sealed, ulen });
          } finally {
            release();
          }
        } finally {
          this.budget.release(cost);
        }
      })(),
    );
    return { id, stored: true };
  }

  /**
   * Loads and verifies a blob. When a copy is damaged or its pack is gone, the next copy is tried, and
   * the damaged one is marked so that backups in this process store the blob again.
   */
  async loadBlob(type: BlobType, id: string): Promise<Buffer> {
    const copies = this.index.locations(id);
    if (copies.length === 0) {
      throw new BulwarkError('repository-corrupt', `${type} blob ${id} is not in the index`, { hint: "run 'bulwark check' to see what is affected" });
    }
    let failure: unknown;
    for (const e of copies) {
      try {
        return await this.loadCopy(type, id, e);
      } catch (err) {
        if (!(err instanceof BulwarkError) || err.code !== 'repository-corrupt') throw err;
        this.index.markDamaged(id, e.pack);
        failure ??= err;
      }
    }
    throw failure;
  }

  /** `cut`: the sealed bytes already read, as part of a range (blob-reader.ts); checked like any others. */
  private async loadCopy(type: BlobType, id: string, e: IndexEntry, cut?: Buffer): Promise<Buffer> {
    const limit = maxBlobBytes(type);
    if (e.type !== type) throw new BulwarkError('repository-corrupt', `${type} blob ${id} is indexed as a ${e.type} blob`);
    if (e.ulen > limit || (e.ulen === 0 && e.length - this.sealer.overhead > limit)) throw new BulwarkError('repository-corrupt', `${type} blob ${id} is larger than a ${type} blob may be`);
    let plain: Buffer;
    let actualId: string;
    if (e.type === 'tree') {
      // Trees are small and read in bursts (a whole snapshot's folders): whole tree packs are cached and
      // trees opened here, which saves a storage request and a worker round trip per folder.
      const pack = await this.treePack(e.pack);
      const sealed = pack ? pack.subarray(e.offset, e.offset + e.length) : await this.loadRange(e.pack, e.offset, e.length);
      if (sealed.length !== e.length) throw new BulwarkError('repository-corrupt', `pack ${e.pack} is shorter than the index says`);
      const body = this.sealer.open(type, sealed, `${type} blob ${id}`, Buffer.from(id, 'hex'));
      plain = e.ulen > 0 ? decompressBounded(body, limit, `${type} blob ${id}`, e.ulen) : body;
      actualId = this.blobId(plain);
    } else if (cut) {
      const open = e.length <= SMALL_BLOB_BYTES ? this.workers.openSmall.bind(this.workers) : this.workers.open.bind(this.workers);
      ({ plain, id: actualId } = await open(cut, e.ulen, `${type} blob ${id}`, this.sealer.ad(type, Buffer.from(id, 'hex'))));
    } else if (e.length <= SMALL_BLOB_BYTES) {
      // Small data blobs are cut from windows read ahead and opened in batches.
      const sealed = await this.readAhead.read(e.pack, this.index.packSize(e.pack) ?? 0, e.offset, e.length);
      ({ plain, id: actualId } = await this.workers.openSmall(sealed, e.ulen, `${type} blob ${id}`, this.sealer.ad(type, Buffer.from(id, 'hex'))));
    } else {
      ({ plain, id: actualId } = await this.workers.open(await this.loadRange(e.pack, e.offset, e.length), e.ulen, `${type} blob ${id}`, this.sealer.ad(type, Buffer.from(id, 'hex'))));
    }
    // A blob is only trusted if it hashes back to its id: catches damage that still authenticates
    // (a wrong blob at a valid position, e.g. a broken index).
    if (actualId !== id) throw new BulwarkError('repository-corrupt', `${type} blob ${id} has wrong content`, { hint: "run 'bulwark check --read-data'" });
    return plain;
  }

  /**
   * A reader for a restore's blob lists: it reads neighbouring blobs of a pack with one ranged request,
   * several at once, ahead of the consumer (blob-reader.ts). Each one is opened and verified by
   * loadCopy, and falls back to loadBlob when that fails.
   */
  blobReader(): BlobReader {
    const { connections } = this.backend.properties;
    // A store with a spool folder is a local file system (storage/local.ts): the one that reads into a
    // buffer it is given. Remote stores make their own.
    const local = this.backend.properties.spool !== undefined;
    return new BlobReader(
      {
        locate: (id) => {
          const e = this.index.lookup(id);
          return e?.type === 'data' ? e : undefined;
        },
        loadRange: (pack, offset, length, into) => this.loadRange(pack, offset, length, into),
        open: (id, at, sealed) => this.loadCopy('data', id, at as IndexEntry, sealed),
        openRun: (range, start, blobs) => this.openRun(range, start, blobs as { id: string; at: IndexEntry }[]),
        rangeBuffer: local ? (length) => this.workers.rangeBuffer(length) : undefined,
        loadBlob: (id) => this.loadBlob('data', id),
      },
      { connections, memoryBytes: restoreMemoryBytes(connections, local), maxRunBytes: local ? LOCAL_MAX_RUN_BYTES : undefined },
    );
  }

  /**
   * Opens the data blobs cut from one range in a single worker message (blob-reader.ts), with the checks
   * of loadCopy; a blob that fails any of them comes back undefined and is read again through loadBlob,
   * whose errors and repairs are those of any read.
   */
  private async openRun(range: Buffer, start: number, blobs: { id: string; at: IndexEntry }[]): Promise<{ plains: (Buffer | undefined)[]; release(): void }> {
    const limit = maxBlobBytes('data');
    const fits = blobs.map(({ at: e }) => e.type === 'data' && e.ulen <= limit && (e.ulen > 0 || e.length - this.sealer.overhead <= limit) && e.offset - start + e.length <= range.length);
    const todo = blobs.filter((_, i) => fits[i]);
    const opened = await this.workers.openRun(
      range,
      todo.map(({ id, at: e }) => ({ at: e.offset - start, len: e.length, ulen: e.ulen, ad: this.sealer.ad('data', Buffer.from(id, 'hex')), what: `data blob ${id}` })),
    );
    let next = 0;
    const plains = blobs.map(({ id }, i) => {
      if (!fits[i]) return undefined;
      const r = opened.results[next++]!;
      // Trusted only if it hashes back to its id, as in loadCopy.
      return 'plain' in r && r.id === id ? r.plain : undefined;
    });
    return { plains, release: opened.release };
  }

  /**
   * With verifyReused: reads a blob the backup is about to reuse; a damaged one is marked (and so
   * stored again). Returns whether it may be reused.
   */
  async reusable(id: string): Promise<boolean> {
    if (!this.index.has(id)) return this.pendingBlobs.has(id);
    if (!this.verifyReused || this.verified.has(id)) return true;
    const e = this.index.lookup(id)!;
    try {
      await this.loadBlob(e.type, id);
    } catch (err) {
      if (err instanceof BulwarkError && err.code === 'repository-corrupt') return this.index.has(id);
      throw err;
    }
    this.verified.add(id);
    return this.index.has(id);
  }

  private async loadRange(pack: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    try {
      const b = await this.backend.load({ type: 'data', name: pack }, offset, length, into);
      if (b.length !== length) throw new BulwarkError('repository-corrupt', `pack ${pack} is shorter than expected (${b.length} of ${length} bytes at ${offset})`);
      return b;
    } catch (err) {
      throw unable('load', 'pack', pack, err, this.backend.isNotFound(err) ? 'repository-corrupt' : 'io');
    }
  }

  /** A whole tree pack from the cache (loading it once, however many callers ask at the same time). */
  private async treePack(pack: string): Promise<Buffer | undefined> {
    const size = this.index.packSize(pack) ?? Infinity;
    if (size > TREE_CACHE_BYTES / 4) return undefined;
    let p = this.treePacks.get(pack);
    if (p) {
      this.treePacks.delete(pack); // re-insert: most recently used last
      this.treePacks.set(pack, p);
      return p;
    }
    p = this.loadRange(pack, 0, size);
    this.treePacks.set(pack, p);
    this.treePackBytes += size;
    p.catch(() => {
      this.treePacks.delete(pack);
      this.treePackBytes -= size;
    });
    for (const [name] of this.treePacks) {
      if (this.treePackBytes <= TREE_CACHE_BYTES || name === pack) break;
      this.treePacks.delete(name);
      this.treePackBytes -= this.index.packSize(name) ?? 0;
    }
    return p;
  }

  /** Appends a blob to a pack being filled (its file); writes the pack when it is full. */
  private async addToPacker(blob: PackBlob): Promise<void> {
    const slot = this.sealer.version === 2 ? randomInt(V2_PACKERS_PER_TYPE) : 0;
    const key = `${blob.type}:${slot}`;
    let p = this.packers.get(key);
    if (!p) {
      const writer = this.spool.open(this.sealer);
      writer.catch(() => undefined); // awaited below; a failure to open is reported there
      p = { type: blob.type, slot, writer, bytes: 0, tail: Promise.resolve() };
      this.packers.set(key, p);
    }
    p.bytes += blob.sealed.length;
    // Full: the blobs that come next start the next pack at once. Checked only after this blob's write,
    // the check let every blob already on its way join too, and a pack grew several blobs past its size
    // whenever the workers were quick.
    const full = p.bytes >= this.config.packSize;
    if (full) this.packers.delete(key);
    const packer = p;
    const written = p.tail.then(async () => (await packer.writer).add(blob));
    p.tail = written.catch(() => undefined);
    await written;
    if (full) await this.writePack(p, true);
  }

  /** `detached`: already taken out of the packers by the blob that filled it. */
  private async writePack(p: Packer, detached = false): Promise<void> {
    const key = `${p.type}:${p.slot}`;
    if (!detached) {
      if (this.packers.get(key) !== p) return;
      this.packers.delete(key);
    }
    await p.tail;
    const writer = await p.writer;
    let pack: FinishedPack | undefined;
    try {
      if (writer.entries.length === 0) return;
      pack = await writer.finish();
      await this.backend.save({ type: 'data', name: pack.id }, pack);
    } catch (err) {
      throw unable('save', 'pack', pack?.id ?? 'being filled', err, 'io');
    } finally {
      await writer.discard();
    }
    this.bytesWritten += pack.size;
    this.pendingIndex.push(packIndexFile(pack.id, pack.entries).packs[0]!);
    this.index.addFile(packIndexFile(pack.id, pack.entries));
    for (const e of pack.entries) this.pendingBlobs.delete(e.id);
    this.unindexedPacks.set(pack.id, pack.size);
    this.writeJournal();
    if (this.pendingIndex.length >= INDEX_PACKS_PER_FILE || this.pendingIndex.reduce((n, p) => n + p.blobs.length, 0) >= INDEX_BLOBS_PER_FILE) await this.writeIndex();
  }

  private async writeIndex(): Promise<void> {
    if (this.pendingIndex.length === 0) return;
    const packs = this.pendingIndex.splice(0);
    await this.saveDocument('index', { version: 1, packs } satisfies IndexFile);
    for (const p of packs) this.unindexedPacks.delete(p.id);
    this.writeJournal();
  }

  private writeJournal(): void {
    try {
      this.uploadJournal?.set([...this.unindexedPacks].map(([id, size]) => ({ id, size })));
    } catch (err) {
      // The journal only spares a resend; a backup never fails for it.
      this.onWarning(`cannot record sent packs for resuming (${(err as Error).message})`);
      this.uploadJournal = undefined;
    }
  }

  /**
   * Takes over the packs an interrupted writer on this host had sent but not indexed (see
   * upload-journal.ts), so their blobs are not sent again: each must be in storage with the size
   * recorded, and is indexed from its own sealed header. Call after loadIndex, under a lock.
   */
  async resumeUploads(): Promise<{ packs: number; bytes: number }> {
    const journal = this.uploadJournal;
    if (!journal) return { packs: 0, bytes: 0 };
    const left = journal.leftovers();
    let packs = 0;
    let bytes = 0;
    for (const p of left.packs) {
      if (this.index.hasPack(p.id) || this.unindexedPacks.has(p.id)) continue;
      let size: number;
      try {
        size = (await this.backend.stat({ type: 'data', name: p.id })).size;
      } catch (err) {
        if (this.backend.isNotFound(err)) continue; // pruned since, or never arrived
        throw unable('stat', 'pack', p.id, err, 'io');
      }
      if (size !== p.size) continue;
      let entries: PackEntry[];
      try {
        entries = await this.readPackEntries(p.id, size);
      } catch (err) {
        if (!(err instanceof BulwarkError)) throw err;
        this.onWarning(`pack ${p.id.slice(0, 8)} sent by an interrupted backup is not used (${err.message})`);
        continue;
      }
      if (entries.length === 0 || entries.some((e) => e.type !== entries[0]!.type)) continue;
      const file = packIndexFile(p.id, entries);
      this.index.addFile(file);
      this.pendingIndex.push(file.packs[0]!);
      this.unindexedPacks.set(p.id, size);
      packs++;
      bytes += size;
    }
    this.writeJournal();
    UploadJournal.discard(left.files);
    if (packs > 0) {
      this.onWarning(`an earlier backup from this host was cut off: ${packs} pack(s) (${(bytes / 1048576).toFixed(1)} MiB) it had sent are used, not sent again`);
      await this.writeIndex();
    }
    return { packs, bytes };
  }

  private track(task: Promise<void>): void {
    const t = task.catch((err: unknown) => {
      this.failure ??= err;
    });
    this.tasks.add(t);
    void t.finally(() => this.tasks.delete(t));
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /** Makes every blob saved so far durable and indexed. Must precede writing a snapshot that uses them. */
  async flush(): Promise<void> {
    while (this.tasks.size > 0) await Promise.all([...this.tasks]);
    this.throwIfFailed();
    for (const p of [...this.packers.values()]) await this.writePack(p);
    while (this.tasks.size > 0) await Promise.all([...this.tasks]);
    this.throwIfFailed();
    await this.writeIndex();
  }

  // ---- sealed documents: index, snapshots, locks ----

  async saveDocument(type: DocType, doc: unknown): Promise<string> {
    // A snapshot is written only under a lock others still see as live (lock.ts, prune.ts).
    if (type === 'snapshots') for (const lock of this.heldLocks) lock.assertFresh();
    const bytes = sealDocument(this.sealer, type, doc);
    const name = createHash('sha256').update(bytes).digest('hex');
    try {
      await this.backend.save({ type, name }, bytes);
    } catch (err) {
      throw unable('save', type.replace(/s$/, ''), name, err, 'io');
    }
    return name;
  }

  async loadDocument<T>(type: DocType, name: string): Promise<T> {
    let bytes: Buffer;
    try {
      bytes = await this.backend.load({ type, name });
    } catch (err) {
      // Whatever the backend threw becomes a typed error naming the object (the cause is kept, so
      // isNotFound still sees a missing one).
      if (err instanceof BulwarkError) throw err;
      throw unable('load', type.replace(/s$/, ''), name, err, this.backend.isNotFound(err) ? 'not-found' : 'io');
    }
    if (createHash('sha256').update(bytes).digest('hex') !== name) {
      throw new BulwarkError('repository-corrupt', `${type} file ${name} does not match its name (damaged)`, { hint: "run 'bulwark check'" });
    }
    try {
      return unsealDocument<T>(this.sealer, type, bytes, `${type} file ${name}`);
    } catch (err) {
      if (err instanceof IntegrityError && this.opensAsOtherFormat(type, bytes)) throw new OtherFormatObjectError(`${type} file ${name}`, this.otherSealer.version);
      throw err;
    }
  }

  /** Adds a key; one added with an append-only key is append-only too (no way up through Bulwark). */
  async addKey(password: string, kdf?: InitOptions['kdf'], opts: { appendOnly?: boolean } = {}): Promise<string> {
    return writeKey(this.backend, this.key, password, this.clock, kdf, this.config.version, { appendOnly: opts.appendOnly === true || this.appendOnlyKey });
  }

  /** Refuses, before any work, a command that deletes, when the repository may only be added to. */
  assertMayDelete(what: string): void {
    if (this.appendOnly) throw new AppendOnlyError(what, this.appendOnly);
  }

  /** Turns the repository's append-only setting on or off (rewrites the config; refused to an append-only key). */
  async setAppendOnly(on: boolean): Promise<void> {
    const { appendOnly: _old, ...rest } = this.config;
    const config: RepositoryConfig = on ? { ...rest, appendOnly: true } : rest;
    await this.backend.save({ type: 'config', name: '' }, sealDocument(this.sealer, 'config', config));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.index.close();
    this.indexCache?.close();
    for (const p of this.packers.values()) await (await p.writer.catch(() => undefined))?.discard();
    this.packers.clear();
    this.spool.close();
    await this.workers.close();
    if (this.ownsBackend) await this.backend.close();
  }
}

/** An index document for one pack, from the pack's own entries. */
export function packIndexFile(pack: string, entries: readonly PackEntry[]): IndexFile {
  const type = entries[0]?.type ?? 'data';
  return { version: 1, packs: [{ id: pack, type, blobs: entries.map(({ id, offset, length, ulen }) => ({ id, offset, length, ulen })) }] };
}
