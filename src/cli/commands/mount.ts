// mount: every restore point as a read-only folder until stopped.
import type { Command } from 'commander';
import { startMount } from '../../jobs/mount.js';
import { Context } from '../context.js';

export function register(program: Command): void {
  program
    .command('mount')
    .description('show every restore point as a read-only folder (FUSE) until stopped (Ctrl-C): snapshots/<time>_<id>/ with the files of file backups, <disk>.raw and <disk>/<partition>/… for VM and disk backups')
    .argument('<mountpoint>', 'an empty folder')
    .addHelpText('after', '\nExamples:\n  mkdir -p /mnt/restore && bulwark mount /mnt/restore\n  ls /mnt/restore/snapshots/\n  cp /mnt/restore/snapshots/2026-11-28_09-16-38_1a2b3c4d/etc/hosts /tmp/\n  qemu-img convert -O qcow2 /mnt/restore/snapshots/…/vda.raw /tmp/vda.qcow2')
    .action(async (mountpoint: string, _o: unknown, cmd: Command) => {
      const ctx = Context.from(cmd);
      await ctx.withRepo(async (repo) => {
        const m = await startMount(repo, mountpoint);
        try {
          ctx.print({ mountpoint: m.mountpoint }, (r) => `restore points mounted read-only at ${r.mountpoint} (Ctrl-C to unmount)`);
          await Promise.race([
            m.mounted.closed,
            new Promise<void>((done) => {
              process.once('SIGINT', done);
              process.once('SIGTERM', done);
            }),
          ]);
        } finally {
          await m.stop();
        }
      });
    });
}
