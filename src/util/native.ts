// The project's native helpers (native/bulwark_native.c), built by `npm install` and `npm run build`
// (scripts/build-native.mjs). Where no compiler was at hand they are missing, and callers do without:
// every helper has a plain-Node way round it that gives the same result, only slower.
import { nativeBinding } from './native-binding.js';

export interface NativeHelpers {
  /** lseek(fd, offset, SEEK_DATA): the first data at or after `offset`, or -1 when there is none. */
  seekData(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_HOLE): the first hole at or after `offset` (the end of the file counts as one). */
  seekHole(fd: number, offset: number): number;
  /**
   * The chunker's cut of a fresh chunk (src/repository/chunker.ts, Rule.scan): the index just past the
   * chunk that starts at data[from], or -1 when none ends before `to`.
   */
  gearCut(data: Uint8Array, from: number, to: number, min: number, avg: number, max: number, maskS: number, maskL: number, gear: Int32Array): number;
  /**
   * lstat of `target` (a path) or fstat of it (an fd) into `out`: mode, uid, gid, size, ino, dev, nlink,
   * rdev, blocks. Returns "mtimeNs ctimeNs" as decimal text, or the errno (a number) when it failed.
   */
  statInto(target: Buffer | number, out: Float64Array): string | number;
  /**
   * A folder's entries, each lstat'ed relative to it: [names (each ended by a NUL), stats (10 per entry:
   * statInto's 9, mode -errno when that entry's stat failed; then the size of its xattr name list, 0 for
   * none, -1 unknown), times ("mtimeNs ctimeNs" lines), count];
   * or the errno when the folder could not be read.
   */
  scanDir(path: Buffer): [Buffer, Float64Array, string, number] | number;
  /**
   * AES-256-GCM of `data` in place (encrypting writes the tag into `tag`; decrypting checks it and
   * returns false when the data does not authenticate). Absent when the process has no OpenSSL to lend.
   */
  gcm?(encrypt: boolean, key: Uint8Array, iv: Uint8Array, ad: Uint8Array | null, data: Uint8Array, tag: Uint8Array): boolean;
}

/** The helpers, or undefined when they were not built (or BULWARK_NO_NATIVE=1 asks to do without). */
export function nativeHelpers(): NativeHelpers | undefined {
  return nativeBinding() as NativeHelpers | undefined;
}
