// A small pool of worker threads for sealing and opening blobs. Requests go to the least-busy worker;
// callers bound how much they keep in flight (the repository does), so memory stays flat.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { IntegrityError } from './crypto.js';
import { BulwarkError } from '../util/errors.js';
import { Lease } from '../util/lease.js';
import type { Sealer } from './sealer.js';

/** Workers collect young garbage after this many bytes of buffers (util/gc-pacer.js). */
const GC_EVERY_BYTES = 16 * 1024 * 1024;
/** A sealed blob is at most this much longer than its plaintext (format 2's 40 bytes of overhead). */
const SEAL_SLACK = 64;
/**
 * Transfer buffers kept for reuse, at most: a restore's read ranges and opened runs (two or three of
 * 8 MiB each in flight) come back here. Fresh memory is what costs: each new page is a fault, and on a
 * virtual machine whose free memory goes back to the host a fault costs 15 µs (docs/performance.md).
 */
const POOL_BYTES = 64 * 1024 * 1024;
/** Smaller buffers are made to measure and not kept: a pool of small ones would hold odd sizes. */
const POOL_MIN_BYTES = 64 * 1024;

/** Blobs up to this size are sealed or opened in batches: one message each way for many. */
const BATCH_BLOB_BYTES = 64 * 1024;
/** A batch is sent once it holds this many bytes (or at the end of the event loop's turn). */
const BATCH_BYTES = 256 * 1024;

export interface Opened {
  plain: Buffer;
  /** Blob id (keyed BLAKE3) of the plaintext, computed in the worker. */
  id: string;
}

type BatchOp = 'openBatch' | 'sealBatch';

/** One blob's part of a batch reply: where its result is in the reply's buffer (and its id, or its ulen). */
interface BatchDone {
  at: number;
  len: number;
  id?: string;
  ulen?: number;
}
type BatchResult = BatchDone | { error: string };

interface BatchItem {
  /** What the worker needs besides the bytes (lengths, associated data). */
  meta: Record<string, unknown>;
  what: string;
  /**
   * `out` is the reply's buffer; the blob's result is the part `r` names. `drop`: this item is done
   * with `out` (a sealed batch's buffer goes back to the pool once every item dropped it).
   */
  done(out: Buffer, r: BatchDone, drop: () => void): void;
  reject(e: Error): void;
}

interface Batch {
  items: BatchItem[];
  /**
   * The items' bytes, copied in as they are queued (callers may reuse their buffers at once: the
   * archiver does). Kept here; each batch sends its bytes in a pooled buffer of their size.
   */
  staging: Uint8Array;
  bytes: number;
  scheduled: boolean;
}

interface Pending {
  resolve(v: WorkerReply): void;
  reject(e: Error): void;
  what: string;
  opening: boolean;
}

interface WorkerReply {
  seq: number;
  sealed?: Uint8Array;
  ulen?: number;
  plain?: Uint8Array;
  /** Blob id (keyed BLAKE3) of the opened plaintext. */
  id?: string;
  /** Of a batch: every blob's result side by side, and where each is in it. */
  out?: Uint8Array;
  /** Of a run: the range it was sent, given back. */
  data?: Uint8Array;
  /** Of a run: per blob where its plaintext is in `out` and its length (-1: see errors). */
  spans?: Float64Array;
  /** Of a run: every blob's id (64 hex digits each) in one string. */
  ids?: string;
  /** Of a run: the error of each blob that did not open, by its position. */
  errors?: Record<number, string>;
  results?: BatchResult[];
  error?: string;
}

/** A worker's error message as the error callers expect: failing to open a blob means it is damaged. */
function workerError(message: string, what: string, opening: boolean): Error {
  if (message.includes('authenticate')) return new IntegrityError(what);
  return opening ? new BulwarkError('repository-corrupt', `${what}: ${message}`) : new Error(`${what}: ${message}`);
}

interface Slot {
  worker: Worker;
  busy: number;
}

/** A blob cut from a range: where its sealed bytes are in the range, and what opening it needs. */
export interface RunItem {
  at: number;
  len: number;
  /** Plaintext length when stored compressed, 0 when stored raw. */
  ulen: number;
  ad: Uint8Array | null;
  what: string;
}

export interface RunOpened {
  /** Per item: its plaintext (a view of one buffer shared by the run) and blob id, or why it did not open. */
  results: (Opened | { error: Error })[];
  /** Hands the plaintexts' memory back for reuse; none of them may be used after. */
  release(): void;
}

export interface SealResult {
  sealed: Buffer;
  /** Plaintext length when stored compressed, 0 when stored raw. */
  ulen: number;
  /** Hands the memory of `sealed` back for reuse; `sealed` must not be used after. */
  release(): void;
}

