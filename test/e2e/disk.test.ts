// backup disk / restore vm of raw images made by mkfs.ext4 and qemu-img: byte-identical, sparse,
// unchanged images skipped, changed blocks found, other containers refused clearly.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, stat, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/repo.js';
import { makeLuksQcow2 } from '../helpers/luks.js';
import { makeSeededFiles, patternBytes } from '../fixtures/tree.js';

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let image: string;

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

beforeAll(async () => {
  tmp = await tempDir();
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'disk pw' };
  expect((await runCli(['init'], { env })).code).toBe(0);
  // A real ext4 file system holding real files, in a 256 MiB raw image that is mostly empty.
  const fill = `${tmp.path}/fill`;
  await mkdir(fill);
  await makeSeededFiles(`${fill}/doc`, 3000, 11); // about 37 MiB in 3,000 files
  await writeFile(`${fill}/noise.bin`, patternBytes(8 * 1024 * 1024, 3));
  image = `${tmp.path}/web01.img`;
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', fill, image, '256M']);
});

afterAll(async () => {
  await tmp.cleanup();
});

describe('disk images', () => {
  it('backs up a raw image and restores it byte-identical and sparse', async () => {
    const b = await runCli(['backup', 'disk', image, '--json'], { env });
    expect(b.code, b.stderr).toBe(0);
    const s = jsonResult<{ snapshots: { snapshot: string; source: string; summary: { bytesRead: number; bytesNew: number } }[] }>(b).snapshots[0]!;
    expect(s.source).toBe('disk:web01');
    expect(s.summary.bytesRead).toBe(256 * 1024 * 1024);
    // Empty blocks are holes, not data.
    expect(s.summary.bytesNew).toBeLessThan(200 * 1024 * 1024);

    const out = `${tmp.path}/restored`;
    const r = await runCli(['restore', 'vm', 'latest', '--target', out], { env });
    expect(r.code, r.stderr).toBe(0);
    expect(await sha256(`${out}/web01.raw`)).toBe(await sha256(image));
    const st = await stat(`${out}/web01.raw`);
    expect(st.size).toBe(256 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(st.size / 2);
    execFileSync('e2fsck', ['-fn', `${out}/web01.raw`], { stdio: 'pipe' });

    // Restore never overwrites a disk.
    const again = await runCli(['restore', 'vm', 'latest', '--target', out], { env });
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists; restore never overwrites a disk/);
  });

  it('reuses an unchanged image without reading it, and finds exactly the changed blocks', async () => {
    const b = jsonResult<{ snapshots: { snapshot: string; reused: boolean; summary: { bytesRead: number } }[] }>(await runCli(['backup', 'disk', image, '--json'], { env })).snapshots[0]!;
    expect(b.reused).toBe(true);
    expect(b.summary.bytesRead).toBe(0);

    const fh = await open(image, 'r+');
    await fh.write(patternBytes(4096, 77), 0, 4096, 100 * 1024 * 1024 + 5);
    await fh.write(patternBytes(4096, 78), 0, 4096, 200 * 1024 * 1024);
    await fh.close();
    const c = jsonResult<{ snapshots: { snapshot: string; reused: boolean; summary: { bytesNew: number } }[] }>(await runCli(['backup', 'disk', image, '--json'], { env })).snapshots[0]!;
    expect(c.reused).toBe(false);
    expect(c.summary.bytesNew).toBeLessThanOrEqual(3 * 1024 * 1024);
    const d = jsonResult<{ disks: { name: string; changedBlocks: number }[] }>(await runCli(['diff', b.snapshot, c.snapshot, '--json'], { env }));
    expect(d.disks).toEqual([expect.objectContaining({ name: 'web01', changedBlocks: 2 })]);

    const out = `${tmp.path}/restored-2`;
    expect((await runCli(['restore', 'vm', c.snapshot, '--target', out, '--format', 'qcow2'], { env })).code).toBe(0);
    execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', `${out}/web01.qcow2`, image], { stdio: 'pipe' });
  });

  it('backs up a qcow2 image with a backing file as its virtual disk, reading only its data; qemu-img compare is the witness', async () => {
    const base = `${tmp.path}/base.qcow2`;
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '256M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 3M', '-c', 'write -P 0x5b 100M 1M', base]);
    const q = `${tmp.path}/vm.qcow2`;
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', q]);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x6c 1M 64k', '-c', 'write -z 100M 512k', '-c', 'write -P 0x6d 200M 2M', q]);
    const b = jsonResult<{ snapshots: { snapshot: string; summary: { bytesRead: number } }[] }>(await runCli(['backup', 'disk', q, '--name', 'vm', '--json'], { env })).snapshots[0]!;
    // 3 + 1 MiB in the base (half of it zeroed above), 64 KiB + 2 MiB on top: nowhere near 256 MiB.
    expect(b.summary.bytesRead).toBeLessThanOrEqual(7 * 1024 * 1024);
    const out = `${tmp.path}/restored-qcow2`;
    const r = await runCli(['restore', 'vm', b.snapshot, '--target', out], { env });
    expect(r.code, r.stderr).toBe(0);
    execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', q, `${out}/vm.raw`], { stdio: 'pipe' });
    const rec = jsonResult<{ id: string; disks: { format: string }[] }[]>(await runCli(['snapshots', '--source', 'disk:vm', '--json'], { env }));
    expect(rec.find((x) => x.id === b.snapshot)!.disks[0]!.format).toBe('qcow2');
  });

  it('backs up VMDK (sparse, streamOptimized, flat), VDI, VHD and VHDX images as their virtual disks', async () => {
    const src = `${tmp.path}/fmt-src.raw`;
    execFileSync('truncate', ['-s', '64M', src]);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x71 0 1M', '-c', 'write -P 0x72 33M 64k', src]);
    for (const [fmt, opts, name] of [
      ['vmdk', 'subformat=monolithicSparse', 'ms'],
      ['vmdk', 'subformat=streamOptimized', 'so'],
      ['vmdk', 'subformat=twoGbMaxExtentFlat', 'tf'],
      ['vdi', 'static=off', 'vd'],
      ['vpc', 'subformat=dynamic', 'vh'],
      ['vhdx', 'subformat=dynamic', 'hx'],
      ['vhdx', 'subformat=fixed', 'hf'],
    ] as const) {
      const img = `${tmp.path}/fmt-${name}.${fmt === 'vpc' ? 'vhd' : fmt}`;
      execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', fmt, '-o', opts, src, img]);
      const b = await runCli(['backup', 'disk', img, '--name', `fmt-${name}`, '--json'], { env });
      expect(b.code, b.stderr).toBe(0);
      const id = jsonResult<{ snapshots: { snapshot: string }[] }>(b).snapshots[0]!.snapshot;
      const out = `${tmp.path}/fmt-out-${name}`;
      const r = await runCli(['restore', 'vm', id, '--target', out], { env });
      expect(r.code, r.stderr).toBe(0);
      execFileSync('qemu-img', ['compare', '-f', fmt, '-F', 'raw', img, `${out}/fmt-${name}.raw`], { stdio: 'pipe' });
    }
    // And back out in each of those formats (qemu-img converts the restored raw image).
    const last = jsonResult<{ id: string }[]>(await runCli(['snapshots', '--source', 'disk:fmt-vh', '--json'], { env })).pop()!.id;
    for (const [fmt, qemuFmt] of [['vmdk', 'vmdk'], ['vhdx', 'vhdx'], ['vdi', 'vdi'], ['vhd', 'vpc']]) {
      const out = `${tmp.path}/fmt-as-${fmt}`;
      const r = await runCli(['restore', 'vm', last, '--target', out, '--format', fmt!], { env });
      expect(r.code, r.stderr).toBe(0);
      execFileSync('qemu-img', ['compare', '-f', qemuFmt!, '-F', 'raw', `${out}/fmt-vh.${fmt}`, src], { stdio: 'pipe' });
    }
    expect((await runCli(['restore', 'vm', last, '--target', `${tmp.path}/fmt-bad`, '--format', 'ova'], { env })).code).toBe(2);
  });

  it('refuses images it cannot read, with a hint (exit 2)', async () => {
    const q = `${tmp.path}/vm-luks.qcow2`;
    await makeLuksQcow2(q, '64M', 'abc');
    const r = await runCli(['backup', 'disk', q], { env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/is an encrypted qcow2 image \(LUKS\)/);
    expect(r.stderr).toMatch(/qemu-img convert/);
    const m = await runCli(['backup', 'disk', `${tmp.path}/missing.img`], { env });
    expect(m.code).toBe(1);
    expect(m.stderr).toMatch(/missing\.img/);
  });

  it('check --read-data passes and names nothing', async () => {
    const c = await runCli(['check', '--read-data', '--json'], { env });
    expect(c.code, c.stdout).toBe(0);
    expect(jsonResult<{ ok: boolean; problems: unknown[] }>(c).problems).toEqual([]);
  });
});
