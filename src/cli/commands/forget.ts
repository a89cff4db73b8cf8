// forget | prune
import type { Command } from 'commander';
import { forget } from '../../jobs/forget.js';
import { prune, type PruneResult } from '../../repository/prune.js';
import type { Repository } from '../../repository/repository.js';
import { parseDuration, type GroupKey, type RetentionPolicy } from '../../repository/retention.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { bytes, shortId } from '../format.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function count(name: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v)) throw new BulwarkError('usage', `--keep-${name} takes a whole number, not '${v}'`);
    return Number(v);
  };
}

const GROUP_KEYS: readonly GroupKey[] = ['host', 'source', 'paths', 'tags'];

function parseGroupBy(v: string): GroupKey[] {
  const keys = v === '' ? [] : v.split(',').map((k) => k.trim());
  for (const k of keys) if (!GROUP_KEYS.includes(k as GroupKey)) throw new BulwarkError('usage', `--group-by takes a list of ${GROUP_KEYS.join(', ')}, not '${k}'`);
  return keys as GroupKey[];
}

interface ForgetFlags {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  keepWithin?: string;
  keepTag: string[];
  groupBy: string;
  host?: string;
  tag: string[];
  source?: string;
  dryRun?: boolean;
  prune?: boolean;
  maxUnused?: number;
}

/** '10%' or '0.1' → 0.1 */
function parseUnused(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(v.trim());
  const n = m ? Number(m[1]) / (m[2] ? 100 : 1) : NaN;
  if (!(n >= 0 && n <= 1)) throw new BulwarkError('usage', `--max-unused takes a share such as 10% or 0.1, not '${v}'`);
  return n;
}

function describePrune(r: PruneResult): string {
  const lines = [
    `${r.dryRun ? 'dry run: ' : ''}${r.snapshots} snapshot(s), ${r.packs} pack(s)`,
    `removed ${r.removed.packs} pack(s) condemned earlier (${bytes(r.removed.bytes)} freed)${r.revived ? `; ${r.revived} needed again and kept` : ''}`,
    `condemned ${r.marked.packs} pack(s) (${bytes(r.marked.bytes)})${r.repacked.packs ? `, after copying ${r.repacked.blobs} needed blob(s) out of ${r.repacked.packs} of them` : ''}: a later prune removes them`,
  ];
  if (r.waiting) lines.push(`${r.waiting} condemned pack(s) wait for processes that started before they were condemned (a later prune removes them)`);
  return lines.join('\n');
}

async function runPrune(repo: Repository, o: { dryRun?: boolean; maxUnused?: number }): Promise<PruneResult> {
  return prune(repo, { dryRun: o.dryRun ?? false, ...(o.maxUnused !== undefined ? { maxUnused: o.maxUnused } : {}) });
}

