// Differencing images: a VHD differencing disk, a VDI differencing image and a VMDK snapshot child over
// parents holding data of their own (overlapping the child's and not), each read whole and compared
// byte for byte with the disk the same writes make (and, for VMDK, with `qemu-img convert -O raw` of
// the child); holes of both are never read. Then the hostile chains: a parent replaced, missing,
// a chain that loops or is too deep.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeVdiChild, vdiCreateBytes, vhdUniqueId, writeVhd } from '../../test/helpers/diff-images.js';
import { patchFile } from '../../test/helpers/patch.js';
import { tempDir } from '../../test/helpers/repo.js';
import { qemuImg } from '../protocols/nbd/testing/qemu-nbd.js';
import { MAX_CHAIN } from './chain.js';
import type { DiskImage } from './image.js';
import { openDiskImage } from './open.js';
import { VdiImage, vdiUuid } from './vdi.js';
import { VhdImage } from './vhd.js';
import { VmdkImage } from './vmdk.js';

const MiB = 1024 * 1024;
const SIZE = 12 * MiB;
type Write = [offset: number, length: number, byte: number];
/** The parent's writes, and the child's: overlapping in blocks 0 and 5 MiB, apart elsewhere; 10–12 MiB a hole of both. */
const PARENT: Write[] = [[0, 65536, 0x11], [2 * MiB + 4096, 8192, 0x22], [5 * MiB, MiB, 0x33], [7 * MiB, 512, 0x44]];
const CHILD: Write[] = [[32768, 65536, 0xa1], [3 * MiB, 4096, 0xa2], [5 * MiB + 512 * 1024, 4096, 0xa3], [9 * MiB, 8192, 0xa4]];

let tmp: { path: string; cleanup(): Promise<void> };
const at = (name: string): string => join(tmp.path, name);

beforeAll(async () => {
  tmp = await tempDir('bw-diff-');
});
afterAll(async () => {
  await tmp.cleanup();
});

/** The disk `layers` of writes make, applied in order. */
function expected(...layers: Write[][]): Buffer {
  const b = Buffer.alloc(SIZE);
  for (const l of layers) for (const [off, len, byte] of l) b.fill(byte, off, off + len);
  return b;
}

/** A raw file of SIZE holding `writes`. */
async function rawWith(name: string, writes: Write[]): Promise<string> {
  const f = at(name);
  await writeFile(f, expected(writes));
  return f;
}

/** Bytes a reader may read for `writes` at allocation unit `granule`: every unit touched, whole. */
function units(granule: number, ...layers: Write[][]): number {
  const u = new Set<number>();
  for (const l of layers) for (const [off, len] of l) for (let k = Math.floor(off / granule); k * granule < off + len; k++) u.add(k);
  return u.size * granule;
}

async function readAll(img: DiskImage): Promise<Buffer> {
  const out = Buffer.alloc(img.size);
  for (let off = 0; off < img.size; off += MiB) {
    const len = Math.min(MiB, img.size - off);
    if (await img.hasData(off, len)) await img.read(out.subarray(off, off + len), off);
  }
  return out;
}

async function readWhole(img: DiskImage, close = true): Promise<Buffer> {
  try {
    return await readAll(img);
  } finally {
    if (close) await img.close();
  }
}

const vhdWrites = (writes: Write[]): { offset: number; data: Buffer }[] => writes.map(([offset, len, byte]) => ({ offset, data: Buffer.alloc(len, byte) }));

