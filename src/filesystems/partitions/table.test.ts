// Partition tables made by the real tools (sfdisk for MBR with an extended partition, sgdisk for GPT
// with names) on image files, checked against `sfdisk --json` (the outside witness), and damaged
// copies: a destroyed primary GPT header (the backup is used), a loop in the EBR chain, a partition
// past the end of the disk, overlapping partitions.
import { execFile, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { BufferVolume, FileSystemError, FileVolume } from '../types.js';
import { readPartitions, readPartitionTable } from './table.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;

function sfdisk(img: string, script: string, ...args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('sfdisk', ['--no-reread', '--no-tell-kernel', ...args, img], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`sfdisk: ${err}`))));
    p.stdin.end(script);
  });
}

interface Witness { node: string; start: number; size: number; type: string; name?: string }
async function witness(img: string): Promise<{ label: string; partitions: Witness[] }> {
  const { stdout } = await exec('sfdisk', ['--json', img]);
  return (JSON.parse(stdout) as { partitiontable: { label: string; partitions: Witness[] } }).partitiontable;
}

async function withVolume<T>(img: string, f: (v: FileVolume) => Promise<T>): Promise<T> {
  const v = await FileVolume.open(img);
  try {
    return await f(v);
  } finally {
    await v.close();
  }
}

let dir: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  dir = await tempDir('bulwark-parts-');
});
afterAll(async () => {
  await dir?.cleanup();
});

describe('MBR', () => {
  let img: string;
  beforeAll(async () => {
    img = join(dir.path, 'mbr.img');
    await fsp.writeFile(img, '');
    await fsp.truncate(img, 64 * MiB);
    await sfdisk(img, ['label: dos', 'start=2048, size=8MiB, type=83', 'size=4MiB, type=82', 'size=40MiB, type=5', `${img}5 : size=6MiB, type=83`, `${img}6 : size=5MiB, type=8e`, `${img}7 : type=7`].join('\n') + '\n');
  });

  it('lists the primaries and the logical partitions of the extended one, as sfdisk --json does', async () => {
    const w = await witness(img);
    expect(w.label).toBe('dos');
    const t = await withVolume(img, (v) => readPartitionTable(v));
    expect(t?.scheme).toBe('mbr');
    expect(t?.warnings).toEqual([]);
    const parts = t!.partitions;
    // sfdisk lists the extended container too; readPartitions leaves it out.
    const expected = w.partitions.filter((p) => !['5', 'f', '85'].includes(p.type));
    expect(expected).toHaveLength(5);
    expect(parts.map((p) => p.index)).toEqual([1, 2, 5, 6, 7]);
    for (const [i, p] of parts.entries()) {
      const e = expected[i]!;
      expect(e.node.endsWith(String(p.index))).toBe(true);
      expect(p.start).toBe(e.start * 512);
      expect(p.size).toBe(e.size * 512);
      expect(p.type).toBe('0x' + e.type.padStart(2, '0'));
      expect(p.volume.size).toBe(p.size);
    }
    expect(parts.map((p) => p.kind)).toEqual(['linux', 'swap', 'linux', 'lvm', 'windows']);
  });

  it('reads a partition\'s bytes through its volume', async () => {
    const copy = join(dir.path, 'mbr-data.img');
    await fsp.copyFile(img, copy);
    const parts = (await withVolume(copy, (v) => readPartitions(v)))!;
    const p6 = parts.find((p) => p.index === 6)!;
    patchFile(copy, p6.start + 1000, Buffer.from('logical six'));
    await withVolume(copy, async (v) => {
      const again = (await readPartitions(v))!.find((p) => p.index === 6)!;
      const b = Buffer.alloc(11);
      await again.volume.read(b, 1000);
      expect(b.toString()).toBe('logical six');
      await expect(again.volume.read(Buffer.alloc(2), again.size - 1)).rejects.toThrow(FileSystemError);
    });
  });

  it('a loop in the EBR chain is a FileSystemError', async () => {
    const copy = join(dir.path, 'mbr-loop.img');
    await fsp.copyFile(img, copy);
    const w = await witness(img);
    const ext = w.partitions.find((p) => p.type === '5')!;
    // The third EBR (the last, whose link is empty) is made to link back to the second.
    const parts = w.partitions.filter((p) => p.node.match(/[567]$/));
    const buf = await fsp.readFile(copy);
    const ebr1 = ext.start;
    const link1 = buf.readUInt32LE(ebr1 * 512 + 462 + 8);
    const ebr2 = ext.start + link1;
    const link2 = buf.readUInt32LE(ebr2 * 512 + 462 + 8);
    expect(link2).toBeGreaterThan(0);
    expect(parts).toHaveLength(3);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(link1);
    patchFile(copy, (ext.start + link2) * 512 + 462 + 4, Buffer.from([0x05]));
    patchFile(copy, (ext.start + link2) * 512 + 462 + 8, b);
    await withVolume(copy, async (v) => {
      await expect(readPartitions(v)).rejects.toThrow(FileSystemError);
      await expect(readPartitions(v)).rejects.toThrow(/loops/);
    });
  });

  it('a partition past the end of the disk, or overlapping another, is a FileSystemError', async () => {
    const copy = join(dir.path, 'mbr-past.img');
    await fsp.copyFile(img, copy);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(200 * 2048); // partition 1 claims 200 MiB of a 64 MiB disk
    patchFile(copy, 446 + 12, b);
    await withVolume(copy, (v) => expect(readPartitions(v)).rejects.toThrow(FileSystemError));
    const copy2 = join(dir.path, 'mbr-overlap.img');
    await fsp.copyFile(img, copy2);
    b.writeUInt32LE(20 * 2048); // partition 1 grows over partition 2
    patchFile(copy2, 446 + 12, b);
    await withVolume(copy2, (v) => expect(readPartitions(v)).rejects.toThrow(/overlaps/));
  });

  it('a disk without a partition table (a bare file system, zeros) gives undefined', async () => {
    expect(await readPartitions(new BufferVolume(Buffer.alloc(MiB)))).toBeUndefined();
    const fat = join(dir.path, 'fat.img');
    await fsp.writeFile(fat, '');
    await fsp.truncate(fat, 8 * MiB);
    try {
      await exec('mkfs.vfat', [fat]);
    } catch {
      // No dosfstools: a boot sector with a signature and no entries stands in for it.
      const s = Buffer.alloc(512);
      s.write('mkfs.fat', 3, 'latin1');
      s.writeUInt16LE(0xaa55, 510);
      patchFile(fat, 0, s);
    }
    expect(await withVolume(fat, (v) => readPartitions(v))).toBeUndefined();
  });
});

