import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { BulwarkError } from '../../util/errors.js';
import { NbdClient, NbdRequestError, type NbdExtent } from './client.js';
import * as C from './constants.js';
import { qemuImg, qemuIo, startQemuNbd, type QemuNbdServer } from './testing/qemu-nbd.js';

const KiB = 1024;
const MiB = 1024 * KiB;

const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Deterministic PRNG so a failing random schedule can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Settles within `ms` or fails the test: a hang is the bug these tests look for. */
async function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

let dir: string;
const servers: QemuNbdServer[] = [];
const clients: NbdClient[] = [];

async function serve(opts: Parameters<typeof startQemuNbd>[0]): Promise<QemuNbdServer> {
  const s = await startQemuNbd(opts.tcpPort ? opts : { socket: path.join(dir, `nbd${servers.length}.sock`), ...opts });
  servers.push(s);
  return s;
}

async function open(server: QemuNbdServer, opts: Parameters<typeof NbdClient.connect>[1] = {}): Promise<NbdClient> {
  const c = await NbdClient.connect(server.socket ? { path: server.socket } : { host: '127.0.0.1', port: server.tcpPort as number }, { exportName: server.exportName, ...opts });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-nbd-'));
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
});

afterAll(async () => {
  for (const s of servers.splice(0)) await s.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

describe('NbdClient against qemu-nbd', () => {
  let img: string;
  let raw: Buffer;
  let server: QemuNbdServer;

  beforeAll(async () => {
    img = path.join(dir, 'data.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, '8M');
    const r1 = path.join(dir, 'r1');
    const r2 = path.join(dir, 'r2');
    const r3 = path.join(dir, 'r3');
    await fs.writeFile(r1, randomBytes(300_000));
    await fs.writeFile(r2, randomBytes(MiB));
    await fs.writeFile(r3, randomBytes(64 * KiB));
    await qemuIo(img, 'qcow2',
      'write -q -P 0xab 1M 64k',
      `write -q -s ${r1} ${2 * MiB + 777} 300000`, // unaligned, spans clusters
      `write -q -s ${r2} ${4 * MiB - 4096} ${MiB}`,
      `write -q -z ${5 * MiB} 64k`, // allocated zeros
      `write -q -c -s ${r3} ${6 * MiB} 64k`, // a compressed cluster
      `write -q -P 0x5a ${8 * MiB - 512} 512`); // the last sector
    const rawPath = path.join(dir, 'data.raw');
    await qemuImg('convert', '-f', 'qcow2', '-O', 'raw', img, rawPath);
    raw = await fs.readFile(rawPath);
    server = await serve({ image: img, format: 'qcow2' });
  });

  it('negotiates: size, flags, block sizes, structured replies', async () => {
    const c = await open(server, { metaContexts: [C.BASE_ALLOCATION] });
    expect(c.size).toBe(8 * MiB);
    expect(c.exportName).toBe('vda');
    expect(c.readOnly).toBe(true);
    expect(c.flags & C.NBD_FLAG_HAS_FLAGS).toBe(C.NBD_FLAG_HAS_FLAGS);
    expect(c.structuredReplies).toBe(true);
    expect(c.blockSize).toEqual({ minimum: 1, preferred: 4096, maximum: 32 * MiB });
    expect(c.maxRequestBytes).toBe(32 * MiB);
    expect([...c.metaContexts.keys()]).toEqual([C.BASE_ALLOCATION]);
    await c.disconnect();
    expect(c.closed).toBe(true);
  });

  it('refuses an unknown export name with the name in the message', async () => {
    const err = await NbdClient.connect({ path: server.socket as string }, { exportName: 'nope' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'not-found' });
    expect((err as Error).message).toMatch(/no export 'nope'/);
    expect((err as BulwarkError).hint).toMatch(/nbdinfo --list/);
    // The server is fine after a refused client.
    const c = await open(server);
    expect(c.size).toBe(8 * MiB);
  });

  it('says plainly when there is no socket or no NBD server', async () => {
    await expect(NbdClient.connect({ path: path.join(dir, 'missing.sock') })).rejects.toMatchObject({ code: 'not-found', message: /no NBD socket/ });
  });

  it('reads exactly what qemu-img convert reads', async () => {
    const c = await open(server);
    expect(sha256(await c.read(0, c.size))).toBe(sha256(raw));
  });

  it('reads unaligned ranges, split reads and readInto', async () => {
    const c = await open(server, { maxRequestBytes: 64 * KiB });
    expect(c.maxRequestBytes).toBe(64 * KiB);
    for (const [off, len] of [[0, 1], [777, 4096], [2 * MiB + 700, 300_100], [4 * MiB - 5000, MiB + 9999], [8 * MiB - 600, 600], [3 * MiB, 3 * MiB]] as const) {
      expect(sha256(await c.read(off, len)), `offset ${off} length ${len}`).toBe(sha256(raw.subarray(off, off + len)));
    }
    const into = new Uint8Array(200_000);
    await c.readInto(into, 2 * MiB + 12_345);
    expect(Buffer.from(into).equals(raw.subarray(2 * MiB + 12_345, 2 * MiB + 212_345))).toBe(true);
    await expect(c.read(8 * MiB - 1, 2)).rejects.toThrow(RangeError);
  });

  it('reads with simple replies when structured replies are off', async () => {
    const c = await open(server, { structuredReplies: false });
    expect(c.structuredReplies).toBe(false);
    expect(sha256(await c.read(0, c.size))).toBe(sha256(raw));
    expect(sha256(await c.read(2 * MiB + 1, 77_777))).toBe(sha256(raw.subarray(2 * MiB + 1, 2 * MiB + 1 + 77_777)));
  });

  it('reads over TCP', async () => {
    const port = await freePort();
    const tcp = await serve({ image: img, format: 'qcow2', tcpPort: port });
    const c = await open(tcp);
    expect(c.address).toBe(`127.0.0.1:${port}`);
    expect(sha256(await c.read(0, c.size))).toBe(sha256(raw));
  });

  it('keeps many concurrent reads apart', async () => {
    const rand = prng(42);
    for (const maxInFlight of [3, 16]) {
      const c = await open(server, { maxInFlight, maxRequestBytes: 256 * KiB });
      const ranges = Array.from({ length: 300 }, () => {
        const len = 1 + Math.floor(rand() * 600_000);
        const off = Math.floor(rand() * (c.size - len));
        return [off, len] as const;
      });
      const reads = ranges.map(([off, len]) => c.read(off, len));
      expect(c.inFlight).toBeGreaterThan(maxInFlight);
      const got = await Promise.all(reads);
      got.forEach((b, i) => {
        const [off, len] = ranges[i] as readonly [number, number];
        expect(b.equals(raw.subarray(off, off + len)), `read ${i}: offset ${off} length ${len}`).toBe(true);
      });
      expect(c.inFlight).toBe(0);
    }
  });

  it('disconnect waits for reads in flight, then refuses new ones', async () => {
    const c = await open(server);
    const reads = [c.read(0, 4 * MiB), c.read(4 * MiB, 4 * MiB)];
    const bye = c.disconnect();
    const late = c.read(0, 10).catch((e: unknown) => e);
    const got = await within(10_000, Promise.all(reads));
    expect(Buffer.concat(got).equals(raw)).toBe(true);
    await within(5_000, bye);
    expect(await late).toMatchObject({ code: 'io', message: expect.stringMatching(/did not complete: the client closed the connection/) });
    expect(c.closed).toBe(true);
    await expect(c.read(0, 10)).rejects.toThrow(/did not complete/);
  });
});

describe('block status from qemu-nbd', () => {
  let img: string;

  beforeAll(async () => {
    img = path.join(dir, 'sparse.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', img, '16M');
    await qemuIo(img, 'qcow2', 'write -q -P 0x11 1M 64k', `write -q -P 0x22 ${5 * MiB} 192k`, `write -q -P 0x33 ${16 * MiB - 64 * KiB} 64k`);
  });

  it('base:allocation marks the written clusters as data and the rest as holes', async () => {
    const server = await serve({ image: img, format: 'qcow2' });
    const c = await open(server, { metaContexts: [C.BASE_ALLOCATION] });
    const extents: NbdExtent[] = [];
    for await (const e of c.extents(C.BASE_ALLOCATION)) extents.push(e);
    const hz = C.NBD_STATE_HOLE | C.NBD_STATE_ZERO;
    expect(extents).toEqual([
      { offset: 0, length: MiB, flags: hz },
      { offset: MiB, length: 64 * KiB, flags: 0 },
      { offset: MiB + 64 * KiB, length: 4 * MiB - 64 * KiB, flags: hz },
      { offset: 5 * MiB, length: 192 * KiB, flags: 0 },
      { offset: 5 * MiB + 192 * KiB, length: 11 * MiB - 256 * KiB, flags: hz },
      { offset: 16 * MiB - 64 * KiB, length: 64 * KiB, flags: 0 },
    ]);
    // Small walking steps give the same merged answer.
    const stepped: NbdExtent[] = [];
    for await (const e of c.extents(C.BASE_ALLOCATION, { offset: 512 * KiB, length: 5 * MiB, chunkBytes: 100_000 })) stepped.push(e);
    expect(stepped).toEqual([
      { offset: 512 * KiB, length: 512 * KiB, flags: hz },
      { offset: MiB, length: 64 * KiB, flags: 0 },
      { offset: MiB + 64 * KiB, length: 4 * MiB - 64 * KiB, flags: hz },
      { offset: 5 * MiB, length: 192 * KiB, flags: 0 },
      { offset: 5 * MiB + 192 * KiB, length: 320 * KiB, flags: hz },
    ]);
    // blockStatus answers for one request, clipped to what was asked.
    const one = await c.blockStatus(MiB + 4096, 8192, C.BASE_ALLOCATION);
    expect(one).toEqual([{ offset: MiB + 4096, length: 8192, flags: 0 }]);
    const all = await c.blockStatus(0, 16 * MiB);
    expect([...all.keys()]).toEqual([c.contextId(C.BASE_ALLOCATION)]);
  });

  it('qemu:dirty-bitmap lists exactly the granules written after the bitmap was added', async () => {
    const bimg = path.join(dir, 'bitmap.qcow2');
    await qemuImg('create', '-q', '-f', 'qcow2', bimg, '8M');
    await qemuIo(bimg, 'qcow2', 'write -q -P 0x44 1M 64k'); // before the bitmap: not dirty
    await qemuImg('bitmap', '--add', '-f', 'qcow2', '-g', '64K', bimg, 'b0');
    // qemu-io opens the image read-write, so the persistent bitmap records these writes.
    await qemuIo(bimg, 'qcow2', `write -q -P 0x55 ${2 * MiB} 4k`, `write -q -P 0x66 ${3 * MiB + 60 * KiB} 8k`, `write -q -P 0x77 ${6 * MiB + 100} 1k`);
    const server = await serve({ image: bimg, format: 'qcow2', bitmaps: ['b0'] });
    const ctx = 'qemu:dirty-bitmap:b0';
    const c = await open(server, { metaContexts: [C.BASE_ALLOCATION, ctx] });
    expect(c.metaContexts.size).toBe(2);
    const extents: NbdExtent[] = [];
    for await (const e of c.extents(ctx)) extents.push(e);
    expect(extents).toEqual([
      { offset: 0, length: 2 * MiB, flags: 0 },
      { offset: 2 * MiB, length: 64 * KiB, flags: C.NBD_STATE_DIRTY },
      { offset: 2 * MiB + 64 * KiB, length: MiB - 64 * KiB, flags: 0 },
      { offset: 3 * MiB, length: 128 * KiB, flags: C.NBD_STATE_DIRTY }, // the 8k write straddles two granules
      { offset: 3 * MiB + 128 * KiB, length: 3 * MiB - 128 * KiB, flags: 0 },
      { offset: 6 * MiB, length: 64 * KiB, flags: C.NBD_STATE_DIRTY },
      { offset: 6 * MiB + 64 * KiB, length: 2 * MiB - 64 * KiB, flags: 0 },
    ]);
    // Both contexts come back from one request.
    const both = await c.blockStatus(MiB, 2 * MiB);
    expect(both.get(c.contextId(ctx))?.[0]).toEqual({ offset: MiB, length: MiB, flags: 0 });
    expect(both.get(c.contextId(C.BASE_ALLOCATION))?.[0]).toEqual({ offset: MiB, length: 64 * KiB, flags: 0 });
  });

  it('fails to connect when a requested bitmap is not exported', async () => {
    const server = await serve({ image: img, format: 'qcow2' });
    const err = await NbdClient.connect({ path: server.socket as string }, { exportName: 'vda', metaContexts: [C.BASE_ALLOCATION, 'qemu:dirty-bitmap:b9'] }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'not-found', message: expect.stringMatching(/does not offer metadata context 'qemu:dirty-bitmap:b9'/) });
    expect((err as BulwarkError).hint).toMatch(/qemu-nbd -B/);
  });
});

describe('NbdClient when the server fails', () => {
  let big: string;
  let bigData: Buffer;

  beforeAll(async () => {
    big = path.join(dir, 'big.raw');
    bigData = randomBytes(64 * MiB);
    await fs.writeFile(big, bigData);
  });

  it('rejects every pending read when the server dies mid-transfer', async () => {
    const server = await serve({ image: big, format: 'raw' });
    const c = await open(server, { requestTimeoutMs: 0 });
    const reads = Array.from({ length: 32 }, (_, i) => c.read(i * 2 * MiB, 2 * MiB));
    const settled = Promise.allSettled(reads);
    await reads[0];
    // Frozen, the server can have queued at most a socket buffer's worth; the rest never comes.
    server.freeze();
    await sleep(100);
    await server.kill();
    const results = await within(5_000, settled);
    const rejected = results.filter((r) => r.status === 'rejected');
    expect(rejected.length).toBeGreaterThan(16);
    for (const r of rejected) {
      expect(r.reason).toBeInstanceOf(BulwarkError);
      expect(r.reason).toMatchObject({ code: 'io', hint: expect.stringMatching(/exited/), message: expect.stringMatching(/^NBD read of 2097152 bytes at offset \d+ on '.*' did not complete: NBD server '.*' closed the connection( \(ECONNRESET\))?$/) });
    }
    results.forEach((r, i) => {
      if (r.status === 'fulfilled') expect(r.value.equals(bigData.subarray(i * 2 * MiB, (i + 1) * 2 * MiB))).toBe(true);
    });
    expect(c.closed).toBe(true);
    await expect(within(1_000, c.read(0, 512))).rejects.toMatchObject({ code: 'io' });
  });

  it('times out a request to a hung server and fails the rest with it', async () => {
    const server = await serve({ image: big, format: 'raw' });
    const c = await open(server, { requestTimeoutMs: 60_000 });
    server.freeze();
    const t0 = Date.now();
    const slow = c.read(0, MiB, { timeoutMs: 300 }).catch((e: unknown) => e);
    const other = c.read(MiB, MiB).catch((e: unknown) => e);
    expect(await within(5_000, slow)).toMatchObject({ code: 'timeout', message: expect.stringMatching(/got no answer within 300 ms/) });
    expect(await within(1_000, other)).toMatchObject({ code: 'io', message: expect.stringMatching(/did not complete: .*got no answer within 300 ms/) });
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(c.closed).toBe(true);
    await server.kill();
  });
});

// ---------------------------------------------------------------------------------------------
// A scripted server, for replies qemu-nbd never sends: fragmented and reordered chunks, error
// chunks, short block status answers, broken streams.

interface FakeRequest {
  type: number;
  handle: Buffer;
  offset: number;
  length: number;
}

type FakeHandler = (req: FakeRequest, sock: net.Socket) => void | Promise<void>;

const FAKE_SIZE = MiB;
const FAKE_CONTEXT_ID = 7;

interface FakeOptions {
  /** Sent instead of the NBD greeting, to impersonate something else. */
  greeting?: Buffer;
  /** NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum. */
  blockSize?: [number, number, number];
}

async function fakeServer(onRequest: FakeHandler, opts: FakeOptions = {}): Promise<{ path: string; close: () => Promise<void> }> {
  const { greeting } = opts;
  const sockPath = path.join(dir, `fake${Math.random().toString(36).slice(2, 8)}.sock`);
  const conns = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', () => undefined);
    if (greeting) {
      sock.write(greeting);
      return;
    }
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(C.NBDMAGIC, 0);
    hello.writeBigUInt64BE(C.IHAVEOPT, 8);
    hello.writeUInt16BE(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES, 16);
    sock.write(hello);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'options' | 'transmission' = 'flags';
    const optReply = (opt: number, type: number, data = Buffer.alloc(0)): void => {
      const h = Buffer.alloc(20);
      h.writeBigUInt64BE(C.OPTION_REPLY_MAGIC, 0);
      h.writeUInt32BE(opt, 8);
      h.writeUInt32BE(type, 12);
      h.writeUInt32BE(data.length, 16);
      sock.write(Buffer.concat([h, data]));
    };
    let chain = Promise.resolve();
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'flags') {
          if (buf.length < 4) return;
          buf = buf.subarray(4);
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 16) return;
          const opt = buf.readUInt32BE(8);
          const len = buf.readUInt32BE(12);
          if (buf.length < 16 + len) return;
          const data = buf.subarray(16, 16 + len);
          buf = buf.subarray(16 + len);
          if (opt === C.NBD_OPT_STRUCTURED_REPLY) optReply(opt, C.NBD_REP_ACK);
          else if (opt === C.NBD_OPT_SET_META_CONTEXT) {
            const nameLen = data.readUInt32BE(0);
            const q = data.toString('utf8', 4 + nameLen + 8);
            if (q === C.BASE_ALLOCATION) {
              const r = Buffer.alloc(4 + q.length);
              r.writeUInt32BE(FAKE_CONTEXT_ID, 0);
              r.write(q, 4);
              optReply(opt, C.NBD_REP_META_CONTEXT, r);
            }
            optReply(opt, C.NBD_REP_ACK);
          } else if (opt === C.NBD_OPT_GO) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(C.NBD_INFO_EXPORT, 0);
            info.writeBigUInt64BE(BigInt(FAKE_SIZE), 2);
            info.writeUInt16BE(C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_READ_ONLY, 10);
            optReply(opt, C.NBD_REP_INFO, info);
            if (opts.blockSize) {
              const bs = Buffer.alloc(14);
              bs.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 0);
              opts.blockSize.forEach((v, i) => bs.writeUInt32BE(v, 2 + 4 * i));
              optReply(opt, C.NBD_REP_INFO, bs);
            }
            optReply(opt, C.NBD_REP_ACK);
            phase = 'transmission';
          } else if (opt === C.NBD_OPT_ABORT) {
            optReply(opt, C.NBD_REP_ACK);
            sock.end();
            return;
          } else optReply(opt, C.NBD_REP_ERR_UNSUP);
        } else {
          if (buf.length < 28) return;
          const req: FakeRequest = { type: buf.readUInt16BE(6), handle: Buffer.from(buf.subarray(8, 16)), offset: Number(buf.readBigUInt64BE(16)), length: buf.readUInt32BE(24) };
          buf = buf.subarray(28);
          if (req.type === C.NBD_CMD_DISC) {
            sock.end();
            return;
          }
          chain = chain.then(() => onRequest(req, sock)).catch(() => void sock.destroy());
        }
      }
    });
  });
  await new Promise<void>((resolve) => srv.listen(sockPath, resolve));
  return {
    path: sockPath,
    close: async () => {
      for (const s of conns) s.destroy();
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    },
  };
}