describe('VHD differencing disks', () => {
  let parentId: Buffer;
  beforeAll(async () => {
    await qemuImg('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', await rawWith('vhd-parent.raw', PARENT), at('parent.vhd'));
    parentId = vhdUniqueId(at('parent.vhd'));
  });

  it('a child over a dynamic parent (relative locator) reads the merged disk, holes of both unread', async () => {
    writeVhd(at('child.vhd'), { size: SIZE, parent: { id: parentId, name: 'parent.vhd', locators: [{ code: 'W2ru', path: '.\\parent.vhd' }] }, writes: vhdWrites(CHILD) });
    const img = await openDiskImage(at('child.vhd'), 'vhd');
    try {
      expect(img.size).toBe(SIZE);
      const mine = await readAll(img);
      expect(mine.equals(expected(PARENT, CHILD))).toBe(true);
      // The child's own sectors, and at most the parent's allocated blocks (2 MiB), nothing of 10–12 MiB.
      const own = CHILD.reduce((n, [, len]) => n + len, 0);
      expect(img.dataBytesRead).toBeLessThanOrEqual(own + units(2 * MiB, PARENT));
      expect(await img.hasData(10 * MiB, 2 * MiB)).toBe(false);
      expect(await img.hasData(7 * MiB, 512)).toBe(true);
      expect(await img.hasData(9 * MiB, 512)).toBe(true);
    } finally {
      await img.close();
    }
  });

  it('parents found by an absolute Windows path or a Mac URL (the file name beside the child), fixed and differencing parents, a chain of three', async () => {
    await qemuImg('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=fixed,force_size=on', at('vhd-parent.raw'), at('fixed-parent.vhd'));
    writeVhd(at('over-fixed.vhd'), { size: SIZE, parent: { id: vhdUniqueId(at('fixed-parent.vhd')), locators: [{ code: 'W2ku', path: 'D:\\Hyper-V\\Disks\\fixed-parent.vhd' }] }, writes: vhdWrites(CHILD) });
    expect((await readWhole(await VhdImage.open(at('over-fixed.vhd')))).equals(expected(PARENT, CHILD))).toBe(true);

    writeVhd(at('mac.vhd'), { size: SIZE, parent: { id: parentId, locators: [{ code: 'MacX', path: 'file:///Users/someone/VMs/parent.vhd' }] }, writes: vhdWrites(CHILD) });
    expect((await readWhole(await VhdImage.open(at('mac.vhd')))).equals(expected(PARENT, CHILD))).toBe(true);

    const TOP: Write[] = [[0, 4096, 0xc1], [5 * MiB + 510 * 1024, 8192, 0xc2], [11 * MiB, 512, 0xc3]];
    const midId = writeVhd(at('mid.vhd'), { size: SIZE, parent: { id: parentId, locators: [{ code: 'W2ru', path: 'parent.vhd' }] }, writes: vhdWrites(CHILD) });
    writeVhd(at('top.vhd'), { size: SIZE, parent: { id: midId, locators: [{ code: 'W2ru', path: '.\\mid.vhd' }] }, writes: vhdWrites(TOP) });
    expect((await readWhole(await VhdImage.open(at('top.vhd')))).equals(expected(PARENT, CHILD, TOP))).toBe(true);
  });

  it('refuses a parent that is not the disk the child was made from, a missing parent, loops and a chain too deep', async () => {
    writeVhd(at('wrong.vhd'), { size: SIZE, parent: { id: randomBytes(16), locators: [{ code: 'W2ru', path: '.\\parent.vhd' }] } });
    await expect(VhdImage.open(at('wrong.vhd'))).rejects.toThrow(/the parent '.*parent\.vhd' of '.*wrong\.vhd' is not the disk it was made from \(its id differs\): was it replaced or modified\?/);

    writeVhd(at('orphan.vhd'), { size: SIZE, parent: { id: parentId, locators: [{ code: 'W2ru', path: '.\\gone.vhd' }] } });
    await expect(VhdImage.open(at('orphan.vhd'))).rejects.toMatchObject({ code: 'not-found', message: expect.stringMatching(/gone\.vhd/) });

    // A locator whose data lies outside the file.
    writeVhd(at('far.vhd'), { size: SIZE, parent: { id: parentId, locators: [{ code: 'W2ru', path: '.\\parent.vhd' }] } });
    const far = Buffer.alloc(8);
    far.writeBigUInt64BE(1n << 40n);
    patchFile(at('far.vhd'), 512 + 576 + 16, far);
    await expect(VhdImage.open(at('far.vhd'))).rejects.toThrow(/parent locator 'W2ru' is out of bounds/);

    const self = randomBytes(16);
    writeVhd(at('self.vhd'), { size: SIZE, uniqueId: self, parent: { id: self, locators: [{ code: 'W2ru', path: 'self.vhd' }] } });
    await expect(VhdImage.open(at('self.vhd'))).rejects.toThrow(/backing chain of .* loops/);
    const [a, b] = [randomBytes(16), randomBytes(16)];
    writeVhd(at('loop-a.vhd'), { size: SIZE, uniqueId: a, parent: { id: b, locators: [{ code: 'W2ru', path: 'loop-b.vhd' }] } });
    writeVhd(at('loop-b.vhd'), { size: SIZE, uniqueId: b, parent: { id: a, locators: [{ code: 'W2ru', path: 'loop-a.vhd' }] } });
    await expect(VhdImage.open(at('loop-a.vhd'))).rejects.toThrow(/loops: .*loop-a\.vhd → .*loop-b\.vhd → .*loop-a\.vhd/);

    // MAX_CHAIN + 1 images: deep-0 (the child) … deep-N (a dynamic disk).
    let id = writeVhd(at(`deep-${MAX_CHAIN}.vhd`), { size: MiB });
    for (let i = MAX_CHAIN - 1; i >= 0; i--) id = writeVhd(at(`deep-${i}.vhd`), { size: MiB, parent: { id, locators: [{ code: 'W2ru', path: `deep-${i + 1}.vhd` }] } });
    await expect(VhdImage.open(at('deep-0.vhd'))).rejects.toThrow(/more than 32 images deep/);
    // One fewer is fine.
    await (await VhdImage.open(at('deep-1.vhd'))).close();
  });
});