describe('GPT', () => {
  let img: string;
  const NAMES = ['EFI system', 'root', 'swap space', 'data ünïcode'];
  beforeAll(async () => {
    img = join(dir.path, 'gpt.img');
    await fsp.writeFile(img, '');
    await fsp.truncate(img, 64 * MiB);
    await exec('sgdisk', ['-n', '1:2048:+8M', '-t', '1:ef00', '-c', `1:${NAMES[0]}`, '-n', '2:0:+20M', '-t', '2:8300', '-c', `2:${NAMES[1]}`, '-n', '3:0:+4M', '-t', '3:8200', '-c', `3:${NAMES[2]}`, '-n', '4:0:0', '-t', '4:8e00', '-c', `4:${NAMES[3]}`, img]);
  });

  async function checkAgainstWitness(file: string, warnings: RegExp | undefined): Promise<void> {
    const w = await witness(img); // the undamaged original
    expect(w.label).toBe('gpt');
    const t = (await withVolume(file, (v) => readPartitionTable(v)))!;
    expect(t.scheme).toBe('gpt');
    expect(t.sectorSize).toBe(512);
    if (warnings) expect(t.warnings.join('\n')).toMatch(warnings);
    else expect(t.warnings).toEqual([]);
    expect(t.partitions).toHaveLength(4);
    for (const [i, p] of t.partitions.entries()) {
      const e = w.partitions[i]!;
      expect(p.index).toBe(i + 1);
      expect(p.start).toBe(e.start * 512);
      expect(p.size).toBe(e.size * 512);
      expect(p.type).toBe(e.type.toLowerCase());
      expect(p.name).toBe(e.name);
      expect(p.name).toBe(NAMES[i]);
    }
    expect(t.partitions.map((p) => p.kind)).toEqual(['efi', 'linux', 'swap', 'lvm']);
  }

  it('lists four named partitions as sfdisk --json does', async () => {
    await checkAgainstWitness(img, undefined);
  });

  it('a damaged primary header: the backup at the last LBA is used, and said so', async () => {
    const copy = join(dir.path, 'gpt-primary.img');
    await fsp.copyFile(img, copy);
    patchFile(copy, 512 + 40, Buffer.from([0xde, 0xad])); // header CRC no longer matches
    await checkAgainstWitness(copy, /primary GPT header is damaged.*CRC32.*backup header at sector 131071 was used/);
    const copy2 = join(dir.path, 'gpt-array.img');
    await fsp.copyFile(img, copy2);
    patchFile(copy2, 1024 + 128 + 60, Buffer.from('XX')); // primary entry array: a name changed
    await checkAgainstWitness(copy2, /entry array at sector 2 does not match/);
  });

  it('a damaged backup header is a warning; both damaged is a FileSystemError', async () => {
    const copy = join(dir.path, 'gpt-both.img');
    await fsp.copyFile(img, copy);
    patchFile(copy, 64 * MiB - 512 + 40, Buffer.from([0xde, 0xad]));
    await checkAgainstWitness(copy, /backup GPT header is damaged/);
    patchFile(copy, 512 + 40, Buffer.from([0xde, 0xad]));
    await withVolume(copy, (v) => expect(readPartitions(v)).rejects.toThrow(FileSystemError));
  });

  it('4096-byte sectors: the header at byte 4096', async () => {
    // sgdisk on an image cannot be told the sector size; build the same table by moving the
    // 512-byte one: header to byte 4096, LBAs scaled, CRCs recomputed.
    const { crc32 } = await import('node:zlib');
    const src = await fsp.readFile(img);
    const out = Buffer.alloc(64 * MiB);
    src.copy(out, 0, 0, 512);
    const h = Buffer.from(src.subarray(512, 1024));
    const ents = Buffer.from(src.subarray(1024, 1024 + 128 * 128));
    for (let i = 0; i < 4; i++) {
      const o = i * 128;
      const first = Number(ents.readBigUInt64LE(o + 32));
      const last = Number(ents.readBigUInt64LE(o + 40));
      ents.writeBigUInt64LE(BigInt(first / 8), o + 32);
      ents.writeBigUInt64LE(BigInt(Math.floor((last + 1) / 8) - 1), o + 40);
    }
    const last = 64 * MiB / 4096 - 1;
    h.writeBigUInt64LE(1n, 24);
    h.writeBigUInt64LE(BigInt(last), 32);
    h.writeBigUInt64LE(6n, 40);
    h.writeBigUInt64LE(BigInt(last - 5), 48);
    h.writeBigUInt64LE(2n, 72);
    h.writeUInt32LE(crc32(ents), 88);
    h.writeUInt32LE(0, 16);
    h.writeUInt32LE(crc32(h.subarray(0, h.readUInt32LE(12))), 16);
    h.copy(out, 4096);
    ents.copy(out, 8192);
    const t = (await readPartitionTable(new BufferVolume(out)))!;
    expect(t.sectorSize).toBe(4096);
    const w = await witness(img);
    expect(t.partitions.map((p) => [p.start, p.size, p.name])).toEqual(w.partitions.map((p) => [p.start * 512, Math.floor((p.start + p.size) / 8) * 4096 - p.start * 512, p.name]));
    // No backup header: said so.
    expect(t.warnings.join()).toMatch(/backup GPT header is damaged/);
  });

  it('a GPT partition past the end of the disk is a FileSystemError', async () => {
    const { crc32 } = await import('node:zlib');
    const copy = join(dir.path, 'gpt-past.img');
    await fsp.copyFile(img, copy);
    const buf = await fsp.readFile(copy);
    const ents = Buffer.from(buf.subarray(1024, 1024 + 128 * 128));
    ents.writeBigUInt64LE(BigInt(64 * 2048 + 100), 3 * 128 + 40);
    const h = Buffer.from(buf.subarray(512, 512 + 92));
    h.writeUInt32LE(crc32(ents), 88);
    h.writeUInt32LE(0, 16);
    h.writeUInt32LE(crc32(h), 16);
    patchFile(copy, 1024, ents);
    patchFile(copy, 512, h);
    await withVolume(copy, (v) => expect(readPartitions(v)).rejects.toThrow(/outside the disk/));
  });
});
