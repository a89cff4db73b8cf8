// Coalesced blob reads for restores. A restore knows the blobs it will need next (a file's or a disk's
// blob list, in order), and a backup wrote most of them next to each other in a few packs. Reading each
// blob with its own ranged request costs a round trip per blob (four for SFTP: stat, open, read,
// close), which leaves a remote store idle most of the time. Here the blobs asked for are queued ahead
// of the consumer, neighbours of one pack are merged into one ranged read (bounded in size, small gaps
// read through), and up to `connections` reads run at once. Memory is bounded by a byte budget charged
// for every blob from the moment it is queued until its consumer has taken it.
//
// Integrity is not this module's business: every blob cut from a range goes through the source's
// open(), the same decryption and hash check as any other read, and anything that fails here (a
// short range, a blob that does not verify) is read again through loadBlob, the careful path that
// tries the other copies and marks damaged ones, so errors and repairs are exactly those of a plain read.
import { Budget } from '../util/budget.js';
import { Lease } from '../util/lease.js';
import { orderedMap } from '../util/ordered.js';

export interface BlobLocation {
  pack: string;
  offset: number;
  length: number;
  ulen: number;
}

export interface BlobReaderSource {
  /** Where a read would find the blob first, or undefined to leave it to loadBlob alone. */
  locate(id: string): BlobLocation | undefined;
  /** `into`, when given, is a buffer the source may read the range into instead of allocating. */
  loadRange(pack: string, offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** Opens and verifies a blob's sealed bytes cut from a range. */
  open(id: string, at: BlobLocation, sealed: Buffer): Promise<Buffer>;
  /**
   * Opens and verifies every blob of a range at once, when the source can: per blob its plaintext, or
   * undefined for one to read again on its own. The range may be handed over (unusable afterwards). The
   * plaintexts share memory that release() hands back for reuse.
   */
  openRun?(range: Buffer, start: number, blobs: { id: string; at: BlobLocation }[]): Promise<{ plains: (Buffer | undefined)[]; release(): void }>;
  /** Memory to read a range into for openRun(), handed back with release() once openRun() settled. */
  rangeBuffer?(length: number): { buffer: Buffer; release(): void };
  /** Reads one blob on its own, with every check and every fallback of a plain read. */
  loadBlob(id: string): Promise<Buffer>;
}

export interface BlobReaderOptions {
  /** Ranged reads in flight at once. */
  connections: number;
  /** Bytes of blobs queued, being read, or read and not yet taken by their consumer. */
  memoryBytes: number;
  /** Largest range one read covers. */
  maxRunBytes?: number;
  /** Largest stretch of unwanted bytes read through between two wanted blobs. */
  maxGapBytes?: number;
}

/**
 * Largest run: its range, and the plaintexts of its blobs, which are larger when they compress (a
 * run's plaintexts are opened into one piece of memory). Long enough to amortise a remote round trip,
 * short enough to pipeline.
 */
export const MAX_RUN_BYTES = 8 * 1024 * 1024;
/**
 * Largest run from a local store. Its reads are cheap, and what a restore holds is about two runs: with
 * 4 MiB the bench's tree restore peaked at 159–168 MB instead of 180–184, in the same time (images too).
 */
export const LOCAL_MAX_RUN_BYTES = 4 * 1024 * 1024;
export const MAX_GAP_BYTES = 256 * 1024;
/** Charged per blob on top of its bytes, so that a list of tiny blobs cannot queue without end. */
const ITEM_OVERHEAD = 4096;

/**
 * Memory for a restore's blobs against a backend with this many connections. A local store answers
 * in microseconds from the page cache: two ranges ahead keep the writer busy (the bench's image and
 * tree restores were as fast with 16 MiB as with 48, and 40 MB smaller; then as fast with two 4 MiB
 * ranges as with two of 8 MiB).
 */
export function restoreMemoryBytes(connections: number, local = false): number {
  if (local) return 2 * LOCAL_MAX_RUN_BYTES;
  // Enough for every connection to have one full range in flight and the next being gathered.
  return Math.min(128 * 1024 * 1024, Math.max(32 * 1024 * 1024, Math.ceil(1.5 * connections) * MAX_RUN_BYTES));
}

/** What a blob takes once opened: its plaintext length, or its stored length when stored raw (a little more). */
function plainBytes(at: BlobLocation): number {
  return Math.max(at.length, at.ulen);
}

interface Item {
  id: string;
  at: BlobLocation | undefined;
  cost: number;
  result: Promise<Buffer>;
  resolve(b: Buffer): void;
  reject(err: unknown): void;
  /** Its consumer went away: not worth reading any more. */
  cancelled: boolean;
  /** Set when its bytes lie in a run's shared memory: dropped once its consumer is done with them. */
  lease?: Lease;
}

interface Run {
  /** Empty for a blob read on its own through loadBlob. */
  pack: string;
  start: number;
  end: number;
  /** Plaintext bytes of its blobs: what opening the run takes, more than the range when they compress. */
  plain: number;
  items: Item[];
}

class Cancelled extends Error {}

export class BlobReader {
  private readonly budget: Budget;
  private readonly maxRun: number;
  private readonly maxGap: number;
  /** Runs not read yet, in the order of their first blob: the consumers need them in that order. */
  private readonly queue: Run[] = [];
  /** Per pack, the queued run later blobs may still join. */
  private readonly open = new Map<string, Run>();
  private reading = 0;
  private scheduled = false;

