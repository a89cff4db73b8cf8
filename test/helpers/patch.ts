// Damage on purpose: overwrites bytes of a file in place (hostile-input tests of the image readers).
import { closeSync, openSync, writeSync } from 'node:fs';

export function patchFile(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}