/**
 * ArrayBuffers that travel to a worker and back: a blob's bytes go out in one and its sealed form comes
 * back in the same memory; a restore's ranges go out and come back with the plaintexts of a run in
 * another. Each is reused for the next request it is large enough for: fresh memory costs a page fault
 * per 4 KiB on first touch, and dead buffers pile up on the main thread until V8 collects them.
 *
 * New buffers are made a power of two long, so a freed one serves any later request up to its size;
 * only the pages a request touches count towards memory. Any buffer that comes back from a worker may
 * be kept: a transferred buffer is unusable everywhere else.
 */
class TransferPool {
  /** Free buffers, smallest first. */
  private readonly free: ArrayBuffer[] = [];
  private bytes = 0;
  /** Buffers handed out and not sent to a worker yet: only these may be transferred without a copy. */
  private readonly lent = new WeakSet<ArrayBuffer>();

  /** The smallest free buffer of at least `min` bytes, or a new one. */
  take(min: number): ArrayBuffer {
    if (min < POOL_MIN_BYTES) return new ArrayBuffer(min);
    const i = this.free.findIndex((ab) => ab.byteLength >= min);
    let ab: ArrayBuffer;
    if (i >= 0) {
      ab = this.free.splice(i, 1)[0]!;
      this.bytes -= ab.byteLength;
    } else ab = new ArrayBuffer(2 ** Math.ceil(Math.log2(min)));
    this.lent.add(ab);
    return ab;
  }

  /** Whether `ab` came from take() and is still ours to send away. */
  owns(ab: ArrayBufferLike): boolean {
    return this.lent.has(ab as ArrayBuffer);
  }

  /** Keeps `ab` for reuse; when the pool is over its size, the smallest buffers go first. */
  give(ab: ArrayBuffer): void {
    this.lent.delete(ab);
    // A detached buffer (sent away again) has length 0.
    if (ab.byteLength < POOL_MIN_BYTES || ab.byteLength > POOL_BYTES) return;
    let at = this.free.findIndex((f) => f.byteLength >= ab.byteLength);
    if (at < 0) at = this.free.length;
    this.free.splice(at, 0, ab);
    this.bytes += ab.byteLength;
    while (this.bytes > POOL_BYTES) this.bytes -= this.free.shift()!.byteLength;
  }
}

/**
 * Associated data as it travels to a worker: text, not a Buffer. A small Buffer is a view of Node's
 * shared 8 KiB pool, and posting a view clones its whole underlying buffer: 8 KiB per blob.
 */
function adWire(ad: Uint8Array | null): string | null {
  return ad ? Buffer.from(ad.buffer, ad.byteOffset, ad.byteLength).toString('latin1') : null;
}

/**
 * A copy of exactly these bytes in an ArrayBuffer of its own, to transfer to a worker. Posting a view
 * instead would clone its whole underlying buffer (a 16 MiB read buffer for every small chunk).
 */
function owned(view: Uint8Array): Uint8Array {
  const copy = new Uint8Array(view.byteLength);
  copy.set(view);
  return copy;
}

export class BlobWorkers {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private seq = 0;
  private closed = false;
  private readonly pool = new TransferPool();
  private readonly batches: Record<BatchOp, Batch> = {
    openBatch: { items: [], staging: new Uint8Array(BATCH_BYTES + BATCH_BLOB_BYTES), bytes: 0, scheduled: false },
    sealBatch: { items: [], staging: new Uint8Array(BATCH_BYTES + BATCH_BLOB_BYTES), bytes: 0, scheduled: false },
  };

  constructor(
    private readonly sealer: Sealer,
    private readonly idKey: Buffer,
    private readonly zstdLevel: number,
    private threads = Math.max(1, Math.min(availableParallelism(), 8)),
  ) {}

  /** Workers start on first use: commands that seal and open nothing (an unchanged backup, ls) never pay for them. */
  private start(): void {
    const url = new URL('./blob-worker.js', import.meta.url);
    for (let i = 0; i < this.threads; i++) {
      const worker = new Worker(url, {
        workerData: { format: this.sealer.version, encKey: new Uint8Array(this.sealer.workerKey), idKey: new Uint8Array(this.idKey), zstdLevel: this.zstdLevel, gcEveryBytes: GC_EVERY_BYTES },
      });
      worker.unref();
      const slot: Slot = { worker, busy: 0 };
      worker.on('message', (msg: WorkerReply) => {
        slot.busy--;
        const p = this.pending.get(msg.seq);
        if (!p) return;
        this.pending.delete(msg.seq);
        if (msg.error !== undefined) p.reject(workerError(msg.error, p.what, p.opening));
        else p.resolve(msg);
      });
      worker.on('error', (err) => this.failAll(err));
      this.slots.push(slot);
    }
  }

