// The qcow2 writer against qemu-img as the outside witness: the same writes go into a sparse raw file
// and through the writer; `qemu-img check` must find no errors and no leaks, `qemu-img compare` must
// find the images identical, `qemu-img info` must show the virtual size, and `qemu-img map` must show
// data exactly in the clusters that hold non-zero bytes (holes and zero clusters stay unallocated),
// with the file about the size of that data.
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../../test/helpers/repo.js';
import { qemuImg } from '../../protocols/nbd/testing/qemu-nbd.js';
import { encodePage } from '../../repository/fixed-index.js';
import type { DiskRecord } from '../../repository/snapshot.js';
import { restoreDisk } from '../../restore/disk.js';
import { Qcow2Writer } from './writer.js';

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir('bw-qcow2w-');
});
afterAll(async () => {
  await tmp.cleanup();
});

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const at = (name: string): string => join(tmp.path, name);

type Write = [offset: number, data: Buffer];

/** Random bytes with the given [start, end) ranges zeroed. */
function rnd(len: number, ...zeros: [number, number][]): Buffer {
  const b = randomBytes(len);
  for (const [s, e] of zeros) b.fill(0, s, e);
  return b;
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
}

/** Writes the same data into expected raw and the writer's qcow2, then asks qemu-img about both. */
async function scenario(name: string, size: number, clusterSize: number, writes: Write[]): Promise<void> {
  const raw = at(`${name}.raw`);
  const q = at(`${name}.qcow2`);
  const fh = await fsp.open(raw, 'wx');
  await fh.truncate(size);
  const w = await Qcow2Writer.create(q, size, { clusterSize });
  for (const [off, data] of writes) {
    await fh.write(data, 0, data.length, off);
    await w.write(off, data);
  }
  await fh.close();
  await w.close();

  // Consistent: no errors, no leaks (qemu-img check also exits non-zero on either).
  const check = JSON.parse(await qemuImg('check', '-f', 'qcow2', '--output=json', q)) as Record<string, number | undefined>;
  expect(check['check-errors'] ?? 0).toBe(0);
  expect(check['corruptions'] ?? 0).toBe(0);
  expect(check['leaks'] ?? 0).toBe(0);
  // The same guest data.
  expect(await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', raw, q)).toMatch(/identical/);
  const info = JSON.parse(await qemuImg('info', '-f', 'qcow2', '--output=json', q)) as Record<string, unknown>;
  expect(info['virtual-size']).toBe(Math.ceil(size / 512) * 512);
  expect(info['cluster-size']).toBe(clusterSize);
  expect(info['backing-filename']).toBeUndefined();

  // Allocated exactly where a cluster holds a non-zero byte.
  const want = new Set<number>();
  for (const [off, data] of writes) {
    for (let i = 0; i < data.length; i++) {
      if (data[i] !== 0) {
        const c = Math.floor((off + i) / clusterSize);
        want.add(c);
        i = (c + 1) * clusterSize - off - 1; // on to the next cluster
      }
    }
  }
  const map = JSON.parse(await qemuImg('map', '-f', 'qcow2', '--output=json', q)) as MapEntry[];
  const got = new Set<number>();
  for (const e of map.filter((x) => x.data)) {
    expect(e.start % clusterSize).toBe(0);
    for (let c = e.start / clusterSize; c < Math.ceil((e.start + e.length) / clusterSize); c++) got.add(c);
  }
  expect([...got].sort((a, b) => a - b)).toEqual([...want].sort((a, b) => a - b));
  // About the size of the data: the data clusters, one L2 table for each L2 table's reach touched, the
  // L1 table, 2 bytes of refcount per cluster of the file and 8 in the refcount table per
  // refcount block, and the header.
  const C = clusterSize;
  const l2Tables = new Set([...want].map((c) => Math.floor(c / (C / 8)))).size;
  const l1Clusters = Math.ceil((Math.ceil(size / (C * (C / 8))) * 8) / C);
  const fileSize = (await fsp.stat(q)).size;
  const refcountBlocks = Math.ceil(fileSize / C / (C / 2));
  const refcountClusters = refcountBlocks + Math.ceil((refcountBlocks * 8) / C);
  expect(fileSize).toBeGreaterThanOrEqual(want.size * C);
  expect(fileSize).toBeLessThanOrEqual((want.size + l2Tables + l1Clusters + refcountClusters + 1) * C);
}

describe('Qcow2Writer', () => {
  for (const clusterSize of [4 * KiB, 64 * KiB, 2 * MiB]) {
    it(`writes data with holes, zero clusters, unaligned pieces and a partial last cluster (${clusterSize / KiB} KiB clusters)`, async () => {
      const C = clusterSize;
      const reach = C * (C / 8);
      // Not a multiple of the cluster size; large enough to span several L2 tables where they are small.
      const size = 40 * C + Math.min(reach * 3, 64 * MiB) + 7 * 512;
      const end = size;
      const writes: Write[] = [
        [0, rnd(2 * C)],
        [2 * C + 512, rnd(512)], // inside a cluster
        [2 * C + 2048, rnd(100)], // the same cluster again, not aligned to anything
        [3 * C + 100, rnd(C)], // straddles two clusters
        [5 * C, Buffer.alloc(2 * C)], // zeros: not stored
        [7 * C, rnd(4 * C, [C, 2 * C])], // a zero cluster in the middle of a write
        [12 * C, rnd(3 * C, [0, C - 1])], // one byte of data at the end of a cluster
        [20 * C, rnd(C, [0, C])], // written, all zero
      ];
      // A run across an L2 table's boundary, where there is one inside the disk.
      if (reach < size - 4 * C && reach > 21 * C) writes.push([reach - 2 * C, rnd(4 * C)]);
      // 1 MiB blocks as a restore writes them, some pages zero inside, then the disk's last bytes.
      const last = writes.at(-1)!;
      for (let o = Math.ceil((last[0] + last[1].length) / MiB) * MiB; o + MiB <= end - 2 * C - 300; o += MiB) {
        writes.push([o, rnd(MiB, [4096, 8192], [MiB / 2, MiB])]);
      }
      writes.push([end - 2 * C - 300, rnd(2 * C + 300)]);
      await scenario(`mix-${C}`, size, C, writes);
    });
  }

  it('writes an 8 GiB disk (16 L2 tables) with data near its start, middle and end', async () => {
    const C = 64 * KiB;
    const size = 8 * GiB + 3 * C + 1536;
    await scenario('big', size, C, [
      [0, rnd(MiB)],
      [3 * MiB, rnd(64 * KiB)],
      [4 * GiB - MiB, rnd(2 * MiB, [MiB - C, MiB])], // across the L2 boundary at 4 GiB
      [6 * GiB + 12345, rnd(100)],
      [size - MiB - 4096, rnd(MiB + 4096)],
    ]);
  });

  it('writes many refcount blocks, a refcount table and an L1 table of several clusters (512-byte clusters)', async () => {
    // 512 B clusters: a refcount block covers 128 KiB of file, a refcount table cluster 8 MiB, an L2
    // table 32 KiB of disk and an L1 cluster 2 MiB of disk.
    const size = 64 * MiB + 512;
    const writes: Write[] = [];
    for (let o = 0; o + MiB < size - MiB; o += 3 * MiB) writes.push([o, rnd(MiB, [1000, 40000])]);
    writes.push([size - 700, rnd(700)]);
    await scenario('small-clusters', size, 512, writes);
  });

  it('writes a size that is not a multiple of 512 (the header rounds it up, the tail reads as zeros)', async () => {
    const size = 3 * MiB + 777;
    await scenario('odd', size, 64 * KiB, [
      [0, rnd(100)],
      [MiB, rnd(2 * MiB + 777)],
    ]);
  });

  it('writes an all-zero and an empty disk', async () => {
    await scenario('zeros', 10 * MiB, 64 * KiB, [[0, Buffer.alloc(10 * MiB)]]);
    await scenario('none', 10 * MiB, 64 * KiB, []);
    await scenario('empty', 0, 64 * KiB, []);
  });

  it('refuses writes out of order, overlapping, or past the end; refuses an existing file', async () => {
    const q = at('order.qcow2');
    const w = await Qcow2Writer.create(q, 16 * MiB);
    await w.write(MiB, rnd(4096));
    await expect(w.write(0, rnd(4096))).rejects.toThrow(/ascending order.*offset 0.*ended at 1052672/);
    await w.abort();
    const w2 = await Qcow2Writer.create(at('overlap.qcow2'), 16 * MiB);
    await w2.write(0, rnd(8192));
    await expect(w2.write(4096, rnd(4096))).rejects.toThrow(/ascending order/);
    // A refused write changes nothing: the image can still be finished.
    await w2.write(8192, rnd(4096));
    await w2.close();
    expect(await qemuImg('check', '-f', 'qcow2', at('overlap.qcow2'))).toMatch(/No errors/);
    await expect(w2.write(MiB, rnd(1))).rejects.toThrow(/closed/);
    const w3 = await Qcow2Writer.create(at('end.qcow2'), 16 * MiB);
    await expect(w3.write(16 * MiB - 10, rnd(11))).rejects.toThrow(/past the disk's end/);
    await w3.abort();
    await expect(Qcow2Writer.create(q, 16 * MiB)).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(Qcow2Writer.create(at('bad.qcow2'), MiB, { clusterSize: 3000 })).rejects.toThrow(/power of two/);
  });

  it('refuses a second write while one is under way', async () => {
    const w = await Qcow2Writer.create(at('busy.qcow2'), 16 * MiB);
    const first = w.write(0, rnd(MiB));
    await expect(w.write(MiB, rnd(MiB))).rejects.toThrow(/one write at a time/);
    await first;
    await w.close();
    expect(await qemuImg('check', '-f', 'qcow2', at('busy.qcow2'))).toMatch(/No errors/);
  });

  describe('restore --format qcow2 writes through it', () => {
    // A repository of one disk: blocks of 1 MiB, two holes, the last block short; block 3 can be made unreadable.
    const blockSize = MiB;
    const size = 6 * MiB + 4096 + 512;
    const blocks: (Buffer | null)[] = [rnd(MiB), null, rnd(MiB, [0, MiB / 2]), rnd(MiB), null, Buffer.alloc(MiB), rnd(4096 + 512)];
    const ids = blocks.map((b, i) => (b === null ? null : (i + 1).toString(16).padStart(64, '0')));
    const disk: DiskRecord = { name: 'vda', size, blockSize, pages: ['ff'.repeat(32)], source: 'test', format: 'raw' };
    const repo = (failAt?: number) => ({
      loadBlob: async (kind: string, id: string): Promise<Buffer> => {
        if (kind === 'tree') return encodePage(ids);
        const i = ids.indexOf(id);
        if (i === failAt) throw new Error('blob is damaged');
        return blocks[i]!;
      },
    });

    it('restores the disk as a qcow2 image (no raw intermediate), identical to the raw restore', async () => {
      const dir = at('restore-ok');
      await fsp.mkdir(dir);
      const raw = await restoreDisk(repo(), disk, { targetDir: dir, format: 'raw' });
      const q = await restoreDisk(repo(), disk, { targetDir: dir, format: 'qcow2' });
      expect(q.path).toBe(join(dir, 'vda.qcow2'));
      expect((await fsp.readdir(dir)).sort()).toEqual(['vda.qcow2', 'vda.raw']);
      expect(await qemuImg('check', '-f', 'qcow2', q.path)).toMatch(/No errors/);
      expect(await qemuImg('compare', '-f', 'raw', '-F', 'qcow2', raw.path, q.path)).toMatch(/identical/);
      expect(q.bytesWritten).toBe(MiB + MiB / 2 + MiB + 64 * KiB); // the zero half and the zero block not stored; the short block one cluster
      await expect(restoreDisk(repo(), disk, { targetDir: dir, format: 'qcow2' })).rejects.toThrow(/already exists/);
    });

    it('a failed restore leaves the incomplete image under a .partial name and says so', async () => {
      const dir = at('restore-fail');
      await fsp.mkdir(dir);
      await expect(restoreDisk(repo(3), disk, { targetDir: dir, format: 'qcow2' })).rejects.toThrow(/blob is damaged; the incomplete image was left as '.*vda\.qcow2\.partial'/);
      expect(await fsp.readdir(dir)).toEqual(['vda.qcow2.partial']);
    });
  });
});
