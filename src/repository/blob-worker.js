// Worker thread: the CPU-heavy half of storing and loading blobs (zstd + AES-256-GCM), so both cores
// work. Plain JavaScript so it runs the same from src/ (tests) and dist/ (installed), with no build step.
// Format 1 seals with AES-256-GCM, nonce(12) ‖ ciphertext ‖ tag(16) (repository/crypto.ts); format 2 with
// XAES-256-GCM and the associated data the caller passes (repository/sealer.ts).
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { Buffer } from 'node:buffer';
import { parentPort, workerData } from 'node:worker_threads';
import { Compressor, Decompressor } from 'zstd-napi';
import { Xaes, gcmOpenInPlace, gcmSealInto } from './xaes.js';
import { GcPacer } from '../util/gc-pacer.js';

// The platform binding directly, as in repository/blake3.ts (which this plain-JS worker cannot import).
const { Blake3Hasher } = createRequire(import.meta.url)('@napi-rs/blake-hash-linux-x64-gnu');

const encKey = Buffer.from(workerData.encKey);
const xaes = workerData.format === 2 ? new Xaes(encKey) : undefined;
const idKey = Buffer.from(workerData.idKey);
// One keyed hasher, reset after each blob: making one per blob cost more than hashing a small blob.
const idHasher = Blake3Hasher.newKeyed(idKey);

/** The blob id (keyed BLAKE3, hex) of a plaintext. */
function blobId(plain) {
  try {
    return idHasher.update(plain).digestBuffer().toString('hex');
  } finally {
    idHasher.reset();
  }
}
const level = workerData.zstdLevel;
// The compressed copy and the sealing's own buffers are garbage at once: young, so a minor collection
// frees them, cheaply.
const pacer = new GcPacer(workerData.gcEveryBytes ?? 16 * 1024 * 1024, 'minor');
const compressor = new Compressor();
compressor.setParameters({ compressionLevel: level });

/**
 * Seals `body` into `out` (body.length + the format's overhead, or more), which `body` may lie in; returns
 * the part of `out` used. Only the cipher's output is allocated: one buffer the size of the blob.
 */
function sealInto(out, body, ad) {
  if (xaes) return xaes.sealInto(out, body, ad);
  const nonce = randomBytes(12);
  return gcmSealInto(out, encKey, nonce, nonce, body, ad);
}

/**
 * The plaintext of a sealed blob, decrypted in place: every buffer this worker opens is its own to spend
 * (sent to it), and a new buffer per blob was most of the memory a restore touched.
 */
function unseal(sealed, ad) {
  if (xaes) return xaes.openInPlace(sealed, ad);
  if (sealed.length < 28) throw new Error('Unsupported state or unable to authenticate data');
  const ct = sealed.subarray(12, sealed.length - 16);
  gcmOpenInPlace(encKey, sealed.subarray(0, 12), ct, sealed.subarray(sealed.length - 16), null);
  return ct;
}

// The native context behind zstd-napi's Decompressor decompresses into a buffer we give it, so a frame
// can never make it allocate more than the blob's recorded length (as repository/zstd.ts does).
const dctx = new Decompressor().dctx;

/** Bytes a seal adds to its body: nonce and tag (format 1: 12 + 16; format 2: 24 + 16). */
const SEAL_OVERHEAD = xaes ? 40 : 28;

/**
 * zstd writes into this buffer, grown to the largest blob's bound and kept: a fresh output buffer per
 * blob is garbage that V8 frees only when it next collects, and two workers piled up tens of MB of it.
 */
let zscratch = Buffer.allocUnsafeSlow(0);

/** ZSTD_COMPRESSBOUND: the most a frame of `n` bytes can take. */
function compressBound(n) {
  return n + (n >>> 8) + (n < 131072 ? (131072 - n) >>> 11 : 0);
}

/**
 * Compresses when asked and worthwhile, then seals into `out` when given and large enough (else into a
 * new buffer). `plain` may lie in `out`. `ulen` is the plaintext length when compressed, else 0.
 */
