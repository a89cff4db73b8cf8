// The repository's index kept on local disk as sorted runs, so memory stays small whatever the
// repository's size (at 1 MiB blocks, 100 TB is ~100 million blobs: gigabytes as JavaScript objects).
//
// A run is built from a set of the repository's index files: `<run>.entries` (one 48-byte record per
// blob copy, sorted by blob id), `<run>.packs` (one 40-byte record per pack, in the order packs were
// numbered) and `<run>.packids` (the same pack records sorted by pack id). Only each sorted file's
// summary stays in memory (sorted-file.ts), plus runs small enough to hold whole.
//
// The cache is kept per repository and format (`<cache>/<repository id>/index-v<format>`), with a
// manifest naming the index files each run holds: the next command reads only index files it has not
// seen. Runs are merged as they pile up (each at most a quarter of the one before), so there are few.
// Index files are named by their content's hash, so a name seen is content known; a run that holds an
// index file no longer listed (a prune rewrote the index) is dropped and its other files read again.
//
// The cache is as trusted as the folder it is in: a command that judges the repository (check) does
// not use it. Without a cache folder the runs go to a private temporary folder removed at close.
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectGarbage } from '../util/gc-pacer.js';
import { makeProcessTempDir } from '../util/process-temp.js';
import { BLOB_TYPE_CODES, BLOB_TYPES_BY_CODE, type BlobType } from './format.js';
import type { IndexFile } from './index-file.js';
import { mergeSorted, SortedFile, SortedFileWriter, sortRecords } from './sorted-file.js';

/** blob id[32] ‖ pack number u32le ‖ offset u32le ‖ sealed length u32le ‖ plaintext length u32le. */
export const ENTRY_RECORD_BYTES = 48;
/** pack id[32] ‖ size u32le (end of its last blob) ‖ blob type u8 ‖ 3 zero bytes. */
export const PACK_RECORD_BYTES = 40;
/** Records sorted in memory at once while a run is built: 12 MiB of entries. */
const ENTRY_CHUNK_RECORDS = 256 * 1024;
const PACK_CHUNK_RECORDS = 64 * 1024;
/**
 * Runs are held whole in memory, smallest first, while they fit in this: lookups in them make no system
 * call (a repository of up to ~600,000 blobs is served from memory). The rest keep only summaries.
 */
const RESIDENT_BYTES = 32 * 1024 * 1024;
/** Runs (by name) not in the manifest and older than this are left behind by a crashed process. */
const ORPHAN_AGE_MS = 60 * 60 * 1000;
const MANIFEST_VERSION = 1;

/** What an index file says besides its packs, kept in the manifest so it need not be read again. */
export interface IndexFileMeta {
  damaged?: IndexFile['damaged'];
  obsolete?: IndexFile['obsolete'];
  generation?: number;
}

interface RunInfo {
  id: string;
  entries: number;
  packs: number;
  files: string[];
}

interface Manifest {
  version: number;
  runs: RunInfo[];
  meta: Record<string, IndexFileMeta>;
}

export interface CachedEntry {
  pack: string;
  type: BlobType;
  offset: number;
  length: number;
  ulen: number;
}

/** Thrown by a reader when a listed index file has vanished (the whole update must start over). */
export class IndexFileVanishedError extends Error {}

/** A run opened for lookups. */
export class Run {
  private readonly packTable: number;
  private readonly packCache = new Map<number, { id: string; size: number; type: BlobType }>();

  constructor(
    readonly info: RunInfo,
    private readonly entries: SortedFile,
    private readonly packIds: SortedFile,
    packTablePath: string,
    resident: boolean,
  ) {
    this.packTable = openSync(packTablePath, 'r');
    if (resident) this.packTableData = readFileSync(packTablePath);
  }

  /** The pack table, when the run is held in memory. */
  private readonly packTableData: Buffer | undefined;

  static open(dir: string, info: RunInfo, resident: boolean): Run {
    const hold = resident ? Infinity : 0;
    const entries = SortedFile.open(join(dir, `${info.id}.entries`), ENTRY_RECORD_BYTES, hold);
    try {
      const packIds = SortedFile.open(join(dir, `${info.id}.packids`), PACK_RECORD_BYTES, hold);
      return new Run(info, entries, packIds, join(dir, `${info.id}.packs`), resident);
    } catch (err) {
      entries.close();
      throw err;
    }
  }

