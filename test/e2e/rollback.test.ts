// Rollback: whoever can write the storage can delete the newest snapshots, and 'latest' would silently
// be an older point. This host remembers what it saw and says so.
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { objectPath } from '../helpers/hostile.js';
import { tempDir } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;

beforeAll(async () => {
  tmp = await tempDir();
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'pw', BULWARK_STATE_DIR: `${tmp.path}/state` };
  expect((await runCli(['init'], { env })).code).toBe(0);
  await fsp.mkdir(`${tmp.path}/src`);
});

afterAll(async () => {
  await tmp.cleanup();
});

describe('rollback detection', () => {
  it('snapshot files deleted behind the client are reported once, with the newest time going backwards', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      await fsp.writeFile(`${tmp.path}/src/f`, `version ${i}\n`);
      const r = await runCli(['backup', 'files', `${tmp.path}/src`, '--json'], { env });
      expect(r.code, r.stderr).toBe(0);
      ids.push(jsonResult<{ snapshot: string }>(r).snapshot);
    }
    const quiet = await runCli(['snapshots'], { env });
    expect(quiet.stderr).toBe('');
    // The storage is rolled back: the two newest restore points disappear.
    for (const id of ids.slice(1)) await fsp.rm(objectPath(`${tmp.path}/repo`, 'snapshots', id));
    const r = await runCli(['snapshots'], { env });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`2 snapshot\\(s\\) this host saw before are gone from the repository \\((${ids[1]!.slice(0, 8)}|${ids[2]!.slice(0, 8)}), `));
    expect(r.stderr).toMatch(/the newest snapshot .* is older than the newest this host saw before/);
    // Said once: the next command is quiet again (the record is what was seen now).
    expect((await runCli(['snapshots'], { env })).stderr).toBe('');
  });

  it('another host (its own record) sees nothing amiss', async () => {
    const r = await runCli(['snapshots'], { env: { ...env, BULWARK_STATE_DIR: `${tmp.path}/other-state` } });
    expect(r.stderr).toBe('');
  });
});