function chunk(handle: Buffer, type: number, payload: Buffer, done = false): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(C.NBD_STRUCTURED_REPLY_MAGIC, 0);
  h.writeUInt16BE(done ? C.NBD_REPLY_FLAG_DONE : 0, 4);
  h.writeUInt16BE(type, 6);
  handle.copy(h, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}

function dataChunk(handle: Buffer, offset: number, data: Buffer, done = false): Buffer {
  const o = Buffer.alloc(8);
  o.writeBigUInt64BE(BigInt(offset));
  return chunk(handle, C.NBD_REPLY_TYPE_OFFSET_DATA, Buffer.concat([o, data]), done);
}

function holeChunk(handle: Buffer, offset: number, length: number, done = false): Buffer {
  const p = Buffer.alloc(12);
  p.writeBigUInt64BE(BigInt(offset));
  p.writeUInt32BE(length, 8);
  return chunk(handle, C.NBD_REPLY_TYPE_OFFSET_HOLE, p, done);
}

function statusChunk(handle: Buffer, extents: [number, number][], done = true): Buffer {
  const p = Buffer.alloc(4 + 8 * extents.length);
  p.writeUInt32BE(FAKE_CONTEXT_ID, 0);
  extents.forEach(([len, flags], i) => {
    p.writeUInt32BE(len, 4 + 8 * i);
    p.writeUInt32BE(flags, 8 + 8 * i);
  });
  return chunk(handle, C.NBD_REPLY_TYPE_BLOCK_STATUS, p, done);
}

