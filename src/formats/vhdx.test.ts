// The VHDX reader against images qemu-img writes (dynamic and fixed, several block sizes, a size that
// is not a multiple of the block size): it must read exactly what `qemu-img convert -O raw` gives,
// without reading holes. Then images written by hand (test/helpers/vhdx.ts): every payload block state,
// 4096-byte sectors, differencing disks over a qemu-img parent (sector bitmaps, chains, parent
// locators), logs replayed in memory (checked against qemu-img check -r all), and damaged or hostile
// files: clear errors.
import { randomBytes } from 'node:crypto';
import { readFile, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patchFile } from '../../test/helpers/patch.js';
import { tempDir } from '../../test/helpers/repo.js';
import { BAT_AT, BLOCK, buildVhdx, HEADER_AT, METADATA_AT, randomGuid, rechecksum, REGION_AT, writeVhdx, type LogEntrySpec, type VhdxSpec } from '../../test/helpers/vhdx.js';
import { qemuImg } from '../protocols/nbd/testing/qemu-nbd.js';
import { crc32c } from './crc32c.js';
import type { DiskImage } from './image.js';
import { guidBytes, VhdxImage } from './vhdx.js';

let tmp: { path: string; cleanup(): Promise<void> };
let source: string;
let sourceBytes: Buffer;
const KiB = 1024;
const MiB = 1024 * 1024;
/** Where the source holds (random) data: [offset, length]. */
const WRITTEN: [number, number][] = [[0, 64 * KiB], [5 * MiB, 4096], [9437696, 1024], [20 * MiB, MiB]];
const SOURCE_SIZE = 24 * MiB;

function allocatedBound(granule: number): number {
  const units = new Set<number>();
  for (const [off, len] of WRITTEN) for (let u = Math.floor(off / granule); u * granule < off + len; u++) units.add(u);
  return units.size * granule;
}

beforeAll(async () => {
  tmp = await tempDir('bw-vhdx-');
  source = join(tmp.path, 'source.raw');
  sourceBytes = Buffer.alloc(SOURCE_SIZE);
  for (const [off, len] of WRITTEN) randomBytes(len).copy(sourceBytes, off);
  await writeFile(source, sourceBytes);
});
afterAll(async () => {
  await tmp.cleanup();
});

async function readAll(img: DiskImage, step = MiB): Promise<Buffer> {
  const out = Buffer.alloc(img.size);
  for (let off = 0; off < img.size; off += step) {
    const len = Math.min(step, img.size - off);
    if (await img.hasData(off, len)) await img.read(out.subarray(off, off + len), off);
  }
  return out;
}

async function witness(file: string): Promise<Buffer> {
  const raw = `${file}.witness.raw`;
  await qemuImg('convert', '-f', 'vhdx', '-O', 'raw', file, raw);
  return readFile(raw);
}

/** Reads `file` whole (in `step`s) and compares with qemu-img's reading; returns the bytes read. */
async function compare(file: string, step = MiB): Promise<number> {
  const img = await VhdxImage.open(file);
  try {
    const mine = await readAll(img, step);
    const theirs = await witness(file);
    expect(mine.length, `${file}: size`).toBe(theirs.length);
    expect(mine.equals(theirs), `${file}: differs from qemu-img convert`).toBe(true);
    return img.dataBytesRead;
  } finally {
    await img.close();
  }
}

describe('CRC-32C', () => {
  it('matches the check value', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    expect(crc32c(Buffer.from('56789'), crc32c(Buffer.from('1234')))).toBe(0xe3069283);
  });
});

