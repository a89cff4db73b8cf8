// VirtualBox VDI images, static, dynamic and differencing (VirtualBox's VBoxHDD format, version 1.1;
// the layout QEMU's block/vdi.c reads): a pre-header with signature 0xbeda107f, a header with the
// block map's and the data's offsets, and a map of one 32-bit entry per block: a block index,
// 0xffffffff for a block never written (zeros), 0xfffffffe for a block written as zeros.
// Little-endian throughout.
//
// A differencing image (type 4) records its parent only by UUID (uuidLinkage, the parent's
// uuidCreate): VirtualBox's media registry knows where that is. The caller may say (`parentOf`);
// otherwise a .vdi whose uuidCreate matches is looked for in the child's folder and the folder above
// (VirtualBox keeps snapshots in <machine>/Snapshots/{uuid}.vdi, the base in <machine>/), reading
// headers only. In a differencing image a block never written reads the parent; a zero block reads
// as zeros. The chain may not loop and is at most MAX_CHAIN images deep.
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { BulwarkError } from '../util/errors.js';
import { enterChain } from './chain.js';
import { readExactly, readInto, type DiskImage } from './image.js';

const SIGNATURE = 0xbeda107f;
const UNALLOCATED = 0xffffffff;
const ZEROED = 0xfffffffe;
const MAX_SIZE = 2 ** 56;
const HEADER_BYTES = 0x1c8;
const MAX_CANDIDATES = 1000;
const TYPE_DIFF = 4;

export interface VdiOpenOptions {
  /** Where the image whose uuidCreate is `uuid` (lowercase, with dashes) is, when the caller knows. */
  parentOf?: (uuid: string) => Promise<string | undefined>;
}

