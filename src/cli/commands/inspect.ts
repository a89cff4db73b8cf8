// snapshots | ls | diff
import type { Command } from 'commander';
import { latestVerifyBoot, readNotes } from '../../repository/notes.js';
import { diff, find, ls, type LsEntry } from '../../jobs/inspect.js';
import { listSnapshots } from '../../repository/snapshot.js';
import { Context } from '../context.js';
import { bytes, shortId } from '../format.js';
import { table } from '../table.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function modeString(type: string, mode: number | undefined): string {
  const t = { dir: 'd', symlink: 'l', fifo: 'p', chardev: 'c', blockdev: 'b', socket: 's', disk: 'D', part: 'P', other: '?' }[type] ?? '-';
  if (mode === undefined) return t;
  const rwx = (m: number): string => `${m & 4 ? 'r' : '-'}${m & 2 ? 'w' : '-'}${m & 1 ? 'x' : '-'}`;
  return t + rwx(mode >> 6) + rwx(mode >> 3) + rwx(mode);
}

export function register(program: Command): void {
  program
    .command('snapshots')
    .description('list restore points')
    .option('--host <name>', 'only this host')
    .option('--tag <tag>', 'only snapshots with this tag (repeatable)', collect, [])
    .option('--source <source>', 'only this source, e.g. files, disk:web01, vm:db01')
    .action(async (o: { host?: string; tag: string[]; source?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        // verify-boot results, recorded on the snapshots as notes.
        const verified = latestVerifyBoot((await readNotes(repo)).notes);
        const list = (await listSnapshots(repo, { ...(o.host ? { hostname: o.host } : {}), tags: o.tag, ...(o.source ? { source: o.source } : {}) })).map((s) => {
          const v = verified.get(s.id);
          return v ? { ...s, verifiedBoot: { ok: v.ok, time: v.time, ...(v.agentMs !== undefined ? { agentMs: v.agentMs } : {}), ...(v.reason ? { reason: v.reason } : {}) } } : s;
        });
        ctx.printData(list, (l) =>
          l.length === 0
            ? 'no snapshots'
            : table(
                ['ID', 'Time', 'Host', 'Source', 'Consistency', 'Boots', 'Size', 'Paths / disks', 'Tags'],
                l.map((s) => [shortId(s.id), s.time.replace('T', ' ').replace(/\.\d+Z$/, ''), s.hostname, s.source, s.consistency ?? '-', 'verifiedBoot' in s ? (s.verifiedBoot.ok ? 'yes' : 'NO') : '-', bytes(s.summary.totalSize), s.tree ? s.paths.join(' ') : (s.disks ?? []).map((d) => d.name).join(' '), s.tags.join(',')]),
                [6],
              ) + `\n${l.length} snapshot(s)`,
        );
      });
    });

  program
    .command('find')
    .description('paths whose name matches a pattern, in a file snapshot or across the file systems of a VM or disk snapshot')
    .argument('<snapshot>', "snapshot id, prefix or 'latest'")
    .argument('<pattern>', "a name pattern: * and ? as in the shell, case-insensitive (quote it: 'nginx*.conf')")
    .action(async (ref: string, pattern: string, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const found: LsEntry[] = [];
        const r = await find(repo, ref, pattern, (e) => {
          if (ctx.opts.json) found.push(e);
          else process.stdout.write(`${e.path}\n`);
        });
        for (const s of r.skipped) ctx.warn(`not searched: ${s}`);
        if (ctx.opts.json) ctx.printData({ snapshot: r.snapshot.id, matches: found, skipped: r.skipped }, () => '');
        else ctx.info(`${r.matches} match(es)`);
      });
    });

  program
    .command('ls')
    .description('list the contents of a snapshot')
    .argument('<snapshot[:path]>', "snapshot id, prefix or 'latest', optionally with a path")
    .option('-l, --long', 'show mode, owner, size and time')
    .option('--no-recursive', 'only the entries directly under the path')
    .action(async (ref: string, o: { long?: boolean; recursive: boolean }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const colon = ref.indexOf(':');
      const snap = colon >= 0 ? ref.slice(0, colon) : ref;
      const path = colon >= 0 ? ref.slice(colon + 1) || '/' : '/';
      await ctx.withRepo(async (repo) => {
        const r = await ls(repo, snap, path, o.recursive);
        ctx.printData({ snapshot: r.snapshot.id, entries: r.entries }, (d) =>
          d.entries
            .map((e) => {
              const part = e.type === 'part' ? `  (${e.fs ? `${e.fs}${e.label ? ` "${e.label}"` : ''}` : (e.note ?? '')})` : '';
              return (o.long ? `${modeString(e.type, e.mode)} ${String(e.uid ?? '').padStart(5)} ${String(e.gid ?? '').padStart(5)} ${String(e.size).padStart(12)} ${e.mtime ?? ''} ${e.path}${e.linkTarget ? ` -> ${e.linkTarget}` : ''}` : e.path) + part;
            })
            .join('\n'),
        );
      });
    });

  program
    .command('diff')
    .description('what changed between two snapshots')
    .argument('<snapshot-a>')
    .argument('<snapshot-b>')
    .action(async (a: string, b: string, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const r = await diff(repo, a, b);
        ctx.printData(r, (d) =>
          [
            `comparing ${shortId(d.from)} to ${shortId(d.to)}`,
            ...d.added.map((p) => `+ ${p}`),
            ...d.removed.map((p) => `- ${p}`),
            ...d.modified.map((p) => `M ${p}`),
            ...d.metadata.map((p) => `U ${p}`),
            ...(d.disks ?? []).map((x) => `disk ${x.name}: ${x.changedBlocks} block(s) changed (${bytes(x.changedBytes)})`),
            `${d.added.length} added, ${d.removed.length} removed, ${d.modified.length} modified, ${d.metadata.length} metadata only`,
          ].join('\n'),
        );
      });
    });
}
