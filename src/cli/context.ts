// What every command shares: global options, opening the repository, and printing results.
import type { Command } from 'commander';
import { defaultStateDir, FreshnessRecord } from '../repository/freshness.js';
import { defaultCacheDir } from '../repository/index-cache.js';
import { Repository, type InitOptions } from '../repository/repository.js';
import { UploadJournal } from '../repository/upload-journal.js';
import { openBackend, type OpenOptions } from '../storage/open.js';
import { BulwarkError } from '../util/errors.js';
import { parseSize } from './format.js';
import { readOtherPassword, readPassword } from './password.js';

export interface GlobalOptions {
  repo?: string;
  passwordFile?: string;
  json: boolean;
  quiet: boolean;
  verbose: boolean;
  sftpKey?: string;
  sftpKnownHosts?: string;
  limitUpload?: string;
  limitDownload?: string;
}

export class Context {
  /** Set when a command finished with some items not read or not restored: the process exits 3. */
  static partialSeen = false;

  markPartial(): void {
    Context.partialSeen = true;
  }

  constructor(readonly opts: GlobalOptions) {}

  static from(cmd: Command): Context {
    const o = cmd.optsWithGlobals<Partial<GlobalOptions>>();
    return new Context({
      ...(o.repo !== undefined ? { repo: o.repo } : {}),
      ...(o.passwordFile !== undefined ? { passwordFile: o.passwordFile } : {}),
      json: o.json ?? false,
      quiet: o.quiet ?? false,
      verbose: o.verbose ?? false,
      ...(o.sftpKey !== undefined ? { sftpKey: o.sftpKey } : {}),
      ...(o.sftpKnownHosts !== undefined ? { sftpKnownHosts: o.sftpKnownHosts } : {}),
      ...(o.limitUpload !== undefined ? { limitUpload: o.limitUpload } : {}),
      ...(o.limitDownload !== undefined ? { limitDownload: o.limitDownload } : {}),
    });
  }

  /** How the repository's store is reached: credentials' files, bandwidth caps, retries shown with -v. */
  private backendOptions(): OpenOptions {
    const rate = (flag: string, v: string | undefined): number | undefined => {
      if (v === undefined) return undefined;
      const n = parseSize(v);
      if (!n) throw new BulwarkError('usage', `${flag} '${v}' is not a positive size per second`, { hint: 'e.g. 10M' });
      return n;
    };
    const upload = rate('--limit-upload', this.opts.limitUpload);
    const download = rate('--limit-download', this.opts.limitDownload);
    return {
      ...(this.opts.sftpKey ? { sftpKey: this.opts.sftpKey } : {}),
      ...(this.opts.sftpKnownHosts ? { sftpKnownHosts: this.opts.sftpKnownHosts } : {}),
      limits: { ...(upload ? { upload } : {}), ...(download ? { download } : {}) },
      onRetry: (e) => {
        if (this.opts.verbose) this.warn(`retrying ${e.op} of ${e.type ?? 'the store'}${e.name ? ` ${e.name.slice(0, 12)}` : ''} in ${(e.delayMs / 1000).toFixed(1)} s (attempt ${e.attempt} failed: ${e.error instanceof Error ? e.error.message : String(e.error)})`);
      },
    };
  }

  get location(): string {
    const loc = this.opts.repo ?? process.env['BULWARK_REPOSITORY'];
    if (!loc) throw new BulwarkError('usage', 'no repository given', { hint: 'pass -r/--repo <path> or set BULWARK_REPOSITORY' });
    return loc;
  }

  async open(): Promise<Repository> {
    return (await this.openWithPassword()).repo;
  }

  /** Opens the repository and also returns the password it was opened with (for a new key file). */
  async openWithPassword(): Promise<{ repo: Repository; password: string }> {
    const backend = openBackend(this.location, this.backendOptions());
    // The location is checked before asking for a password: a typo should not cost a prompt.
    try {
      await Repository.assertExists(backend);
    } catch (err) {
      await backend.close();
      throw err;
    }
    const password = await readPassword(this.opts.passwordFile !== undefined ? { passwordFile: this.opts.passwordFile } : {});
    const repo = await Repository.open(backend, password, { onWarning: (m) => this.warn(m), indexCache: defaultCacheDir() });
    this.attachHostState(repo);
    return { repo, password };
  }

  async init(opts: InitOptions): Promise<Repository> {
    const backend = openBackend(this.location, this.backendOptions());
    const password = await readPassword(this.opts.passwordFile !== undefined ? { passwordFile: this.opts.passwordFile } : {}, { confirm: true, what: 'password for the new repository' });
    const repo = await Repository.init(backend, password, opts);
    repo.indexCacheDir = defaultCacheDir();
    return repo;
  }

  /** What this host keeps about a repository outside it: snapshots seen (rollback), packs sent and not indexed (resume). */
  private attachHostState(repo: Repository): void {
    repo.freshness = new FreshnessRecord(defaultStateDir(), repo.config.id);
    repo.uploadJournal = new UploadJournal(defaultStateDir(), repo.config.id);
  }

  /** Opens another repository (the other side of a copy) with its own password. */
  async openOther(location: string, side: 'to' | 'from', passwordFile?: string): Promise<Repository> {
    const backend = openBackend(location, this.backendOptions());
    try {
      await Repository.assertExists(backend);
    } catch (err) {
      await backend.close();
      throw err;
    }
    const repo = await Repository.open(backend, await readOtherPassword(side, passwordFile), { onWarning: (m) => this.warn(m), indexCache: defaultCacheDir() });
    this.attachHostState(repo);
    return repo;
  }

  /** Runs fn with an open repository and always closes it. */
  async withRepo<T>(fn: (repo: Repository) => Promise<T>): Promise<T> {
    const repo = await this.open();
    try {
      return await fn(repo);
    } finally {
      await repo.close();
    }
  }

  /** Prints a result: JSON as one document, else the text rendering. */
  print<T>(result: T, text: (r: T) => string): void {
    if (this.opts.json) process.stdout.write(JSON.stringify({ type: 'summary', ...result }, null, 0) + '\n');
    else if (!this.opts.quiet) {
      const t = text(result);
      if (t) process.stdout.write(t.endsWith('\n') ? t : t + '\n');
    }
  }

  /** Plain JSON document (no summary tag) for listing commands. */
  printData<T>(data: T, text: (r: T) => string): void {
    if (this.opts.json) process.stdout.write(JSON.stringify(data) + '\n');
    else {
      const t = text(data);
      if (t) process.stdout.write(t.endsWith('\n') ? t : t + '\n');
    }
  }

  /** Damage that was worked around: always on stderr (also with --json and --quiet), never fatal. */
  warn(message: string): void {
    process.stderr.write(`warning: ${message}\n`);
  }

  info(line: string): void {
    if (!this.opts.quiet && !this.opts.json) process.stderr.write(line + '\n');
  }
}