  constructor(
    private readonly src: BlobReaderSource,
    private readonly opts: BlobReaderOptions,
  ) {
    this.budget = new Budget(opts.memoryBytes);
    this.maxRun = opts.maxRunBytes ?? MAX_RUN_BYTES;
    this.maxGap = opts.maxGapBytes ?? MAX_GAP_BYTES;
  }

  /**
   * The plaintexts of `ids`, in order. Several lists may be read at once (the files of a restore):
   * they share the budget and the reads, and blobs of different lists in one pack share ranges too.
   * Each buffer is the consumer's only until it asks for the next one (or stops): its memory is then
   * reused.
   */
  async *blobs(ids: Iterable<string> | AsyncIterable<string>): AsyncGenerator<Buffer> {
    const items: Item[] = [];
    let fed = false;
    let feedError: unknown;
    let stop = false;
    let wake: (() => void) | undefined;
    const feed = async (): Promise<void> => {
      try {
        for await (const id of ids) {
          if (stop) break;
          const at = this.src.locate(id);
          const cost = (at ? plainBytes(at) : 0) + ITEM_OVERHEAD;
          await this.budget.acquire(cost);
          if (stop) {
            this.budget.release(cost);
            break;
          }
          items.push(this.add(id, at, cost));
          wake?.();
        }
      } catch (err) {
        feedError = err;
      } finally {
        fed = true;
        wake?.();
      }
    };
    void feed();
    try {
      for (;;) {
        const item = items[0];
        if (!item) {
          if (fed) {
            if (feedError !== undefined) throw feedError;
            return;
          }
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
          continue;
        }
        const data = await item.result;
        items.shift();
        try {
          yield data;
        } finally {
          this.budget.release(item.cost);
          item.lease?.drop();
        }
      }
    } finally {
      stop = true;
      for (const it of items.splice(0)) {
        it.cancelled = true;
        const release = (): void => {
          this.budget.release(it.cost);
          it.lease?.drop();
        };
        it.result.then(release, release);
      }
    }
  }

