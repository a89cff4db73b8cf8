// A small pool of worker threads for sealing and opening blobs. Requests go to the least-busy worker;
// callers bound how much they keep in flight (the repository does), so memory stays flat.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { IntegrityError } from './crypto.js';
import { BulwarkError } from '../util/errors.js';
import { Lease } from '../util/lease.js';
import { SlabAllocator } from './slab.js';
import type { Sealer } from './sealer.js';

/** Workers collect young garbage after this many bytes of buffers (util/gc-pacer.js). */
const GC_EVERY_BYTES = 16 * 1024 * 1024;
/** A sealed blob is at most this much longer than its plaintext (format 2's 40 bytes of overhead). */
const SEAL_SLACK = 64;
/**
 * Transfer memory: one slab shared with the workers, from which every blob, batch and restore range
 * going to a worker and every result coming back is carved (docs/performance.md, Memory). Its size is
 * the most this memory can ever take, by construction; a request the slab cannot serve at that moment
 * (a restore's run that decompresses to more) gets memory of its own, freed once used.
 */
const SLAB_BYTES = 32 * 1024 * 1024;

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
  /** Of a seal that did not fit where it was sent: the sealed blob in a buffer of its own. */
  sealed?: Uint8Array;
  /** Of a seal: where the sealed blob is in the memory it was sent in, and how long. */
  at?: number;
  len?: number;
  ulen?: number;
  plain?: Uint8Array;
  /** Blob id (keyed BLAKE3) of the opened plaintext. */
  id?: string;
  /** Of a batch or a run: every blob's result side by side (absent when sent in the slab: still ours). */
  out?: Uint8Array;
  /** Of a seal: the memory it was sent, given back when it was transferred rather than shared. */
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

/** Transfer memory lent for one request: `bytes` is as long as was asked for. */
interface Piece {
  bytes: Uint8Array;
  /** In the slab: goes to a worker without a copy or a transfer, and stays usable here. */
  shared: boolean;
  /** Hands the memory back (the first call; later ones do nothing). Nothing may use `bytes` after. */
  release(): void;
}

/**
 * Memory that travels to a worker and back: a blob's bytes go out in it and its sealed form comes back
 * in the same memory; a restore's ranges go out and the plaintexts of a run come back in another.
 *
 * It is carved from one SharedArrayBuffer, so a message names memory both threads see instead of moving
 * it. Before, freed transfer buffers were pooled, and whatever the pool's cap they stayed in the memory
 * of the process: glibc raises its mmap threshold each time a large buffer is freed, after which freed
 * buffers go back into its heap, which keeps them; a restore's peak was the high-water mark of all
 * buffers ever in flight or pooled. A slab's pages are touched once and reused; fresh memory costs a
 * page fault per 4 KiB, 15 µs on a virtual machine whose free memory goes back to the host.
 */
class TransferPool {
  private slab: { sab: SharedArrayBuffer; places: SlabAllocator } | undefined;

  constructor(private readonly slabBytes: number) {}

  take(bytes: number): Piece {
    if (bytes > 0 && bytes <= this.slabBytes) {
      // Made on first use: reserved address space, no memory until its pages are touched.
      this.slab ??= { sab: new SharedArrayBuffer(this.slabBytes), places: new SlabAllocator(this.slabBytes) };
      const { sab, places } = this.slab;
      const at = places.alloc(bytes);
      if (at >= 0) {
        let lent = true;
        return {
          bytes: new Uint8Array(sab, at, bytes),
          shared: true,
          release: () => {
            if (lent) places.release(at);
            lent = false;
          },
        };
      }
    }
    return { bytes: new Uint8Array(bytes), shared: false, release: () => {} };
  }

  /** Bytes of the slab lent out now. */
  get lent(): number {
    return this.slab?.places.used ?? 0;
  }

  /** Bytes of the slab ever touched: the memory it holds. */
  get touched(): number {
    return this.slab?.places.highWater ?? 0;
  }
}

