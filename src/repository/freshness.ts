// Rollback detection. Someone who can write the repository's storage but has no password cannot forge
// a snapshot, but can delete the newest ones: `latest` would then silently be an older point. So each
// host keeps, per repository id, the snapshots it saw last time and the newest time among them, and
// warns when snapshots it saw are gone or the newest time went backwards (as borg's security folder does).
//
// The record lives outside the repository on purpose: the repository is what is not trusted. It is a
// small JSON file per repository, written atomically (temp file + rename).
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

interface Record {
  version: 1;
  /** Newest snapshot time seen (ISO). */
  newest: string;
  /** Snapshot ids seen at the last listing. */
  snapshots: string[];
  /** Repository format version seen (absent in records made before format 2). */
  format?: number;
}

export interface Observed {
  id: string;
  time: string;
}

/** Where the per-repository records live: BULWARK_STATE_DIR, else $XDG_STATE_HOME/bulwark, else ~/.local/state/bulwark. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['BULWARK_STATE_DIR']) return env['BULWARK_STATE_DIR'];
  if (env['XDG_STATE_HOME']) return join(env['XDG_STATE_HOME'], 'bulwark');
  return join(homedir(), '.local', 'state', 'bulwark');
}

const HEX_ID = /^[0-9a-f]{64}$/;

export class FreshnessRecord {
  constructor(
    private readonly dir: string,
    private readonly repositoryId: string,
  ) {
    if (!HEX_ID.test(repositoryId)) throw new Error(`invalid repository id '${repositoryId}'`);
  }

  private get path(): string {
    return join(this.dir, `${this.repositoryId}.json`);
  }

  private async read(): Promise<Record | undefined> {
    try {
      const r = JSON.parse(await fsp.readFile(this.path, 'utf8')) as Record;
      if (r.version !== 1 || typeof r.newest !== 'string' || !Array.isArray(r.snapshots)) return undefined;
      return r;
    } catch {
      return undefined; // first contact with this repository, or an unreadable record: start afresh
    }
  }

  /**
   * Compares a complete listing with what this host saw last time, records the listing, and returns
   * warnings. `removedByUs` are ids this host deleted itself (forget): their absence is expected.
   */
  async observe(listing: Observed[], removedByUs: ReadonlySet<string> = new Set(), format = 1): Promise<string[]> {
    const before = await this.read();
    const warnings: string[] = [];
    const present = new Set(listing.map((s) => s.id));
    let newest = '';
    for (const s of listing) if (newest === '' || Date.parse(s.time) > Date.parse(newest)) newest = s.time;
    if (before) {
      const beforeFormat = before.format ?? 1;
      // An upgrade (`migrate`) seals every snapshot anew, under new names: their absence is expected.
      const upgraded = beforeFormat < format;
      if (beforeFormat > format) {
        warnings.push(`the repository is in format ${format}, but this host saw it in format ${beforeFormat}: the storage was rolled back to before its upgrade, or tampered with`);
      }
      const gone = upgraded ? [] : before.snapshots.filter((id) => !present.has(id) && !removedByUs.has(id));
      if (gone.length > 0) {
        const shown = gone.slice(0, 10).map((id) => id.slice(0, 8)).join(', ');
        warnings.push(
          `${gone.length} snapshot(s) this host saw before are gone from the repository (${shown}${gone.length > 10 ? ', …' : ''}): if nobody here removed them, the storage was rolled back or tampered with`,
        );
      }
      if (before.newest && (newest === '' || Date.parse(newest) < Date.parse(before.newest))) {
        warnings.push(`the newest snapshot (${newest || 'none'}) is older than the newest this host saw before (${before.newest}): 'latest' may not be the latest`);
      }
    }
    // The record becomes what was seen now: each change is reported once, by the first command that
    // meets it (a nightly backup's log, typically), not on every command after it.
    try {
      await this.write({ version: 1, newest, snapshots: [...present].sort(), format: Math.max(format, before?.format ?? 1) });
    } catch (err) {
      // Never a reason to fail a backup; but without a record the next rollback goes unnoticed.
      warnings.push(`cannot keep the record of snapshots seen in '${this.dir}' (${(err as Error).message}): rollbacks are not detected; set BULWARK_STATE_DIR to a writable folder`);
    }
    return warnings;
  }

  private async write(r: Record): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.${randomBytes(6).toString('hex')}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(r), { mode: 0o600 });
    await fsp.rename(tmp, this.path);
  }
}
