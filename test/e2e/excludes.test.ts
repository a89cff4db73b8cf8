// --exclude, --exclude-file and --one-file-system through the CLI, with a real mount inside the tree.
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let src: string;
let env: Record<string, string>;
beforeAll(async () => {
  tmp = await tempDir();
  src = `${tmp.path}/src`;
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'x' };
  await mkdir(`${src}/cache/deep`, { recursive: true });
  await mkdir(`${src}/app/node_modules/pkg`, { recursive: true });
  await mkdir(`${src}/mnt`, { recursive: true });
  for (const f of ['keep.txt', 'drop.tmp', 'cache/deep/x', 'app/main.js', 'app/node_modules/pkg/index.js', 'app/notes.log']) await writeFile(`${src}/${f}`, f);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', `${src}/mnt`]);
  await writeFile(`${src}/mnt/on-other-fs`, 'elsewhere');
  await writeFile(`${tmp.path}/excludes`, '# caches and logs\n*.log\n\n/' + src.slice(1) + '/cache\n');
  expect((await runCli(['init'], { env })).code).toBe(0);
});
afterAll(async () => {
  execFileSync('umount', ['-l', `${src}/mnt`]);
  await tmp.cleanup();
});

async function listed(): Promise<string[]> {
  const r = await runCli(['ls', 'latest', '--json'], { env });
  return (JSON.parse(r.stdout) as { entries: { path: string }[] }).entries.map((e) => e.path.slice(src.length)).filter((p) => p.length > 0);
}

describe('excludes', () => {
  it('leaves out what --exclude and --exclude-file name, and other file systems with -x', async () => {
    const r = await runCli(['backup', 'files', src, '--exclude', '*.tmp', '--exclude', 'node_modules', '--exclude-file', `${tmp.path}/excludes`, '--one-file-system'], { env });
    expect(r.code, r.stderr).toBe(0);
    expect((await listed()).sort()).toEqual(['/app', '/app/main.js', '/keep.txt', '/mnt'].sort());
  });

  it('without -x the mounted file system is backed up too', async () => {
    const r = await runCli(['backup', 'files', src], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(await listed()).toContain('/mnt/on-other-fs');
  });
});
