// VDI, VHD and VMDK readers against images qemu-img writes in every subformat it knows, from a raw
// disk with known data at known offsets and holes between: each must read exactly as `qemu-img
// convert -O raw` of the same image (the witness), the sparse ones without reading their holes.
// Then damaged and hostile images: clear errors.
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patchFile } from '../../test/helpers/patch.js';
import { tempDir } from '../../test/helpers/repo.js';
import { qemuImg } from '../protocols/nbd/testing/qemu-nbd.js';
import type { DiskImage } from './image.js';
import { openDiskImage, type ContainerFormat } from './open.js';

let tmp: { path: string; cleanup(): Promise<void> };
let source: string;
const MiB = 1024 * 1024;
/** Where the source holds data: [offset, length]. */
const WRITTEN: [number, number][] = [[0, 64 * 1024], [5 * MiB, 4096], [9437696, 1024], [20 * MiB, MiB]];

/** Bytes a sparse reader may read: every allocation unit (block, grain) that holds written data, whole. */
function allocatedBound(granule: number): number {
  const units = new Set<number>();
  for (const [off, len] of WRITTEN) for (let u = Math.floor(off / granule); u * granule < off + len; u++) units.add(u);
  return units.size * granule;
}

beforeAll(async () => {
  tmp = await tempDir('bw-formats-');
  source = join(tmp.path, 'source.raw');
  execFileSync('truncate', ['-s', '24M', source]);
  execFileSync('qemu-io', ['-f', 'raw', ...WRITTEN.flatMap(([off, len], i) => ['-c', `write -P 0x${(0x11 * (i + 1)).toString(16)} ${off} ${len}`]), source]);
});
afterAll(async () => {
  await tmp.cleanup();
});

async function readAll(img: DiskImage): Promise<Buffer> {
  const out = Buffer.alloc(img.size);
  for (let off = 0; off < img.size; off += MiB) {
    const len = Math.min(MiB, img.size - off);
    if (await img.hasData(off, len)) await img.read(out.subarray(off, off + len), off);
  }
  return out;
}

/** `granule`: the format's allocation unit, for sparse formats: holes between units must not be read. */
async function check(name: string, format: ContainerFormat, qemuFormat: string, options: string[], granule?: number): Promise<void> {
  const file = join(tmp.path, name);
  await qemuImg('convert', '-f', 'raw', '-O', qemuFormat, ...options, source, file);
  const witness = `${file}.witness.raw`;
  await qemuImg('convert', '-f', qemuFormat, '-O', 'raw', file, witness);
  const img = await openDiskImage(file, format);
  try {
    const mine = await readAll(img);
    const theirs = await readFile(witness);
    expect(mine.length, `${name}: size`).toBe(theirs.length);
    expect(mine.equals(theirs), `${name}: differs from qemu-img convert`).toBe(true);
    if (granule) expect(img.dataBytesRead, `${name}: bytes read`).toBeLessThanOrEqual(allocatedBound(granule));
    else expect(img.dataBytesRead).toBeGreaterThan(0);
  } finally {
    await img.close();
  }
}

describe('VDI, VHD and VMDK against qemu-img', () => {
  it('VDI, dynamic and static', async () => {
    await check('d.vdi', 'vdi', 'vdi', [], MiB);
    await check('s.vdi', 'vdi', 'vdi', ['-o', 'static=on']);
  });

  it('VHD, dynamic and fixed', async () => {
    await check('d.vhd', 'vhd', 'vpc', ['-o', 'subformat=dynamic'], 2 * MiB);
    await check('f.vhd', 'vhd', 'vpc', ['-o', 'subformat=fixed']);
  });

  it('VMDK: monolithicSparse, streamOptimized, monolithicFlat, twoGbMaxExtentSparse and twoGbMaxExtentFlat', async () => {
    // 64 KiB grains.
    await check('ms.vmdk', 'vmdk', 'vmdk', ['-o', 'subformat=monolithicSparse'], 64 * 1024);
    await check('so.vmdk', 'vmdk', 'vmdk', ['-o', 'subformat=streamOptimized'], 64 * 1024);
    await check('mf.vmdk', 'vmdk', 'vmdk', ['-o', 'subformat=monolithicFlat']);
    await check('ts.vmdk', 'vmdk', 'vmdk', ['-o', 'subformat=twoGbMaxExtentSparse'], 64 * 1024);
    await check('tf.vmdk', 'vmdk', 'vmdk', ['-o', 'subformat=twoGbMaxExtentFlat']);
  });
});


