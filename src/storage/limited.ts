// --limit-upload / --limit-download: a bandwidth cap in front of any backend, so a backup to an
// off-site store leaves the line for everything else. Each object is paid for whole at the rate (before
// a save, after a load: the bytes of a load are known only then), which keeps the average to the cap
// whatever the backend does inside.
import { RateLimiter } from '../util/rate-limit.js';
import { saveSize, type Backend, type BackendProperties, type FileInfo, type FileType, type Handle, type SaveData } from './backend.js';

export interface BandwidthLimits {
  /** Bytes per second sent to the store. */
  upload?: number;
  /** Bytes per second read from the store. */
  download?: number;
}

export class LimitedBackend implements Backend {
  private readonly up: RateLimiter | undefined;
  private readonly down: RateLimiter | undefined;

  constructor(
    readonly inner: Backend,
    limits: BandwidthLimits,
    limiters: { up?: RateLimiter; down?: RateLimiter } = {},
  ) {
    this.up = limiters.up ?? (limits.upload ? new RateLimiter(limits.upload) : undefined);
    this.down = limiters.down ?? (limits.download ? new RateLimiter(limits.download) : undefined);
  }

  get properties(): BackendProperties {
    return this.inner.properties;
  }

  create(): Promise<void> {
    return this.inner.create();
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    await this.up?.take(saveSize(data));
    await this.inner.save(h, data);
  }

  async load(h: Handle, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    const b = await this.inner.load(h, offset, length, into);
    await this.down?.take(b.length);
    return b;
  }

  stat(h: Handle): Promise<FileInfo> {
    return this.inner.stat(h);
  }

  list(type: FileType): AsyncIterable<FileInfo> {
    return this.inner.list(type);
  }

  remove(h: Handle): Promise<void> {
    return this.inner.remove(h);
  }

  isNotFound(err: unknown): boolean {
    return this.inner.isNotFound(err);
  }

  isPermanent(err: unknown): boolean {
    return this.inner.isPermanent(err);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
