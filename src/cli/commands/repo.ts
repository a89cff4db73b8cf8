// init | key | unlock | check | stats
import type { Command } from 'commander';
import { stats } from '../../jobs/inspect.js';
import { checkRepository } from '../../repository/check.js';
import { listKeys } from '../../repository/keys.js';
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
    .addHelpText('after', '\nExample:\n  BULWARK_PASSWORD_FILE=/root/.bulwark-pw bulwark init -r /backup/repo')
    .action(async (_o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      const repo = await ctx.init({});
      try {
        ctx.print({ id: repo.config.id, location: repo.backend.properties.location }, (r) =>
          [`created repository ${shortId(r.id)} at ${r.location}`, '', 'Keep the password safe: without it the backups cannot be read.'].join('\n'),
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
        const keys = (await listKeys(repo.backend)).map((k) => ({ ...k, current: k.id === repo.keyId }));
        ctx.printData(keys, (ks) => table(['', 'ID', 'User', 'Host', 'Created'], ks.map((k) => [k.current ? '*' : '', shortId(k.id), k.username, k.hostname, k.created])));
      });
    });
  key
    .command('add')
    .description('add a password; the new password comes from --new-password-file, BULWARK_NEW_PASSWORD or a prompt')
    .option('--new-password-file <file>', 'file holding the new password')
    .action(async (o: { newPasswordFile?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const id = await repo.addKey(await readNewPassword(o.newPasswordFile));
        ctx.print({ id }, (r) => `added key ${shortId(r.id)}`);
      });
    });
  key
    .command('remove')
    .description('remove a key (not the one in use)')
    .argument('<id>', 'key id or unique prefix')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const keys = await listKeys(repo.backend);
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
    .option('--read-data-subset <n%>', 'read and verify a random n% of the packs')
    .addHelpText('after', '\nExample:\n  bulwark check --read-data')
    .action(async (o: { readData?: boolean; readDataSubset?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      let subset: number | undefined;
      if (o.readDataSubset !== undefined) {
        subset = Number(o.readDataSubset.replace(/%$/, ''));
        if (!(subset > 0 && subset <= 100)) throw new BulwarkError('usage', `--read-data-subset takes a percentage from 1 to 100, not '${o.readDataSubset}'`);
      }
      await ctx.withRepo(async (repo) => {
        const lock = await Lock.acquire(repo, false, 'check');
        try {
          const r = await checkRepository(repo, { readData: o.readData ?? false, ...(subset !== undefined ? { readDataSubset: subset } : {}) });
          const damagedSnapshots = [...new Set(r.affected.map((a) => a.snapshot))];
          ctx.print({ ...r, ok: r.problems.length === 0, damagedSnapshots }, () => {
            const lines = [`checked ${r.snapshots} snapshots, ${r.packs} packs${r.packsRead ? `; read ${r.packsRead} packs, ${r.blobsRead} blobs` : ''}`];
            if (r.unreferencedPacks) lines.push(`${r.unreferencedPacks} unreferenced pack(s) (left by interrupted backups; harmless)`);
            for (const p of r.problems) lines.push(`error: ${p.message}`);
            for (const a of r.affected) lines.push(`damaged: snapshot ${shortId(a.snapshot)} ${a.path}`);
            lines.push(r.problems.length === 0 ? 'no errors were found' : `${r.problems.length} problem(s) found; ${damagedSnapshots.length} snapshot(s) affected`);
            return lines.join('\n');
          });
          if (r.problems.length > 0) {
            process.exitCode = 1;
          }
        } finally {
          await lock.release();
        }
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
