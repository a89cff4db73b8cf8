// serve-files: the backup host's built-in file server for restores — every restore point, read-only,
// over WebDAV (server/webdav.ts) until stopped.
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { Lock } from '../../repository/lock.js';
import { RestorePointDrive } from '../../restore/drive.js';
import { startWebDav } from '../../server/webdav.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';

function hostPort(spec: string): { host: string; port: number } {
  const m = /^(?:(\[[^\]]+\]|[^:]+):)?(\d{1,5})$/.exec(spec);
  if (!m || Number(m[2]) > 65535) throw new BulwarkError('usage', `'${spec}' is not [HOST:]PORT`, { hint: 'e.g. --webdav 127.0.0.1:8080' });
  return { host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

export function register(program: Command): void {
  program
    .command('serve-files')
    .description('serve every restore point read-only over WebDAV (map it as a network drive) until stopped: snapshots/<time>_<id>/… as in mount')
    .requiredOption('--webdav <[host:]port>', 'listen here (host defaults to 127.0.0.1: nothing beyond this host unless told)')
    .option('--user <name>', 'the login clients give', 'restore')
    .option('--serve-password-file <file>', 'file holding the login\'s password (or BULWARK_SERVE_PASSWORD)')
    .addHelpText('after', '\nExamples:\n  BULWARK_SERVE_PASSWORD=… bulwark serve-files --webdav 127.0.0.1:8080\n  rclone copy :webdav:snapshots/2026-11-28_09-16-38_1a2b3c4d/etc /tmp/etc --webdav-url http://127.0.0.1:8080 --webdav-user restore --webdav-pass "$(rclone obscure …)"')
    .action(async (o: { webdav: string; user: string; servePasswordFile?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      const listen = hostPort(o.webdav);
      const password = o.servePasswordFile ? (await readFile(o.servePasswordFile, 'utf8')).replace(/\r?\n$/, '') : process.env['BULWARK_SERVE_PASSWORD'];
      if (!password) throw new BulwarkError('usage', 'serve-files needs a password for its login', { hint: 'set BULWARK_SERVE_PASSWORD or give --serve-password-file' });
      await ctx.withRepo(async (repo) => {
        // Shared: prune cannot take away what clients are reading.
        const lock = await Lock.acquire(repo, false, 'serve-files');
        try {
          await repo.loadIndex();
          const dav = await startWebDav(new RestorePointDrive(repo), { ...listen, user: o.user, password, ...(ctx.opts.verbose ? { log: (l: string) => ctx.warn(l) } : {}) });
          try {
            ctx.print({ webdav: dav.url, user: o.user }, (r) => `restore points served read-only over WebDAV at ${r.webdav} (login ${r.user}; Ctrl-C to stop)`);
            await new Promise<void>((resolve) => {
              process.once('SIGINT', resolve);
              process.once('SIGTERM', resolve);
            });
          } finally {
            await dav.close();
          }
        } finally {
          await lock.release();
        }
      });
    });
}
