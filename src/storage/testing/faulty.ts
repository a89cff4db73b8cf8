// A backend wrapper that fails on purpose, for tests of everything above storage: retries, full disks,
// lost replies and damaged objects, without needing a broken disk.
import { saveSize, type Backend, type BackendProperties, type FileInfo, type FileType, type Handle, type SaveData } from '../backend.js';

export type FaultKind = 'transient' | 'permanent' | 'no-space';
export type Operation = 'save' | 'load' | 'stat' | 'list' | 'remove';

/**
 * The error a FaultyBackend throws. It looks like a Node system error (code EIO/EACCES/ENOSPC), and the
 * wrapper classifies it itself, so tests behave the same whatever backend is underneath.
 */
export class InjectedFault extends Error {
  readonly code: string;
  readonly kind: FaultKind;

  constructor(kind: FaultKind, what: string) {
    const code = kind === 'no-space' ? 'ENOSPC' : kind === 'permanent' ? 'EACCES' : 'EIO';
    const text = kind === 'no-space' ? 'no space left on device' : kind === 'permanent' ? 'permission denied' : 'input/output error';
    super(`${code}: ${text} (injected), ${what}`);
    this.name = 'InjectedFault';
    this.code = code;
    this.kind = kind;
  }
}

interface OpRule {
  op: Operation;
  type: FileType | undefined;
  /** Matching calls still to let through before failing. */
  skip: number;
  /** Matching calls still to fail. */
  remaining: number;
  kind: FaultKind;
  /** Let the operation happen, then fail, as when the reply to a finished request is lost. */
  replyLost: boolean;
  /** list only: fail after handing out this many entries. */
  afterItems: number | undefined;
}

interface CorruptRule {
  type: FileType | undefined;
  remaining: number;
  mode: 'flip' | 'truncate';
}

export interface FailOptions {
  /** Only calls for this file type count (and fail). */
  type?: FileType;
  /** How many matching calls fail; default 1. Infinity fails them all. */
  times?: number;
  kind?: FaultKind;
  /** Not for list: let the operation happen (the object is stored, removed, …), then fail, as when the reply is lost. */
  replyLost?: boolean;
  /** list only: fail after handing out this many entries, as a connection that drops half way. */
  afterItems?: number;
}

export class FaultyBackend implements Backend {
  private rules: OpRule[] = [];
  private corruptions: CorruptRule[] = [];
  private byteLimit: number | undefined;
  private randomFaults: { fraction: number; shortReads: number; next: () => number } | undefined;
  /** save() calls made through this wrapper, failed ones included. */
  saveCalls = 0;
  /** Bytes in saves that succeeded (or are under way). */
  savedBytes = 0;
  /** Every fault thrown so far, in order. */
  readonly injected: InjectedFault[] = [];

  constructor(readonly inner: Backend) {}

  get properties(): BackendProperties {
    return this.inner.properties;
  }

  /** Fails the nth save() call from now (1 = the next one), of any type. */
  failNthSave(n: number, kind: FaultKind = 'transient', opts: { replyLost?: boolean } = {}): this {
    if (!Number.isInteger(n) || n < 1) throw new Error(`n must be a positive integer, not ${n}`);
    this.rules.push({ op: 'save', type: undefined, skip: n - 1, remaining: 1, kind, replyLost: opts.replyLost ?? false, afterItems: undefined });
    return this;
  }

  /** Fails saves of one file type: all of them unless `times` says how many. */
  failSavesOfType(type: FileType, opts: Omit<FailOptions, 'type'> = {}): this {
    return this.failNext('save', { times: Infinity, ...opts, type });
  }

  /** Fails the next matching calls of one operation. */
  failNext(op: Operation, opts: FailOptions = {}): this {
    if (opts.replyLost && op === 'list') throw new Error('replyLost does not apply to list (use afterItems)');
    if (opts.afterItems !== undefined && op !== 'list') throw new Error('afterItems applies to list only');
    this.rules.push({ op, type: opts.type, skip: 0, remaining: opts.times ?? 1, kind: opts.kind ?? 'transient', replyLost: opts.replyLost ?? false, afterItems: opts.afterItems });
    return this;
  }

  /**
   * A disk with `limit` bytes free from now: the first save that would cross it fails with ENOSPC and
   * stores nothing (saves are atomic), as does every later one that does not fit.
   */
  failAfterBytes(limit: number): this {
    if (!(limit >= 0)) throw new Error(`limit must be >= 0, not ${limit}`);
    this.byteLimit = limit;
    this.savedBytes = 0;
    return this;
  }

  /** Damages what the next `times` loads (default: all) return; what is stored stays intact. */
  corruptLoads(opts: { type?: FileType; times?: number; mode?: 'flip' | 'truncate' } = {}): this {
    this.corruptions.push({ type: opts.type, remaining: opts.times ?? Infinity, mode: opts.mode ?? 'flip' });
    return this;
  }