  /**
   * Queues a blob, joining the open run of its pack when it lies inside it or near either end: a
   * backup reads several files at once, so a pack's blobs are not in the order a restore asks for them.
   */
  private add(id: string, at: BlobLocation | undefined, cost: number): Item {
    let resolve!: (b: Buffer) => void;
    let reject!: (err: unknown) => void;
    const result = new Promise<Buffer>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    result.catch(() => undefined); // surfaced to the consumer that awaits it
    const item: Item = { id, at, cost, result, resolve, reject, cancelled: false };
    if (!at || at.length > this.maxRun) {
      this.queue.push({ pack: '', start: 0, end: 0, plain: 0, items: [item] });
    } else {
      const end = at.offset + at.length;
      const r = this.open.get(at.pack);
      const start = r ? Math.min(r.start, at.offset) : 0;
      const last = r ? Math.max(r.end, end) : 0;
      const plain = plainBytes(at);
      if (r && at.offset <= r.end + this.maxGap && end >= r.start - this.maxGap && last - start <= this.maxRun && r.plain + plain <= this.maxRun) {
        r.start = start;
        r.end = last;
        r.plain += plain;
        r.items.push(item);
      } else {
        const run: Run = { pack: at.pack, start: at.offset, end, plain, items: [item] };
        this.queue.push(run);
        this.open.set(at.pack, run);
      }
    }
    // Not at once: every consumer queues what it can in this turn first, so the first reads are
    // ranges too, not single blobs.
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.pump();
      });
    }
    return item;
  }

  /**
   * Starts reads, oldest run first. A run that may still grow waits while a few reads are in flight:
   * sent at once whenever a connection is free, runs would stay as short as what arrived since the
   * last read ended, and a store pays per request (Swift's proxy most of all).
   */
  private pump(): void {
    const eager = Math.max(1, Math.floor(this.opts.connections / 4));
    while (this.reading < this.opts.connections && this.queue.length > 0) {
      const at = this.reading < eager ? 0 : this.queue.findIndex((r) => r.pack === '' || this.open.get(r.pack) !== r || Math.max(r.end - r.start, r.plain) >= this.maxRun / 2);
      if (at < 0) break;
      const run = this.queue.splice(at, 1)[0]!;
      if (this.open.get(run.pack) === run) this.open.delete(run.pack);
      const live = run.items.filter((it) => {
        if (it.cancelled) it.reject(new Cancelled());
        return !it.cancelled;
      });
      if (live.length === 0) continue;
      this.reading++;
      void this.read(run, live).finally(() => {
        this.reading--;
        this.pump();
      });
    }
  }

  /** Reads a run's range; its blobs are opened after the read slot is given back. */
  private async read(run: Run, items: Item[]): Promise<void> {
    if (run.pack === '') {
      await this.src.loadBlob(items[0]!.id).then(items[0]!.resolve, items[0]!.reject);
      return;
    }
    let range: Buffer | undefined;
    const length = run.end - run.start;
    const into = this.src.openRun ? this.src.rangeBuffer?.(length) : undefined;
    try {
      range = await this.src.loadRange(run.pack, run.start, length, into?.buffer);
    } catch {
      // Read again blob by blob below: their own errors name their own ranges and copies.
    }
    if (range && this.src.openRun) {
      void this.openRun(range, run.start, items).finally(() => into?.release());
      return;
    }
    into?.release();
    const alone = this.aloneQueue();
    for (const it of items) {
      if (!range) {
        void alone(it);
        continue;
      }
      const at = it.at!;
      const cut = range.subarray(at.offset - run.start, at.offset - run.start + at.length);
      // A cut that spans the whole read buffer is handed to a worker without a copy, which detaches the
      // buffer; when the run asks for the same blob more than once (a file that repeats a chunk), the
      // others would then cut from a detached buffer. Those get a copy.
      const sealed = items.length > 1 && cut.byteLength === range.buffer.byteLength ? Buffer.from(cut) : cut;
      // A throw before the promise exists must still settle the item (else its consumer waits for ever).
      Promise.resolve()
        .then(() => this.src.open(it.id, at, sealed))
        .then(it.resolve, () => alone(it));
    }
  }

  /** Opens a run's blobs in one go (the source's openRun); those that do not open are read again alone. */
  private async openRun(range: Buffer, start: number, items: Item[]): Promise<void> {
    const alone = this.aloneQueue();
    let opened: Awaited<ReturnType<NonNullable<BlobReaderSource['openRun']>>> | undefined;
    try {
      opened = await this.src.openRun!(range, start, items.map((it) => ({ id: it.id, at: it.at! })));
    } catch {
      // Each is read again on its own below, and fails with its own error if it must.
    }
    const lease = opened && new Lease(opened.plains.filter((p) => p !== undefined).length, opened.release);
    items.forEach((it, i) => {
      const plain = opened?.plains[i];
      if (plain === undefined) {
        void alone(it);
        return;
      }
      it.lease = lease;
      it.resolve(plain);
    });
  }

  /**
   * Reads items again through loadBlob, one at a time: a pack that is gone must not turn into a burst of
   * failing reads.
   */
  private aloneQueue(): (it: Item) => Promise<void> {
    let fallback = Promise.resolve();
    return (it) => {
      fallback = fallback.then(() => (it.cancelled ? it.reject(new Cancelled()) : this.src.loadBlob(it.id).then(it.resolve, it.reject)));
      return fallback;
    };
  }
}

/** What a restore needs of a repository to read blob lists: a coalescing reader when it has one. */
export interface BlobListSource {
  loadBlob(type: 'data', id: string): Promise<Buffer>;
  blobReader?(): BlobReader;
}

/** Blobs fetched ahead of their consumer when the repository cannot coalesce (test doubles). */
const PLAIN_PREFETCH = 8;

/** A reader for `repo`: its own coalescing one, or plain reads a few blobs ahead. */
export function blobReaderOf(repo: BlobListSource): Pick<BlobReader, 'blobs'> {
  if (repo.blobReader) return repo.blobReader();
  return { blobs: (ids) => orderedMap(ids, PLAIN_PREFETCH, (id) => repo.loadBlob('data', id)) };
}
