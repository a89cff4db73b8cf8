// LVM2 made by the real tools on a loop device. Device-mapper targets are missing in this container
// (lvcreate: "striped: Required device-mapper target(s) not detected"), so LVs are created with
// activation disabled (global/activation=0) and their bytes written with dd into the image at the
// places `lvs --segments` and `pvs -o pe_start` report (the outside witness), then read by readLvm.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { BufferVolume, FileSystemError, FileVolume } from '../types.js';
import { partsOf } from '../probe.js';
import { readLvm } from './lvm.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const NOACT = ['--config', 'global { activation = 0 }'];
const env = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };
const lvm = (...a: string[]): Promise<{ stdout: string }> => exec(a[0]!, a.slice(1), { env });

let dir: { path: string; cleanup(): Promise<void> };
let img = '';
let loop = '';
const VG = `vgbw${process.pid}`;
const data: Record<string, Buffer> = {};

/** An ext4 file system of `size` bytes holding /hello.txt, made by mkfs.ext4 -d. */
async function ext4Image(size: number): Promise<Buffer> {
  const tree = join(dir.path, 'tree');
  await fsp.mkdir(tree, { recursive: true });
  await fsp.writeFile(join(tree, 'hello.txt'), 'inside a logical volume\n');
  const file = join(dir.path, 'lv2.ext4');
  await exec('mkfs.ext4', ['-q', '-F', '-d', tree, file, `${size / 1024}k`]);
  return fsp.readFile(file);
}

beforeAll(async () => {
  console.warn('LVM test route: real pvcreate/vgcreate/lvcreate on a loop device with activation=0 (no device-mapper targets here); LV bytes written at the offsets lvs/pvs report');
  dir = await tempDir('bulwark-lvm-');
  img = join(dir.path, 'pv.img');
  await fsp.writeFile(img, '');
  await fsp.truncate(img, 64 * MiB);
  loop = (await exec('losetup', ['-f', '--show', img])).stdout.trim();
  await lvm('pvcreate', ...NOACT, loop);
  await lvm('vgcreate', ...NOACT, VG, loop);
  await lvm('lvcreate', ...NOACT, '-an', '-Zn', '-L', '8M', '-n', 'lv1', VG);
  await lvm('lvcreate', ...NOACT, '-an', '-Zn', '-L', '12M', '-n', 'lv2', VG);
  await lvm('lvextend', ...NOACT, '-L', '+4M', `${VG}/lv1`);
  const pe = Number((await lvm('pvs', '--noheadings', '--units', 'b', '--nosuffix', '-o', 'pe_start', loop)).stdout.trim());
  const seg = JSON.parse((await lvm('lvs', '--segments', '--units', 'b', '--nosuffix', '--reportformat', 'json', '-o', 'lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges,vg_extent_size', VG)).stdout) as { report: { seg: Record<string, string>[] }[] };
  const bufs: Record<string, Buffer[]> = {};
  for (const s of seg.report[0]!.seg) {
    const ext = Number(s.vg_extent_size);
    const [, from] = /:(\d+)-/.exec(s.seg_pe_ranges!)!;
    // lv2 holds an ext4 file system (for the prober's test below); lv1 random bytes.
    const bytes = s.lv_name === 'lv2' ? await ext4Image(Number(s.seg_size_pe) * ext) : randomBytes(Number(s.seg_size_pe) * ext);
    patchFile(img, pe + Number(from) * ext, bytes);
    (bufs[s.lv_name!] ??= [])[Number(s.seg_start_pe)] = bytes;
  }
  for (const [k, v] of Object.entries(bufs)) data[k] = Buffer.concat(v.filter(Boolean));
});

afterAll(async () => {
  await lvm('vgremove', ...NOACT, '-f', VG).catch(() => undefined);
  if (loop) await exec('losetup', ['-d', loop]).catch(() => undefined);
  await dir?.cleanup();
});

describe('LVM2', () => {
  it('reads each LV (lv1 in two segments) byte for byte', async () => {
    const v = await FileVolume.open(img);
    try {
      const lvs = (await readLvm(v))!;
      expect(lvs.map((l) => [l.vg, l.name, l.size])).toEqual([[VG, 'lv1', 12 * MiB], [VG, 'lv2', 12 * MiB]]);
      for (const l of lvs) {
        const b = Buffer.alloc(l.size);
        await l.volume!.read(b, 0);
        expect(b.equals(data[l.name]!)).toBe(true);
      }
    } finally {
      await v.close();
    }
  });

  it('no label gives undefined; a damaged label is a FileSystemError', async () => {
    expect(await readLvm(new BufferVolume(Buffer.alloc(MiB)))).toBeUndefined();
    const copy = join(dir.path, 'bad.img');
    await fsp.copyFile(img, copy);
    patchFile(copy, 512 + 100, Buffer.from('X'));
    const v = await FileVolume.open(copy);
    try {
      await expect(readLvm(v)).rejects.toThrow(FileSystemError);
    } finally {
      await v.close();
    }
  });

  it('the prober lists each logical volume as a part <vg>-<lv> and opens the file system on it', async () => {
    const vol = await FileVolume.open(img);
    try {
      const parts = await partsOf(vol);
      expect(parts.map((p) => [p.name, p.fs?.type])).toEqual([[`${VG}-lv1`, undefined], [`${VG}-lv2`, 'ext4']]);
      const fs = parts[1]!.fs!;
      const f = await fs.open('/hello.txt');
      const buf = Buffer.alloc(f.size);
      await f.read(buf, 0);
      expect(buf.toString()).toBe('inside a logical volume\n');
    } finally {
      await vol.close();
    }
  });
});