function compressAndSeal(plain, compress, ad, out) {
  let body = plain;
  let ulen = 0;
  if (compress) {
    const bound = compressBound(plain.length);
    if (zscratch.length < bound) zscratch = Buffer.allocUnsafeSlow(bound);
    const n = compressor.cctx.compress2(zscratch, plain);
    // Incompressible data is stored raw: saves the decompression on restore and never grows a blob.
    if (n < plain.length - (plain.length >> 5)) {
      body = zscratch.subarray(0, n);
      ulen = plain.length;
    }
  }
  const need = body.length + SEAL_OVERHEAD;
  const dst = out && out.length >= need ? out : Buffer.allocUnsafe(need);
  return { sealed: sealInto(dst, body, ad), ulen };
}

/**
 * Memory the main thread sent is either in the slab both threads share (workers.ts: it still has it, and
 * nothing goes back) or a buffer of its own, transferred here and back.
 */
function isShared(view) {
  return view.buffer instanceof SharedArrayBuffer;
}

/** The buffers of these views that a reply must transfer: those not in shared memory. */
function transfers(...views) {
  return views.filter((v) => v !== undefined && !isShared(v)).map((v) => v.buffer);
}

/** Runs `fn` on each blob of a batch with its bytes; a blob that fails is reported alone. */
function eachBlob(msg, fn) {
  const input = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
  const results = [];
  let from = 0;
  for (const it of msg.items) {
    const bytes = input.subarray(from, from + it.len);
    from += it.len;
    try {
      results.push(fn(it, bytes));
    } catch (err) {
      results.push({ error: err instanceof Error ? err.message : String(err) });
    }
  }
  return results;
}

/**
 * Seals a batch of small blobs sent in one buffer; their sealed forms go side by side into the buffer
 * sent with it (a sealed blob is never longer than its plaintext and the seal's overhead: the main thread
 * makes room for that). Both buffers go back, to be used again.
 */
function sealBatch(msg) {
  const out = Buffer.from(msg.out.buffer, msg.out.byteOffset, msg.out.byteLength);
  let at = 0;
  const results = eachBlob(msg, (it, plain) => {
    const { sealed, ulen } = compressAndSeal(plain, it.compress, adOf(it.ad), out.subarray(at));
    if (sealed.buffer !== out.buffer) throw new Error('a sealed blob did not fit the room made for it');
    at += sealed.length;
    return { at: at - sealed.length, len: sealed.length, ulen };
  });
  parentPort.postMessage({ seq: msg.seq, out: isShared(msg.out) ? undefined : msg.out, results }, transfers(msg.out));
}

/**
 * Opens the blobs of `items` (each `len` sealed bytes at `at` in `input`) into `out`, side by side, each
 * in a slot of its recorded length; a blob that fails is reported alone.
 */
function openInto(input, items, out) {
  let next = 0;
  // A run may cut the same blob twice (a file that repeats a chunk): opening in place spends the sealed
  // bytes, so the second gets a copy of the first's plaintext.
  const opened = new Map();
  return items.map((it) => {
    const at = next;
    next += it.ulen > 0 ? it.ulen : it.len;
    const twin = opened.get(it.at);
    if (twin && twin.len === it.len && twin.ulen === it.ulen) {
      if ('error' in twin.r) return twin.r;
      out.copyWithin(at, twin.r.at, twin.r.at + twin.r.len);
      return { at, len: twin.r.len, id: twin.r.id };
    }
    const r = openOne(input, it, out, at);
    opened.set(it.at, { len: it.len, ulen: it.ulen, r });
    return r;
  });
}