const le32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};

describe('damaged and hostile VDI, VHD and VMDK images', () => {
  async function make(name: string, fmt: string, opts: string[] = []): Promise<string> {
    const f = join(tmp.path, name);
    await qemuImg('convert', '-f', 'raw', '-O', fmt, ...opts, source, f);
    return f;
  }

  it('VDI: a block pointing past the end of the file, an absurd size, a map outside the file', async () => {
    const f = await make('h1.vdi', 'vdi');
    patchFile(f, (await readFile(f)).readUInt32LE(0x154), le32(0x7ffffff0));
    const img = await openDiskImage(f, 'vdi');
    await expect(img.read(Buffer.alloc(MiB), 0)).rejects.toThrow(/block 0 points past the end of the file/);
    await img.close();
    const g = await make('h2.vdi', 'vdi');
    const size = Buffer.alloc(8);
    size.writeBigUInt64LE(1n << 60n);
    patchFile(g, 0x170, size);
    await expect(openDiskImage(g, 'vdi')).rejects.toThrow(/absurd/);
    const h = await make('h3.vdi', 'vdi');
    patchFile(h, 0x154, le32(0x7fffffff));
    await expect(openDiskImage(h, 'vdi')).rejects.toThrow(/block map at offset \d+ runs past the end/);
  });

  it('VHD: an allocation table outside the file, a differencing disk', async () => {
    const f = await make('h.vhd', 'vpc', ['-o', 'subformat=dynamic']);
    const buf = await readFile(f);
    const headerAt = Number(buf.readBigUInt64BE(16));
    const bat = Buffer.alloc(8);
    bat.writeBigUInt64BE(1n << 40n);
    patchFile(f, headerAt + 16, bat);
    await expect(openDiskImage(f, 'vhd')).rejects.toThrow(/allocation table at \d+ runs past the end/);
    // Disk type 4 in both footers (the checksum is not what is judged).
    const g = await make('diff.vhd', 'vpc', ['-o', 'subformat=dynamic']);
    const len = (await readFile(g)).length;
    const four = Buffer.alloc(4);
    four.writeUInt32BE(4);
    patchFile(g, 60, four);
    patchFile(g, len - 512 + 60, four);
    await expect(openDiskImage(g, 'vhd')).rejects.toThrow(/differencing disk/);
  });

  it('VMDK: a grain directory outside the file, an extent file that is a path, a snapshot child', async () => {
    const f = await make('h.vmdk', 'vmdk', ['-o', 'subformat=monolithicSparse']);
    const gd = Buffer.alloc(8);
    gd.writeBigUInt64LE(1n << 40n);
    patchFile(f, 56, gd);
    await expect(openDiskImage(f, 'vmdk')).rejects.toThrow(/grain directory at sector \d+ is outside the file/);
    const desc = join(tmp.path, 'evil.vmdk');
    await writeFile(desc, '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "../../etc/passwd" 0\n');
    await expect(openDiskImage(desc, 'vmdk')).rejects.toThrow(/not a plain file name beside the descriptor/);
    const child = join(tmp.path, 'child.vmdk');
    await writeFile(child, '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=87654321\ncreateType="monolithicSparse"\nRW 2048 SPARSE "child.vmdk"\n');
    await expect(openDiskImage(child, 'vmdk')).rejects.toThrow(/snapshot chain/);
  });
});