  /** The pack numbered `n` in this run (a small cache: consecutive lookups tend to share packs). */
  private pack(n: number): { id: string; size: number; type: BlobType } {
    let p = this.packCache.get(n);
    if (p) return p;
    let rec = this.packTableData?.subarray(n * PACK_RECORD_BYTES, (n + 1) * PACK_RECORD_BYTES);
    if (!rec) {
      rec = Buffer.alloc(PACK_RECORD_BYTES);
      if (readSync(this.packTable, rec, 0, PACK_RECORD_BYTES, n * PACK_RECORD_BYTES) !== PACK_RECORD_BYTES) throw new Error(`index cache run ${this.info.id}: pack ${n} is missing`);
    }
    if (rec.length !== PACK_RECORD_BYTES) throw new Error(`index cache run ${this.info.id}: pack ${n} is missing`);
    p = decodePack(rec);
    if (this.packCache.size >= 4096) this.packCache.delete(this.packCache.keys().next().value!);
    this.packCache.set(n, p);
    return p;
  }

  find(id: Buffer): CachedEntry[] {
    return this.entries.find(id).map((rec) => {
      const p = this.pack(rec.readUInt32LE(32));
      return { pack: p.id, type: p.type, offset: rec.readUInt32LE(36), length: rec.readUInt32LE(40), ulen: rec.readUInt32LE(44) };
    });
  }

  /** Size of a pack (the end of its last blob) if this run lists it. */
  packSize(id: Buffer): number | undefined {
    let size: number | undefined;
    for (const rec of this.packIds.find(id)) size = Math.max(size ?? 0, rec.readUInt32LE(32));
    return size;
  }

  *allEntries(): Generator<[string, CachedEntry]> {
    for (const rec of this.entries.scan()) {
      const p = this.pack(rec.readUInt32LE(32));
      yield [rec.subarray(0, 32).toString('hex'), { pack: p.id, type: p.type, offset: rec.readUInt32LE(36), length: rec.readUInt32LE(40), ulen: rec.readUInt32LE(44) }];
    }
  }

  /** Packs in id order; a pack listed twice comes twice. */
  *packs(): Generator<{ id: string; size: number; type: BlobType }> {
    for (const rec of this.packIds.scan()) yield decodePack(rec);
  }

  get memoryBytes(): number {
    return this.entries.memoryBytes + this.packIds.memoryBytes + (this.packTableData?.length ?? 0);
  }

  close(): void {
    this.entries.close();
    this.packIds.close();
    closeSync(this.packTable);
  }
}

function decodePack(rec: Buffer): { id: string; size: number; type: BlobType } {
  const type = BLOB_TYPES_BY_CODE[rec.readUInt8(36)];
  if (!type) throw new Error('index cache: a pack record has an unknown type');
  return { id: rec.subarray(0, 32).toString('hex'), size: rec.readUInt32LE(32), type };
}

/** Sorts records of one size into a sorted file, in chunks of bounded memory merged at the end. */
class ExternalSorter {
  private readonly buf: Buffer;
  private n = 0;
  private total = 0;
  private readonly chunks: string[] = [];

  constructor(
    private readonly dir: string,
    private readonly name: string,
    private readonly recordBytes: number,
    chunkRecords: number,
  ) {
    this.buf = Buffer.allocUnsafe(recordBytes * chunkRecords);
  }

  add(rec: Buffer): void {
    if (this.n * this.recordBytes === this.buf.length) this.spill(join(this.dir, `${this.name}.chunk${this.chunks.length}`));
    rec.copy(this.buf, this.n * this.recordBytes);
    this.n++;
    this.total++;
  }

  private spill(path: string): void {
    const order = sortRecords(this.buf, this.recordBytes, this.n);
    const w = new SortedFileWriter(path, this.recordBytes, this.n);
    for (const i of order) w.add(this.buf, i * this.recordBytes);
    w.finish();
    this.chunks.push(path);
    this.n = 0;
  }