export function register(program: Command): void {
  program
    .command('forget')
    .description('remove restore points by a retention policy (or by id); the data they alone used stays until prune')
    .argument('[snapshot...]', 'snapshots to remove by id or prefix, instead of a policy')
    .option('--keep-last <n>', 'keep the n newest snapshots', count('last'))
    .option('--keep-hourly <n>', 'keep the newest snapshot of each of the n most recent hours', count('hourly'))
    .option('--keep-daily <n>', 'keep the newest snapshot of each of the n most recent days', count('daily'))
    .option('--keep-weekly <n>', 'keep the newest snapshot of each of the n most recent weeks (Monday to Sunday)', count('weekly'))
    .option('--keep-monthly <n>', 'keep the newest snapshot of each of the n most recent months', count('monthly'))
    .option('--keep-yearly <n>', 'keep the newest snapshot of each of the n most recent years', count('yearly'))
    .option('--keep-within <duration>', 'keep every snapshot newer than this before the newest one (e.g. 30d, 2w, 1y6m)')
    .option('--keep-tag <tag>', 'keep every snapshot with this tag (repeatable)', collect, [])
    .option('--group-by <keys>', 'apply the policy to each group of snapshots sharing these (host,source,paths,tags)', 'host,source,paths')
    .option('--host <name>', 'only snapshots of this host')
    .option('--tag <tag>', 'only snapshots with this tag (repeatable)', collect, [])
    .option('--source <source>', 'only this source, e.g. files, disk:web01, vm:db01')
    .option('-n, --dry-run', 'show what would be kept and removed, and why; remove nothing')
    .option('--prune', 'then prune: remove the data no snapshot needs any more')
    .option('--max-unused <share>', 'with --prune: repack packs with more than this share unused (default 10%)', parseUnused)
    .addHelpText(
      'after',
      '\nPeriods are calendar hours, days, ISO weeks, months and years in local time; a snapshot any rule keeps is kept.\nExamples:\n  bulwark forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 3 --dry-run\n  bulwark forget --keep-last 10 --source vm:db01\n  bulwark forget 1a2b3c4d',
    )
    .action(async (ids: string[], o: ForgetFlags, cmd: Command) => {
      const ctx = Context.from(cmd);
      const policy: RetentionPolicy = {
        ...(o.keepLast !== undefined ? { last: o.keepLast } : {}),
        ...(o.keepHourly !== undefined ? { hourly: o.keepHourly } : {}),
        ...(o.keepDaily !== undefined ? { daily: o.keepDaily } : {}),
        ...(o.keepWeekly !== undefined ? { weekly: o.keepWeekly } : {}),
        ...(o.keepMonthly !== undefined ? { monthly: o.keepMonthly } : {}),
        ...(o.keepYearly !== undefined ? { yearly: o.keepYearly } : {}),
        ...(o.keepWithin !== undefined ? { withinMs: parseDuration(o.keepWithin) } : {}),
        ...(o.keepTag.length > 0 ? { tags: o.keepTag } : {}),
      };
      const groupBy = parseGroupBy(o.groupBy);
      await ctx.withRepo(async (repo) => {
        const r = await forget(repo, { policy, groupBy, ids, dryRun: o.dryRun ?? false, filter: { ...(o.host ? { hostname: o.host } : {}), tags: o.tag, ...(o.source ? { source: o.source } : {}) } });
        const data = {
          dryRun: r.dryRun,
          removed: r.removed.map((s) => s.id),
          groups: r.groups.map((g) => ({ key: g.key, decisions: g.decisions.map((d) => ({ snapshot: d.snapshot.id, time: d.snapshot.time, keep: d.keep, reasons: d.reasons })) })),
        };
        ctx.print(data, () => {
          const lines: string[] = [];
          for (const g of r.groups) {
            const kept = g.decisions.filter((d) => d.keep).length;
            const key = Object.entries(g.key).map(([k, v]) => `${k} ${v || '-'}`).join(', ');
            if (key) lines.push(`${key}: keep ${kept}, remove ${g.decisions.length - kept}`);
            for (const d of g.decisions) lines.push(`  ${d.keep ? 'keep  ' : 'remove'}  ${shortId(d.snapshot.id)}  ${d.snapshot.time.replace('T', ' ').replace(/\.\d+Z$/, '')}  ${d.reasons.join(', ')}`);
          }
          if (r.dryRun) lines.push(`dry run: ${r.removed.length} snapshot(s) would be removed; nothing was changed`);
          else lines.push(`removed ${r.removed.length} snapshot(s)${o.prune ? '' : '; the data only they used stays in the repository until it is pruned'}`);
          return lines.join('\n');
        });
        if (o.prune) {
          const p = await runPrune(repo, o);
          ctx.print({ prune: p }, (x) => describePrune(x.prune));
        }
      });
    });

  program
    .command('prune')
    .description('remove the data no snapshot needs; backups may keep running meanwhile')
    .option('--max-unused <share>', 'repack packs with more than this share unused (default 10%)', parseUnused)
    .option('-n, --dry-run', 'say what would be condemned and removed; change nothing')
    .addHelpText(
      'after',
      [
        '',
        'Removal takes two runs: a prune condemns the packs nothing needs, and a later prune removes them once',
        'every process that could still reuse them has finished (so backups never have to stop). Run it',
        'after forget, e.g. nightly: each run removes what the run before condemned.',
        'Examples:',
        '  bulwark forget --keep-daily 7 --keep-weekly 5 --prune',
        '  bulwark prune --max-unused 5%',
      ].join('\n'),
    )
    .action(async (o: { dryRun?: boolean; maxUnused?: number }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const r = await runPrune(repo, o);
        ctx.print(r, describePrune);
      });
    });
}
