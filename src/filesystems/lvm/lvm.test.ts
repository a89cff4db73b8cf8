// LVM2 made by the real tools on a loop device (test/helpers/lvm.ts: activation off, LV bytes written
// at the offsets lvs/pvs report), then read by readLvm.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { makePhysicalVolume, type PhysicalVolume } from '../../../test/helpers/lvm.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { BufferVolume, FileSystemError, FileVolume } from '../types.js';
import { partsOf } from '../probe.js';
import { readLvm } from './lvm.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;

let dir: { path: string; cleanup(): Promise<void> };
let img = '';
let pv: PhysicalVolume | undefined;
const VG = `vgbw${process.pid}`;
let data: Record<string, Buffer> = {};

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
  // lv1 (random bytes) grows into a second segment after lv2 (an ext4 file system, for the prober).
  pv = await makePhysicalVolume(img, 64, VG, [
    { name: 'lv1', sizeMiB: 8, extendMiB: 4, fill: (n) => randomBytes(n) },
    { name: 'lv2', sizeMiB: 12, fill: ext4Image },
  ]);
  data = pv.data;
});

afterAll(async () => {
  await pv?.release();
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
