// Keyed BLAKE3, native. The binding is taken straight from its platform package: the wrapper package
// lists optional binaries for every platform, and a lockfile naming packages the registry does not
// serve breaks `npm ci`. Linux x64 (glibc) is the platform Bulwark runs on; others need their binding.
import { createRequire } from 'node:module';

interface Blake3Binding {
  Blake3Hasher: { newKeyed(key: Buffer): { update(input: Buffer): { digestBuffer(): Buffer } } };
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

export function keyedBlake3(key: Buffer, data: Uint8Array): Buffer {
  return binding.Blake3Hasher.newKeyed(key).update(Buffer.from(data.buffer, data.byteOffset, data.byteLength)).digestBuffer();
}
