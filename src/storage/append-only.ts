// A storage wrapper for append-only access: objects may be added, never removed or replaced, except
// lock files (a process must be able to refresh and release its own lock). The repository puts it under
// every command opened with an append-only key or in an append-only repository, so forget, prune, repair
// and key changes are refused before they touch anything. What this can and cannot guarantee:
// docs/repository-format.md (Append-only).
import { BulwarkError } from '../util/errors.js';
import type { Backend, BackendProperties, FileInfo, FileType, Handle, SaveData } from './backend.js';

export class AppendOnlyError extends BulwarkError {
  constructor(what: string, why: string) {
    super('append-only', `refusing to ${what}: ${why}`, {
      hint: 'use a key that is not append-only; an append-only repository is opened for deletion with `bulwark append-only off`',
    });
  }
}

export class AppendOnlyBackend implements Backend {
  constructor(
    readonly inner: Backend,
    /** Why (for messages): "the key in use is append-only", … */
    private readonly why: string,
    /** Whether the config may be replaced (a full key in an append-only repository, to turn it off). */
    private readonly configWritable = false,
  ) {}

  get properties(): BackendProperties {
    return this.inner.properties;
  }

  create(): Promise<void> {
    return this.inner.create();
  }

  async save(h: Handle, data: SaveData): Promise<void> {
    if (h.type === 'config' && !this.configWritable) throw new AppendOnlyError('replace the repository config', this.why);
    return this.inner.save(h, data);
  }

  load(h: Handle, offset?: number, length?: number, into?: Buffer): Promise<Buffer> {
    return this.inner.load(h, offset, length, into);
  }

  stat(h: Handle): Promise<FileInfo> {
    return this.inner.stat(h);
  }

  list(type: FileType): AsyncIterable<FileInfo> {
    return this.inner.list(type);
  }

  async remove(h: Handle): Promise<void> {
    if (h.type !== 'locks') throw new AppendOnlyError(`remove ${h.type === 'data' ? 'pack' : h.type.replace(/s$/, '')} ${h.name.slice(0, 8)}`, this.why);
    return this.inner.remove(h);
  }

  isNotFound(err: unknown): boolean {
    return this.inner.isNotFound(err);
  }

  isPermanent(err: unknown): boolean {
    return err instanceof AppendOnlyError || this.inner.isPermanent(err);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