/** One blob of openInto(), into `out` at `at`. */
function openOne(input, it, out, at) {
  try {
    const body = unseal(input.subarray(it.at, it.at + it.len), it.ad);
    let len = body.length;
    if (it.ulen > 0) {
      len = dctx.decompress(out.subarray(at, at + it.ulen), body);
      if (len !== it.ulen) throw new Error(`decompresses to ${len} bytes, not the ${it.ulen} recorded`);
    } else out.set(body, at);
    return { at, len, id: blobId(out.subarray(at, at + len)) };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * Opens a batch of small blobs sent in one buffer: one message each way for the lot, and their
 * plaintexts come back side by side in one buffer.
 */
function openBatch(msg) {
  const input = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
  let from = 0;
  const items = msg.items.map((it) => ({ ...it, ad: adOf(it.ad), at: (from += it.len) - it.len }));
  const out = Buffer.allocUnsafeSlow(items.reduce((n, it) => n + (it.ulen > 0 ? it.ulen : it.len), 0));
  const results = openInto(input, items, out);
  parentPort.postMessage({ seq: msg.seq, out, results }, [out.buffer]);
}

/**
 * Opens the blobs cut from one read range into the buffer the main thread sent with it (kept there for
 * reuse, as is the range: both go back).
 */
function openRun(msg) {
  const input = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
  const out = Buffer.from(msg.out.buffer, msg.out.byteOffset, msg.out.byteLength);
  // Packed by workers.ts (openRun): at, len, ulen and the associated data's length (-1: none) per blob.
  const m = msg.meta;
  const ads = Buffer.from(msg.ads.buffer, msg.ads.byteOffset, msg.ads.byteLength);
  const items = [];
  for (let i = 0, adAt = 0; i < m.length; i += 4) {
    const adLen = m[i + 3];
    items.push({ at: m[i], len: m[i + 1], ulen: m[i + 2], ad: adLen < 0 ? null : ads.subarray(adAt, (adAt += adLen)) });
  }
  const results = openInto(input, items, out);
  const spans = new Float64Array(results.length * 2);
  const errors = {};
  let ids = '';
  results.forEach((r, i) => {
    if ('error' in r) {
      spans[i * 2 + 1] = -1;
      errors[i] = r.error;
      ids += NO_ID;
    } else {
      spans[i * 2] = r.at;
      spans[i * 2 + 1] = r.len;
      ids += r.id;
    }
  });
  parentPort.postMessage({ seq: msg.seq, out: isShared(msg.out) ? undefined : msg.out, spans, ids, errors }, [...transfers(msg.out), spans.buffer]);
}

/** Stands in the ids of a run for a blob that did not open. */
const NO_ID = ' '.repeat(64);

/** Associated data arrives as latin1 text (workers.ts, adWire): cheaper to post than a Buffer. */
function adOf(wire) {
  return typeof wire === 'string' ? Buffer.from(wire, 'latin1') : null;
}

/** Small Buffers live in a shared pool that must not be transferred: copy those into an own buffer. */
function own(buf) {
  if (buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength) return buf;
  const out = new Uint8Array(buf.byteLength);
  out.set(buf);
  return out;
}

parentPort.on('message', (msg) => {
  // Paced by the bytes handled, in shared memory or not: the garbage a message leaves here (its objects,
  // the sealing's and compression's own) grows with its bytes either way.
  pacer.dropped(msg.data.byteLength);
  try {
    if (msg.op === 'seal') {
      // Sealed back into the memory the plaintext came in (the main thread sends it with room to spare
      // and reuses it), so sealing leaves nothing behind here but the cipher's output.
      const room = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
      const { sealed, ulen } = compressAndSeal(room.subarray(0, msg.len), msg.compress, adOf(msg.ad), room);
      if (sealed.buffer === room.buffer && sealed.byteOffset >= room.byteOffset && sealed.byteOffset + sealed.length <= room.byteOffset + room.length) {
        const at = sealed.byteOffset - room.byteOffset;
        parentPort.postMessage({ seq: msg.seq, data: isShared(msg.data) ? undefined : msg.data, at, len: sealed.length, ulen }, transfers(msg.data));
      } else {
        const copy = own(sealed);
        parentPort.postMessage({ seq: msg.seq, sealed: copy, ulen }, [copy.buffer]);
      }
    } else if (msg.op === 'sealBatch') {
      sealBatch(msg);
    } else if (msg.op === 'openBatch') {
      openBatch(msg);
    } else if (msg.op === 'openRun') {
      openRun(msg);
    } else if (msg.op === 'open') {
      const sealed = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
      let plain = unseal(sealed, adOf(msg.ad));
      if (msg.ulen > 0) {
        const out = Buffer.allocUnsafeSlow(msg.ulen);
        const n = dctx.decompress(out, plain);
        if (n !== msg.ulen) throw new Error(`decompresses to ${n} bytes, not the ${msg.ulen} recorded`);
        plain = out;
      }
      // The blob id is checked here too, off the main thread: a restore verifies every byte it writes.
      const id = blobId(plain);
      // A view of the buffer it came in (opened in place) or of the decompression's own: either way a
      // buffer of its own, which goes back without a copy.
      const view = new Uint8Array(plain.buffer, plain.byteOffset, plain.byteLength);
      parentPort.postMessage({ seq: msg.seq, plain: view, id }, [view.buffer]);
    }
  } catch (err) {
    parentPort.postMessage({ seq: msg.seq, error: err instanceof Error ? err.message : String(err) });
  }
});