/** A VirtualBox UUID as VirtualBox writes it: the first three fields little-endian. */
function uuidAt(h: Buffer, at: number): string {
  const b = h.subarray(at, at + 16);
  const hex = (x: Buffer): string => x.toString('hex');
  const le = (x: Buffer): string => hex(Buffer.from(x).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${hex(b.subarray(8, 10))}-${hex(b.subarray(10, 16))}`;
}

/** The header of a VDI file, or undefined when it is none (too short, no signature). */
async function readHeader(path: string): Promise<Buffer | undefined> {
  const fh = await fsp.open(path, 'r');
  try {
    const h = Buffer.alloc(HEADER_BYTES);
    const { bytesRead } = await fh.read(h, 0, HEADER_BYTES, 0);
    return bytesRead === HEADER_BYTES && h.readUInt32LE(0x40) === SIGNATURE ? h : undefined;
  } finally {
    await fh.close();
  }
}

/** The uuidCreate of a VDI image (lowercase, with dashes; VirtualBox shows it in braces). */
export async function vdiUuid(file: string): Promise<string> {
  const h = await readHeader(file).catch((err: unknown) => {
    throw new BulwarkError('not-found', `cannot open '${file}': ${(err as Error).message}`, { cause: err });
  });
  if (!h) throw new BulwarkError('failed', `'${file}' is not a usable VDI image: no VDI signature`);
  return uuidAt(h, 0x188);
}

/** A .vdi in the child's folder or the one above whose uuidCreate is `uuid` (preferring one not in `chain`). */
async function findByUuid(child: string, uuid: string, chain: readonly string[]): Promise<string | undefined> {
  let looked = 0;
  let fallback: string | undefined;
  for (const dir of [...new Set([dirname(child), dirname(dirname(child))])]) {
    const names = await fsp.readdir(dir).catch(() => [] as string[]);
    for (const name of names.filter((n) => n.toLowerCase().endsWith('.vdi')).sort()) {
      if (++looked > MAX_CANDIDATES) return fallback;
      const path = join(dir, name);
      const h = await readHeader(path).catch(() => undefined);
      if (!h || uuidAt(h, 0x188) !== uuid) continue;
      const real = await fsp.realpath(path).catch(() => path);
      if (!chain.includes(real)) return path;
      fallback ??= path;
    }
  }
  return fallback;
}

export class VdiImage implements DiskImage {
  readonly format = 'vdi';
  private ownData = 0;

  private constructor(
    private readonly file: string,
    private readonly fh: fsp.FileHandle,
    private readonly fileSize: number,
    readonly size: number,
    private readonly blockSize: number,
    private readonly dataOffset: number,
    private readonly blockStride: number,
    private readonly extra: number,
    private readonly map: Uint32Array,
    /** uuidCreate: what a differencing child records as its parent's (uuidLinkage). */
    readonly uuid: string,
    /** A differencing image's parent. */
    private readonly parent: VdiImage | undefined,
  ) {}

  get dataBytesRead(): number {
    return this.ownData + (this.parent?.dataBytesRead ?? 0);
  }

  /** Opens `file` and, for a differencing image, its parents. `seen`: the chain so far, to refuse loops. */
  static async open(file: string, seen: string[] = [], opts: VdiOpenOptions = {}): Promise<VdiImage> {
    const real = await enterChain(file, seen);
    const fh = await fsp.open(real, 'r');
    let parent: VdiImage | undefined;
    try {
      const fileSize = Number((await fh.stat()).size);
      const bad = (why: string): BulwarkError => new BulwarkError('failed', `'${file}' is not a usable VDI image: ${why}`);
      if (fileSize < HEADER_BYTES) throw bad('shorter than its header');
      const h = await readExactly(fh, HEADER_BYTES, 0, 'header', file);
      if (h.readUInt32LE(0x40) !== SIGNATURE) throw bad('no VDI signature');
      const version = h.readUInt32LE(0x44);
      if (version >>> 16 !== 1) throw bad(`version ${version >>> 16}.${version & 0xffff} (1.x is known)`);
      const type = h.readUInt32LE(0x4c);
      if (type !== 1 && type !== 2 && type !== TYPE_DIFF) throw bad(`image type ${type}`);
      const mapOffset = h.readUInt32LE(0x154);
      const dataOffset = h.readUInt32LE(0x158);
      if (h.readUInt32LE(0x168) !== 512) throw bad(`sector size ${h.readUInt32LE(0x168)}`);
      const size = Number(h.readBigUInt64LE(0x170));
      const blockSize = h.readUInt32LE(0x178);
      const extra = h.readUInt32LE(0x17c);
      const blocks = h.readUInt32LE(0x180);
      if (size > MAX_SIZE) throw bad(`virtual size ${size} bytes is absurd`);
      if (blockSize < 512 || blockSize > 64 * 1024 * 1024 || blockSize & (blockSize - 1)) throw bad(`block size ${blockSize}`);
      if (extra > 64 * 1024 * 1024) throw bad(`block extra data of ${extra} bytes`);
      if (blocks < Math.ceil(size / blockSize) || blocks * 4 > 64 * 1024 * 1024) throw bad(`its block map has ${blocks} entries for ${size} bytes`);
      if (mapOffset + blocks * 4 > fileSize) throw bad(`its block map at offset ${mapOffset} runs past the end of the file`);
      const raw = await readExactly(fh, blocks * 4, mapOffset, 'block map', file);
      const map = new Uint32Array(blocks);
      for (let i = 0; i < blocks; i++) map[i] = raw.readUInt32LE(i * 4);
      const uuid = uuidAt(h, 0x188);
      if (type === TYPE_DIFF) {
        const link = uuidAt(h, 0x1a8);
        if (/^[0-]+$/.test(link)) throw bad('it is a differencing image that names no parent (its parent UUID is zero)');
        const path = (await opts.parentOf?.(link)) ?? (await findByUuid(real, link, [...seen, real]));
        if (!path) {
          throw new BulwarkError('not-found', `the parent {${link}} of the differencing image '${file}' was not found: it is not in '${dirname(real)}' or the folder above`, {
            hint: "open it through its VM's .vbox file (whose media registry says where its parent is), or put the parent beside it",
          });
        }
        parent = await VdiImage.open(path, [...seen, real], opts);
        if (parent.uuid !== link) {
          const found = parent.uuid;
          await parent.close().catch(() => undefined);
          parent = undefined;
          throw new BulwarkError('failed', `the parent '${path}' of '${file}' is not the disk it was made from (its UUID is {${found}}, not {${link}})`);
        }
      }
      return new VdiImage(file, fh, fileSize, size, blockSize, dataOffset, blockSize + extra, extra, map, uuid, parent);
    } catch (err) {
      await parent?.close().catch(() => undefined);
      await fh.close();
      throw err;
    }
  }

  private host(block: number): number | undefined {
    const e = this.map[block];
    if (e === undefined || e === UNALLOCATED || e === ZEROED) return undefined;
    const at = this.dataOffset + e * this.blockStride + this.extra;
    if (at + this.blockSize > this.fileSize) throw new BulwarkError('failed', `'${this.file}' is damaged: block ${block} points past the end of the file`);
    return at;
  }

  /** Whether block `b` reads through to the parent (never written here, in a differencing image). */
  private below(b: number): boolean {
    return this.parent !== undefined && (this.map[b] ?? UNALLOCATED) === UNALLOCATED;
  }

  async hasData(offset: number, length: number): Promise<boolean> {
    const end = Math.min(this.size, offset + length);
    for (let b = Math.floor(offset / this.blockSize); b * this.blockSize < end; b++) {
      if (this.host(b) !== undefined) return true;
      const from = Math.max(offset, b * this.blockSize);
      if (this.below(b) && (await this.parent!.hasData(from, Math.min(end, (b + 1) * this.blockSize) - from))) return true;
    }
    return false;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    buf.fill(0);
    const end = Math.min(this.size, offset + buf.length);
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.blockSize);
      const within = pos - b * this.blockSize;
      const n = Math.min(end - pos, this.blockSize - within);
      const out = buf.subarray(pos - offset, pos - offset + n);
      const at = this.host(b);
      if (at !== undefined) {
        await readInto(this.fh, out, at + within, `block ${b}`, this.file);
        this.ownData += n;
      } else if (this.below(b)) await this.parent!.read(out, pos);
      pos += n;
    }
  }

  async close(): Promise<void> {
    await this.parent?.close().catch(() => undefined);
    await this.fh.close();
  }
}
