// export: a restore point's disks served over NBD until interrupted.
import type { Command } from 'commander';
import { startExport } from '../../jobs/export.js';
import { Context } from '../context.js';
import { bytes } from '../format.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

export function register(program: Command): void {
  program
    .command('export')
    .description('serve the disks of a VM or disk snapshot over NBD, read-only, straight from the repository, until stopped (Ctrl-C)')
    .argument('<snapshot>', "snapshot id, unique prefix, or 'latest'")
    .requiredOption('--listen <where>', 'unix:PATH, or tcp:[HOST:]PORT (HOST defaults to 127.0.0.1)')
    .option('--disk <name>', 'only this disk (repeatable); each disk is an export named after it', collect, [])
    .option('--writable <dir>', 'accept writes, kept in <dir>/<disk>.overlay (never in the repository)')
    .option('--host <hostname>', "with 'latest': snapshots of this host")
    .option('--tag <tag>', "with 'latest': snapshots with this tag (repeatable)", collect, [])
    .option('--source <source>', "with 'latest': snapshots of this source (vm:NAME, disk:NAME)")
    .addHelpText(
      'after',
      '\nExamples:\n  bulwark export latest --source vm:web01 --listen unix:/run/bulwark/web01.nbd\n  qemu-img convert -O qcow2 "nbd+unix:///vda?socket=/run/bulwark/web01.nbd" web01-vda.qcow2\n  qemu-system-x86_64 … -drive file=nbd+unix:///vda?socket=/run/bulwark/web01.nbd,snapshot=on',
    )
    .action(async (ref: string, o: { listen: string; disk: string[]; writable?: string; host?: string; tag: string[]; source?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const running = await startExport(repo, {
          ref,
          filter: { ...(o.host ? { hostname: o.host } : {}), ...(o.tag.length ? { tags: o.tag } : {}), ...(o.source ? { source: o.source } : {}) },
          disks: o.disk,
          listen: o.listen,
          ...(o.writable ? { overlayDir: o.writable } : {}),
          log: (m) => ctx.warn(m),
        });
        try {
          ctx.print({ snapshot: running.snapshot.id, listening: running.exported.address, disks: running.exported.disks }, (r) =>
            [`serving snapshot ${r.snapshot.slice(0, 8)} over NBD at ${r.listening} (Ctrl-C to stop):`, ...r.disks.map((d) => `  ${d.name}  ${bytes(d.size)}  ${d.uri}${d.overlay ? `  (writes kept in ${d.overlay})` : ''}`)].join('\n'),
          );
          await new Promise<void>((resolve) => {
            process.once('SIGINT', resolve);
            process.once('SIGTERM', resolve);
          });
        } finally {
          await running.stop();
        }
      });
    });
}
