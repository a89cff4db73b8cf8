// bulwark export: a disk snapshot served over NBD from the repository, read by qemu-img and libnbd's
// nbdinfo (the outside witnesses): identical bytes, holes reported as holes, several clients at once,
// read-only unless --writable, and writes never reaching the repository.
import { execFile, execFileSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli, startCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { makeSeededFiles } from '../fixtures/tree.js';

const run = promisify(execFile);
let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let image: string;
let snapshot: string;

interface Ready {
  snapshot: string;
  listening: string;
  disks: { name: string; size: number; uri: string; overlay?: string }[];
}

beforeAll(async () => {
  tmp = await tempDir('bw-export-');
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'export pw' };
  expect((await runCli(['init'], { env })).code).toBe(0);
  const fill = `${tmp.path}/fill`;
  await makeSeededFiles(fill, 400, 5);
  image = `${tmp.path}/web.img`;
  // A real ext4 of 96 MiB, mostly empty: holes to report.
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', fill, image, '96M']);
  const b = await runCli(['backup', 'disk', image, '--json'], { env });
  expect(b.code, b.stderr).toBe(0);
  snapshot = jsonResult<{ snapshots: { snapshot: string }[] }>(b).snapshots[0]!.snapshot;
});

afterAll(async () => {
  await tmp?.cleanup();
});

describe('bulwark export', () => {
  it('serves the disk read-only: qemu-img reads it identical, nbdinfo sees the holes, several clients at once', async () => {
    const sock = `${tmp.path}/web.nbd`;
    const ex = await startCli<Ready>(['export', snapshot, '--listen', `unix:${sock}`], { env });
    try {
      expect(ex.ready.disks).toEqual([{ name: 'web', size: 96 * 1024 * 1024, uri: `nbd+unix:///web?socket=${sock}` }]);
      const uri = ex.ready.disks[0]!.uri;
      // Two clients at once, each comparing the whole disk.
      await Promise.all([run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, uri]), run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, uri])]);
      const list = execFileSync('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${sock}`]).toString();
      expect(JSON.parse(list).exports.map((e: { 'export-name': string }) => e['export-name'])).toEqual(['web']);
      const map = JSON.parse(execFileSync('nbdinfo', ['--map', '--json', uri]).toString()) as { offset: number; length: number; type: number; description: string }[];
      const holes = map.filter((e) => e.description.includes('hole')).reduce((n, e) => n + e.length, 0);
      expect(holes, 'most of a mostly empty disk is reported as holes').toBeGreaterThan(48 * 1024 * 1024);
      expect(map.reduce((n, e) => n + e.length, 0)).toBe(96 * 1024 * 1024);
      // Read-only: a write is refused by the server.
      await expect(run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', uri])).rejects.toThrow();
    } finally {
      expect(await ex.stop('SIGTERM')).toBe(0);
    }
  });

  it('--writable keeps writes in an overlay file; the repository still restores the original', async () => {
    const sock = `${tmp.path}/web-w.nbd`;
    const overlays = `${tmp.path}/overlays`;
    await mkdir(overlays);
    const ex = await startCli<Ready>(['export', snapshot, '--listen', `unix:${sock}`, '--writable', overlays], { env });
    try {
      const uri = ex.ready.disks[0]!.uri;
      expect(ex.ready.disks[0]!.overlay).toBe(`${overlays}/web.overlay`);
      await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1000000 70000', '-c', 'write -z 40M 1M', uri]);
      await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5a 1000000 70000', '-c', 'read -P 0 40M 1M', uri]);
      // Bytes around the write are the backup's: only what was written differs.
      const patched = `${tmp.path}/patched.img`;
      execFileSync('cp', ['--sparse=always', image, patched]);
      execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1000000 70000', '-c', 'write -z 40M 1M', patched]);
      await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', patched, uri]);
    } finally {
      expect(await ex.stop('SIGINT')).toBe(0);
    }
    const r = await runCli(['restore', 'vm', snapshot, '--target', `${tmp.path}/r`], { env });
    expect(r.code, r.stderr).toBe(0);
    execFileSync('cmp', [image, `${tmp.path}/r/web.raw`]);
  });

  it('refuses a bad --listen and an unknown disk with usage errors', async () => {
    const bad = await runCli(['export', snapshot, '--listen', 'http://x'], { env });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/neither unix:PATH nor tcp/);
    const none = await runCli(['export', snapshot, '--listen', `unix:${tmp.path}/x.nbd`, '--disk', 'nope'], { env });
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no disk named nope/);
  });
});
