// The README's main command: `npm run demo` boots the test guest and backs it up live.
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { tempDir } from '../helpers/repo.js';

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir('bw-demo-');
});
afterAll(async () => {
  await tmp.cleanup();
});

it('npm run demo: live backup of a running VM, full then incremental, restored disk clean', () => {
  const r = spawnSync('bash', ['scripts/demo.sh'], { env: { ...process.env, BULWARK_DEMO_DIR: tmp.path }, encoding: 'utf8', timeout: 240_000 });
  const out = r.stdout + r.stderr;
  expect(r.status, out).toBe(0);
  expect(out).toMatch(/VM demo01: snapshot [0-9a-f]{8}, application-consistent, I\/O held [\d.]+ ms\n {2}vda: full read/);
  expect(out).toMatch(/vda: incremental read of/);
  expect(out).toMatch(/2 snapshot\(s\)/);
  expect(out).toMatch(/data: \d+\/\d+ files/); // e2fsck -fn passed on the restored disk
}, 300_000);
