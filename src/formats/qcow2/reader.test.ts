// The qcow2 reader against images qemu-img and qemu-io make, each subformat with known data at known
// offsets: what it reads must equal `qemu-img convert -O raw` of the same image (the witness), and
// holes must not be read (the reader's own count of data bytes read, against what was written).
// Then damaged and hostile images: clear errors, no hang, no unbounded allocation.
import { execFileSync } from 'node:child_process';
import { openSync, readSync, closeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeLuksQcow2 } from '../../../test/helpers/luks.js';
import { patchFile } from '../../../test/helpers/patch.js';
import { tempDir } from '../../../test/helpers/repo.js';
import { qemuImg, qemuIo } from '../../protocols/nbd/testing/qemu-nbd.js';
import { BulwarkError } from '../../util/errors.js';
import { Qcow2Image } from './reader.js';

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir('bw-qcow2-');
});
afterAll(async () => {
  await tmp.cleanup();
});

const MiB = 1024 * 1024;
const at = (name: string): string => join(tmp.path, name);

/** Reads the whole virtual disk through the reader, in 1 MiB blocks as a backup does (skipping holes). */
async function readAll(file: string): Promise<{ bytes: Buffer; dataBytesRead: number }> {
  const img = await Qcow2Image.open(file);
  try {
    const out = Buffer.alloc(img.size);
    for (let off = 0; off < img.size; off += MiB) {
      const len = Math.min(MiB, img.size - off);
      if (await img.hasData(off, len)) await img.read(out.subarray(off, off + len), off);
    }
    return { bytes: out, dataBytesRead: img.dataBytesRead };
  } finally {
    await img.close();
  }
}

async function expectSameAsQemu(file: string): Promise<{ dataBytesRead: number }> {
  const raw = `${file}.witness.raw`;
  await qemuImg('convert', '-U', '-O', 'raw', file, raw);
  const mine = await readAll(file);
  const theirs = await readFile(raw);
  expect(mine.bytes.length).toBe(theirs.length);
  expect(mine.bytes.equals(theirs), `${file}: differs from qemu-img convert`).toBe(true);
  return { dataBytesRead: mine.dataBytesRead };
}

const WRITES = ['write -P 0x11 0 64k', 'write -P 0x22 1M 4k', 'write -P 0x33 3145216 1k', 'write -P 0x44 7M 1M'];

describe('qcow2 reader, against qemu-img', () => {
  it('version 3 and version 2 images: the data where it was written, and only it read', async () => {
    for (const compat of ['1.1', '0.10']) {
      const f = at(`v-${compat}.qcow2`);
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, f, '16M');
      await qemuIo(f, 'qcow2', ...WRITES);
      const r = await expectSameAsQemu(f);
      // Four writes touch five 64 KiB clusters (one straddles a cluster boundary) plus 16 of the 1 MiB write.
      expect(r.dataBytesRead).toBeLessThanOrEqual(21 * 64 * 1024);
    }
  });

  it('zero clusters over data read as zeros without reading', async () => {
    const f = at('zero.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', f, '8M');
    await qemuIo(f, 'qcow2', 'write -P 0x55 0 2M', 'write -z 512k 1M');
    const r = await expectSameAsQemu(f);
    expect(r.dataBytesRead).toBe(1 * MiB);
  });

  it('compressed clusters, deflate and zstd', async () => {
    const src = at('compress-src.raw');
    execFileSync('sh', ['-c', `head -c 3145728 /dev/urandom | base64 > '${src}'; truncate -s 8M '${src}'`]);
    for (const type of ['zlib', 'zstd']) {
      const f = at(`c-${type}.qcow2`);
      await qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${type}`, src, f);
      await qemuIo(f, 'qcow2', 'write -P 0x66 5M 64k'); // an uncompressed cluster among them
      await expectSameAsQemu(f);
    }
  });

  it('backing chains of qcow2 and raw, with zero clusters hiding the base', async () => {
    const base = at('base.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', base, '8M');
    await qemuIo(base, 'qcow2', 'write -P 0xa1 0 4M');
    const mid = at('mid.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', mid);
    await qemuIo(mid, 'qcow2', 'write -P 0xb2 1M 64k', 'write -z 2M 128k');
    const top = at('top.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top);
    await qemuIo(top, 'qcow2', 'write -P 0xc3 6M 64k');
    await expectSameAsQemu(top);

    const rawBase = at('base.raw');
    execFileSync('sh', ['-c', `head -c 2097152 /dev/urandom > '${rawBase}'`]); // shorter than the disk
    const over = at('over-raw.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', rawBase, '-F', 'raw', over, '4M');
    await qemuIo(over, 'qcow2', 'write -P 0xd4 1M 4k');
    await expectSameAsQemu(over);
  });

  it('extended L2 entries (sub-clusters) over a backing file', async () => {
    const base = at('xbase.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', base, '4M');
    await qemuIo(base, 'qcow2', 'write -P 0x71 0 4M');
    const f = at('xl2.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=128k', '-b', base, '-F', 'qcow2', f);
    // 4 KiB sub-clusters: a write, a zeroed range, and the rest read through to the base.
    await qemuIo(f, 'qcow2', 'write -P 0x72 8k 4k', 'write -z 64k 8k', 'write -P 0x73 1052672 12k');
    await expectSameAsQemu(f);
  });

  it('an external data file, and cluster sizes from 512 B to 2 MiB', async () => {
    const f = at('ext.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${at('ext.data')}`, f, '8M');
    await qemuIo(f, 'qcow2', ...WRITES.slice(0, 3));
    await expectSameAsQemu(f);
    for (const cs of ['512', '2M']) {
      const g = at(`cs-${cs}.qcow2`);
      await qemuImg('create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cs}`, g, '8M');
      await qemuIo(g, 'qcow2', ...WRITES);
      await expectSameAsQemu(g);
    }
  });

  it('refuses encrypted images clearly', async () => {
    const f = at('enc.qcow2');
    await makeLuksQcow2(f, '8M');
    const err = await Qcow2Image.open(f).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BulwarkError);
    expect((err as BulwarkError).message).toMatch(/encrypted qcow2 image \(LUKS\)/);
    expect((err as BulwarkError).code).toBe('usage');
  });
});