describe('VDI differencing images', () => {
  let machine: string;
  let parentUuid: Buffer;
  let childFile: string;
  beforeAll(async () => {
    machine = at('Machine');
    await mkdir(join(machine, 'Snapshots'), { recursive: true });
    await qemuImg('convert', '-f', 'raw', '-O', 'vdi', await rawWith('vdi-parent.raw', PARENT), join(machine, 'base.vdi'));
    parentUuid = vdiCreateBytes(join(machine, 'base.vdi'));
    const tmpChild = at('vdi-child.vdi');
    await qemuImg('convert', '-f', 'raw', '-O', 'vdi', await rawWith('vdi-child.raw', CHILD), tmpChild);
    // Block 7 (the parent's data at 7 MiB) written as zeros in the child.
    makeVdiChild(tmpChild, parentUuid, { blocks: [[7, 0xfffffffe]] });
    childFile = join(machine, 'Snapshots', `{${await vdiUuid(tmpChild)}}.vdi`);
    await rename(tmpChild, childFile);
  });

  /** What VirtualBox's child reads: a block the child wrote is the child's whole, block 7 zeros, the rest the parent's. */
  function vdiExpected(): Buffer {
    const p = expected(PARENT);
    const c = expected(CHILD);
    const childBlocks = new Set(CHILD.map(([off]) => Math.floor(off / MiB)));
    const out = Buffer.alloc(SIZE);
    for (let b = 0; b < SIZE / MiB; b++) {
      if (childBlocks.has(b)) c.copy(out, b * MiB, b * MiB, (b + 1) * MiB);
      else if (b !== 7) p.copy(out, b * MiB, b * MiB, (b + 1) * MiB);
    }
    return out;
  }

  it('vdiUuid gives uuidCreate as VirtualBox writes it', async () => {
    const u = await vdiUuid(join(machine, 'base.vdi'));
    expect(u).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    // The first three fields little-endian, the rest as stored.
    const raw = parentUuid.toString('hex');
    expect(u.replace(/-/g, '').slice(16)).toBe(raw.slice(16));
    expect(u.slice(0, 8)).toBe(Buffer.from(parentUuid.subarray(0, 4)).reverse().toString('hex'));
  });

  it('a child in <machine>/Snapshots finds its parent in <machine>/ and reads the merged disk, holes of both unread', async () => {
    const img = await openDiskImage(childFile, 'vdi');
    try {
      const mine = await readAll(img);
      expect(mine.equals(vdiExpected())).toBe(true);
      // The child's four blocks and the parent's block 2; nothing of the zero block, the parent's
      // blocks the child covers, or the holes.
      expect(img.dataBytesRead).toBe(5 * MiB);
      expect(await img.hasData(7 * MiB, MiB)).toBe(false);
      expect(await img.hasData(2 * MiB, MiB)).toBe(true);
      expect(await img.hasData(10 * MiB, 2 * MiB)).toBe(false);
    } finally {
      await img.close();
    }
  });

  it('the caller says where the parent is (a .vbox media registry)', async () => {
    const elsewhere = at('vbox-elsewhere');
    await mkdir(elsewhere);
    await copyFile(join(machine, 'base.vdi'), join(elsewhere, 'base-copy.vdi'));
    await copyFile(childFile, join(elsewhere, 'child.vdi'));
    const asked: string[] = [];
    const want = await vdiUuid(join(machine, 'base.vdi'));
    const img = await VdiImage.open(join(elsewhere, 'child.vdi'), [], {
      parentOf: async (uuid) => {
        asked.push(uuid);
        return uuid === want ? join(elsewhere, 'base-copy.vdi') : undefined;
      },
    });
    expect((await readWhole(img)).equals(vdiExpected())).toBe(true);
    expect(asked).toEqual([want]);
  });

  it('refuses a missing parent (naming its UUID), a parent that is another disk, loops', async () => {
    const lone = at('lone');
    await mkdir(join(lone, 'Snapshots'), { recursive: true });
    await copyFile(childFile, join(lone, 'Snapshots', 'child.vdi'));
    const want = await vdiUuid(join(machine, 'base.vdi'));
    await expect(VdiImage.open(join(lone, 'Snapshots', 'child.vdi'))).rejects.toMatchObject({ code: 'not-found', message: expect.stringContaining(`{${want}}`) });
    // The registry names a file that is not the parent.
    await qemuImg('create', '-f', 'vdi', join(lone, 'other.vdi'), '12M');
    await expect(VdiImage.open(join(lone, 'Snapshots', 'child.vdi'), [], { parentOf: async () => join(lone, 'other.vdi') })).rejects.toThrow(/is not the disk it was made from/);
    await expect(VdiImage.open(join(lone, 'Snapshots', 'child.vdi'), [], { parentOf: async () => join(lone, 'missing.vdi') })).rejects.toMatchObject({ code: 'not-found' });

    // A differencing image with no parent UUID.
    await qemuImg('create', '-f', 'vdi', join(lone, 'zero-link.vdi'), '4M');
    makeVdiChild(join(lone, 'zero-link.vdi'), Buffer.alloc(16));
    await expect(VdiImage.open(join(lone, 'zero-link.vdi'))).rejects.toThrow(/names no parent/);

    // A child linking to itself, and two linking to each other.
    const loops = at('vdi-loops');
    await mkdir(loops);
    await qemuImg('create', '-f', 'vdi', join(loops, 'self.vdi'), '4M');
    makeVdiChild(join(loops, 'self.vdi'), vdiCreateBytes(join(loops, 'self.vdi')), { create: vdiCreateBytes(join(loops, 'self.vdi')) });
    await expect(VdiImage.open(join(loops, 'self.vdi'))).rejects.toThrow(/backing chain of .* loops/);
    const [a, b] = [randomBytes(16), randomBytes(16)];
    await qemuImg('create', '-f', 'vdi', join(loops, 'a.vdi'), '4M');
    await qemuImg('create', '-f', 'vdi', join(loops, 'b.vdi'), '4M');
    makeVdiChild(join(loops, 'a.vdi'), b, { create: a });
    makeVdiChild(join(loops, 'b.vdi'), a, { create: b });
    await expect(VdiImage.open(join(loops, 'a.vdi'))).rejects.toThrow(/loops: .*a\.vdi → .*b\.vdi → .*a\.vdi/);
  });
});