  /**
   * From now on a `fraction` of saves and loads fail with a transient error (half of the failed saves
   * after storing: a lost reply), and a `shortReads` fraction of ranged loads return one byte too few; the
   * choice comes from a seeded generator, so a run can be repeated.
   */
  failRandomly(opts: { fraction: number; shortReads?: number; seed: number }): this {
    let x = opts.seed >>> 0 || 1;
    const next = (): number => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    };
    this.randomFaults = { fraction: opts.fraction, shortReads: opts.shortReads ?? 0, next };
    return this;
  }

  clearFaults(): this {
    this.randomFaults = undefined;
    this.rules = [];
    this.corruptions = [];
    this.byteLimit = undefined;
    return this;
  }

  create(): Promise<void> {
    return this.inner.create();
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    this.saveCalls++;
    const random = this.randomFaults && this.randomFaults.next() < this.randomFaults.fraction ? { lost: this.randomFaults.next() < 0.5 } : undefined;
    if (random && !random.lost) throw this.fault('transient', `save ${describe(h)} (random)`);
    const rule = this.match('save', h.type);
    if (rule && !rule.replyLost) throw this.fault(rule.kind, `save ${describe(h)}`);
    if (this.byteLimit !== undefined && this.savedBytes + saveSize(data) > this.byteLimit) {
      throw this.fault('no-space', `save ${describe(h)} (${saveSize(data)} bytes, ${Math.max(0, this.byteLimit - this.savedBytes)} free)`);
    }
    // Counted before the await, so concurrent saves cannot all squeeze through the same free space.
    this.savedBytes += saveSize(data);
    try {
      await this.inner.save(h, data);
    } catch (err) {
      this.savedBytes -= saveSize(data);
      throw err;
    }
    if (rule) throw this.fault(rule.kind, `save ${describe(h)} (stored; reply lost)`);
    if (random) throw this.fault('transient', `save ${describe(h)} (random; stored, reply lost)`);
  }

  async load(h: Handle, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    if (this.randomFaults && this.randomFaults.next() < this.randomFaults.fraction) throw this.fault('transient', `load ${describe(h)} (random)`);
    // Only ranged reads come back short: a whole object's size is known to a real backend, which checks it.
    if (length !== undefined && this.randomFaults && this.randomFaults.next() < this.randomFaults.shortReads) {
      const whole = await this.inner.load(h, offset, length, into);
      if (whole.length > 0) return Buffer.from(whole.subarray(0, whole.length - 1));
    }
    const rule = this.match('load', h.type);
    if (rule && !rule.replyLost) throw this.fault(rule.kind, `load ${describe(h)}`);
    const buf = await this.inner.load(h, offset, length, into);
    if (rule) throw this.fault(rule.kind, `load ${describe(h)} (reply lost)`);
    const c = this.corruptions.find((r) => r.remaining > 0 && (r.type === undefined || r.type === h.type));
    if (!c || buf.length === 0) return buf;
    c.remaining--;
    // A copy: the inner backend may hand out a buffer it keeps (a cache), which must stay intact.
    const out = Buffer.from(buf);
    if (c.mode === 'truncate') return out.subarray(0, out.length - 1);
    out[out.length >> 1]! ^= 0x01;
    return out;
  }

  async stat(h: Handle): Promise<FileInfo> {
    const rule = this.match('stat', h.type);
    if (rule && !rule.replyLost) throw this.fault(rule.kind, `stat ${describe(h)}`);
    const info = await this.inner.stat(h);
    if (rule) throw this.fault(rule.kind, `stat ${describe(h)} (reply lost)`);
    return info;
  }

  async *list(type: FileType): AsyncIterable<FileInfo> {
    const rule = this.match('list', type);
    if (rule && rule.afterItems === undefined) throw this.fault(rule.kind, `list ${type}`);
    let n = 0;
    for await (const f of this.inner.list(type)) {
      if (rule && n === rule.afterItems) throw this.fault(rule.kind, `list ${type} (after ${n} entries)`);
      yield f;
      n++;
    }
    // Fewer entries than afterItems: the connection drops at the end instead, so the fault still happens.
    if (rule) throw this.fault(rule.kind, `list ${type} (after ${n} entries)`);
  }

  async remove(h: Handle): Promise<void> {
    const rule = this.match('remove', h.type);
    if (rule && !rule.replyLost) throw this.fault(rule.kind, `remove ${describe(h)}`);
    await this.inner.remove(h);
    if (rule) throw this.fault(rule.kind, `remove ${describe(h)} (removed; reply lost)`);
  }

  isNotFound(err: unknown): boolean {
    return err instanceof InjectedFault ? false : this.inner.isNotFound(err);
  }

  isPermanent(err: unknown): boolean {
    return err instanceof InjectedFault ? err.kind !== 'transient' : this.inner.isPermanent(err);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** Counts the call against every rule it matches; returns the first that says fail. */
  private match(op: Operation, type: FileType): OpRule | undefined {
    let hit: OpRule | undefined;
    for (const r of this.rules) {
      if (r.op !== op || r.remaining <= 0 || (r.type !== undefined && r.type !== type)) continue;
      if (r.skip > 0) {
        r.skip--;
        continue;
      }
      if (hit === undefined) {
        r.remaining--;
        hit = r;
      }
    }
    return hit;
  }

  private fault(kind: FaultKind, what: string): InjectedFault {
    const f = new InjectedFault(kind, what);
    this.injected.push(f);
    return f;
  }
}

function describe(h: Handle): string {
  return h.type === 'config' ? 'config' : `${h.type}/${h.name.slice(0, 12)}`;
}
