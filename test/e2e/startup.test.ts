// What a command loads: the heavy packages that only some commands use (remote stores, the web server,
// the XML parser) stay out of every other command's start-up and memory (docs/performance.md). Seen
// from outside: a module hook in the CLI's process records every module that Node loads.
import { readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, type CliResult } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';

const HEAVY = ['@aws-sdk/client-s3', '@aws-sdk/lib-storage', 'ssh2', 'basic-ftp', 'hono', '@hono/node-server', 'zod', 'better-sqlite3', 'nodemailer', 'fast-xml-parser'];

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
beforeAll(async () => {
  tmp = await tempDir();
  // ES modules pass the resolve hook (run on the hooks thread; it writes to the shared stderr); CommonJS
  // packages loaded by require() are in the module cache when the process exits.
  await writeFile(`${tmp.path}/hooks.mjs`, "export async function resolve(s, c, next) { const r = await next(s, c); process.stderr.write(`LOADED ${r.url}\\n`); return r; }\n");
  await writeFile(
    `${tmp.path}/record.mjs`,
    [
      "import { register, createRequire } from 'node:module';",
      "import { writeFileSync } from 'node:fs';",
      `register(${JSON.stringify(`file://${tmp.path}/hooks.mjs`)});`,
      'const require = createRequire(import.meta.url);',
      `const out = ${JSON.stringify(`${tmp.path}/cjs-`)} + process.pid + '.txt';`,
      "process.on('exit', () => writeFileSync(out, Object.keys(require('node:module')._cache).join('\\n')));",
    ].join('\n'),
  );
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'x' };
  await writeFile(`${tmp.path}/file.txt`, 'hello');
  expect((await runCli(['init'], { env })).code).toBe(0);
});
afterAll(async () => {
  await tmp.cleanup();
});

/** The packages (by node_modules folder) that a CLI run loaded. */
async function packagesLoaded(args: string[], extraEnv: Record<string, string> = {}): Promise<{ r: CliResult; packages: Set<string> }> {
  let pid = 0;
  const r = await runCli(args, { env: { ...env, ...extraEnv, NODE_OPTIONS: `--import ${tmp.path}/record.mjs` }, onSpawn: (p) => (pid = p) });
  const urls = r.stderr.split('\n').filter((l) => l.startsWith('LOADED ')).map((l) => l.slice(7));
  const cjs = (await readFile(`${tmp.path}/cjs-${pid}.txt`, 'utf8')).split('\n');
  const packages = new Set<string>();
  for (const u of [...urls, ...cjs]) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u);
    if (m) packages.add(m[1]!);
  }
  return { r, packages };
}

describe('start-up', () => {
  it('a local backup and listing load none of the heavy packages', async () => {
    for (const args of [['--version'], ['backup', 'files', `${tmp.path}/file.txt`], ['snapshots']]) {
      const { r, packages } = await packagesLoaded(args);
      expect(r.code, r.stderr).toBe(0);
      // The hook saw the packages a local backup does need: the record is not simply empty.
      if (args[0] === 'backup') expect([...packages]).toContain('zstd-napi');
      expect(HEAVY.filter((p) => packages.has(p)), args.join(' ')).toEqual([]);
    }
  });

  it('a command that needs one loads it', async () => {
    // An S3 location on a closed port: the SDK must be loaded to try it (and the attempt fails).
    const { r, packages } = await packagesLoaded(['-r', 's3:http://127.0.0.1:9/bucket', 'snapshots'], { BULWARK_RETRIES: '1', BULWARK_NET_TIMEOUT: '2' });
    expect(r.code).not.toBe(0);
    expect(packages.has('@aws-sdk/client-s3')).toBe(true);
    expect(packages.has('ssh2')).toBe(false);
  });
});