  finish(path: string): number {
    if (this.chunks.length === 0) {
      this.spill(path);
      this.chunks.length = 0;
      return this.total;
    }
    if (this.n > 0) this.spill(join(this.dir, `${this.name}.chunk${this.chunks.length}`));
    const inputs = this.chunks.map((c) => SortedFile.open(c, this.recordBytes));
    try {
      const w = new SortedFileWriter(path, this.recordBytes, this.total);
      mergeSorted(inputs, w);
      w.finish();
    } finally {
      for (const f of inputs) f.close();
      for (const c of this.chunks) rmSync(c, { force: true });
    }
    return this.total;
  }

  discard(): void {
    for (const c of this.chunks) rmSync(c, { force: true });
  }
}

/** Builds one run from index files, streaming: memory is one chunk of entries and one of packs. */
class RunBuilder {
  readonly id = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
  private readonly entries: ExternalSorter;
  private readonly packIds: ExternalSorter;
  private readonly packTable: number;
  private packs = 0;
  private readonly rec = Buffer.alloc(ENTRY_RECORD_BYTES);
  private readonly prec = Buffer.alloc(PACK_RECORD_BYTES);
  readonly files: string[] = [];

  constructor(private readonly dir: string) {
    this.entries = new ExternalSorter(dir, `${this.id}.e`, ENTRY_RECORD_BYTES, ENTRY_CHUNK_RECORDS);
    this.packIds = new ExternalSorter(dir, `${this.id}.p`, PACK_RECORD_BYTES, PACK_CHUNK_RECORDS);
    this.packTable = openSync(join(dir, `${this.id}.packs`), 'w', 0o600);
  }

  add(name: string, file: IndexFile): void {
    this.files.push(name);
    for (const p of file.packs) {
      let end = 0;
      const n = this.packs++;
      for (const b of p.blobs) {
        this.rec.write(b.id, 0, 32, 'hex');
        this.rec.writeUInt32LE(n, 32);
        this.rec.writeUInt32LE(b.offset, 36);
        this.rec.writeUInt32LE(b.length, 40);
        this.rec.writeUInt32LE(b.ulen, 44);
        this.entries.add(this.rec);
        end = Math.max(end, b.offset + b.length);
      }
      this.prec.fill(0);
      this.prec.write(p.id, 0, 32, 'hex');
      this.prec.writeUInt32LE(end, 32);
      this.prec.writeUInt8(BLOB_TYPE_CODES[p.type], 36);
      writeAll(this.packTable, this.prec);
      this.packIds.add(this.prec);
    }
  }

  finish(): RunInfo {
    closeSync(this.packTable);
    const entries = this.entries.finish(join(this.dir, `${this.id}.entries`));
    this.packIds.finish(join(this.dir, `${this.id}.packids`));
    return { id: this.id, entries, packs: this.packs, files: this.files };
  }

  discard(): void {
    try {
      closeSync(this.packTable);
    } catch {
      // closed by finish
    }
    this.entries.discard();
    this.packIds.discard();
    removeRun(this.dir, this.id);
  }
}

function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

function removeRun(dir: string, id: string): void {
  for (const ext of ['entries', 'packs', 'packids']) rmSync(join(dir, `${id}.${ext}`), { force: true });
}

