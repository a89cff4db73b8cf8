// A small pool of worker threads for sealing and opening blobs. Requests go to the least-busy worker;
// callers bound how much they keep in flight (the repository does), so memory stays flat.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { IntegrityError } from './crypto.js';
import { BulwarkError } from '../util/errors.js';
import type { Sealer } from './sealer.js';

/** Workers collect young garbage after this many bytes of buffers (util/gc-pacer.js). */
const GC_EVERY_BYTES = 16 * 1024 * 1024;
/** A sealed blob is at most this much longer than its plaintext (format 2's 40 bytes of overhead). */
const SEAL_SLACK = 64;
/** Transfer buffers kept for reuse, at most. */
const POOL_BYTES = 8 * 1024 * 1024;
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
  /** `out` is the reply's buffer; the blob's result is the part `r` names. */
  done(out: Buffer, r: BatchDone): void;
  reject(e: Error): void;
}

interface Batch {
  items: BatchItem[];
  /**
   * The items' bytes, copied in as they are queued (callers may reuse their buffers at once: the
   * archiver does). Reused; each batch sends a copy of just its bytes.
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

export interface SealResult {
  sealed: Buffer;
  /** Plaintext length when stored compressed, 0 when stored raw. */
  ulen: number;
  /** Hands the memory of `sealed` back for reuse; `sealed` must not be used after. */
  release(): void;
}

/** Rounds up to one of eight sizes per power of two: a freed buffer fits most later requests of its class. */
function sizeClass(n: number): number {
  const step = 2 ** (Math.floor(Math.log2(n)) - 3);
  return Math.ceil(n / step) * step;
}

/**
 * ArrayBuffers that travel to a worker and back. A blob's bytes go out in one and its sealed form comes
 * back in the same memory, which is reused for the next blob: without it every blob leaves a dead
 * buffer behind on the main thread, and V8 lets tens of MB of those pile up before it collects them.
 */
class TransferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private bytes = 0;

  take(min: number): ArrayBuffer {
    if (min < POOL_MIN_BYTES) return new ArrayBuffer(min);
    const cap = sizeClass(min);
    const ab = this.free.get(cap)?.pop();
    if (!ab) return new ArrayBuffer(cap);
    this.bytes -= cap;
    return ab;
  }

  give(ab: ArrayBuffer): void {
    // A detached buffer (sent away again) has length 0; one of another size class was not ours.
    if (ab.byteLength < POOL_MIN_BYTES || ab.byteLength !== sizeClass(ab.byteLength) || this.bytes + ab.byteLength > POOL_BYTES) return;
    let list = this.free.get(ab.byteLength);
    if (!list) this.free.set(ab.byteLength, (list = []));
    list.push(ab);
    this.bytes += ab.byteLength;
  }
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
          meta: { len: data.byteLength, compress, ad },
          what: 'seal blob',
          done: (out, r) => resolve({ sealed: out.subarray(r.at, r.at + r.len), ulen: r.ulen ?? 0, release: () => undefined }),
          reject,
        });
      });
    }
    // The worker writes the sealed blob back into the buffer it was sent in when it fits (it always
    // does with this slack), and sends that buffer back.
    const out = new Uint8Array(this.pool.take(data.byteLength + SEAL_SLACK), 0, data.byteLength);
    out.set(data);
    const r = await this.post({ op: 'seal', data: out, compress, ad }, 'seal blob');
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
    const r = await this.post({ op: 'open', data: whole ? sealed : owned(sealed), ulen, ad }, what);
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
        meta: { len: sealed.byteLength, ulen, ad },
        what,
        done: (out, r) => resolve({ plain: out.subarray(r.at, r.at + r.len), id: r.id! }),
        reject,
      });
    });
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
    const data = b.staging.slice(0, b.bytes);
    b.items = [];
    b.bytes = 0;
    this.post({ op, data, items: items.map((it) => it.meta) }, op === 'openBatch' ? 'open blobs' : 'seal blobs').then(
      (r) => {
        const out = Buffer.from(r.out!.buffer, r.out!.byteOffset, r.out!.byteLength);
        items.forEach((it, i) => {
          const res = r.results![i]!;
          if ('error' in res) it.reject(workerError(res.error, it.what, op === 'openBatch'));
          else it.done(out, res);
        });
      },
      (err: Error) => {
        for (const it of items) it.reject(err);
      },
    );
  }

  private post(msg: Record<string, unknown> & { data: Uint8Array }, what: string): Promise<WorkerReply> {
    if (this.closed) return Promise.reject(new Error('blob workers are closed'));
    if (this.slots.length === 0) this.start();
    let slot = this.slots[0]!;
    for (const s of this.slots) if (s.busy < slot.busy) slot = s;
    const seq = ++this.seq;
    slot.busy++;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject, what, opening: msg.op !== 'seal' && msg.op !== 'sealBatch' });
      slot.worker.postMessage({ ...msg, seq }, [msg.data.buffer as ArrayBuffer]);
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
