// key list | add | remove | passwd, and help, through the real CLI.
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let repo: string;
beforeAll(async () => {
  tmp = await tempDir();
  repo = `${tmp.path}/repo`;
  await writeFile(`${tmp.path}/pw1`, 'first password\n');
  expect((await runCli(['init', '-r', repo, '--password-file', `${tmp.path}/pw1`])).code).toBe(0);
});
afterAll(async () => {
  await tmp.cleanup();
});

const as = (pw: string): Record<string, string> => ({ BULWARK_REPOSITORY: repo, BULWARK_PASSWORD: pw, BULWARK_PASSWORD_FILE: '' });

describe('keys', () => {
  it('adds a second password, lists both, removes one, and changes one', async () => {
    const add = await runCli(['key', 'add'], { env: { ...as('first password'), BULWARK_NEW_PASSWORD: 'second password' } });
    expect(add.code, add.stderr).toBe(0);
    const list = JSON.parse((await runCli(['key', 'list', '--json'], { env: as('second password') })).stdout) as { id: string; current: boolean }[];
    expect(list).toHaveLength(2);
    const firstKey = list.find((k) => !k.current)!;
    const self = await runCli(['key', 'remove', list.find((k) => k.current)!.id.slice(0, 8)], { env: as('second password') });
    expect(self.code).toBe(2);
    expect(self.stderr).toMatch(/refusing to remove the key in use/);
    expect((await runCli(['key', 'remove', firstKey.id.slice(0, 8)], { env: as('second password') })).code).toBe(0);
    expect((await runCli(['snapshots'], { env: as('first password') })).code).toBe(11);

    const pw = await runCli(['key', 'passwd'], { env: { ...as('second password'), BULWARK_NEW_PASSWORD: 'third password' } });
    expect(pw.code, pw.stderr).toBe(0);
    expect((await runCli(['snapshots'], { env: as('second password') })).code).toBe(11);
    expect((await runCli(['snapshots'], { env: as('third password') })).code).toBe(0);
  });

  it('documents each command with an example, and the exit codes', async () => {
    const h = await runCli(['help', 'backup', 'files']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/Example:\n\s+bulwark .*backup files/);
    const top = await runCli(['--help']);
    expect(top.stdout).toMatch(/10 repository not found, 11 wrong password, 12 repository locked/);
  });
});
