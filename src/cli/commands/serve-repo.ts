// serve-repo: Bulwark's own repository server (server/repo-server.ts), for a backup host that other
// machines back up to over rest:https://user@host:port/path. Users are managed with --add-user.
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { addUser, startRepoServer } from '../../server/repo-server.js';
import { BulwarkError } from '../../util/errors.js';
import { Context } from '../context.js';
import { bytes, parseSize } from '../format.js';

interface ServeRepoOptions {
  data: string;
  listen: string;
  tlsCert?: string;
  tlsKey?: string;
  appendOnly?: boolean;
  addUser?: string;
  passwordFile?: string;
  quota?: string;
  userAppendOnly?: boolean;
}

export function register(program: Command): void {
  program
    .command('serve-repo')
    .description('serve repositories to other machines over HTTPS (rest: locations), one folder per user, with quotas and append-only users, until stopped')
    .requiredOption('--data <dir>', 'data folder: <dir>/<user>/<repository>, users in <dir>/.users, a generated certificate in <dir>/.tls/')
    .option('--listen <host:port>', 'listen here (nothing beyond this host unless told)', '127.0.0.1:8000')
    .option('--tls-cert <file>', 'PEM certificate (default: a self-signed one made once in <dir>/.tls/)')
    .option('--tls-key <file>', 'PEM key of --tls-cert')
    .option('--append-only', 'every user append-only: nothing but locks can be deleted or replaced')
    .option('--add-user <name>', 'add the user (or replace its password and settings) and exit')
    .option('--password-file <file>', "with --add-user: file holding the user's password")
    .option('--quota <size>', 'with --add-user: most the user may store, e.g. 500G')
    .option('--user-append-only', 'with --add-user: the user may not delete or replace anything but locks')
    .addHelpText(
      'after',
      '\nExamples:\n  bulwark serve-repo --data /srv/bulwark --add-user web01 --password-file web01.pw --quota 500G --user-append-only\n  bulwark serve-repo --data /srv/bulwark --listen 0.0.0.0:8000\n  BULWARK_REST_PASSWORD=… bulwark -r rest:https://web01@backup.example:8000/web01 init',
    )
    .action(async (o: ServeRepoOptions, cmd: Command) => {
      const ctx = Context.from(cmd);
      // The program has a global --password-file (the repository's) which commander fills first.
      const passwordFile = o.passwordFile ?? ctx.opts.passwordFile;
      if (o.addUser === undefined) {
        for (const [flag, given] of [['--password-file', passwordFile], ['--quota', o.quota], ['--user-append-only', o.userAppendOnly]] as const) {
          if (given !== undefined) throw new BulwarkError('usage', `${flag} goes with --add-user`);
        }
        await serve(ctx, o);
        return;
      }
      if (!passwordFile) throw new BulwarkError('usage', '--add-user needs --password-file', { hint: 'put the password in a file readable only by you, e.g. umask 077; pwgen 32 1 > web01.pw' });
      const password = (await readFile(passwordFile, 'utf8')).replace(/\r?\n$/, '');
      let quotaBytes: number | undefined;
      if (o.quota !== undefined) {
        quotaBytes = parseSize(o.quota);
        if (quotaBytes === undefined) throw new BulwarkError('usage', `'${o.quota}' is not a size`, { hint: 'e.g. --quota 500G or --quota 1.5T' });
      }
      await addUser(o.data, o.addUser, password, { ...(quotaBytes !== undefined ? { quotaBytes } : {}), appendOnly: o.userAppendOnly ?? false });
      ctx.print({ user: o.addUser, quota: quotaBytes ?? null, appendOnly: o.userAppendOnly ?? false }, (r) => `user '${r.user}' saved${r.quota !== null ? `, quota ${bytes(r.quota)}` : ''}${r.appendOnly ? ', append-only' : ''} (a running server picks it up at its next request)`);
    });
}

async function serve(ctx: Context, o: ServeRepoOptions): Promise<void> {
  if (!o.tlsCert !== !o.tlsKey) throw new BulwarkError('usage', '--tls-cert and --tls-key go together');
  const running = await startRepoServer({
    data: o.data,
    listen: o.listen,
    ...(o.tlsCert && o.tlsKey ? { tlsCert: o.tlsCert, tlsKey: o.tlsKey } : {}),
    ...(o.appendOnly ? { appendOnly: true } : {}),
    ...(ctx.opts.verbose ? { log: (line: string) => ctx.info(line) } : {}),
  });
  try {
    ctx.print({ url: running.url, fingerprint: running.fingerprint, appendOnly: o.appendOnly ?? false }, (r) =>
      [
        `serving repositories at ${r.url}${r.appendOnly ? ' (append-only for every user)' : ''} (Ctrl-C to stop)`,
        `certificate SHA-256 fingerprint: ${r.fingerprint ?? '-'}`,
        `clients use rest:${r.url.replace('://', '://USER@')}REPO with BULWARK_REST_PASSWORD and that fingerprint pinned`,
      ].join('\n'),
    );
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
  } finally {
    await running.close();
  }
}
