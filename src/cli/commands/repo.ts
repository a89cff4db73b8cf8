// init | key | unlock | check | stats
import type { Command } from 'commander';
import { stats } from '../../jobs/inspect.js';
import { checkRepository, type DataSubset } from '../../repository/check.js';
import { listKeys } from '../../repository/keys.js';
import { migrate } from '../../repository/migrate.js';
import { repairIndex, repairSnapshots } from '../../repository/repair.js';
import { readSnapshots } from '../../repository/snapshot.js';
import { listLocks, Lock, removeLocks } from '../../repository/lock.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { bytes, shortId } from '../format.js';
import { readNewPassword } from '../password.js';
import { table } from '../table.js';

export function register(program: Command): void {
  program
    .command('init')
    .description('create a repository (encrypted; the password is needed for every later access)')
    .option('--repository-version <n>', 'format version: 2 (default), or 1 for Bulwark releases before format 2')
    .option('--append-only', 'nothing may be deleted (forget, prune, …) until `bulwark append-only off`')
    .addHelpText('after', '\nExample:\n  BULWARK_PASSWORD_FILE=/root/.bulwark-pw bulwark init -r /backup/repo')
    .action(async (o: { repositoryVersion?: string; appendOnly?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const version = o.repositoryVersion === undefined ? undefined : Number(o.repositoryVersion);
      if (version !== undefined && version !== 1 && version !== 2) {
        throw new BulwarkError('usage', `--repository-version ${o.repositoryVersion} does not exist`, { hint: 'use 2 (the default) or 1' });
      }
      const repo = await ctx.init({ ...(version === undefined ? {} : { version }), ...(o.appendOnly ? { appendOnly: true } : {}) });
      try {
        ctx.print({ id: repo.config.id, location: repo.backend.properties.location, version: repo.config.version }, (r) =>
          [`created repository ${shortId(r.id)} (format ${r.version}) at ${r.location}`, '', 'Keep the password safe: without it the backups cannot be read.'].join('\n'),
        );
      } finally {
        await repo.close();
      }
    });

  const key = program.command('key').description('manage the passwords (keys) of a repository');
  key
    .command('list')
    .description('list keys')
    .action(async (_o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const keys = (await listKeys(repo.backend, repo.key)).map((k) => ({ ...k, current: k.id === repo.keyId }));
        ctx.printData(keys, (ks) =>
          [
            table(['', 'ID', 'Kind', 'User', 'Host', 'Created'], ks.map((k) => [k.current ? '*' : k.damaged ? '!' : '', shortId(k.id), k.damaged ? '?' : k.appendOnly ? 'append-only' : 'full', k.username, k.hostname, k.created])),
            ...ks.filter((k) => k.damaged).map((k) => `! key ${shortId(k.id)} is damaged (${k.damaged}); 'bulwark key remove ${shortId(k.id)}' removes it`),
          ].join('\n'),
        );
      });
    });
  key
    .command('add')
    .description('add a password; the new password comes from --new-password-file, BULWARK_NEW_PASSWORD or a prompt')
    .option('--new-password-file <file>', 'file holding the new password')
    .option('--append-only', 'a key that may back up but never delete (forget, prune, key changes are refused with it)')
    .action(async (o: { newPasswordFile?: string; appendOnly?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const id = await repo.addKey(await readNewPassword(o.newPasswordFile), undefined, { appendOnly: o.appendOnly ?? false });
        const appendOnly = o.appendOnly === true || repo.appendOnlyKey;
        ctx.print({ id, appendOnly }, (r) => `added ${r.appendOnly ? 'append-only ' : ''}key ${shortId(r.id)}`);
      });
    });
  key
    .command('remove')
    .description('remove a key (not the one in use)')
    .argument('<id>', 'key id or unique prefix')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        repo.assertMayDelete('remove a key');
        const keys = await listKeys(repo.backend, repo.key);
        const match = keys.filter((k) => k.id.startsWith(id));
        if (match.length !== 1) throw new BulwarkError(match.length === 0 ? 'not-found' : 'usage', match.length === 0 ? `no key '${id}'` : `key prefix '${id}' is ambiguous`, { hint: "see 'bulwark key list'" });
        if (match[0]!.id === repo.keyId) throw new BulwarkError('usage', 'refusing to remove the key in use', { hint: 'open the repository with another password to remove this one' });
        await repo.backend.remove({ type: 'keys', name: match[0]!.id });
        ctx.print({ removed: match[0]!.id }, (r) => `removed key ${shortId(r.removed)}`);
      });
    });
  key
    .command('passwd')
    .description('change the password in use (adds a new key, then removes the old one)')
    .option('--new-password-file <file>', 'file holding the new password')
    .action(async (o: { newPasswordFile?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        repo.assertMayDelete('change the password (it removes the old key)');
        const id = await repo.addKey(await readNewPassword(o.newPasswordFile));
        // The new key is durable before the old one goes: an interruption leaves both passwords valid.
        await repo.backend.remove({ type: 'keys', name: repo.keyId });
        ctx.print({ id, removed: repo.keyId }, (r) => `password changed: key ${shortId(r.id)} added, key ${shortId(r.removed)} removed`);
      });
    });

  program
    .command('unlock')
    .description('remove stale locks (left by crashed processes); --remove-all removes every lock')
    .option('--remove-all', 'remove all locks, also those of running processes')
    .action(async (o: { removeAll?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const removed = await removeLocks(repo, o.removeAll ?? false);
        const left = await listLocks(repo);
        ctx.print({ removed: removed.map((l) => l.id), remaining: left.length }, () =>
          [...removed.map((l) => `removed lock ${shortId(l.id)} (${l.purpose}, pid ${l.pid} on ${l.hostname}, ${l.time})`), `${removed.length} lock(s) removed, ${left.length} active lock(s) remain`].join('\n'),
        );
      });
    });

  program
    .command('check')
    .description('verify the repository structure; with --read-data every byte')
    .option('--read-data', 'read and verify all data')
    .option('--read-data-subset <n%|n/m>', "read and verify a random n% of the packs, or part n of m (e.g. 1/7 on Mondays, 2/7 on Tuesdays)")
    .option('--no-lock', 'take no lock and write nothing: for read-only or full repositories')
    .addHelpText('after', '\nExamples:\n  bulwark check --read-data\n  bulwark check --read-data-subset 10%\n  bulwark check --no-lock      # a read-only mount')
    .action(async (o: { readData?: boolean; readDataSubset?: string; lock: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const subset = o.readDataSubset !== undefined ? parseSubset(o.readDataSubset) : undefined;
      await ctx.withRepo(async (repo) => {
        // check judges the repository itself: it reads every index file, never the local index cache.
        repo.indexCacheDir = undefined;
        const lock = o.lock ? await Lock.acquire(repo, false, 'check') : undefined;
        try {
          const r = await checkRepository(repo, { readData: o.readData ?? false, ...(subset ? { readDataSubset: subset } : {}), recordDamage: o.lock });
          ctx.print({ ...r, ok: r.problems.length === 0 }, () => {
            const lines = [`checked ${r.snapshots} snapshots, ${r.packs} packs${r.packsRead ? `; read ${r.packsRead} packs, ${r.blobsRead} blobs` : ''}`];
            if (r.unreferencedPacks) lines.push(`${r.unreferencedPacks} unreferenced pack(s) (left by interrupted backups; harmless)`);
            if (r.recoveredPacks) lines.push(`${r.recoveredPacks} pack(s) are in no readable index file and were read from their own headers; run 'bulwark repair index'`);
            for (const p of r.problems) lines.push(`error: ${p.message}`);
            for (const a of r.affected) lines.push(`damaged: snapshot ${shortId(a.snapshot)} ${a.path}`);
            if (r.recordedDamage) lines.push(`${r.recordedDamage} damaged blob copies recorded: the next backups store those blobs again`);
            lines.push(r.problems.length === 0 ? 'no errors were found' : `${r.problems.length} problem(s) found; ${r.damagedSnapshots.length} snapshot(s) damaged${r.damagedSnapshots.length ? `: ${r.damagedSnapshots.map(shortId).join(' ')}` : ''}`);
            return lines.join('\n');
          });
          if (r.problems.length > 0) {
            process.exitCode = 1;
          }
        } finally {
          await lock?.release();
        }
      });
    });

  program
    .command('append-only')
    .description('turn the repository setting on (nothing may be deleted) or off; needs a key that is not append-only')
    .argument('<on|off>', 'on or off')
    .action(async (state: string, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      if (state !== 'on' && state !== 'off') throw new BulwarkError('usage', `append-only takes on or off, not '${state}'`);
      await ctx.withRepo(async (repo) => {
        await Lock.run(repo, true, 'append-only', () => repo.setAppendOnly(state === 'on'));
        ctx.print({ appendOnly: state === 'on' }, (r) => (r.appendOnly ? 'the repository is append-only: nothing can be deleted until append-only off' : 'the repository is no longer append-only'));
      });
    });

  program
    .command('migrate')
    .description('upgrade the repository to the newest format (in place; resumes if interrupted)')
    .addHelpText(
      'after',
      [
        '',
        'Format 2 binds every stored object to what it is, hides blob sizes and counts in padded packs, and',
        'seals key file details. Every pack is rewritten: allow time and free space of about one pack (16 MiB)',
        'per worker plus the index. Bulwark versions before format 2 cannot read the repository afterwards.',
        'Killed or interrupted, run it again: it resumes. Other commands wait for it (exclusive lock).',
      ].join('\n'),
    )
    .action(async (_o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      const { repo, password } = await ctx.openWithPassword();
      try {
        const r = await migrate(repo, password, {});
        // Seen once as format 2 by this host: later listings do not take the new names for a rollback.
        if (r.from === 1) {
          const after = repo.withFormat(2);
          after.freshness = repo.freshness;
          await readSnapshots(after).finally(() => after.close());
        }
        ctx.print(r, (x) =>
          [
            x.from === 1
              ? `upgraded to format 2: ${x.packsConverted} pack(s), ${x.blobsConverted} blob(s) and ${x.snapshotsConverted} snapshot(s) sealed again`
              : 'the repository is in format 2' + (x.removed.packs + x.removed.index + x.removed.snapshots > 0 ? '; finished an interrupted upgrade' : ''),
            `removed from format 1: ${x.removed.packs} pack(s), ${x.removed.index} index file(s), ${x.removed.snapshots} snapshot file(s)${x.removed.keys ? ', and the key file in use (replaced)' : ''}`,
            ...(x.oldKeyFiles > 0 ? [`${x.oldKeyFiles} key file(s) of other passwords keep their creation time, host and user in clear until 'bulwark key passwd' is run with that password`] : []),
          ].join('\n'),
        );
      } finally {
        await repo.close();
      }
    });

  const repair = program.command('repair').description('repair a damaged repository');
  repair
    .command('index')
    .description("rebuild the index from the packs' own headers (after damaged or lost index files)")
    .action(async (_o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        repo.assertMayDelete('rebuild the index (it replaces the index files)');
        await Lock.run(repo, true, 'repair index', async () => {
          const r = await repairIndex(repo);
          ctx.print(r, () =>
            [
              `indexed ${r.blobs} blobs in ${r.packs} packs; wrote ${r.indexFilesWritten} index file(s), removed ${r.indexFilesRemoved} old one(s)`,
              ...r.unreadablePacks.map((u) => `error: pack ${u.pack} cannot be read (${u.reason}); its blobs are not indexed`),
              ...(r.unreadablePacks.length ? ["run 'bulwark check' to see which snapshots are affected"] : []),
            ].join('\n'),
          );
          if (r.unreadablePacks.length > 0) process.exitCode = 1;
        });
      });
    });

  repair
    .command('snapshots')
    .description('write, for each snapshot naming lost data, a new one without it (tagged "repaired"); run check --read-data first')
    .option('--forget', 'remove each original once its repaired copy is saved')
    .option('-n, --dry-run', 'show what would be left out; write nothing')
    .action(async (o: { forget?: boolean; dryRun?: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        await Lock.run(repo, false, 'repair snapshots', async () => {
          await repo.loadIndex();
          if (o.forget && !o.dryRun) repo.assertMayDelete('forget the damaged snapshots');
          const r = await repairSnapshots(repo, { dryRun: o.dryRun ?? false, forget: o.forget ?? false });
          ctx.print(r, () =>
            [
              ...r.repaired.flatMap((x) => [
                o.dryRun ? `snapshot ${shortId(x.from)} would be repaired, leaving out:` : `snapshot ${shortId(x.from)} repaired as ${shortId(x.to ?? '')}${r.forgotten.includes(x.from) ? ' (original removed)' : ''}, leaving out:`,
                ...x.lost.slice(0, 50).map((p) => `  ${p}`),
                ...(x.lost.length > 50 ? [`  … and ${x.lost.length - 50} more`] : []),
              ]),
              r.repaired.length === 0 ? 'no snapshot names lost data' : `${r.repaired.length} snapshot(s) ${o.dryRun ? 'would be ' : ''}repaired`,
            ].join('\n'),
          );
        });
      });
    });

  program
    .command('stats')
    .description('sizes and deduplication ratio, of the repository or one snapshot')
    .argument('[snapshot]', 'snapshot id, prefix, or latest')
    .action(async (ref: string | undefined, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const r = await stats(repo, ref);
        ctx.printData(r, () =>
          [
            `snapshots:        ${r.snapshots}`,
            `stored:           ${bytes(r.storedBytes)} in ${r.packs} packs, ${r.blobs} blobs`,
            `logical size:     ${bytes(r.logicalBytes)} (sum over all snapshots)`,
            `dedup+compress:   ${r.dedupRatio.toFixed(2)}×`,
            ...(r.snapshot ? [`snapshot ${shortId(r.snapshot.id)}: ${bytes(r.snapshot.totalSize)} logical, ${r.snapshot.uniqueBlobs} blobs, ${bytes(r.snapshot.blobBytes)} stored`] : []),
          ].join('\n'),
        );
      });
    });
}

function parseSubset(v: string): DataSubset {
  const part = /^(\d+)\/(\d+)$/.exec(v);
  if (part) {
    const n = Number(part[1]);
    const m = Number(part[2]);
    if (n >= 1 && m >= 1 && n <= m) return { part: n, of: m };
  } else {
    const percent = Number(v.replace(/%$/, ''));
    if (/^\d+(\.\d+)?%?$/.test(v) && percent > 0 && percent <= 100) return { percent };
  }
  throw new BulwarkError('usage', `--read-data-subset takes a percentage from 1 to 100 (e.g. 10%) or a part n/m (e.g. 2/7), not '${v}'`);
}
