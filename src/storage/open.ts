// Turns a repository location from the command line or environment into a backend.
import { resolve } from 'node:path';
import { BulwarkError } from '../util/errors.js';
import type { Backend } from './backend.js';
import { LocalBackend } from './local.js';

/** Remote stores on the roadmap: named now so a location meant for them fails clearly rather than becoming a local folder. */
const PLANNED = new Set(['sftp', 'ftp', 'ftps', 's3', 'rest', 'http', 'https', 'b2', 'azure', 'gs', 'swift', 'rclone', 'smb', 'webdav']);

export function openBackend(location: string): Backend {
  if (location.trim() === '') throw new BulwarkError('usage', 'the repository location is empty', { hint: 'give a folder path, e.g. /backup/repo' });
  // One letter before the colon is a Windows drive (C:\repo), not a scheme.
  const scheme = /^([a-z][a-z0-9+.-]+):/i.exec(location)?.[1]?.toLowerCase();
  if (scheme === undefined) return new LocalBackend(resolve(location));
  if (scheme === 'local') {
    const path = location.slice(scheme.length + 1);
    if (path === '') throw new BulwarkError('usage', `the repository location '${location}' has no path`, { hint: 'write local:/path/to/repo' });
    return new LocalBackend(resolve(path));
  }
  if (PLANNED.has(scheme)) {
    throw new BulwarkError('usage', `the ${scheme} backend is not available yet (location '${redact(location)}')`, { hint: 'use a local path, or a mounted file system, for now' });
  }
  // An unknown prefix is more likely a mistyped scheme than a folder named "x:…"; such a folder can
  // still be reached as ./x:… or local:x:….
  throw new BulwarkError('usage', `unknown repository location scheme '${scheme}:' in '${redact(location)}'`, {
    hint: 'give a local path (write ./name or local:name if it contains a colon); sftp:, ftp:, s3: and rest: are planned',
  });
}

/** Locations may carry credentials (rest:https://user:pass@host/); messages must not. */
function redact(location: string): string {
  return location.replace(/\/\/[^/@\s]*@/, '//***@');
}
