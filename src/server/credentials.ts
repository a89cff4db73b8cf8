// Login checks shared by the servers that take a fixed user and password (serve-files' WebDAV and FTP).
import { createHash, timingSafeEqual } from 'node:crypto';

/** Compares a secret in constant time: hashed first, so unequal lengths neither throw nor exit early. */
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}