  /**
   * One core fewer, for callers whose own thread does CPU work too (a file backup chunks and hashes
   * on the main thread): on two cores, two workers beside it were slower than one and cost a worker's
   * memory. Only before the workers start.
   */
  leaveCoreForCaller(): void {
    if (this.slots.length === 0) this.threads = Math.max(1, Math.min(this.threads, availableParallelism() - 1));
  }

  get size(): number {
    return this.threads;
  }

  /**
   * Compresses (when asked and worthwhile) and seals, with `ad` as associated data (format 2). The
   * caller keeps its buffer: the bytes are copied.
   */
  async seal(data: Uint8Array, compress: boolean, ad: Uint8Array | null): Promise<SealResult> {
    // Small blobs (a tree of small files makes tens of thousands) go in batches: a message each way
    // per blob cost more than sealing it.
    if (data.byteLength <= BATCH_BLOB_BYTES) {
      return new Promise((resolve, reject) => {
        this.enqueue('sealBatch', data, {
          meta: { len: data.byteLength, compress, ad: adWire(ad) },
          what: 'seal blob',
          done: (out, r, drop) => resolve({ sealed: out.subarray(r.at, r.at + r.len), ulen: r.ulen ?? 0, release: drop }),
          reject,
        });
      });
    }
    // The worker writes the sealed blob back into the buffer it was sent in when it fits (it always
    // does with this slack), and sends that buffer back.
    const out = new Uint8Array(this.pool.take(data.byteLength + SEAL_SLACK), 0, data.byteLength);
    out.set(data);
    const r = await this.post({ op: 'seal', data: out, compress, ad: adWire(ad) }, 'seal blob');
    const s = r.sealed!;
    const ab = s.buffer as ArrayBuffer;
    return { sealed: Buffer.from(ab, s.byteOffset, s.byteLength), ulen: r.ulen ?? 0, release: () => this.pool.give(ab) };
  }

  /**
   * Decrypts and decompresses; also returns the plaintext's blob id, computed in the worker. `sealed`
   * is handed over: when it is a whole buffer of its own (a fresh read) it goes to the worker without a
   * copy and is unusable afterwards.
   */
  async open(sealed: Uint8Array, ulen: number, what: string, ad: Uint8Array | null): Promise<Opened> {
    const whole = sealed.byteOffset === 0 && sealed.byteLength === sealed.buffer.byteLength && sealed.buffer instanceof ArrayBuffer;
    const r = await this.post({ op: 'open', data: whole ? sealed : owned(sealed), ulen, ad: adWire(ad) }, what);
    const p = r.plain!;
    return { plain: Buffer.from(p.buffer, p.byteOffset, p.byteLength), id: r.id! };
  }

  /**
   * Opens a small blob like open(), in a batch with the others asked for in the same turn of the event
   * loop: a restore of a tree of small files opens tens of thousands, and a message each way per blob
   * would cost more than opening it.
   */
  openSmall(sealed: Uint8Array, ulen: number, what: string, ad: Uint8Array | null): Promise<Opened> {
    if (sealed.byteLength > BATCH_BLOB_BYTES) return this.open(sealed, ulen, what, ad);
    return new Promise((resolve, reject) => {
      this.enqueue('openBatch', sealed, {
        meta: { len: sealed.byteLength, ulen, ad: adWire(ad) },
        what,
        // Callers keep a plaintext as long as they like (loadBlob's contract): this buffer is not reused.
        done: (out, r) => resolve({ plain: out.subarray(r.at, r.at + r.len), id: r.id! }),
        reject,
      });
    });
  }

  /**
   * A buffer of at least `length` bytes to read a range into, for openRun(): it travels to the worker
   * and back without a copy, and is kept for the next range.
   */
  rangeBuffer(length: number): Buffer {
    return Buffer.from(this.pool.take(length), 0, length);
  }

