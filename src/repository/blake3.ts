// Keyed BLAKE3, native. The binding is taken straight from its platform package: the wrapper package
// lists optional binaries for every platform, and a lockfile naming packages the registry does not
// serve breaks `npm ci`. Linux x64 (glibc) is the platform Bulwark runs on; others need their binding.
import { createRequire } from 'node:module';

interface Blake3Hasher {
  update(input: Buffer): Blake3Hasher;
  digestBuffer(): Buffer;
  /** Back to the state newKeyed() made: the key stays. */
  reset(): void;
}

interface Blake3Binding {
  Blake3Hasher: { newKeyed(key: Buffer): Blake3Hasher };
}

function load(): Blake3Binding {
  const require = createRequire(import.meta.url);
  try {
    return require('@napi-rs/blake-hash-linux-x64-gnu') as Blake3Binding;
  } catch (err) {
    throw new Error(`the native BLAKE3 binding is not available for ${process.platform}-${process.arch}: ${(err as Error).message}`, { cause: err });
  }
}

const binding = load();

/**
 * One hasher per key, reset after each use: making a keyed hasher costs more than hashing a small blob
 * (13 µs against 5 for 100 bytes), and a backup or restore hashes every blob. Keys are never changed
 * in place, so the key Buffer itself can stand for its hasher.
 */
const hashers = new WeakMap<Buffer, Blake3Hasher>();

function hasherFor(key: Buffer): Blake3Hasher {
  let h = hashers.get(key);
  if (!h) hashers.set(key, (h = binding.Blake3Hasher.newKeyed(key)));
  return h;
}

export function keyedBlake3(key: Buffer, data: Uint8Array): Buffer {
  const h = hasherFor(key);
  try {
    return h.update(Buffer.from(data.buffer, data.byteOffset, data.byteLength)).digestBuffer();
  } finally {
    h.reset();
  }
}

/** Zeros fed to keyedBlake3OfZeros a slice at a time. */
const ZEROS = Buffer.alloc(64 * 1024);

/** keyedBlake3 of `length` zero bytes, hashed a slice at a time: the zero chunk is megabytes long. */
export function keyedBlake3OfZeros(key: Buffer, length: number): Buffer {
  const h = hasherFor(key);
  try {
    for (let left = length; left > 0; left -= ZEROS.length) h.update(left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left));
    return h.digestBuffer();
  } finally {
    h.reset();
  }
}