function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}

describe('qcow2 reader, damaged and hostile images', () => {
  async function fresh(name: string): Promise<string> {
    const f = at(name);
    await qemuImg('create', '-q', '-f', 'qcow2', f, '8M');
    await qemuIo(f, 'qcow2', 'write -P 0x99 1M 64k');
    return f;
  }

  it('an L1 table offset past the end of the file', async () => {
    const f = await fresh('h-l1.qcow2');
    patchFile(f, 40, u64(1n << 40n));
    await expect(Qcow2Image.open(f)).rejects.toThrow(/L1 table at offset \d+ is outside the file/);
  });

  it('an absurd virtual size, and a cluster size QEMU never writes', async () => {
    const f = await fresh('h-size.qcow2');
    patchFile(f, 24, u64(1n << 60n));
    await expect(Qcow2Image.open(f)).rejects.toThrow(/virtual size \d+ bytes is absurd/);
    const g = await fresh('h-cluster.qcow2');
    const b = Buffer.alloc(4);
    b.writeUInt32BE(40);
    patchFile(g, 20, b);
    await expect(Qcow2Image.open(g)).rejects.toThrow(/cluster size 2\^40/);
  });

  it('a data cluster pointer past the end of the file', async () => {
    const f = await fresh('h-l2.qcow2');
    // The L2 table: the first L1 entry's target; entry 16 maps guest offset 1 MiB (64 KiB clusters).
    const fd = openSync(f, 'r');
    const head = Buffer.alloc(48);
    readSync(fd, head, 0, 48, 0);
    const l1 = Buffer.alloc(8);
    readSync(fd, l1, 0, 8, Number(head.readBigUInt64BE(40)));
    closeSync(fd);
    const l2 = Number(l1.readBigUInt64BE(0) & 0x00fffffffffffe00n);
    patchFile(f, l2 + 16 * 8, u64((1n << 63n) | (1n << 45n)));
    const img = await Qcow2Image.open(f);
    try {
      await expect(img.read(Buffer.alloc(65536), MiB)).rejects.toThrow(/cluster pointer \(\d+\) is past the end of the file/);
    } finally {
      await img.close();
    }
  });

  it('a backing chain that loops', async () => {
    const a = at('loop-a.qcow2');
    const b = at('loop-b.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', a, '8M');
    await qemuImg('create', '-q', '-f', 'qcow2', '-b', a, '-F', 'qcow2', b);
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', b, '-F', 'qcow2', a);
    await expect(Qcow2Image.open(b)).rejects.toThrow(/backing chain of .* loops/);
  });

  it('a backing file name that is not a local file, and a missing backing file', async () => {
    const f = at('remote-backing.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd://example.org/x', '-F', 'raw', f, '8M');
    await expect(Qcow2Image.open(f)).rejects.toThrow(/not a local file/);
    const g = at('missing-backing.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', g, '8M');
    await expect(Qcow2Image.open(g)).rejects.toMatchObject({ code: 'not-found' });
  });
});
