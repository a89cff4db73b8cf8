// Where the repository password comes from: --password-file, BULWARK_PASSWORD_FILE, BULWARK_PASSWORD,
// or a prompt when stdin is a terminal. Passwords are never logged or echoed.
import { readFile } from 'node:fs/promises';
import { BulwarkError } from '../util/errors.js';

export interface PasswordSource {
  passwordFile?: string;
}

async function fromFile(path: string): Promise<string> {
  try {
    const text = await readFile(path, 'utf8');
    return text.replace(/\r?\n$/, '');
  } catch (err) {
    throw new BulwarkError('usage', `cannot read password file '${path}': ${(err as Error).message}`);
  }
}

export function prompt(question: string): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY) return Promise.reject(new BulwarkError('usage', 'no password given and no terminal to ask on', { hint: 'set BULWARK_PASSWORD_FILE, BULWARK_PASSWORD or --password-file' }));
  process.stderr.write(question);
  return new Promise((resolve, reject) => {
    let value = '';
    stdin.setRawMode(true);
    stdin.resume();
    const onData = (buf: Buffer): void => {
      for (const ch of buf.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          done();
          resolve(value);
          return;
        }
        if (ch === '\u0003') {
          done();
          reject(new BulwarkError('failed', 'interrupted'));
          return;
        }
        if (ch === '\u007f') value = value.slice(0, -1);
        else value += ch;
      }
    };
    const done = (): void => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
    };
    stdin.on('data', onData);
  });
}

export async function readPassword(src: PasswordSource, opts: { confirm?: boolean; what?: string } = {}): Promise<string> {
  const file = src.passwordFile ?? process.env['BULWARK_PASSWORD_FILE'];
  if (file) return fromFile(file);
  const env = process.env['BULWARK_PASSWORD'];
  if (env !== undefined && env !== '') return env;
  const what = opts.what ?? 'repository password';
  const first = await prompt(`enter ${what}: `);
  if (opts.confirm) {
    const again = await prompt(`enter ${what} again: `);
    if (again !== first) throw new BulwarkError('usage', 'the passwords do not match');
  }
  return first;
}

/**
 * The password of the other repository of a copy: --to-password-file / --from-password-file, then
 * BULWARK_TO_PASSWORD_FILE / BULWARK_FROM_PASSWORD_FILE, BULWARK_TO_PASSWORD / BULWARK_FROM_PASSWORD, or a prompt.
 */
export async function readOtherPassword(side: 'to' | 'from', file?: string): Promise<string> {
  const prefix = `BULWARK_${side.toUpperCase()}_PASSWORD`;
  const f = file ?? process.env[`${prefix}_FILE`];
  if (f) return fromFile(f);
  const env = process.env[prefix];
  if (env !== undefined && env !== '') return env;
  return prompt(`enter the password of the ${side === 'to' ? 'destination' : 'source'} repository: `);
}

/** A second password (key add / passwd): --new-password-file, BULWARK_NEW_PASSWORD, or a prompt. */
export async function readNewPassword(file?: string): Promise<string> {
  if (file) return fromFile(file);
  const env = process.env['BULWARK_NEW_PASSWORD'];
  if (env !== undefined && env !== '') return env;
  const first = await prompt('enter new password: ');
  const again = await prompt('enter new password again: ');
  if (again !== first) throw new BulwarkError('usage', 'the passwords do not match');
  return first;
}
