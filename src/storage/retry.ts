// Retries what may clear up by itself (a flaky network mount, a busy server) so that one hiccup does
// not fail a long backup. Kept out of the backends, as in restic, so each backend stays simple and
// every one gets the same policy.
import { setTimeout as delay } from 'node:timers/promises';
import type { Backend, BackendProperties, FileInfo, FileType, Handle, SaveData } from './backend.js';

export type RetriedOperation = 'create' | 'save' | 'load' | 'stat' | 'list' | 'remove';

export interface RetryEvent {
  op: RetriedOperation;
  type: FileType | undefined;
  name: string | undefined;
  /** The attempt that just failed, from 1. */
  attempt: number;
  /** How long until the next attempt. */
  delayMs: number;
  error: unknown;
}

export interface RetryOptions {
  /** Attempts in all, the first included. Default 10 (about three minutes of waiting with the defaults). */
  maxAttempts?: number;
  /** Wait after the first failure. Default 500 ms. */
  initialDelayMs?: number;
  /** Cap on one wait. Default 60 s. */
  maxDelayMs?: number;
  /** Growth of the wait per failure. Default 2. */
  multiplier?: number;
  /** Each wait is scaled by a random factor in [1 - jitter, 1 + jitter], so clients that failed together do not retry together. Default 0.5. */
  jitter?: number;
  /** For tests: a source of [0, 1). */
  random?: () => number;
  /** For tests: waits without the clock. */
  sleep?: (ms: number) => Promise<void>;
  /** Told of each retry, e.g. to show "retrying in 4 s" or log it. */
  onRetry?: (e: RetryEvent) => void;
}

/** A ranged read returned fewer bytes than asked (transient: retried). */
class ShortReadError extends Error {
  readonly code = 'EIO';
  constructor(h: Handle, wanted: number, got: number) {
    super(`short read of ${h.type} ${h.name}: ${got} of ${wanted} bytes`);
  }
}

export class RetryBackend implements Backend {
  private readonly maxAttempts: number;
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly multiplier: number;
  private readonly jitter: number;
  private readonly random: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly onRetry: ((e: RetryEvent) => void) | undefined;
  private closed = false;

  constructor(
    readonly inner: Backend,
    opts: RetryOptions = {},
  ) {
    this.maxAttempts = opts.maxAttempts ?? 10;
    this.initialDelayMs = opts.initialDelayMs ?? 500;
    this.maxDelayMs = opts.maxDelayMs ?? 60_000;
    this.multiplier = opts.multiplier ?? 2;
    this.jitter = opts.jitter ?? 0.5;
    this.random = opts.random ?? Math.random;
    this.sleep = opts.sleep ?? ((ms) => delay(ms));
    this.onRetry = opts.onRetry;
    if (!Number.isInteger(this.maxAttempts) || this.maxAttempts < 1) throw new Error(`maxAttempts must be a positive integer, not ${this.maxAttempts}`);
    if (!(this.jitter >= 0 && this.jitter <= 1)) throw new Error(`jitter must be within [0, 1], not ${this.jitter}`);
  }

  get properties(): BackendProperties {
    return this.inner.properties;
  }

  create(): Promise<void> {
    return this.run('create', undefined, () => this.inner.create());
  }

  save(h: Handle, data: SaveData): Promise<void> {
    // Safe to repeat even when an earlier attempt did store the object and only its reply was lost:
    // the backend contract makes a save of the same bytes under the same name succeed.
    return this.run('save', h, () => this.inner.save(h, data));
  }

  async load(h: Handle, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    // A ranged read that comes back short (a connection cut mid-reply) is retried like an error; the
    // last attempt's bytes are returned as they are, for the caller to judge (damage, if they stay short).
    let attempt = 0;
    let short: Buffer | undefined;
    try {
      return await this.run('load', h, async () => {
        attempt++;
        const b = await this.inner.load(h, offset, length, into);
        if (length !== undefined && b.length < length && attempt < this.maxAttempts) {
          short = b;
          throw new ShortReadError(h, length, b.length);
        }
        return b;
      });
    } catch (err) {
      if (err instanceof ShortReadError && short) return short;
      throw err;
    }
  }

  stat(h: Handle): Promise<FileInfo> {
    return this.run('stat', h, () => this.inner.stat(h));
  }

  async remove(h: Handle): Promise<void> {
    let attempt = 0;
    await this.run('remove', h, async () => {
      attempt++;
      try {
        await this.inner.remove(h);
      } catch (err) {
        // Not found after a failed attempt: that attempt removed it and its reply was lost. The object
        // is gone, which is all remove() promises. On the first attempt it is a real answer.
        if (attempt > 1 && this.inner.isNotFound(err)) return;
        throw err;
      }
    });
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    // A listing that fails halfway starts again from the top; names already handed out are not handed
    // out twice, so the caller sees one listing (a consistent subset, as the contract asks).
    const seen = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      try {
        for await (const f of this.inner.list(type)) {
          if (seen.has(f.name)) continue;
          seen.add(f.name);
          yield f;
        }
        return;
      } catch (err) {
        await this.backOff('list', { type, name: undefined }, attempt, err);
      }
    }
  }

  isNotFound(err: unknown): boolean {
    return this.inner.isNotFound(err);
  }

  isPermanent(err: unknown): boolean {
    return this.inner.isPermanent(err);
  }

  /** Stops further retries (in-flight ones end after their current wait) and closes the inner backend. */
  close(): Promise<void> {
    this.closed = true;
    return this.inner.close();
  }

  /** Whether waiting could help: not for a permanent error, and not for a missing object (it will stay missing). */
  private transient(err: unknown): boolean {
    if (err instanceof ShortReadError) return true;
    return !this.inner.isPermanent(err) && !this.inner.isNotFound(err);
  }

  private async run<T>(op: RetriedOperation, h: Handle | undefined, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        await this.backOff(op, { type: h?.type, name: h?.name }, attempt, err);
      }
    }
  }

  /** Rethrows err unless another attempt is due, in which case it waits for it. */
  private async backOff(op: RetriedOperation, target: { type: FileType | undefined; name: string | undefined }, attempt: number, err: unknown): Promise<void> {
    if (this.closed || attempt >= this.maxAttempts || !this.transient(err)) throw err;
    const base = Math.min(this.maxDelayMs, this.initialDelayMs * this.multiplier ** (attempt - 1));
    const delayMs = Math.round(base * (1 - this.jitter + 2 * this.jitter * this.random()));
    this.onRetry?.({ op, ...target, attempt, delayMs, error: err });
    await this.sleep(delayMs);
    if (this.closed) throw err;
  }
}
