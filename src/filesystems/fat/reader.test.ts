// The FAT reader against images mkfs.fat made and mtools filled (no mount): FAT12, FAT16 and FAT32,
// long names, a folder of many clusters, a fragmented file; every file compared with its source.
// Then damaged copies: a FAT entry making a loop, a chain past the end, a zeroed boot sector.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { patchFile } from '../../../test/helpers/patch.js';
import { tempDir } from '../../../test/helpers/repo.js';
import { FileSystemError, FileVolume, type FileSystem } from '../types.js';
import { isFat, openFat } from './reader.js';

const exec = promisify(execFile);
const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
let dir: { path: string; cleanup(): Promise<void> };
let src: string;

beforeAll(async () => {
  dir = await tempDir('bulwark-fat-');
  src = join(dir.path, 'src');
  await fsp.mkdir(join(src, 'deep/er/still deeper'), { recursive: true });
  await fsp.mkdir(join(src, 'many'), { recursive: true });
  await fsp.writeFile(join(src, 'empty.txt'), '');
  await fsp.writeFile(join(src, 'one.txt'), 'x');
  await fsp.writeFile(join(src, 'A long file name with spaces.txt'), 'long names\n'.repeat(500));
  await fsp.writeFile(join(src, 'deep/er/still deeper/random.bin'), randomBytes(2 * 1024 * 1024 + 123));
  for (let i = 0; i < 600; i++) await fsp.writeFile(join(src, 'many', `file-number-${i}.txt`), `file ${i}\n`);
});

afterAll(async () => {
  await dir?.cleanup();
});

async function make(type: 12 | 16 | 32, kib: number, label: string): Promise<string> {
  const img = join(dir.path, `fat${type}-${label.replace(/\W/g, '_')}.img`);
  await exec('mkfs.fat', ['-C', '-F', String(type), '-n', label, img, String(kib)]);
  await exec('mcopy', ['-i', img, '-s', join(src, 'empty.txt'), join(src, 'one.txt'), join(src, 'A long file name with spaces.txt'), join(src, 'deep'), '::/'], { env });
  if (type !== 12) await exec('mcopy', ['-i', img, '-s', join(src, 'many'), '::/'], { env });
  return img;
}

async function readAll(fs: FileSystem, path: string): Promise<Buffer> {
  const f = await fs.open(path);
  const buf = Buffer.alloc(f.size);
  let at = 0;
  while (at < f.size) {
    const n = await f.read(buf.subarray(at), at);
    if (n === 0) break;
    at += n;
  }
  return buf;
}

describe('FAT reader', () => {
  for (const [type, kib] of [[12, 4096], [16, 65536], [32, 300 * 1024]] as const) {
    it(`FAT${type}: type and label, long names, deep paths, every file byte for byte`, async () => {
      const img = await make(type, kib, `BW FAT${type}`);
      const vol = await FileVolume.open(img);
      try {
        const head = Buffer.alloc(512);
        await vol.read(head, 0);
        expect(isFat(head)).toBe(true);
        const fs = await openFat(vol);
        expect(fs.type).toBe(`fat${type}`);
        expect(fs.label).toBe(`BW FAT${type}`);
        const root = (await fs.list('/')).map((e) => e.name).sort();
        expect(root).toEqual(['A long file name with spaces.txt', 'deep', 'empty.txt', ...(type === 12 ? [] : ['many']), 'one.txt'].sort());
        for (const f of ['empty.txt', 'one.txt', 'A long file name with spaces.txt', 'deep/er/still deeper/random.bin']) {
          expect((await readAll(fs, `/${f}`)).equals(await fsp.readFile(join(src, f))), f).toBe(true);
        }
        // Case-insensitive, as FAT is.
        expect((await fs.stat('/DEEP/ER/Still Deeper/RANDOM.BIN')).size).toBe(2 * 1024 * 1024 + 123);
        const st = await fs.stat('/one.txt');
        expect(Math.abs(st.mtimeMs! - (await fsp.stat(join(src, 'one.txt'))).mtimeMs)).toBeLessThan(24 * 3600 * 1000 + 2000);
        if (type !== 12) expect((await fs.list('/many')).map((e) => e.name).sort()).toEqual((await fsp.readdir(join(src, 'many'))).sort());
      } finally {
        await vol.close();
      }
    });
  }

  it('a fragmented file (written into the holes of deleted ones) reads whole', async () => {
    const img = join(dir.path, 'frag.img');
    await exec('mkfs.fat', ['-C', '-F', '16', img, '16384']);
    const small = join(dir.path, 'small.bin');
    await fsp.writeFile(small, randomBytes(40 * 1024));
    for (let i = 0; i < 40; i++) await exec('mcopy', ['-i', img, small, `::/s${i}.bin`], { env });
    for (let i = 0; i < 40; i += 2) await exec('mdel', ['-i', img, `::/s${i}.bin`], { env });
    const big = join(dir.path, 'big.bin');
    await fsp.writeFile(big, randomBytes(600 * 1024));
    await exec('mcopy', ['-i', img, big, '::/big.bin'], { env });
    const vol = await FileVolume.open(img);
    try {
      expect((await readAll(await openFat(vol), '/big.bin')).equals(await fsp.readFile(big))).toBe(true);
    } finally {
      await vol.close();
    }
  });

  it('damaged: a FAT entry looping back, a chain past the end, a zeroed boot sector — clear errors, no hang', async () => {
    const img = await make(16, 65536, 'DAMAGED');
    const vol0 = await FileVolume.open(img);
    const fs0 = await openFat(vol0);
    const first = (await fs0.stat('/deep/er/still deeper/random.bin')).id;
    await vol0.close();
    const b = await fsp.readFile(img);
    const fatOffset = b.readUInt16LE(14) * b.readUInt16LE(11);
    const variants: [string, (f: string) => void][] = [
      ['loop', (f) => patchFile(f, fatOffset + (first + 3) * 2, Buffer.from([first & 0xff, first >> 8]))],
      ['past the end', (f) => patchFile(f, fatOffset + (first + 3) * 2, Buffer.from([0xf0, 0xff]))],
      ['boot sector', (f) => patchFile(f, 0, Buffer.alloc(512))],
    ];
    for (const [name, damage] of variants) {
      const copy = join(dir.path, `damaged-${name.replace(/ /g, '-')}.img`);
      await fsp.copyFile(img, copy);
      damage(copy);
      const vol = await FileVolume.open(copy);
      try {
        const err = await (async () => readAll(await openFat(vol), '/deep/er/still deeper/random.bin'))().catch((e: unknown) => e);
        expect(err, name).toBeInstanceOf(FileSystemError);
      } finally {
        await vol.close();
      }
    }
  });
});
