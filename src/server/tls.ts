// The TLS material the servers share: one reading of a certificate and key given as PEM files (for
// serve-repo and for serve-files' HTTPS and FTPS), checked up front so that a wrong file is a clear
// error at start rather than a failed handshake with the first client.
import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureVersion } from 'node:tls';
import { BulwarkError, errnoCode, unable } from '../util/errors.js';

export interface TlsFiles {
  cert: Buffer;
  key: Buffer;
}

/** The oldest protocol the HTTPS servers accept: 1.0 and 1.1 are deprecated (RFC 8996). */
export const MIN_TLS_VERSION: SecureVersion = 'TLSv1.2';

export async function readTlsFiles(certFile: string, keyFile: string): Promise<TlsFiles> {
  const [cert, key] = await Promise.all([
    readFile(certFile).catch((err: unknown) => {
      throw unable('read', 'TLS certificate', certFile, err, errnoCode(err) === 'ENOENT' ? 'not-found' : 'io');
    }),
    readFile(keyFile).catch((err: unknown) => {
      throw unable('read', 'TLS key', keyFile, err, errnoCode(err) === 'ENOENT' ? 'not-found' : 'io');
    }),
  ]);
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new BulwarkError('usage', `'${certFile}' and '${keyFile}' are not a PEM certificate and its key: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      hint: 'give the certificate with --tls-cert and its private key with --tls-key, both PEM',
    });
  }
  return { cert, key };
}