  /**
   * Opens every blob cut from one read range, in one message: a restore reads ranges of many blobs,
   * and a message, a copy and a fresh buffer per blob cost more than opening small ones. The range is
   * handed over (unusable afterwards); the plaintexts come back side by side in one pooled buffer,
   * which release() hands back once the caller is done with all of them.
   */
  async openRun(range: Buffer, items: RunItem[]): Promise<RunOpened> {
    let data: Uint8Array = range;
    if (!this.pool.owns(range.buffer) && !(range.byteOffset === 0 && range.byteLength === range.buffer.byteLength && range.buffer instanceof ArrayBuffer)) {
      data = new Uint8Array(this.pool.take(range.byteLength), 0, range.byteLength);
      data.set(range);
    }
    const outBytes = items.reduce((n, it) => n + (it.ulen > 0 ? it.ulen : it.len), 0);
    const out = new Uint8Array(this.pool.take(Math.max(1, outBytes)), 0, outBytes);
    // The items travel packed in two typed arrays, and their results come back the same way: a run of
    // small blobs holds hundreds, and cloning an object (and its associated data) each way per blob cost
    // the main thread as much as the rest of the message.
    const meta = new Float64Array(items.length * 4);
    const ads = new Uint8Array(items.reduce((n, it) => n + (it.ad?.length ?? 0), 0));
    let adAt = 0;
    items.forEach((it, i) => {
      meta.set([it.at, it.len, it.ulen, it.ad ? it.ad.length : -1], i * 4);
      if (it.ad) ads.set(it.ad, adAt);
      adAt += it.ad?.length ?? 0;
    });
    const r = await this.post({ op: 'openRun', data, out, meta, ads }, 'open blobs', [data.buffer as ArrayBuffer, out.buffer as ArrayBuffer, meta.buffer, ads.buffer]);
    this.pool.give(r.data!.buffer as ArrayBuffer);
    const ab = r.out!.buffer as ArrayBuffer;
    const whole = Buffer.from(ab, r.out!.byteOffset, r.out!.byteLength);
    const spans = r.spans!;
    return {
      results: items.map((it, i) => {
        const len = spans[i * 2 + 1]!;
        if (len < 0) return { error: workerError(r.errors![i] ?? 'not opened', it.what, true) };
        const at = spans[i * 2]!;
        return { plain: whole.subarray(at, at + len), id: r.ids!.slice(i * 64, i * 64 + 64) };
      }),
      release: () => this.pool.give(ab),
    };
  }

  /** Adds to a batch; it goes when full, or once this turn of the event loop has queued what it will. */
  private enqueue(op: BatchOp, bytes: Uint8Array, item: BatchItem): void {
    if (this.closed) {
      item.reject(new Error('blob workers are closed'));
      return;
    }
    const b = this.batches[op];
    b.staging.set(bytes, b.bytes);
    b.bytes += bytes.byteLength;
    b.items.push(item);
    if (b.bytes >= BATCH_BYTES) this.flush(op);
    else if (!b.scheduled) {
      b.scheduled = true;
      setImmediate(() => {
        b.scheduled = false;
        this.flush(op);
      });
    }
  }

  private flush(op: BatchOp): void {
    const b = this.batches[op];
    const items = b.items;
    if (items.length === 0) return;
    // The bytes go in a pooled buffer of their size, which comes back with the reply; a sealed batch's
    // output goes in one too, with room for each seal's overhead. A batch per event-loop turn, made
    // fresh each time, was tens of MB of dead buffers on both threads.
    const data = new Uint8Array(this.pool.take(b.bytes), 0, b.bytes);
    data.set(b.staging.subarray(0, b.bytes));
    const sealing = op === 'sealBatch';
    const out = sealing ? new Uint8Array(this.pool.take(b.bytes + items.length * SEAL_SLACK)) : undefined;
    b.items = [];
    b.bytes = 0;
    const transfer = [data.buffer as ArrayBuffer, ...(out ? [out.buffer as ArrayBuffer] : [])];
    this.post({ op, data, out, items: items.map((it) => it.meta) }, sealing ? 'seal blobs' : 'open blobs', transfer).then(
      (r) => {
        this.pool.give(r.data!.buffer as ArrayBuffer);
        const ab = r.out!.buffer as ArrayBuffer;
        const lease = new Lease(items.length, () => {
          if (sealing) this.pool.give(ab);
        });
        const drop = () => lease.drop();
        const reply = Buffer.from(ab, r.out!.byteOffset, r.out!.byteLength);
        items.forEach((it, i) => {
          const res = r.results![i]!;
          if ('error' in res) {
            drop();
            it.reject(workerError(res.error, it.what, !sealing));
          } else it.done(reply, res, drop);
        });
      },
      (err: Error) => {
        for (const it of items) it.reject(err);
      },
    );
  }

  private post(msg: Record<string, unknown> & { data: Uint8Array }, what: string, transfer: ArrayBuffer[] = [msg.data.buffer as ArrayBuffer]): Promise<WorkerReply> {
    if (this.closed) return Promise.reject(new Error('blob workers are closed'));
    if (this.slots.length === 0) this.start();
    let slot = this.slots[0]!;
    for (const s of this.slots) if (s.busy < slot.busy) slot = s;
    const seq = ++this.seq;
    slot.busy++;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject, what, opening: msg.op !== 'seal' && msg.op !== 'sealBatch' });
      slot.worker.postMessage({ ...msg, seq }, transfer);
    });
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failAll(new Error('blob workers closed'));
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