describe('VMDK snapshot children', () => {
  function qemuIo(file: string, writes: Write[]): void {
    execFileSync('qemu-io', ['-f', 'vmdk', ...writes.flatMap(([off, len, byte]) => ['-c', `write -P 0x${byte.toString(16)} ${off} ${len}`]), file]);
  }

  /** Reads `file` whole and checks it against `want` and against qemu-img's reading. */
  async function check(file: string, want: Buffer, bound?: number): Promise<void> {
    const witness = `${file}.witness.raw`;
    await qemuImg('convert', '-f', 'vmdk', '-O', 'raw', file, witness);
    expect((await readFile(witness)).equals(want), `${file}: qemu-img disagrees with the expected disk`).toBe(true);
    const img = await openDiskImage(file, 'vmdk');
    try {
      expect(img.size).toBe(SIZE);
      expect((await readAll(img)).equals(want), `${file}: differs`).toBe(true);
      if (bound !== undefined) expect(img.dataBytesRead).toBeLessThanOrEqual(bound);
      expect(await img.hasData(10 * MiB, 2 * MiB)).toBe(false);
    } finally {
      await img.close();
    }
  }

  beforeAll(async () => {
    await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', await rawWith('vmdk-parent.raw', PARENT), at('base.vmdk'));
  });

  it('a child qemu-img made over a monolithicSparse base reads the merged disk, holes of both unread', async () => {
    await qemuImg('create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', at('child.vmdk'));
    qemuIo(at('child.vmdk'), CHILD);
    // 64 KiB grains: the child's grains (copied up whole by QEMU) and the parent's.
    await check(at('child.vmdk'), expected(PARENT, CHILD), units(65536, CHILD) + units(65536, PARENT));
  });

  it('a chain of three, and a child of a twoGbMaxExtentSparse base', async () => {
    await qemuImg('create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', at('mid.vmdk'));
    qemuIo(at('mid.vmdk'), CHILD);
    await qemuImg('create', '-f', 'vmdk', '-b', 'mid.vmdk', '-F', 'vmdk', at('top.vmdk'));
    const TOP: Write[] = [[0, 4096, 0xc1], [5 * MiB + 510 * 1024, 8192, 0xc2], [11 * MiB, 512, 0xc3]];
    qemuIo(at('top.vmdk'), TOP);
    // 11 MiB now holds data.
    const want = expected(PARENT, CHILD, TOP);
    await qemuImg('convert', '-f', 'vmdk', '-O', 'raw', at('top.vmdk'), at('top.witness.raw'));
    expect((await readFile(at('top.witness.raw'))).equals(want)).toBe(true);
    expect((await readWhole(await VmdkImage.open(at('top.vmdk')))).equals(want)).toBe(true);

    await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', at('vmdk-parent.raw'), at('ts-base.vmdk'));
    await qemuImg('create', '-f', 'vmdk', '-b', 'ts-base.vmdk', '-F', 'vmdk', at('ts-child.vmdk'));
    qemuIo(at('ts-child.vmdk'), CHILD);
    await check(at('ts-child.vmdk'), expected(PARENT, CHILD), units(65536, CHILD) + units(65536, PARENT));
    await qemuImg('create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', '-b', 'ts-base.vmdk', '-F', 'vmdk', at('ts-ts-child.vmdk'));
    qemuIo(at('ts-ts-child.vmdk'), CHILD);
    await check(at('ts-ts-child.vmdk'), expected(PARENT, CHILD), units(65536, CHILD) + units(65536, PARENT));
  });

  it('refuses a parent written since (its CID changed), a missing parent, loops and a chain too deep', async () => {
    await qemuImg('convert', '-f', 'raw', '-O', 'vmdk', at('vmdk-parent.raw'), at('moved-base.vmdk'));
    await qemuImg('create', '-f', 'vmdk', '-b', 'moved-base.vmdk', '-F', 'vmdk', at('stale.vmdk'));
    qemuIo(at('moved-base.vmdk'), [[0, 512, 0xee]]);
    await expect(VmdkImage.open(at('stale.vmdk'))).rejects.toThrow(/the parent '.*moved-base\.vmdk' of '.*stale\.vmdk' is not the disk it was made from/);
    await rename(at('moved-base.vmdk'), at('moved-away.vmdk'));
    await expect(VmdkImage.open(at('stale.vmdk'))).rejects.toMatchObject({ code: 'not-found', message: expect.stringMatching(/moved-base\.vmdk/) });

    // Descriptor files over a small flat extent.
    await writeFile(at('flat.bin'), Buffer.alloc(MiB));
    const desc = (name: string, cid: number, parentCid: number, hint: string): Promise<void> =>
      writeFile(at(name), `# Disk DescriptorFile\nversion=1\nCID=${cid.toString(16)}\nparentCID=${parentCid.toString(16)}\nparentFileNameHint="${hint}"\ncreateType="monolithicFlat"\nRW 2048 FLAT "flat.bin" 0\n`);
    await desc('self.vmdk', 1, 1, 'self.vmdk');
    await expect(VmdkImage.open(at('self.vmdk'))).rejects.toThrow(/backing chain of .* loops/);
    await desc('loop-a.vmdk', 1, 2, 'loop-b.vmdk');
    await desc('loop-b.vmdk', 2, 1, 'loop-a.vmdk');
    await expect(VmdkImage.open(at('loop-a.vmdk'))).rejects.toThrow(/loops: .*loop-a\.vmdk → .*loop-b\.vmdk → .*loop-a\.vmdk/);
    await writeFile(at(`deep-${MAX_CHAIN}.vmdk`), `# Disk DescriptorFile\nversion=1\nCID=${(1000 + MAX_CHAIN).toString(16)}\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "flat.bin" 0\n`);
    for (let i = MAX_CHAIN - 1; i >= 0; i--) await desc(`deep-${i}.vmdk`, 1000 + i, 1000 + i + 1, `deep-${i + 1}.vmdk`);
    await expect(VmdkImage.open(at('deep-0.vmdk'))).rejects.toThrow(/more than 32 images deep/);
    await (await VmdkImage.open(at('deep-1.vmdk'))).close();
    // A Windows path: the file name beside the child.
    await desc('windows.vmdk', 1, 1000 + MAX_CHAIN, `C:\\Users\\someone\\VMs\\deep-${MAX_CHAIN}.vmdk`);
    await (await VmdkImage.open(at('windows.vmdk'))).close();
    // A child naming no parent.
    await writeFile(at('nameless.vmdk'), '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=2\ncreateType="monolithicFlat"\nRW 2048 FLAT "flat.bin" 0\n');
    await expect(VmdkImage.open(at('nameless.vmdk'))).rejects.toThrow(/does not name its parent/);
  });
});