/** Merges runs into one: pack tables are concatenated, so pack numbers shift by the runs before. */
function mergeRuns(dir: string, runs: readonly RunInfo[]): RunInfo {
  const id = `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
  const base: number[] = [];
  let packs = 0;
  const table = openSync(join(dir, `${id}.packs`), 'w', 0o600);
  try {
    for (const r of runs) {
      base.push(packs);
      packs += r.packs;
      writeAll(table, readFileSync(join(dir, `${r.id}.packs`)));
    }
  } finally {
    closeSync(table);
  }
  const merge = (ext: string, bytes: number, rewrite?: (rec: Buffer, input: number) => void): number => {
    const inputs = runs.map((r) => SortedFile.open(join(dir, `${r.id}.${ext}`), bytes));
    try {
      const total = inputs.reduce((s, f) => s + f.count, 0);
      const w = new SortedFileWriter(join(dir, `${id}.${ext}`), bytes, total);
      mergeSorted(inputs, w, rewrite);
      w.finish();
      return total;
    } finally {
      for (const f of inputs) f.close();
    }
  };
  const entries = merge('entries', ENTRY_RECORD_BYTES, (rec, input) => rec.writeUInt32LE(rec.readUInt32LE(32) + base[input]!, 32));
  merge('packids', PACK_RECORD_BYTES);
  return { id, entries, packs, files: runs.flatMap((r) => r.files) };
}

/** Where index caches live: BULWARK_CACHE_DIR, else $XDG_CACHE_HOME/bulwark, else ~/.cache/bulwark. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env, home = process.env['HOME'] ?? tmpdir()): string {
  if (env['BULWARK_CACHE_DIR']) return env['BULWARK_CACHE_DIR'];
  if (env['XDG_CACHE_HOME']) return join(env['XDG_CACHE_HOME'], 'bulwark');
  return join(home, '.cache', 'bulwark');
}

export interface CacheUpdate {
  runs: Run[];
  meta: Map<string, IndexFileMeta>;
}

/**
 * One repository's index cache folder. `update` brings it up to date with a listing of index files and
 * opens its runs; `close` closes them (and removes a private folder).
 */
export class IndexCache {
  private readonly dir: string;
  private readonly private: boolean;

  constructor(folder: string | undefined) {
    if (folder) {
      mkdirSync(folder, { recursive: true, mode: 0o700 });
      this.dir = folder;
      this.private = false;
    } else {
      this.dir = makeProcessTempDir('bulwark-index-');
      this.private = true;
    }
  }

  /** A cache folder for one repository and format, or a private one when it cannot be used. */
  static forRepository(cacheDir: string | undefined, repositoryId: string, format: number, onWarning: (m: string) => void): IndexCache {
    if (cacheDir) {
      try {
        return new IndexCache(join(cacheDir, repositoryId, `index-v${format}`));
      } catch (err) {
        onWarning(`cannot use the index cache in '${cacheDir}' (${(err as Error).message}); the index is read in full`);
      }
    }
    return new IndexCache(undefined);
  }

  private readManifest(): Manifest {
    if (this.private) return this.memoryManifest;
    try {
      const m = JSON.parse(readFileSync(join(this.dir, 'manifest.json'), 'utf8')) as Manifest;
      const runOk = (r: RunInfo): boolean =>
        typeof r === 'object' && r !== null && typeof r.id === 'string' && /^[0-9a-z]+-[0-9a-f]{12}$/.test(r.id) && Number.isSafeInteger(r.entries) && Number.isSafeInteger(r.packs) && Array.isArray(r.files) && r.files.every((f) => typeof f === 'string');
      if (m.version === MANIFEST_VERSION && Array.isArray(m.runs) && m.runs.every(runOk) && typeof m.meta === 'object' && m.meta !== null) return m;
    } catch {
      // none yet, or unreadable: start afresh
    }
    return { version: MANIFEST_VERSION, runs: [], meta: {} };
  }

  private memoryManifest: Manifest = { version: MANIFEST_VERSION, runs: [], meta: {} };

  private writeManifest(m: Manifest): void {
    if (this.private) {
      this.memoryManifest = m;
      return;
    }
    const tmp = join(this.dir, `manifest.json.${randomBytes(6).toString('hex')}`);
    writeFileSync(tmp, JSON.stringify(m), { mode: 0o600 });
    renameSync(tmp, join(this.dir, 'manifest.json'));
  }

  /**
   * Brings the cache up to date with the repository's listing of index files, reading the ones it has
   * not seen through `read` (undefined: leave this one out, it will be asked for again next time), and
   * opens the runs.
   */
  async update(names: readonly string[], read: (name: string) => Promise<IndexFile | undefined>, attempt = 1): Promise<CacheUpdate> {
    const manifest = this.readManifest();
    const listed = new Set(names);
    const kept = manifest.runs.filter((r) => r.files.every((f) => listed.has(f)));
    const dropped = manifest.runs.filter((r) => !kept.includes(r));
    const known = new Set(kept.flatMap((r) => r.files));
    const todo = names.filter((n) => !known.has(n));
    const meta: Record<string, IndexFileMeta> = {};
    for (const f of known) if (manifest.meta[f]) meta[f] = manifest.meta[f];
    let runs = [...kept];
    if (todo.length > 0) {
      const builder = new RunBuilder(this.dir);
      try {
        let next = 0;
        const worker = async (): Promise<void> => {
          for (let name = todo[next++]; name !== undefined; name = todo[next++]) {
            const file = await read(name);
            if (!file) continue;
            builder.add(name, file);
            const m: IndexFileMeta = {};
            if (file.damaged?.length) m.damaged = file.damaged;
            if (file.obsolete?.length) m.obsolete = file.obsolete;
            if (file.generation !== undefined) m.generation = file.generation;
            if (Object.keys(m).length > 0) meta[name] = m;
          }
        };
        await Promise.all(Array.from({ length: Math.min(8, todo.length) }, worker));
        if (builder.files.length > 0) runs.push(builder.finish());
        else builder.discard();
      } catch (err) {
        builder.discard();
        throw err;
      }
    }
    const superseded: string[] = [];
    runs = this.compact(runs, superseded);
    // The sort buffers and the parsed index files are garbage now: freed before the command's real work.
    if (todo.length > 0) collectGarbage();
    const changed = todo.length > 0 || dropped.length > 0 || runs.length !== kept.length;
    if (changed) {
      this.writeManifest({ version: MANIFEST_VERSION, runs, meta });
      const live = new Set(runs.map((r) => r.id));
      for (const id of [...manifest.runs.map((r) => r.id), ...superseded]) if (!live.has(id)) removeRun(this.dir, id);
      this.removeOrphans(live);
    }
    const open: Run[] = [];
    try {
      let held = 0;
      const resident = new Set<string>();
      for (const r of [...runs].sort((a, b) => a.entries - b.entries)) {
        const bytes = r.entries * ENTRY_RECORD_BYTES + r.packs * PACK_RECORD_BYTES * 2;
        if (held + bytes > RESIDENT_BYTES) break;
        held += bytes;
        resident.add(r.id);
      }
      for (const r of runs) open.push(Run.open(this.dir, r, resident.has(r.id)));
    } catch (err) {
      for (const r of open) r.close();
      if (attempt < 3) {
        // Another process merged these runs away between our reading the manifest and opening them
        // (ENOENT): read the manifest again. A damaged run (a crash, a full disk, a hand edit): the cache
        // is only a cache, so start it afresh.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.writeManifest({ version: MANIFEST_VERSION, runs: [], meta: {} });
        return this.update(names, read, attempt + 1);
      }
      throw err;
    }
    return { runs: open, meta: new Map(Object.entries(meta)) };
  }

  /** Merges the newest runs while the one before is at most 4 times their size, keeping few runs. */
  private compact(runs: RunInfo[], superseded: string[]): RunInfo[] {
    const out = [...runs].sort((a, b) => b.entries - a.entries);
    while (out.length > 1) {
      const last = out[out.length - 1]!;
      const prev = out[out.length - 2]!;
      if (prev.entries > 4 * Math.max(1, last.entries) && out.length <= 12) break;
      out.splice(out.length - 2, 2, mergeRuns(this.dir, [prev, last]));
      // Removed once the manifest no longer names them (another process may be opening them now).
      superseded.push(prev.id, last.id);
      out.sort((a, b) => b.entries - a.entries);
    }
    return out;
  }

  /** Removes run files no manifest names that a crashed process left (old enough not to be in use). */
  private removeOrphans(live: Set<string>): void {
    if (this.private) return;
    const now = Date.now();
    for (const name of readdirSync(this.dir)) {
      const m = /^([0-9a-z]+-[0-9a-f]{12})\./.exec(name);
      if (!m || live.has(m[1]!)) continue;
      try {
        if (now - statSync(join(this.dir, name)).mtimeMs > ORPHAN_AGE_MS) unlinkSync(join(this.dir, name));
      } catch {
        // gone already
      }
    }
  }

  close(): void {
    if (this.private) rmSync(this.dir, { recursive: true, force: true });
  }
}
