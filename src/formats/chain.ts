// Backing chains (qcow2 backing files, VHD/VHDX/VDI differencing disks, VMDK snapshot children): the
// rules every reader applies before it opens a parent named inside a file it does not trust. A parent
// is a local file, found beside the child when its name is relative; a chain may not loop and is at
// most MAX_CHAIN images deep.
import { promises as fsp } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { BulwarkError } from '../util/errors.js';

export const MAX_CHAIN = 32;

/**
 * The real path of `file`, about to join the chain `seen` (the images opened so far, child first):
 * refused when it is missing, already in the chain, or one too many.
 */
export async function enterChain(file: string, seen: readonly string[]): Promise<string> {
  const real = await fsp.realpath(file).catch((err: unknown) => {
    throw new BulwarkError('not-found', seen.length ? `the parent image '${file}' of '${seen[seen.length - 1]}' cannot be opened: ${(err as Error).message}` : `cannot open '${file}': ${(err as Error).message}`, { cause: err });
  });
  if (seen.includes(real)) throw new BulwarkError('failed', `the backing chain of '${seen[0]}' loops: ${[...seen, real].join(' → ')}`);
  if (seen.length >= MAX_CHAIN) throw new BulwarkError('failed', `the backing chain of '${seen[0]}' is more than ${MAX_CHAIN} images deep`);
  return real;
}

/** A file named inside image `file` (a parent, an external data file): local only, relative to `file`'s folder. */
export function resolveNear(file: string, name: string): string {
  if (name.includes('\0')) throw new BulwarkError('failed', `'${file}' names a file with a NUL byte`);
  if (/^[a-z]+:/i.test(name) && !name.startsWith('file:')) throw new BulwarkError('failed', `'${file}' refers to '${name}', which is not a local file`);
  const plain = name.replace(/^file:/, '');
  return isAbsolute(plain) ? plain : resolve(dirname(file), plain);
}
