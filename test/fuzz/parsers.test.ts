// Fuzzing every parser of a repository file type with truncated and mutated inputs from a seeded
// generator. The contract: each input is accepted as well formed, or rejected with a BulwarkError; never
// another exception (a TypeError is a crash with a stack trace for the user), never a hang.
// The inputs are plaintexts, as the strongest attacker (one with the password) would write them.
//
//   npx vitest run test/fuzz                      bounded count (CI)
//   FUZZ_CASES=12000 npx vitest run test/fuzz     per parser (pack headers of both formats, image formats, file systems)
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { compress } from 'zstd-napi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodePage, encodePage } from '../../src/repository/fixed-index.js';
import { MasterIndex, validateIndexFile, type IndexFile } from '../../src/repository/index.js';
import { openWithPassword } from '../../src/repository/keys.js';
import { buildPack, parsePackHeader } from '../../src/repository/pack.js';
import { sealerFor } from '../../src/repository/sealer.js';
import { validateConfig, type RepositoryConfig } from '../../src/repository/repository.js';
import { snapshotProblem, type Snapshot } from '../../src/repository/snapshot.js';
import { decodeTree, displayName, linkTarget, nodeName } from '../../src/repository/tree.js';
import { decompressBounded } from '../../src/repository/zstd.js';
import { openDiskImage, type ContainerFormat } from '../../src/formats/open.js';
import { openExt4 } from '../../src/filesystems/ext4/reader.js';
import { openFat } from '../../src/filesystems/fat/reader.js';
import { openNtfs } from '../../src/filesystems/ntfs/reader.js';
import { openXfs } from '../../src/filesystems/xfs/reader.js';
import { LocalBackend } from '../../src/storage/local.js';
import { BulwarkError } from '../../src/util/errors.js';
import { node } from '../helpers/hostile.js';
import { createTestRepository, TEST_PASSWORD, type TestRepository } from '../helpers/repo.js';

const CASES = Number(process.env['FUZZ_CASES'] ?? 300);
const counts: Record<string, { accepted: number; rejected: number }> = {};

/** xorshift32: the same inputs on every machine and every run. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const WEIRD: unknown[] = [null, true, -1, 0, 1.5, 2 ** 53, -(2 ** 60), 1e308, '', 'x'.repeat(300), '../..', '\u0000', '-1', '99999999999999999999999999', [], [[]], {}, { nodes: [] }, '0'.repeat(64), 'g'.repeat(64)];

/** Replaces a random value somewhere in a JSON document with a weird one, or deletes a key. */
function mutateJson(doc: unknown, r: () => number): unknown {
  const copy = JSON.parse(JSON.stringify(doc)) as unknown;
  const slots: { parent: Record<string, unknown> | unknown[]; key: string | number }[] = [];
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) {
      v.forEach((x, i) => {
        slots.push({ parent: v, key: i });
        visit(x);
      });
    }
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        slots.push({ parent: v as Record<string, unknown>, key: k });
        visit(x);
      }
    }
  };
  visit(copy);
  if (slots.length === 0) return WEIRD[Math.floor(r() * WEIRD.length)];
  const { parent, key } = slots[Math.floor(r() * slots.length)]!;
  if (r() < 0.2 && !Array.isArray(parent)) delete (parent as Record<string, unknown>)[key as string];
  else (parent as Record<string | number, unknown>)[key] = WEIRD[Math.floor(r() * WEIRD.length)];
  return copy;
}

/** Byte-level damage: truncation, flipped bytes, inserted bytes. */
function mutateBytes(b: Buffer, r: () => number): Buffer {
  const kind = r();
  if (kind < 0.3) return b.subarray(0, Math.floor(r() * b.length));
  const out = Buffer.from(b);
  if (kind < 0.7) {
    for (let i = 0, n = 1 + Math.floor(r() * 4); i < n && out.length > 0; i++) out[Math.floor(r() * out.length)] = Math.floor(r() * 256);
    return out;
  }
  const at = Math.floor(r() * (out.length + 1));
  const junk = Buffer.from(Array.from({ length: 1 + Math.floor(r() * 16) }, () => Math.floor(r() * 256)));
  return Buffer.concat([out.subarray(0, at), junk, out.subarray(at)]);
}

/** Half structure-aware JSON mutations, half byte damage of the JSON text. */
function mutant(doc: unknown, r: () => number): Buffer {
  return r() < 0.5 ? Buffer.from(JSON.stringify(mutateJson(doc, r))) : mutateBytes(Buffer.from(JSON.stringify(doc)), r);
}

