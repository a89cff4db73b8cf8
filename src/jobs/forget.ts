// forget: removes snapshot records by a retention policy or by name. Only records are removed; the data
// they alone used stays in the repository (prune, a separate step, frees it). Removing a record cannot
// harm another snapshot or a running backup (a backup's parent is only read), so a shared lock suffices.
import { removeNotesOf } from '../repository/notes.js';
import { Lock } from '../repository/lock.js';
import type { Repository } from '../repository/repository.js';
import { applyRetention, isEmptyPolicy, type GroupKey, type RetentionGroup, type RetentionPolicy } from '../repository/retention.js';
import { findSnapshot, listSnapshots, readSnapshots, type SnapshotFilter, type SnapshotWithId } from '../repository/snapshot.js';
import { BulwarkError } from '../util/errors.js';

export interface ForgetOptions {
  policy: RetentionPolicy;
  groupBy?: GroupKey[];
  filter?: SnapshotFilter;
  /** Snapshots named explicitly (ids or prefixes); then no policy is used. */
  ids?: string[];
  dryRun?: boolean;
}

export interface ForgetResult {
  groups: RetentionGroup[];
  removed: SnapshotWithId[];
  dryRun: boolean;
}

export async function forget(repo: Repository, opts: ForgetOptions): Promise<ForgetResult> {
  if (!opts.dryRun) repo.assertMayDelete('forget snapshots');
  return Lock.run(repo, false, 'forget', async () => {
    let groups: RetentionGroup[];
    let doomed: SnapshotWithId[];
    if (opts.ids && opts.ids.length > 0) {
      if (!isEmptyPolicy(opts.policy)) throw new BulwarkError('usage', 'name snapshots or give a policy (--keep-*), not both');
      doomed = [];
      for (const ref of opts.ids) {
        if (ref === 'latest') throw new BulwarkError('usage', "'latest' cannot be forgotten by that name", { hint: 'give its id' });
        doomed.push(await findSnapshot(repo, ref));
      }
      groups = [{ key: {}, decisions: doomed.map((snapshot) => ({ snapshot, keep: false, reasons: ['named'] })) }];
    } else {
      if (isEmptyPolicy(opts.policy)) {
        throw new BulwarkError('usage', 'no retention policy given: forget would remove every snapshot', { hint: 'give --keep-last, --keep-daily, … (see bulwark forget --help), or name the snapshots to remove' });
      }
      groups = applyRetention(await listSnapshots(repo, opts.filter ?? {}), opts.policy, opts.groupBy);
      // A policy that keeps nothing of a group is far more likely a typo than a wish.
      const emptied = groups.find((g) => g.decisions.every((d) => !d.keep));
      if (emptied) {
        throw new BulwarkError('usage', `the policy keeps no snapshot of ${Object.entries(emptied.key).map(([k, v]) => `${k} ${v || '-'}`).join(', ')}: refusing to remove all ${emptied.decisions.length}`, {
          hint: 'use a policy that keeps at least one, or name the snapshots to remove',
        });
      }
      doomed = groups.flatMap((g) => g.decisions.filter((d) => !d.keep).map((d) => d.snapshot));
    }
    if (!opts.dryRun) {
      for (const s of doomed) {
        try {
          await repo.backend.remove({ type: 'snapshots', name: s.id });
        } catch (err) {
          if (!repo.backend.isNotFound(err)) throw err; // removed by someone else meanwhile
        }
        repo.forgotten.add(s.id);
      }
      // What was learnt about them (verify-boot results) goes with them.
      await removeNotesOf(repo, new Set(doomed.map((s) => s.id)));
      // This host's record of the snapshots it saw learns of the removal, so it is not taken for a rollback.
      if (doomed.length > 0) await readSnapshots(repo);
    }
    return { groups, removed: doomed, dryRun: opts.dryRun ?? false };
  });
}
