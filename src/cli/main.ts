// Entry point: parses the command line, runs the command, and maps every outcome to an exit code.
import { Command, CommanderError } from 'commander';
import { BulwarkError } from '../util/errors.js';
import { register as registerBackup } from './commands/backup.js';
import { register as registerCopy } from './commands/copy.js';
import { register as registerExport } from './commands/export.js';
import { register as registerForget } from './commands/forget.js';
import { register as registerInspect } from './commands/inspect.js';
import { register as registerRepo } from './commands/repo.js';
import { register as registerRestore } from './commands/restore.js';
import { register as registerVerifyBoot } from './commands/verify-boot.js';
import { register as registerServeFiles } from './commands/serve-files.js';
import { register as registerMount } from './commands/mount.js';
import { register as registerServeRepo } from './commands/serve-repo.js';
import { register as registerServe } from './commands/serve.js';
import { register as registerVm } from './commands/vm.js';
import { Context } from './context.js';
import { EXIT, exitCodeFor } from './exit-codes.js';

export function buildProgram(): Command {
  const program = new Command('bulwark')
    .description('Live, consistent backup for virtual machines and servers')
    .version('0.1.0')
    .option('-r, --repo <path-or-url>', 'repository location (or BULWARK_REPOSITORY)')
    .option('--password-file <file>', 'file holding the repository password (or BULWARK_PASSWORD_FILE / BULWARK_PASSWORD)')
    .option('--json', 'machine-readable output')
    .option('-q, --quiet', 'less output')
    .option('-v, --verbose', 'more output')
    .option('--sftp-key <file>', 'sftp: repositories: private key file (or BULWARK_SFTP_KEY; a password comes from BULWARK_SFTP_PASSWORD)')
    .option('--sftp-known-hosts <file>', 'sftp: repositories: known_hosts file the server\'s key is checked against (or BULWARK_SFTP_KNOWN_HOSTS; default ~/.ssh/known_hosts)')
    .option('--limit-upload <size>', 'send at most this much per second to the repository, e.g. 10M')
    .option('--limit-download <size>', 'read at most this much per second from the repository, e.g. 50M')
    .showHelpAfterError('(run with --help for usage)')
    .configureHelp({ showGlobalOptions: true })
    .addHelpText(
      'after',
      '\nExit codes: 0 ok, 1 failed, 2 usage error, 3 finished with some items not read or not restored,\n            10 repository not found, 11 wrong password, 12 repository locked, 13 refused: append-only.',
    );
  registerRepo(program);
  registerBackup(program);
  registerInspect(program);
  registerForget(program);
  registerCopy(program);
  registerRestore(program);
  registerExport(program);
  registerVm(program);
  registerVerifyBoot(program);
  registerServeFiles(program);
  registerMount(program);
  registerServeRepo(program);
  registerServe(program);
  const applyExit = (cmd: Command): void => {
    cmd.exitOverride();
    cmd.commands.forEach(applyExit);
  };
  applyExit(program);
  return program;
}

function report(err: unknown, json: boolean): number {
  if (err instanceof CommanderError) {
    // help and version end here too, with exit code 0
    return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  }
  if (err instanceof BulwarkError) {
    if (json) process.stdout.write(JSON.stringify({ type: 'error', code: err.code, message: err.message, ...(err.hint ? { hint: err.hint } : {}) }) + '\n');
    process.stderr.write(`bulwark: ${err.message}\n${err.hint ? `  hint: ${err.hint}\n` : ''}`);
    return exitCodeFor(err.code);
  }
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'ENOSPC') {
    process.stderr.write(`bulwark: no space left on device: ${e.message}\n  hint: free space on the repository's disk; the repository itself is unharmed\n`);
    return EXIT.failed;
  }
  // Not a user error: a bug. Show the stack so it can be reported.
  process.stderr.write(`bulwark: internal error: ${e?.stack ?? String(err)}\n  please report this\n`);
  return EXIT.failed;
}

/** `bulwark help backup files` → `bulwark backup files --help` (commander's help looks one level deep). */
function rewriteHelp(argv: string[]): string[] {
  const i = argv.indexOf('help', 2);
  if (i !== 2 || argv.length <= 3) return argv;
  return [...argv.slice(0, 2), ...argv.slice(3), '--help'];
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(rewriteHelp(argv));
  } catch (err) {
    return report(err, argv.includes('--json'));
  }
  if (process.exitCode !== undefined && process.exitCode !== 0) return Number(process.exitCode);
  return Context.partialSeen ? EXIT.partial : EXIT.ok;
}

// Started by `bulwark serve` for a run: end with the server, whose end of stdin closes when it dies,
// so no backup goes on that the restarted server does not know of (the VMs' guardians clean up).
if (process.env['BULWARK_EXIT_WITH_PARENT'] === '1') {
  const stdin = process.stdin as NodeJS.ReadStream & { unref?: () => void };
  stdin.on('end', () => process.kill(process.pid, 'SIGTERM'));
  stdin.on('error', () => process.kill(process.pid, 'SIGTERM'));
  stdin.resume();
  stdin.unref?.();
}

const code = await main(process.argv);
process.exitCode = code;