describe('VHDX written by qemu-img', () => {
  async function convert(name: string, opts: string): Promise<string> {
    const file = join(tmp.path, name);
    await qemuImg('convert', '-f', 'raw', '-O', 'vhdx', '-o', opts, source, file);
    return file;
  }

  it('dynamic, default (8 MiB) and 1 MiB and 32 MiB blocks: same bytes, holes not read', async () => {
    expect(await compare(await convert('d.vhdx', 'subformat=dynamic'))).toBeLessThanOrEqual(allocatedBound(8 * MiB));
    expect(await compare(await convert('d1.vhdx', 'subformat=dynamic,block_size=1M'))).toBeLessThanOrEqual(allocatedBound(MiB));
    expect(await compare(await convert('d32.vhdx', 'subformat=dynamic,block_size=32M'))).toBeLessThanOrEqual(allocatedBound(32 * MiB));
    // Reads across block boundaries in odd steps.
    await compare(join(tmp.path, 'd1.vhdx'), 3 * MiB + 512);
  });

  it('fixed, default and 1 MiB blocks', async () => {
    expect(await compare(await convert('f.vhdx', 'subformat=fixed'))).toBeGreaterThan(0);
    expect(await compare(await convert('f1.vhdx', 'subformat=fixed,block_size=1M'))).toBeGreaterThan(0);
  });

  it('a size that is not a multiple of the block size, written through qemu-io', async () => {
    const file = join(tmp.path, 'odd.vhdx');
    await qemuImg('create', '-f', 'vhdx', '-o', 'block_size=1M,subformat=dynamic', file, String(10 * MiB + 1536));
    const { execFileSync } = await import('node:child_process');
    execFileSync('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x5a 1536 4096', '-c', `write -P 0xa5 ${10 * MiB - 512} 2048`, file]);
    const img = await VhdxImage.open(file);
    expect(img.size).toBe(10 * MiB + 1536);
    await img.close();
    expect(await compare(file)).toBeLessThanOrEqual(2 * MiB + 1536);
  });
});

describe('VHDX built by hand', () => {
  it('every payload block state, 512- and 4096-byte sectors, agrees with qemu-img', async () => {
    for (const lss of [512, 4096]) {
      const a = randomBytes(MiB);
      const b = randomBytes(MiB);
      const c = randomBytes(MiB);
      const file = join(tmp.path, `states-${lss}.vhdx`);
      await writeVhdx(file, {
        size: 12 * MiB,
        logicalSectorSize: lss,
        blocks: [
          { block: 0, data: a },
          { block: 1, data: randomBytes(MiB), state: BLOCK.ZERO },
          { block: 2, state: BLOCK.UNDEFINED },
          { block: 3, state: BLOCK.UNMAPPED },
          { block: 4, state: 5 }, // UNMAPPED in the 0.95 draft
          // Out of order in the file: 7 and 8 are contiguous there and read in one call.
          { block: 8, data: b },
          { block: 9, data: c },
          { block: 7, data: a },
          { block: 11, data: b },
        ],
      });
      const img = await VhdxImage.open(file);
      expect(img.geometry.logicalSectorSize).toBe(lss);
      const mine = await readAll(img);
      const expected = Buffer.alloc(12 * MiB);
      a.copy(expected, 0);
      a.copy(expected, 7 * MiB);
      b.copy(expected, 8 * MiB);
      c.copy(expected, 9 * MiB);
      b.copy(expected, 11 * MiB);
      expect(mine.equals(expected)).toBe(true);
      expect(img.dataBytesRead).toBe(5 * MiB);
      expect(await img.hasData(MiB, 3 * MiB)).toBe(false);
      const mid = Buffer.alloc(2 * MiB);
      await img.read(mid, 8 * MiB + 4096);
      expect(mid.equals(expected.subarray(8 * MiB + 4096, 10 * MiB + 4096))).toBe(true);
      await img.close();
      // QEMU reads only 512-byte logical sectors.
      if (lss === 512) expect((await witness(file)).equals(expected), `qemu-img reads states-${lss}.vhdx the same`).toBe(true);
    }
  });

  it('one damaged header: the other serves', async () => {
    const data = randomBytes(MiB);
    const buf = buildVhdx({ size: 4 * MiB, blocks: [{ block: 2, data }] });
    const at = HEADER_AT[1]! + 100; // in the newer header (sequence 2)
    buf.writeUInt8(buf.readUInt8(at) ^ 0xff, at);
    const file = join(tmp.path, 'onehead.vhdx');
    await writeFile(file, buf);
    const img = await VhdxImage.open(file);
    expect(img.header.sequence).toBe(1n);
    const out = Buffer.alloc(MiB);
    await img.read(out, 2 * MiB);
    expect(out.equals(data)).toBe(true);
    await img.close();
  });
});

