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

export function keyedBlake3(key: Buffer, data: Uint8Array): Buffer {
  let h = hashers.get(key);
  if (!h) hashers.set(key, (h = binding.Blake3Hasher.newKeyed(key)));
  try {
    return h.update(Buffer.from(data.buffer, data.byteOffset, data.byteLength)).digestBuffer();
  } finally {
    h.reset();
  }
}
