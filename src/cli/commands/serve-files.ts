// serve-files: the backup host's built-in file server for restores — every restore point, read-only,
// over WebDAV (server/webdav.ts) and FTP(S) (server/ftp-view.ts) until stopped.
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { Lock } from '../../repository/lock.js';
import { RestorePointDrive } from '../../restore/drive.js';
import { startFtpView } from '../../server/ftp-view.js';
import { readTlsFiles } from '../../server/tls.js';
import { startWebDav } from '../../server/webdav.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { parseHostPort } from '../format.js';


export function register(program: Command): void {
  program
    .command('serve-files')
    .description('serve every restore point read-only over WebDAV (map it as a network drive) and FTP(S) until stopped: snapshots/<time>_<id>/… (docs/drive.md)')
    .option('--webdav <[host:]port>', 'WebDAV: listen here (host defaults to 127.0.0.1: nothing beyond this host unless told); HTTPS with --tls-cert and --tls-key')
    .option('--ftp <[host:]port>', 'FTP: listen here (host defaults to 127.0.0.1); explicit TLS with --tls-cert and --tls-key, then required')
    .option('--tls-cert <file>', 'PEM certificate for HTTPS (WebDAV) and FTPS')
    .option('--tls-key <file>', 'PEM key of --tls-cert')
    .option('--user <name>', 'the login clients give', 'restore')
    .option('--serve-password-file <file>', 'file holding the login\'s password (or BULWARK_SERVE_PASSWORD)')
    .addHelpText(
      'after',
      '\nWithout --tls-cert and --tls-key WebDAV is plain HTTP and the login crosses the network in the clear: keep it on loopback (a warning says so otherwise).\n' +
        '\nExamples:\n  BULWARK_SERVE_PASSWORD=… bulwark serve-files --webdav 127.0.0.1:8080\n  rclone copy :webdav:snapshots/2026-11-28_09-16-38_1a2b3c4d/etc /tmp/etc --webdav-url http://127.0.0.1:8080 --webdav-user restore --webdav-pass "$(rclone obscure …)"\n' +
        '  BULWARK_SERVE_PASSWORD=… bulwark serve-files --webdav 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem\n  curl --cacert cert.pem -u restore:… https://backup.example:8443/snapshots/',
    )
    .action(async (o: { webdav?: string; ftp?: string; tlsCert?: string; tlsKey?: string; user: string; servePasswordFile?: string }, cmd: Command) => {
      const ctx = Context.from(cmd);
      if (!o.webdav && !o.ftp) throw new BulwarkError('usage', 'serve-files needs --webdav, --ftp or both', { hint: 'e.g. --webdav 127.0.0.1:8080 --ftp 127.0.0.1:2121' });
      if (!o.tlsCert !== !o.tlsKey) throw new BulwarkError('usage', '--tls-cert and --tls-key go together');
      const dav = o.webdav ? parseHostPort(o.webdav, '--webdav 127.0.0.1:8080') : undefined;
      const ftp = o.ftp ? parseHostPort(o.ftp, '--webdav 127.0.0.1:8080') : undefined;
      const tlsFiles = o.tlsCert && o.tlsKey ? await readTlsFiles(o.tlsCert, o.tlsKey) : undefined;
      const password = o.servePasswordFile ? (await readFile(o.servePasswordFile, 'utf8')).replace(/\r?\n$/, '') : process.env['BULWARK_SERVE_PASSWORD'];
      if (!password) throw new BulwarkError('usage', 'serve-files needs a password for its login', { hint: 'set BULWARK_SERVE_PASSWORD or give --serve-password-file' });
      await ctx.withRepo(async (repo) => {
        // Shared: prune cannot take away what clients are reading.
        const lock = await Lock.acquire(repo, false, 'serve-files');
        try {
          await repo.loadIndex();
          const drive = new RestorePointDrive(repo);
          const log = ctx.opts.verbose ? { log: (l: string) => ctx.warn(l) } : {};
          const web = dav ? await startWebDav(drive, { ...dav, user: o.user, password, ...(tlsFiles ? { tls: tlsFiles } : {}), ...log }) : undefined;
          if (web?.cleartextOnNetwork) ctx.warn(`WebDAV at ${web.url} is plain HTTP on a network address: the login's password crosses the network in the clear (give --tls-cert and --tls-key for HTTPS, or listen on 127.0.0.1)`);
          const files = ftp ? await startFtpView(drive, { ...ftp, user: o.user, password, ...(tlsFiles ? { tls: tlsFiles } : {}), ...log }).catch(async (err: unknown) => {
            await web?.close();
            throw err;
          }) : undefined;
          try {
            const ftpUrl = files && ftp ? `${tlsFiles ? 'ftps' : 'ftp'}://${ftp.host.includes(':') ? `[${ftp.host}]` : ftp.host}:${files.port}/` : undefined;
            ctx.print({ ...(web ? { webdav: web.url } : {}), ...(ftpUrl ? { ftp: ftpUrl } : {}), user: o.user }, (r) => `restore points served read-only at ${[r.webdav, r.ftp].filter(Boolean).join(' and ')} (login ${r.user}; Ctrl-C to stop)`);
            await new Promise<void>((resolve) => {
              process.once('SIGINT', resolve);
              process.once('SIGTERM', resolve);
            });
          } finally {
            await web?.close();
            await files?.close();
          }
        } finally {
          await lock.release();
        }
      });
    });
}
