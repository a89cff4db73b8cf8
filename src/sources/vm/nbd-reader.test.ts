// The NBD disk reader against real qemu-nbd exports of qcow2 images written with qemu-io, with a
// persistent dirty bitmap for the incremental.
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestRepository, tempDir, type TestRepository } from '../../../test/helpers/repo.js';
import { NbdClient } from '../../protocols/nbd/client.js';
import { qemuImg, qemuIo, startQemuNbd } from '../../protocols/nbd/testing/qemu-nbd.js';
import { restoreDisk } from '../../restore/disk.js';
import type { DiskRecord } from '../../repository/snapshot.js';
import { readDiskOverNbd, type NbdDiskReadResult } from './nbd-reader.js';

const MiB = 1024 * 1024;
let t: TestRepository;
let tmp: { path: string; cleanup(): Promise<void> };
let image: string;

async function readAll(opts: { bitmap?: string; parent?: NbdDiskReadResult }): Promise<NbdDiskReadResult> {
  const server = await startQemuNbd({ image, format: 'qcow2', socket: `${tmp.path}/nbd.sock`, ...(opts.bitmap ? { bitmaps: [opts.bitmap] } : {}) });
  try {
    const context = opts.bitmap ? `qemu:dirty-bitmap:${opts.bitmap}` : undefined;
    const nbd = await NbdClient.connect({ path: server.socket! }, { exportName: server.exportName, metaContexts: ['base:allocation', ...(context ? [context] : [])] });
    try {
      return await readDiskOverNbd(t.repo, nbd, {
        blockSize: t.repo.config.blockSize,
        ...(opts.parent && context ? { incremental: { context, parentPages: opts.parent.pages, parentSize: opts.parent.size } } : {}),
      });
    } finally {
      await nbd.disconnect();
    }
  } finally {
    await server.stop();
  }
}

async function restoredSha(r: NbdDiskReadResult, name: string): Promise<string> {
  await t.repo.flush();
  const disk: DiskRecord = { name, size: r.size, blockSize: t.repo.config.blockSize, pages: r.pages, source: image, format: 'raw' };
  const out = await restoreDisk(t.repo, disk, { targetDir: tmp.path, format: 'raw' });
  return createHash('sha256').update(await readFile(out.path)).digest('hex');
}

async function currentSha(): Promise<string> {
  await qemuImg('convert', '-f', 'qcow2', '-O', 'raw', image, `${tmp.path}/now.raw`);
  const sha = createHash('sha256').update(await readFile(`${tmp.path}/now.raw`)).digest('hex');
  await rm(`${tmp.path}/now.raw`);
  return sha;
}

beforeAll(async () => {
  t = await createTestRepository();
  tmp = await tempDir();
  image = `${tmp.path}/vda.qcow2`;
  await qemuImg('create', '-f', 'qcow2', image, '64M');
  await qemuIo(image, 'qcow2', 'write -P 0xaa 0 3M', 'write -P 0xbb 20M 512k', 'write -z 30M 2M', 'write -P 0xcc 63M 1M');
  await qemuImg('bitmap', '--add', '-f', 'qcow2', image, 'b0');
});

afterAll(async () => {
  await t.cleanup();
  await tmp.cleanup();
});

describe('readDiskOverNbd', () => {
  let full: NbdDiskReadResult;

  it('reads allocated blocks only and restores byte-identical', async () => {
    full = await readAll({});
    expect(full.size).toBe(64 * MiB);
    // 3 + 1 (20M..20.5M) + 1 MiB of data; the zeroed and unwritten ranges are never read.
    expect(full.bytesRead).toBe(5 * MiB);
    expect(await restoredSha(full, 'full')).toBe(await currentSha());
  });

  it('incremental: reads only blocks the dirty bitmap marks and still restores byte-identical', async () => {
    await qemuIo(image, 'qcow2', 'write -P 0xdd 40M 64k', 'write -P 0xee 1M 4k');
    const inc = await readAll({ bitmap: 'b0', parent: full });
    // Two 1 MiB blocks touched: 40M and 1M.
    expect(inc.bytesRead).toBe(2 * MiB);
    // Blocks 0, 2 (of the first 3 MiB, 1 was rewritten), 20 and 63 come from the parent unread.
    expect(inc.blocksReused).toBe(4);
    expect(await restoredSha(inc, 'inc')).toBe(await currentSha());
  });
});