/** Runs `parse` on CASES mutants; anything but success or a BulwarkError fails the test, with the input. */
async function fuzz(name: string, seed: number, make: (r: () => number) => Buffer, parse: (input: Buffer) => unknown): Promise<void> {
  const r = rng(seed);
  const tally = (counts[name] = { accepted: 0, rejected: 0 });
  for (let i = 0; i < CASES; i++) {
    const input = make(r);
    try {
      await parse(input);
      tally.accepted++;
    } catch (err) {
      if (!(err instanceof BulwarkError)) throw new Error(`${name}, case ${i}: ${(err as Error).stack}\ninput: ${input.toString('base64').slice(0, 2000)}`, { cause: err });
      tally.rejected++;
    }
  }
  expect(tally.accepted + tally.rejected).toBe(CASES);
  expect(tally.rejected).toBeGreaterThan(0);
}

/** JSON.parse as the readers use it: a syntax error is damage, not a crash. */
function parseJson<T>(b: Buffer): T {
  try {
    return JSON.parse(b.toString('utf8')) as T;
  } catch (err) {
    throw new BulwarkError('repository-corrupt', (err as Error).message);
  }
}

const KEY = Buffer.alloc(32, 9);
const ID = 'ab'.repeat(32);

describe(`parsers under ${CASES} mutated inputs each`, () => {
  let t: TestRepository;
  beforeAll(async () => {
    t = await createTestRepository();
  });
  afterAll(async () => {
    console.log(`fuzz cases per parser (accepted / rejected):\n${Object.entries(counts).map(([k, v]) => `  ${k}: ${v.accepted} / ${v.rejected}`).join('\n')}`);
    await t.cleanup();
  });

  it('tree', async () => {
    const tree = { nodes: [node('a', 'file', { content: [ID], size: 5 }), node('b', 'dir', { subtree: ID }), node('c', 'symlink', { linkTarget: '/x' }), node('d', 'chardev', { rdev: 259 })] };
    await fuzz('tree', 1, (r) => mutant(tree, r), (b) => {
      // Whatever is accepted must be usable by every reader of trees.
      for (const n of decodeTree(b, 'fuzz').nodes) void [displayName(nodeName(n)), linkTarget(n), BigInt(n.mtimeNs), n.content?.length];
    });
  });

  it('snapshot', async () => {
    const sn = { version: 1, time: '2026-11-27T00:00:00Z', hostname: 'h', username: 'u', source: 'files', paths: ['/a'], tags: ['t'], tree: ID, disks: [{ name: 'vda', size: 4096, blockSize: 4096, pages: [ID], source: '/x', format: 'raw' }], summary: { totalSize: 1 } };
    await fuzz('snapshot', 2, (r) => mutant(sn, r), (b) => {
      const doc = parseJson<Snapshot>(b);
      const problem = snapshotProblem(doc);
      if (problem) throw new BulwarkError('repository-corrupt', problem);
      void Date.parse(doc.time);
    });
  });

  it('index file', async () => {
    const idx: IndexFile = { version: 1, packs: [{ id: ID, type: 'data', blobs: [{ id: ID, offset: 0, length: 100, ulen: 0 }, { id: 'cd'.repeat(32), offset: 100, length: 50, ulen: 70 }] }], damaged: [{ id: ID, pack: ID }] };
    await fuzz('index', 3, (r) => mutant(idx, r), (b) => {
      const doc = parseJson<IndexFile>(b);
      validateIndexFile(doc, 'fuzz');
      new MasterIndex().addFile(doc);
    });
  });

  it('config', async () => {
    const config = { version: 1, id: ID, created: 'now', chunker: { seed: ID, minSize: 524288, avgSize: 1048576, maxSize: 8388608 }, blockSize: 1048576, zstdLevel: 3, packSize: 16777216 };
    await fuzz('config', 4, (r) => mutant(config, r), (b) => {
      const doc = parseJson<RepositoryConfig>(b);
      validateConfig(doc);
    });
  });

  it.each([1, 2] as const)('pack header, format %i', async (version) => {
    const sealer = sealerFor(version, { encrypt: KEY });
    const blobs = [0, 1, 2].map((i) => ({ type: 'data' as const, id: Buffer.alloc(32, i), sealed: Buffer.alloc(40 + i), ulen: i }));
    const pack = buildPack(sealer, blobs);
    const hlen = pack.bytes.readUInt32LE(pack.bytes.length - 4);
    const dataEnd = pack.bytes.length - 4 - hlen;
    // The plaintext header, damaged, then sealed again: what a key holder could write.
    const header = sealer.open('pack-header', pack.bytes.subarray(dataEnd, pack.bytes.length - 4), 'h');
    await fuzz(`pack header v${version}`, 5, (r) => sealer.seal('pack-header', mutateBytes(header, r)), (sealed) => parsePackHeader(sealer, sealed, 'fuzz', dataEnd));
  });

  it('fixed index page', async () => {
    const page = encodePage([null, ID, 'cd'.repeat(32)]);
    await fuzz('fixed index page', 6, (r) => mutateBytes(page, r), (b) => decodePage(b, 'fuzz'));
  });

  it('zstd frames', async () => {
    const frame = compress(Buffer.from('a tree or a document, compressible '.repeat(200)));
    await fuzz('zstd frame', 7, (r) => mutateBytes(frame, r), (b) => decompressBounded(b, 64 * 1024, 'fuzz'));
  });

  it('key file', async () => {
    const backend = new LocalBackend(t.path);
    const [valid] = await fsp.readdir(`${t.path}/keys`);
    const doc = JSON.parse(await fsp.readFile(`${t.path}/keys/${valid!}`, 'utf8')) as Record<string, unknown>;
    let planted: string | undefined;
    await fuzz('key file', 8, (r) => mutant(doc, r), async (b) => {
      if (planted) await fsp.rm(`${t.path}/keys/${planted}`, { force: true });
      planted = createHash('sha256').update(b).digest('hex');
      await fsp.writeFile(`${t.path}/keys/${planted}`, b);
      const opened = await openWithPassword(backend, TEST_PASSWORD);
      // The valid key always opens; the mutant is either skipped (rejected) or is a working key.
      if (opened.skipped.length > 0) throw new BulwarkError('repository-corrupt', opened.skipped[0]!.reason);
    });
  }, 600_000);

  // Disk images: a small image per container format, made by qemu-img with data, a hole and (where
  // the format has them) zero and compressed clusters; each mutant is written to a file, opened, and
  // its whole virtual disk read.
  for (const [format, qemuFormat, opts, seed] of [
    ['qcow2', 'qcow2', ['-c', '-o', 'cluster_size=4k'], 9],
    ['vdi', 'vdi', [], 10],
    ['vhd', 'vpc', ['-o', 'subformat=dynamic'], 11],
    ['vmdk', 'vmdk', ['-o', 'subformat=monolithicSparse'], 12],
    ['vmdk', 'vmdk', ['-o', 'subformat=streamOptimized'], 13],
    ['vhdx', 'vhdx', ['-o', 'subformat=dynamic,block_size=1M,log_size=1M'], 14],
  ] as [ContainerFormat, string, string[], number][]) {
    it(`${format} images (${opts.join(' ') || 'default'}): opened and read whole`, async () => {
      const dir = await fsp.mkdtemp(`${t.dir}/${format}-fuzz-`);
      const src = `${dir}/src.raw`;
      await fsp.writeFile(src, Buffer.concat([Buffer.alloc(65536, 0x41), Buffer.from('compress me '.repeat(5462)).subarray(0, 65536), Buffer.alloc(65536)]));
      const image = `${dir}/img`;
      execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', qemuFormat, ...opts, src, image]);
      if (format === 'qcow2') execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x42 8k 4k', '-c', 'write -z 16k 4k', image]);
      const valid = await fsp.readFile(image);
      const target = `${dir}/mutant`;
      await fuzz(`${format} image ${opts.join(' ')}`.trim(), seed, (r) => mutateBytes(valid, r), async (b) => {
        await fsp.writeFile(target, b);
        const img = await openDiskImage(target, format);
        try {
          const buf = Buffer.alloc(Math.min(img.size, 1 << 20));
          for (let off = 0; off < Math.min(img.size, 16 << 20); off += buf.length) if (await img.hasData(off, buf.length)) await img.read(buf, off);
        } finally {
          await img.close();
        }
      });
    }, 600_000);
  }

  // File systems inside disks: a small image made by each file system's own tools, damaged in its
  // metadata (the first MiBs, where superblocks, inode tables, MFT and directories lie; or cut short)
  // through a patched volume, then opened and walked: every directory listed, every file read (up to
  // 256 KiB), every symlink read. Anything but a BulwarkError is a failure; a hang times out.
  for (const [kind, seed] of [['ext4', 15], ['xfs', 16], ['ntfs', 17], ['fat', 18]] as const) {
    it(`${kind} file systems: opened and walked`, async () => {
      const dir = await fsp.mkdtemp(`${t.dir}/${kind}-fuzz-`);
      const tree = `${dir}/tree`;
      await fsp.mkdir(`${tree}/a/b`, { recursive: true });
      await fsp.writeFile(`${tree}/a/b/file.txt`, 'hello '.repeat(2000));
      await fsp.writeFile(`${tree}/small`, 'x');
      for (let i = 0; i < 40; i++) await fsp.writeFile(`${tree}/a/n${i}`, String(i));
      await fsp.symlink('a/b/file.txt', `${tree}/link`);
      const img = `${dir}/img`;
      if (kind === 'ext4') execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, img, '4M']);
      else if (kind === 'xfs') {
        execFileSync('truncate', ['-s', '300M', img]);
        const files = (await fsp.readdir(`${tree}/a`)).filter((n) => n.startsWith('n')).map((n) => `  ${n} ---644 0 0 ${tree}/a/${n}`);
        await fsp.writeFile(`${dir}/proto`, ['x', '0 0', 'd--755 0 0', ' a d--755 0 0', ...files, '  b d--755 0 0', `   file.txt ---644 0 0 ${tree}/a/b/file.txt`, '  $', ' $', ` small ---644 0 0 ${tree}/small`, ' link l--777 0 0 a/b/file.txt', '$', ''].join('\n'));
        execFileSync('mkfs.xfs', ['-q', '-f', '-p', `${dir}/proto`, img]);
      } else if (kind === 'fat') {
        execFileSync('mkfs.fat', ['-C', '-F', '12', img, '4096']);
        execFileSync('mcopy', ['-i', img, '-s', `${tree}/a`, `${tree}/small`, '::/'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
      } else {
        execFileSync('truncate', ['-s', '8M', img]);
        execFileSync('mkntfs', ['-q', '-F', '-f', img]);
        execFileSync('ntfscp', ['-f', img, `${tree}/a/b/file.txt`, '/file.txt']);
        execFileSync('ntfscp', ['-f', img, `${tree}/small`, '/small']);
      }
      const base = await fsp.readFile(img);
      const region = Math.min(base.length, kind === 'ntfs' || kind === 'fat' ? 8 << 20 : 2 << 20);
      // Most damage goes where something is written (metadata), not into empty space.
      const used: number[] = [];
      for (let at = 0; at < region; at += 512) if (base.subarray(at, at + 512).some((x) => x !== 0)) used.push(at);
      const open = { ext4: openExt4, xfs: openXfs, ntfs: openNtfs, fat: openFat }[kind];
      await fuzz(`${kind} file system`, seed, (r) => {
        // A patch list, not a copy: [position, byte]…, and a length (cut short a fifth of the time).
        const n = 1 + Math.floor(r() * 8);
        const patches: number[] = [];
        for (let i = 0; i < n; i++) patches.push(r() < 0.8 ? used[Math.floor(r() * used.length)]! + Math.floor(r() * 512) : Math.floor(r() * region), Math.floor(r() * 256));
        const size = r() < 0.2 ? Math.floor(r() * base.length) : base.length;
        return Buffer.from(JSON.stringify({ patches, size }));
      }, async (input) => {
        const { patches, size } = JSON.parse(input.toString()) as { patches: number[]; size: number };
        const vol = new PatchedVolume(base, size, patches);
        const fs = await open(vol);
        let seen = 0;
        const buf = Buffer.alloc(64 * 1024);
        const visit = async (path: string, depth: number): Promise<void> => {
          if (depth > 8) return;
          for (const e of await fs.list(path)) {
            if (++seen > 500) return;
            const p = path === '/' ? `/${e.name}` : `${path}/${e.name}`;
            if (e.type === 'dir') await visit(p, depth + 1).catch((err: unknown) => { if (!(err instanceof BulwarkError)) throw err; });
            else if (e.type === 'symlink') await fs.readlink(p).catch((err: unknown) => { if (!(err instanceof BulwarkError)) throw err; });
            else if (e.type === 'file') {
              const f = await fs.open(p).catch((err: unknown) => { if (!(err instanceof BulwarkError)) throw err; });
              for (let at = 0; f && at < Math.min(f.size, 256 * 1024); ) {
                const got = await f.read(buf, at);
                if (got === 0) break;
                at += got;
              }
            }
          }
        };
        await visit('/', 0);
      });
    }, 600_000);
  }
});

/** A volume over an image held once in memory, with bytes patched and its length cut, for the fuzzer. */
class PatchedVolume {
  constructor(
    private readonly base: Buffer,
    readonly size: number,
    private readonly patches: number[],
  ) {}

  async read(buf: Buffer, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.size) throw new BulwarkError('failed', `read of ${buf.length} at ${offset} outside ${this.size}`);
    this.base.copy(buf, 0, offset, offset + buf.length);
    for (let i = 0; i < this.patches.length; i += 2) {
      const at = this.patches[i]! - offset;
      if (at >= 0 && at < buf.length) buf[at] = this.patches[i + 1]!;
    }
  }
}
