// copy
import type { Command } from 'commander';
import { copySnapshots } from '../../repository/copy.js';
import type { Repository } from '../../repository/repository.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { bytes, shortId } from '../format.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

interface CopyFlags {
  to?: string;
  from?: string;
  toPasswordFile?: string;
  fromPasswordFile?: string;
  host?: string;
  tag: string[];
  source?: string;
}

export function register(program: Command): void {
  program
    .command('copy')
    .description('copy restore points to another repository (--to), or from one (--from); deduplicated, resumable')
    .argument('[snapshot...]', 'snapshots to copy (ids or prefixes); all matching the filters when none')
    .option('--to <repo>', 'destination repository (the source is -r / BULWARK_REPOSITORY)')
    .option('--from <repo>', 'source repository (the destination is -r / BULWARK_REPOSITORY)')
    .option('--to-password-file <file>', 'password of the destination (or BULWARK_TO_PASSWORD_FILE, BULWARK_TO_PASSWORD)')
    .option('--from-password-file <file>', 'password of the source (or BULWARK_FROM_PASSWORD_FILE, BULWARK_FROM_PASSWORD)')
    .option('--host <name>', 'only snapshots of this host')
    .option('--tag <tag>', 'only snapshots with this tag (repeatable)', collect, [])
    .option('--source <source>', 'only this source, e.g. files, disk:web01, vm:db01')
    .addHelpText(
      'after',
      [
        '',
        'Snapshots already in the destination (copied before) are skipped, so a copy that was interrupted',
        'is simply run again. The two repositories keep their own passwords and keys.',
        'Examples:',
        '  bulwark copy --to /mnt/offsite/repo --to-password-file /root/.offsite-pw',
        '  bulwark -r /mnt/offsite/repo copy --from /backup/repo --source vm:db01',
      ].join('\n'),
    )
    .action(async (ids: string[], o: CopyFlags, cmd: Command) => {
      const ctx = Context.from(cmd);
      if ((o.to === undefined) === (o.from === undefined)) throw new BulwarkError('usage', 'give either --to <repo> or --from <repo>');
      const here = await ctx.open();
      let other: Repository | undefined;
      try {
        other = o.to !== undefined ? await ctx.openOther(o.to, 'to', o.toPasswordFile) : await ctx.openOther(o.from!, 'from', o.fromPasswordFile);
        const [from, to] = o.to !== undefined ? [here, other] : [other, here];
        const r = await copySnapshots(from, to, { ids, filter: { ...(o.host ? { hostname: o.host } : {}), tags: o.tag, ...(o.source ? { source: o.source } : {}) } });
        ctx.print(r, (x) =>
          [
            ...x.copied.map((c) => `copied ${shortId(c.from)} -> ${shortId(c.to)}`),
            `${x.copied.length} snapshot(s) copied, ${x.skipped.length} already there; ${x.blobsStored} blob(s), ${bytes(x.bytesStored)} stored`,
          ].join('\n'),
        );
      } finally {
        await other?.close();
        await here.close();
      }
    });
}