function errorChunk(handle: Buffer, errno: number, message: string): Buffer {
  const m = Buffer.from(message);
  const p = Buffer.alloc(6);
  p.writeUInt32BE(errno, 0);
  p.writeUInt16BE(m.length, 4);
  return chunk(handle, C.NBD_REPLY_TYPE_ERROR, Buffer.concat([p, m]), true);
}

/** Writes `b` in awkward pieces with pauses, so reads split headers and payloads anywhere. */
async function dribble(sock: net.Socket, b: Buffer, pieces: number[]): Promise<void> {
  let at = 0;
  for (const n of pieces) {
    sock.write(b.subarray(at, at + n));
    at += n;
    await sleep(5);
  }
  if (at < b.length) sock.write(b.subarray(at));
}

describe('NbdClient against a scripted server', () => {
  const fakes: { close: () => Promise<void> }[] = [];
  afterAll(async () => {
    for (const f of fakes) await f.close();
  });
  const start = async (h: FakeHandler, opts: FakeOptions = {}): Promise<NbdClient> => {
    const f = await fakeServer(h, opts);
    fakes.push(f);
    const c = await NbdClient.connect({ path: f.path }, { metaContexts: [C.BASE_ALLOCATION], connectTimeoutMs: 2_000 });
    clients.push(c);
    return c;
  };

  it('reassembles reordered data and hole chunks split at arbitrary points', async () => {
    const content = randomBytes(FAKE_SIZE);
    const c = await start(async (req, sock) => {
      const { offset: o, handle } = req;
      // Tail data first (big enough to be received in place), then a hole, then the middle.
      const wire = Buffer.concat([
        dataChunk(handle, o + 200_000, content.subarray(o + 200_000, o + 300_000)),
        holeChunk(handle, o, 4096),
        dataChunk(handle, o + 4096, content.subarray(o + 4096, o + 200_000)),
        chunk(handle, C.NBD_REPLY_TYPE_NONE, Buffer.alloc(0), true),
      ]);
      await dribble(sock, wire, [3, 17, 9, 50_000, 1, 49_000, 30, 7, 100_000, 2]);
    });
    const got = await c.read(1000, 300_000);
    const want = Buffer.concat([Buffer.alloc(4096), content.subarray(1000 + 4096, 1000 + 300_000)]);
    expect(got.equals(want)).toBe(true);
  });

  it('aligns requests to the minimum block size the server asked for', async () => {
    const content = randomBytes(FAKE_SIZE);
    const seen: [number, number, number][] = [];
    const c = await start((req, sock) => {
      seen.push([req.type, req.offset, req.length]);
      if (req.offset % 512 !== 0 || req.length % 512 !== 0) sock.write(errorChunk(req.handle, C.NBD_EINVAL, 'unaligned'));
      else if (req.type === C.NBD_CMD_READ) sock.write(dataChunk(req.handle, req.offset, content.subarray(req.offset, req.offset + req.length), true));
      else sock.write(statusChunk(req.handle, [[req.length, 0]]));
    }, { blockSize: [512, 4096, 256 * KiB] });
    expect(c.blockSize).toEqual({ minimum: 512, preferred: 4096, maximum: 256 * KiB });
    expect(c.maxRequestBytes).toBe(256 * KiB);
    expect((await c.read(777, 1000)).equals(content.subarray(777, 1777))).toBe(true);
    expect((await c.read(100, 600 * KiB)).equals(content.subarray(100, 100 + 600 * KiB))).toBe(true);
    expect(await c.blockStatus(1000, 10, C.BASE_ALLOCATION)).toEqual([{ offset: 1000, length: 10, flags: 0 }]);
    expect(seen).toEqual([
      [C.NBD_CMD_READ, 512, 1536],
      [C.NBD_CMD_READ, 0, 256 * KiB],
      [C.NBD_CMD_READ, 256 * KiB, 256 * KiB],
      [C.NBD_CMD_READ, 512 * KiB, 88 * KiB + 512],
      [C.NBD_CMD_BLOCK_STATUS, 512, 512],
    ]);
  });

  it('turns an error chunk into an NbdRequestError and stays usable', async () => {
    const c = await start((req, sock) => {
      if (req.offset === 0) sock.write(errorChunk(req.handle, C.NBD_EIO, 'medium error on sector 0'));
      else sock.write(holeChunk(req.handle, req.offset, req.length, true));
    });
    const err = await c.read(0, 4096).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NbdRequestError);
    expect(err).toMatchObject({ code: 'io', errno: C.NBD_EIO, serverMessage: 'medium error on sector 0' });
    expect((err as Error).message).toBe('NBD read of 4096 bytes at offset 0 failed: EIO (input/output error): medium error on sector 0');
    expect((await c.read(4096, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    expect(c.closed).toBe(false);
  });

  it('walks extents when the server answers short or past the end of a request', async () => {
    const c = await start((req, sock) => {
      // At most two 100000-byte extents per answer, alternating flags by position; the second
      // may run past the request, which the client must clip.
      const ext: [number, number][] = [];
      let at = req.offset;
      for (let i = 0; i < 2 && at < req.offset + req.length; i++) {
        const len = 100_000 - (at % 100_000);
        ext.push([len, Math.floor(at / 300_000) % 2]);
        at += len;
      }
      sock.write(statusChunk(req.handle, ext));
    });
    const got: NbdExtent[] = [];
    for await (const e of c.extents(C.BASE_ALLOCATION, { offset: 50_000, length: 800_000 })) got.push(e);
    expect(got).toEqual([
      { offset: 50_000, length: 250_000, flags: 0 },
      { offset: 300_000, length: 300_000, flags: 1 },
      { offset: 600_000, length: 250_000, flags: 0 },
    ]);
  });

  it('fails a read whose reply leaves a gap', async () => {
    const c = await start((req, sock) => {
      sock.write(dataChunk(req.handle, req.offset, Buffer.alloc(100), true));
    });
    await expect(c.read(0, 200)).rejects.toMatchObject({ code: 'protocol', message: expect.stringMatching(/ends after 100 bytes/) });
  });

  it('fails everything on a reply to a handle nobody asked for', async () => {
    const c = await start((req, sock) => {
      if (req.offset !== 0) return; // only the first request is answered, wrongly
      sock.write(holeChunk(Buffer.from('ffffffffffffffff', 'hex'), 0, 10, true));
    });
    const results = await within(2_000, Promise.allSettled([c.read(0, 10), c.read(10, 10)]));
    for (const r of results) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'protocol', message: expect.stringMatching(/handle 0xffffffffffffffff/) });
    }
    expect(c.closed).toBe(true);
  });

  it('recognises a socket that is not an NBD server', async () => {
    const f = await fakeServer(() => undefined, { greeting: Buffer.from('{"QMP": {"version": {}}}\r\n') });
    fakes.push(f);
    await expect(NbdClient.connect({ path: f.path }, { connectTimeoutMs: 2_000 })).rejects.toMatchObject({ code: 'protocol', message: expect.stringMatching(/is not an NBD server/) });
  });
});