describe('differencing VHDX', () => {
  let parent: string;
  let parentGuid: string;

  beforeAll(async () => {
    parent = join(tmp.path, 'parent.vhdx');
    await qemuImg('convert', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic,block_size=1M', source, parent);
    const img = await VhdxImage.open(parent);
    parentGuid = img.header.dataWriteGuid;
    await img.close();
  });

  /** A child of `parent` over the source, and the bytes it must read as. */
  async function child(name: string, locator: Record<string, string>): Promise<Buffer> {
    const a = randomBytes(MiB);
    const b = randomBytes(MiB);
    const c = randomBytes(MiB);
    const d = randomBytes(MiB);
    const every3 = (s: number): boolean => s % 3 === 0;
    const tail = (s: number): boolean => s >= 1000;
    await writeVhdx(join(tmp.path, name), {
      size: SOURCE_SIZE,
      parent: locator,
      blocks: [
        { block: 0, data: a },
        { block: 5, data: b, sectors: every3 },
        { block: 9, data: c, sectors: tail },
        { block: 20, state: BLOCK.ZERO },
        { block: 22, data: d },
      ],
    });
    const expected = Buffer.from(sourceBytes);
    a.copy(expected, 0);
    for (let s = 0; s < 2048; s++) {
      if (every3(s)) b.copy(expected, 5 * MiB + s * 512, s * 512, (s + 1) * 512);
      if (tail(s)) c.copy(expected, 9 * MiB + s * 512, s * 512, (s + 1) * 512);
    }
    expected.fill(0, 20 * MiB, 21 * MiB);
    d.copy(expected, 22 * MiB);
    return expected;
  }

  it('reads its own blocks, sector by sector where partially present, and the parent for the rest', async () => {
    const expected = await child('child.vhdx', { parent_linkage: `{${parentGuid.toLowerCase()}}`, relative_path: '.\\parent.vhdx', absolute_win32_path: 'D:\\VMs\\elsewhere\\nothere.vhdx' });
    const img = await VhdxImage.open(join(tmp.path, 'child.vhdx'));
    expect(img.geometry.hasParent).toBe(true);
    const mine = await readAll(img);
    expect(mine.equals(expected)).toBe(true);
    // Own: blocks 0 and 22, and the present sectors of 5 and 9; parent: its blocks 5 and 9 (not 0, not 20).
    expect(img.dataBytesRead).toBeLessThanOrEqual(4 * MiB + 2 * MiB);
    expect(await img.hasData(20 * MiB, MiB)).toBe(false);
    expect(await img.hasData(21 * MiB, MiB)).toBe(false);
    expect(await img.hasData(9 * MiB, MiB)).toBe(true);
    // Unaligned reads straddling sectors and blocks.
    const part = Buffer.alloc(MiB + 777);
    await img.read(part, 5 * MiB - 333);
    expect(part.equals(expected.subarray(5 * MiB - 333, 6 * MiB + 444))).toBe(true);
    await img.close();
  });

  it('finds the parent by the file name of absolute_win32_path when relative_path does not lead to it', async () => {
    const expected = await child('child2.vhdx', { parent_linkage: parentGuid, relative_path: '..\\gone\\parent.vhdx', absolute_win32_path: 'C:\\Hyper-V\\Disks\\parent.vhdx' });
    const img = await VhdxImage.open(join(tmp.path, 'child2.vhdx'));
    expect((await readAll(img)).equals(expected)).toBe(true);
    await img.close();
  });

  it('a chain of three: grandchild over child over a qemu-img parent', async () => {
    const expected = await child('mid.vhdx', { parent_linkage: parentGuid, relative_path: 'parent.vhdx' });
    const mid = await VhdxImage.open(join(tmp.path, 'mid.vhdx'));
    const midGuid = mid.header.dataWriteGuid;
    await mid.close();
    const e = randomBytes(MiB);
    await writeVhdx(join(tmp.path, 'grand.vhdx'), {
      size: SOURCE_SIZE,
      parent: { parent_linkage: `{${midGuid}}`, relative_path: '.\\mid.vhdx' },
      blocks: [{ block: 9, data: e, sectors: (s) => s < 4 }, { block: 23, data: e }],
    });
    e.copy(expected, 9 * MiB, 0, 2048);
    e.copy(expected, 23 * MiB);
    const img = await VhdxImage.open(join(tmp.path, 'grand.vhdx'));
    expect((await readAll(img)).equals(expected)).toBe(true);
    await img.close();
  });

  it('payload and sector bitmap entries interleave past the first chunk (256 MiB blocks: a chunk ratio of 16)', async () => {
    // A 5 GiB child of a 24 MiB parent: block 17 is in the second chunk; BAT index 18, its bitmap at 33.
    // Block 0 (chunk 0) is not present: the parent's.
    const data = Buffer.alloc(256 * MiB);
    data.fill(0x77, 0, 4096);
    await writeVhdx(join(tmp.path, 'big.vhdx'), {
      size: 20 * 256 * MiB,
      blockSize: 256 * MiB,
      parent: { parent_linkage: parentGuid, relative_path: 'parent.vhdx' },
      blocks: [{ block: 17, data, sectors: (s) => s < 4 }],
    });
    const img = await VhdxImage.open(join(tmp.path, 'big.vhdx'));
    const out = Buffer.alloc(8192);
    await img.read(out, 17 * 256 * MiB);
    expect(out.subarray(0, 2048).every((x) => x === 0x77)).toBe(true);
    expect(out.subarray(2048).every((x) => x === 0)).toBe(true);
    await img.read(out, 0);
    expect(out.equals(sourceBytes.subarray(0, 8192))).toBe(true);
    expect(await img.hasData(16 * 256 * MiB, 256 * MiB)).toBe(false);
    expect(await img.hasData(17 * 256 * MiB + 4096, 4096)).toBe(false);
    expect(await img.hasData(17 * 256 * MiB, 4096)).toBe(true);
    await img.close();
  });

  it('refuses a parent whose DataWriteGuid is not the parent_linkage, a missing parent, a loop', async () => {
    await child('wrong.vhdx', { parent_linkage: randomGuid(), relative_path: 'parent.vhdx' });
    await expect(VhdxImage.open(join(tmp.path, 'wrong.vhdx'))).rejects.toThrow(/is not the image it was made from: parent_linkage is \{[0-9A-F-]+\} but the parent's DataWriteGuid/);
    await child('orphan.vhdx', { parent_linkage: parentGuid, relative_path: '.\\missing.vhdx', absolute_win32_path: 'C:\\x\\missing-too.vhdx' });
    await expect(VhdxImage.open(join(tmp.path, 'orphan.vhdx'))).rejects.toThrow(/parent of the differencing disk .* is not found; looked for .*missing\.vhdx.*missing-too\.vhdx/);
    const self = join(tmp.path, 'self.vhdx');
    await writeVhdx(self, { size: 4 * MiB, dataWriteGuid: randomGuid(), parent: { parent_linkage: randomGuid(), relative_path: 'self.vhdx' } });
    await expect(VhdxImage.open(self)).rejects.toThrow(/backing chain of .* loops/);
    // Two that name each other, one through a symlink.
    await writeVhdx(join(tmp.path, 'ping.vhdx'), { size: 4 * MiB, parent: { parent_linkage: randomGuid(), relative_path: 'pong-link.vhdx' } });
    await writeVhdx(join(tmp.path, 'pong.vhdx'), { size: 4 * MiB, parent: { parent_linkage: randomGuid(), relative_path: 'ping.vhdx' } });
    await symlink('pong.vhdx', join(tmp.path, 'pong-link.vhdx'));
    await expect(VhdxImage.open(join(tmp.path, 'ping.vhdx'))).rejects.toThrow(/loops/);
    await writeVhdx(join(tmp.path, 'nolink.vhdx'), { size: 4 * MiB, parent: { relative_path: 'parent.vhdx' } });
    await expect(VhdxImage.open(join(tmp.path, 'nolink.vhdx'))).rejects.toThrow(/no parent_linkage/);
  });
});

describe('damaged and hostile VHDX', () => {
  const file = (name: string): string => join(tmp.path, name);
  const u32 = (v: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  };
  const u64 = (v: bigint): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    return b;
  };
  /** The metadata items as the builder lays them out: file parameters first, then the virtual size, 4 KiB apart. */
  const FILE_PARAMETERS = METADATA_AT + 64 * KiB;
  const VIRTUAL_SIZE = FILE_PARAMETERS + 4 * KiB;

  it('bad checksums on both headers; no identifier; shorter than the header section', async () => {
    const f = file('h.vhdx');
    await qemuImg('convert', '-f', 'raw', '-O', 'vhdx', source, f);
    patchFile(f, HEADER_AT[0]! + 4, u32(0x12345678));
    patchFile(f, HEADER_AT[1]! + 4, u32(0x12345678));
    await expect(VhdxImage.open(f)).rejects.toThrow(/is not a usable VHDX image: neither of its two headers is valid/);
    const g = file('noid.vhdx');
    await writeVhdx(g, { size: MiB });
    patchFile(g, 0, Buffer.from('vhdxfila'));
    await expect(VhdxImage.open(g)).rejects.toThrow(/no 'vhdxfile' identifier/);
    await writeFile(file('short.vhdx'), Buffer.from('vhdxfile'));
    await expect(VhdxImage.open(file('short.vhdx'))).rejects.toThrow(/shorter than its 1 MiB header section/);
  });

  it('a region table pointing outside the file; both region tables bad; an unknown required region', async () => {
    const buf = buildVhdx({ size: 4 * MiB });
    for (const at of REGION_AT) {
      buf.writeBigUInt64LE(1n << 40n, at + 16 + 16); // the BAT region's offset
      rechecksum(buf, at, 64 * KiB);
    }
    await writeFile(file('r.vhdx'), buf);
    await expect(VhdxImage.open(file('r.vhdx'))).rejects.toThrow(/region 2DC27766-F623-4200-9D64-115E9BFD4A08 .* is misaligned or outside the file/);
    for (const at of REGION_AT) buf.writeUInt8(buf.readUInt8(at + 200) ^ 1, at + 200);
    await writeFile(file('r2.vhdx'), buf);
    await expect(VhdxImage.open(file('r2.vhdx'))).rejects.toThrow(/neither copy of its region table is valid \(bad checksum; bad checksum\)/);
    const unknown = randomGuid();
    await writeVhdx(file('r3.vhdx'), { size: 4 * MiB, extraRegions: [{ guid: unknown, required: true }] });
    await expect(VhdxImage.open(file('r3.vhdx'))).rejects.toThrow(new RegExp(`requires region ${unknown}, which is not known`));
    await writeVhdx(file('r4.vhdx'), { size: 4 * MiB, extraRegions: [{ guid: unknown, required: false }] });
    await (await VhdxImage.open(file('r4.vhdx'))).close();
  });

  it('metadata: unknown required items refused, unknown optional items ignored', async () => {
    const unknown = randomGuid();
    await writeVhdx(file('m1.vhdx'), { size: 4 * MiB, extraMetadata: [{ guid: unknown, required: true }] });
    await expect(VhdxImage.open(file('m1.vhdx'))).rejects.toThrow(new RegExp(`requires metadata item ${unknown}`));
    await writeVhdx(file('m2.vhdx'), { size: 4 * MiB, extraMetadata: [{ guid: unknown, required: false }] });
    await (await VhdxImage.open(file('m2.vhdx'))).close();
  });

  it('a BAT entry past the end of the file; a partially present block without a parent; an invalid state', async () => {
    const data = randomBytes(MiB);
    const buf = buildVhdx({ size: 4 * MiB, blocks: [{ block: 0, data }, { block: 1, data }] });
    buf.writeBigUInt64LE(6n | (1000n << 20n), BAT_AT);
    buf.writeBigUInt64LE(7n | (4n << 20n), BAT_AT + 8);
    buf.writeBigUInt64LE(4n, BAT_AT + 16);
    await writeFile(file('b.vhdx'), buf);
    const img = await VhdxImage.open(file('b.vhdx'));
    await expect(img.read(Buffer.alloc(MiB), 0)).rejects.toThrow(/is damaged: block 0 points past the end of the file/);
    await expect(img.hasData(0, 4096)).rejects.toThrow(/block 0 points past the end of the file/);
    await expect(img.read(Buffer.alloc(MiB), MiB)).rejects.toThrow(/block 1 is partially present in a disk without a parent/);
    await expect(img.hasData(2 * MiB, 4096)).rejects.toThrow(/block 2 has state 4/);
    await img.close();
  });

  it('an absurd virtual size, a BAT over the cap, a size that is not whole sectors, a bad block size', async () => {
    const f = file('s.vhdx');
    await writeVhdx(f, { size: 4 * MiB });
    patchFile(f, VIRTUAL_SIZE, u64(1n << 60n));
    await expect(VhdxImage.open(f)).rejects.toThrow(/virtual size \d+ bytes is absurd/);
    patchFile(f, VIRTUAL_SIZE, u64(60n << 40n)); // 60 TiB of 1 MiB blocks: a 480 MiB table
    await expect(VhdxImage.open(f)).rejects.toThrow(/block allocation table of \d+ entries is over 67108864 bytes/);
    patchFile(f, VIRTUAL_SIZE, u64(64n << 20n)); // within the cap, but the 1 MiB BAT region holds only 128 Ki entries? it holds 64 here
    await (await VhdxImage.open(f)).close();
    patchFile(f, VIRTUAL_SIZE, u64(200n << 30n)); // 200 GiB: 204800 entries, more than the 1 MiB region holds
    await expect(VhdxImage.open(f)).rejects.toThrow(/block allocation table region of 1048576 bytes is too small/);
    patchFile(f, VIRTUAL_SIZE, u64(4n * 1024n * 1024n + 100n));
    await expect(VhdxImage.open(f)).rejects.toThrow(/is not a multiple of its 512-byte sectors/);
    patchFile(f, VIRTUAL_SIZE, u64(4n << 20n));
    for (const bs of [3 * MiB, 512 * KiB, 512 * MiB, 0]) {
      patchFile(f, FILE_PARAMETERS, u32(bs));
      await expect(VhdxImage.open(f)).rejects.toThrow(new RegExp(`block size ${bs} \\(a power of two from 1 MiB to 256 MiB\\)`));
    }
  });

  it('a metadata item outside the metadata region; a parent locator running past its item', async () => {
    const buf = buildVhdx({ size: 4 * MiB });
    buf.writeUInt32LE(2 * MiB, METADATA_AT + 32 + 16); // the file parameters' offset
    await writeFile(file('mo.vhdx'), buf);
    await expect(VhdxImage.open(file('mo.vhdx'))).rejects.toThrow(/metadata item CAA16737-FA36-4D43-B3B6-33F0AA44E76B .* is outside the metadata region/);
    const p = buildVhdx({ size: 4 * MiB, parent: { parent_linkage: randomGuid() } });
    // The parent locator is the sixth item; its first key offset made to point far away.
    const locatorAt = METADATA_AT + p.readUInt32LE(METADATA_AT + 32 + 5 * 32 + 16);
    p.writeUInt32LE(60000, locatorAt + 20);
    await writeFile(file('pl.vhdx'), p);
    await expect(VhdxImage.open(file('pl.vhdx'))).rejects.toThrow(/parent locator key or value is outside the item/);
  });
});

describe('the log, replayed in memory', () => {
  const file = (name: string): string => join(tmp.path, name);
  const sector = (fill: number): Buffer => {
    const b = randomBytes(4096);
    b.fill(fill, 100, 200);
    return b;
  };

  /** Block 0 at 4 MiB in the file; the log writes into it, zeroes part of it and allocates block 1 past the end. */
  function scenario(log: LogEntrySpec[] | ((p: { p1: Buffer; p2: Buffer; p3: Buffer; bat: Buffer }) => LogEntrySpec[])): { spec: VhdxSpec; expected: Buffer } {
    const a = randomBytes(MiB);
    const base: VhdxSpec = { size: 8 * MiB, blocks: [{ block: 0, data: a }] };
    const bat = Buffer.from(buildVhdx(base).subarray(BAT_AT, BAT_AT + 4096));
    bat.writeBigUInt64LE(6n | (5n << 20n), 8); // block 1: present at 5 MiB, past the file's end (5 MiB)
    const p = { p1: sector(1), p2: sector(2), p3: sector(3), bat };
    const expected = Buffer.alloc(8 * MiB);
    a.copy(expected, 0);
    p.p3.copy(expected, 8192);
    expected.fill(0, 16384, 24576);
    p.p2.copy(expected, MiB + 4096);
    return { spec: { ...base, logGuid: randomGuid(), log: typeof log === 'function' ? log(p) : log }, expected };
  }
  const normal = ({ p1, p2, p3, bat }: { p1: Buffer; p2: Buffer; p3: Buffer; bat: Buffer }): LogEntrySpec[] => [
    { at: 200, tail: 200 * 4096, sequence: 3n, writes: [{ offset: 4 * MiB, data: randomBytes(4096) }] }, // stale
    { at: 0, tail: 0, sequence: 10n, lastFileOffset: 6 * MiB, writes: [{ offset: 4 * MiB + 8192, data: p1 }, { offset: BAT_AT, data: bat }, { offset: 4 * MiB + 16384, zero: 8192 }] },
    { tail: 0, sequence: 11n, lastFileOffset: 6 * MiB, writes: [{ offset: 5 * MiB + 4096, data: p2 }, { offset: 4 * MiB + 8192, data: p3 }] },
    { tail: 0, sequence: 12n, corrupt: true, lastFileOffset: 6 * MiB, writes: [{ offset: 4 * MiB, data: randomBytes(4096) }] }, // torn: not valid
  ];

  /** What qemu-img reads after `qemu-img check -r all` replays the log of a copy (extended to the log's LastFileOffset, which QEMU does not do). */
  async function replayedByQemu(f: string, lastFileOffset: number): Promise<Buffer> {
    const copy = `${f}.copy.vhdx`;
    await writeFile(copy, await readFile(f));
    await qemuImg('check', '-r', 'all', '-f', 'vhdx', copy).catch(() => '');
    await truncate(copy, Math.max((await stat(copy)).size, lastFileOffset));
    return witness(copy);
  }

  it('applies the active sequence (not a stale one, not a torn entry), extending the file; qemu-img check -r all agrees', async () => {
    const { spec, expected } = scenario(normal);
    const before = await writeVhdx(file('log.vhdx'), spec);
    const img = await VhdxImage.open(file('log.vhdx'));
    expect((await readAll(img)).equals(expected)).toBe(true);
    await img.close();
    expect((await readFile(file('log.vhdx'))).equals(before), 'the file is not written').toBe(true);
    expect((await replayedByQemu(file('log.vhdx'), 6 * MiB)).equals(expected), 'qemu-img replays it the same').toBe(true);
  });

  it('a sequence that wraps around the end of the log', async () => {
    const { spec, expected } = scenario(({ p1, p2, p3, bat }) => [
      { at: 255, sequence: 7n, lastFileOffset: 6 * MiB, writes: [{ offset: BAT_AT, data: bat }] }, // sectors 255 and 0
      { sequence: 8n, lastFileOffset: 6 * MiB, writes: [{ offset: 4 * MiB + 8192, data: p1 }, { offset: 4 * MiB + 16384, zero: 8192 }, { offset: 5 * MiB + 4096, data: p2 }] },
      { sequence: 9n, lastFileOffset: 6 * MiB, writes: [{ offset: 4 * MiB + 8192, data: p3 }] },
    ]);
    await writeVhdx(file('wrap.vhdx'), spec);
    const img = await VhdxImage.open(file('wrap.vhdx'));
    expect((await readAll(img)).equals(expected)).toBe(true);
    await img.close();
    // Not compared with qemu-img: QEMU takes the first run of entries it finds scanning the log from its
    // start that ends at the newest entry (here 8 and 9, at sectors 1 and 2), without going back to
    // the head's tail (7, at sector 255), so it would leave the BAT write out.
  });

  it('entries of another LogGuid, or none: nothing to replay', async () => {
    const data = randomBytes(MiB);
    await writeVhdx(file('other.vhdx'), { size: 4 * MiB, blocks: [{ block: 0, data }], logGuid: randomGuid(), log: [{ sequence: 5n, logGuid: randomGuid(), writes: [{ offset: 4 * MiB, zero: MiB }] }] });
    const img = await VhdxImage.open(file('other.vhdx'));
    const out = Buffer.alloc(MiB);
    await img.read(out, 0);
    expect(out.equals(data)).toBe(true);
    await img.close();
  });

  it('refuses a log outside the file, a file cut short of the flushed offset, a write into the header section', async () => {
    const buf = buildVhdx({ size: 4 * MiB, logGuid: randomGuid() });
    for (const at of HEADER_AT) {
      buf.writeBigUInt64LE(1n << 40n, at + 72);
      rechecksum(buf, at, 4096);
    }
    await writeFile(file('lo.vhdx'), buf);
    await expect(VhdxImage.open(file('lo.vhdx'))).rejects.toThrow(/has an unreplayed log \(Hyper-V did not close it cleanly\) that cannot be replayed here \(its log of 1048576 bytes at offset 1099511627776 is misaligned or outside the file\); open it once in Hyper-V or run qemu-img check -r all on a copy/);
    const { spec } = scenario(normal);
    spec.log![2]!.flushedFileOffset = 9 * MiB;
    await writeVhdx(file('cut.vhdx'), spec);
    await expect(VhdxImage.open(file('cut.vhdx'))).rejects.toThrow(/shorter than the 9437184 the log says were flushed: it was cut short/);
    await writeVhdx(file('hdr.vhdx'), { size: 4 * MiB, logGuid: spec.logGuid, log: [{ sequence: 1n, writes: [{ offset: 64 * KiB, zero: 4096 }] }] });
    await expect(VhdxImage.open(file('hdr.vhdx'))).rejects.toThrow(/an entry writes 4096 bytes at offset 65536, outside the file's data/);
    // Every sector of the log an entry header claiming the whole log: bounded work, then refused.
    const g = randomGuid();
    const over = buildVhdx({ size: 4 * MiB, logGuid: g });
    for (let k = 0; k < 256; k++) {
      const at = MiB + k * 4096;
      over.write('loge', at, 'latin1');
      over.writeUInt32LE(MiB, at + 8);
      over.writeBigUInt64LE(1n, at + 16);
      guidBytes(g).copy(over, at + 32);
    }
    await writeFile(file('over.vhdx'), over);
    await expect(VhdxImage.open(file('over.vhdx'))).rejects.toThrow(/its log entries overlap one another over and over/);
    await writeVhdx(file('huge.vhdx'), { size: 4 * MiB, logGuid: spec.logGuid, log: [{ sequence: 1n, lastFileOffset: 2 ** 40, writes: [{ offset: 4 * MiB, zero: 2 ** 39 }] }] });
    await expect(VhdxImage.open(file('huge.vhdx'))).rejects.toThrow(/it writes more than 1073741824 bytes/);
  });
});