/** What of these views must be transferred with a message: the buffers of those not in shared memory. */
function transfers(...views: (Uint8Array | undefined)[]): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  for (const v of views) if (v && !(v.buffer instanceof SharedArrayBuffer) && !out.includes(v.buffer as ArrayBuffer)) out.push(v.buffer as ArrayBuffer);
  return out;
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
  /** A worker died: pieces of the slab sent to the others may still be written, so nothing more is sent. */
  private broken: Error | undefined;
  private readonly pool: TransferPool;
  private readonly batches: Record<BatchOp, Batch> = {
    openBatch: { items: [], staging: new Uint8Array(BATCH_BYTES + BATCH_BLOB_BYTES), bytes: 0, scheduled: false },
    sealBatch: { items: [], staging: new Uint8Array(BATCH_BYTES + BATCH_BLOB_BYTES), bytes: 0, scheduled: false },
  };

  constructor(
    private readonly sealer: Sealer,
    private readonly idKey: Buffer,
    private readonly zstdLevel: number,
    private threads = Math.max(1, Math.min(availableParallelism(), 8)),
    slabBytes = SLAB_BYTES,
  ) {
    this.pool = new TransferPool(slabBytes);
  }

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
      worker.on('error', (err) => {
        this.broken ??= err;
        this.failAll(err);
      });
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
    // The worker writes the sealed blob back into the memory it was sent in when it fits (it always
    // does with this slack).
    const room = this.pool.take(data.byteLength + SEAL_SLACK);
    room.bytes.set(data);
    let r: WorkerReply;
    try {
      r = await this.post({ op: 'seal', data: room.bytes, len: data.byteLength, compress, ad: adWire(ad) }, 'seal blob', transfers(room.bytes));
    } catch (err) {
      room.release();
      throw err;
    }
    if (r.sealed) {
      room.release();
      return { sealed: Buffer.from(r.sealed.buffer, r.sealed.byteOffset, r.sealed.byteLength), ulen: r.ulen ?? 0, release: () => {} };
    }
    const back = room.shared ? room.bytes : r.data!;
    return { sealed: Buffer.from(back.buffer, back.byteOffset + r.at!, r.len!), ulen: r.ulen ?? 0, release: room.release };
  }

  /**
   * Decrypts and decompresses; also returns the plaintext's blob id, computed in the worker. `sealed`
   * is handed over: when it is a whole buffer of its own (a fresh read) it goes to the worker without a
   * copy and is unusable afterwards.
   */
  async open(sealed: Uint8Array, ulen: number, what: string, ad: Uint8Array | null): Promise<Opened> {
    const whole = sealed.byteOffset === 0 && sealed.byteLength === sealed.buffer.byteLength && sealed.buffer instanceof ArrayBuffer;
    const data = whole ? sealed : owned(sealed);
    const r = await this.post({ op: 'open', data, ulen, ad: adWire(ad) }, what, [data.buffer as ArrayBuffer]);
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
   * Memory of `length` bytes to read a range into, for openRun(): in the slab when it has room, so it
   * goes to the worker without a copy. The caller hands it back with release() once openRun() is done
   * with it (or the read failed).
   */
  rangeBuffer(length: number): { buffer: Buffer; release(): void } {
    const piece = this.pool.take(length);
    return { buffer: Buffer.from(piece.bytes.buffer, piece.bytes.byteOffset, length), release: piece.release };
  }

  /** Bytes of the slab lent out now: every piece comes back once its results are done with. */
  get slabLent(): number {
    return this.pool.lent;
  }

  /** Bytes of the slab ever touched (its high-water mark): what it costs in memory. */
  get slabTouched(): number {
    return this.pool.touched;
  }

  /**
   * Opens every blob cut from one read range, in one message: a restore reads ranges of many blobs,
   * and a message, a copy and a fresh buffer per blob cost more than opening small ones. A range in the
   * slab (rangeBuffer()) stays the caller's, to release once this is done; any other range that is a
   * whole buffer of its own is handed over (unusable afterwards). The plaintexts come back side by side
   * in one piece of transfer memory, which release() hands back once the caller is done with all of them.
   */
  async openRun(range: Buffer, items: RunItem[]): Promise<RunOpened> {
    let data: Uint8Array = range;
    let copy: Piece | undefined;
    if (!(range.buffer instanceof SharedArrayBuffer) && !(range.byteOffset === 0 && range.byteLength === range.buffer.byteLength)) {
      copy = this.pool.take(range.byteLength);
      copy.bytes.set(range);
      data = copy.bytes;
    }
    const outBytes = items.reduce((n, it) => n + (it.ulen > 0 ? it.ulen : it.len), 0);
    const out = this.pool.take(Math.max(1, outBytes));
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
    let r: WorkerReply;
    try {
      r = await this.post({ op: 'openRun', data, out: out.bytes, meta, ads }, 'open blobs', [...transfers(data, out.bytes), meta.buffer, ads.buffer]);
    } catch (err) {
      out.release();
      throw err;
    } finally {
      copy?.release();
    }
    const o = out.shared ? out.bytes : r.out!;
    const whole = Buffer.from(o.buffer, o.byteOffset, o.byteLength);
    const spans = r.spans!;
    return {
      results: items.map((it, i) => {
        const len = spans[i * 2 + 1]!;
        if (len < 0) return { error: workerError(r.errors![i] ?? 'not opened', it.what, true) };
        const at = spans[i * 2]!;
        return { plain: whole.subarray(at, at + len), id: r.ids!.slice(i * 64, i * 64 + 64) };
      }),
      release: out.release,
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
    // The bytes go in transfer memory; a sealed batch's output goes in a piece too, with room for each
    // seal's overhead. A batch per event-loop turn, made fresh each time, was tens of MB of dead buffers
    // on both threads.
    const data = this.pool.take(b.bytes);
    data.bytes.set(b.staging.subarray(0, b.bytes));
    const sealing = op === 'sealBatch';
    const out = sealing ? this.pool.take(b.bytes + items.length * SEAL_SLACK) : undefined;
    b.items = [];
    b.bytes = 0;
    this.post({ op, data: data.bytes, out: out?.bytes, items: items.map((it) => it.meta) }, sealing ? 'seal blobs' : 'open blobs', transfers(data.bytes, out?.bytes)).then(
      (r) => {
        data.release();
        // An opened batch's plaintexts are in a buffer the worker made: callers keep them (loadBlob).
        const o = out?.shared ? out.bytes : r.out!;
        const lease = new Lease(items.length, () => out?.release());
        const drop = () => lease.drop();
        const reply = Buffer.from(o.buffer, o.byteOffset, o.byteLength);
        items.forEach((it, i) => {
          const res = r.results![i]!;
          if ('error' in res) {
            drop();
            it.reject(workerError(res.error, it.what, !sealing));
          } else it.done(reply, res, drop);
        });
      },
      (err: Error) => {
        data.release();
        out?.release();
        for (const it of items) it.reject(err);
      },
    );
  }

  private post(msg: Record<string, unknown> & { data: Uint8Array }, what: string, transfer: ArrayBuffer[]): Promise<WorkerReply> {
    if (this.closed) return Promise.reject(new Error('blob workers are closed'));
    if (this.broken) return Promise.reject(this.broken);
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
