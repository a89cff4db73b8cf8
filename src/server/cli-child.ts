// The CLI as a child of the server (runs, retention, restores): the repository's password handed over
// in its environment, never a password file of the server's, and the child bound to the server's life
// through its stdin (BULWARK_EXIT_WITH_PARENT): a killed server leaves no command running.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

export function spawnCli(cli: readonly string[], args: string[], opts: { env?: NodeJS.ProcessEnv; password: string | undefined }): ChildProcessWithoutNullStreams {
  const env: NodeJS.ProcessEnv = { ...(opts.env ?? process.env), BULWARK_EXIT_WITH_PARENT: '1' };
  delete env['BULWARK_PASSWORD_FILE'];
  if (opts.password !== undefined) env['BULWARK_PASSWORD'] = opts.password;
  else delete env['BULWARK_PASSWORD'];
  const [cmd, ...pre] = cli;
  return spawn(cmd!, [...pre, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
}
