// The repository's layout on a store with folders (docs/repository-format.md §2), for the remote
// backends that address objects by POSIX path (SFTP, FTP): config, <type>/<name>, data/<nn>/<name>.
import { posix } from 'node:path';
import { FILE_TYPES, type Handle } from './backend.js';

/** An object name as the repository makes them (a SHA-256 in lowercase hex). */
export const OBJECT_NAME = /^[0-9a-f]{64}$/;

/** The only way a handle becomes a path: strict, so no name can reach outside the repository. */
export function objectPath(root: string, h: Handle): { dir: string; path: string } {
  if (!FILE_TYPES.includes(h.type)) throw new Error(`invalid file type '${String(h.type)}'`);
  if (typeof h.name !== 'string') throw new Error(`invalid object name for ${h.type}`);
  if (h.type === 'config') {
    if (h.name !== '') throw new Error(`invalid name '${h.name}' for config (it has none)`);
    return { dir: root, path: posix.join(root, 'config') };
  }
  if (!OBJECT_NAME.test(h.name)) throw new Error(`invalid ${h.type} name '${h.name}' (want 64 lowercase hex characters)`);
  const dir = h.type === 'data' ? posix.join(root, 'data', h.name.slice(0, 2)) : posix.join(root, h.type);
  return { dir, path: posix.join(dir, h.name) };
}
