// Turns a repository location from the command line or environment into a backend (docs/backends.md).
// Remote stores are wrapped in the retry policy (retry.ts); any store can be given a bandwidth cap
// (limited.ts). Secrets never come from the location's text shown in messages: they come from the
// options the CLI fills from flags and the environment.
import { resolve } from 'node:path';
import { BulwarkError } from '../util/errors.js';
import type { Backend } from './backend.js';
import { FtpBackend } from './ftp.js';
import { LimitedBackend, type BandwidthLimits } from './limited.js';
import { LocalBackend } from './local.js';
import { RetryBackend, type RetryEvent } from './retry.js';
import { RestBackend } from './rest.js';
import { S3Backend } from './s3.js';
import { SftpBackend } from './sftp.js';

export interface OpenOptions {
  /** SFTP: private key file (--sftp-key, else BULWARK_SFTP_KEY) and known_hosts file (--sftp-known-hosts, else BULWARK_SFTP_KNOWN_HOSTS). */
  sftpKey?: string;
  sftpKnownHosts?: string;
  /** Where BULWARK_SFTP_PASSWORD, BULWARK_FTP_PASSWORD, … and the AWS variables are read; default process.env. */
  env?: NodeJS.ProcessEnv;
  limits?: BandwidthLimits;
  /** Told of each retry against a remote store. */
  onRetry?: (e: RetryEvent) => void;
}

/**
 * BULWARK_NET_TIMEOUT: seconds a remote store may stay silent (no handshake, no answer, no progress on
 * a transfer) before the request fails and the retry policy takes over. Unset, each backend keeps its
 * own default (about a minute); a server that stops answering but keeps the connection open is then
 * given up on after that, not waited on for ever.
 */
export function netTimeoutMs(env: NodeJS.ProcessEnv): number | undefined {
  const raw = env['BULWARK_NET_TIMEOUT']?.trim();
  if (raw === undefined || raw === '') return undefined;
  const secs = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!(secs >= 1 && secs <= 86_400)) throw new BulwarkError('usage', `BULWARK_NET_TIMEOUT '${raw}' is not a number of seconds between 1 and 86400`, { hint: 'e.g. BULWARK_NET_TIMEOUT=60' });
  return Math.round(secs * 1000);
}

/**
 * BULWARK_RETRIES: attempts in all (the first included) of a request to a remote store that fails in
 * a way that may clear up. Unset: 10, about three minutes of waiting. Lower it to fail sooner against
 * a store that is down; raise it to ride out longer outages.
 */
export function retryAttempts(env: NodeJS.ProcessEnv): number | undefined {
  const raw = env['BULWARK_RETRIES']?.trim();
  if (raw === undefined || raw === '') return undefined;
  const n = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 1 && n <= 100)) throw new BulwarkError('usage', `BULWARK_RETRIES '${raw}' is not a whole number between 1 and 100`, { hint: 'e.g. BULWARK_RETRIES=10' });
  return n;
}

/** Remote stores on the roadmap: named now so a location meant for them fails clearly rather than becoming a local folder. */
const PLANNED = new Set(['http', 'https', 'b2', 'azure', 'gs', 'swift', 'rclone', 'smb', 'webdav']);

export function openBackend(location: string, opts: OpenOptions = {}): Backend {
  const b = openStore(location, opts);
  return opts.limits?.upload || opts.limits?.download ? new LimitedBackend(b, opts.limits) : b;
}

function openStore(location: string, opts: OpenOptions): Backend {
  if (location.trim() === '') throw new BulwarkError('usage', 'the repository location is empty', { hint: 'give a folder path, e.g. /backup/repo' });
  const env = opts.env ?? process.env;
  // One letter before the colon is a Windows drive (C:\repo), not a scheme.
  const scheme = /^([a-z][a-z0-9+.-]+):/i.exec(location)?.[1]?.toLowerCase();
  if (scheme === undefined) return new LocalBackend(resolve(location));
  const attempts = scheme === 'local' ? undefined : retryAttempts(env);
  const retrying = (b: Backend): Backend => new RetryBackend(b, { ...(opts.onRetry ? { onRetry: opts.onRetry } : {}), ...(attempts ? { maxAttempts: attempts } : {}) });
  // Read for remote stores only: a stray value must not break a local repository.
  const timeoutMs = ['sftp', 'ftp', 'ftps', 'rest', 's3'].includes(scheme) ? netTimeoutMs(env) : undefined;
  switch (scheme) {
    case 'local': {
      const path = location.slice(scheme.length + 1);
      if (path === '') throw new BulwarkError('usage', `the repository location '${location}' has no path`, { hint: 'write local:/path/to/repo' });
      return new LocalBackend(resolve(path));
    }
    case 'sftp': {
      const keyFile = opts.sftpKey ?? (env['BULWARK_SFTP_KEY'] || undefined);
      const knownHostsFile = opts.sftpKnownHosts ?? (env['BULWARK_SFTP_KNOWN_HOSTS'] || undefined);
      const password = env['BULWARK_SFTP_PASSWORD'] || undefined;
      // ssh2 gives up after four unanswered keepalives: four per timeout notices a silent server in time.
      const timeouts = timeoutMs === undefined ? {} : { readyTimeoutMs: timeoutMs, keepaliveIntervalMs: Math.max(250, Math.round(timeoutMs / 4)) };
      return retrying(new SftpBackend(location, { ...(keyFile ? { keyFile } : {}), ...(knownHostsFile ? { knownHostsFile } : {}), ...(password ? { password } : {}), ...timeouts }));
    }
    case 'ftp':
    case 'ftps': {
      const password = env['BULWARK_FTP_PASSWORD'] || undefined;
      const tlsCa = env['BULWARK_FTP_CA'] || undefined;
      const tlsFingerprint = env['BULWARK_FTP_FINGERPRINT'] || undefined;
      return retrying(new FtpBackend(location, { ...(password ? { password } : {}), ...(tlsCa ? { tlsCa } : {}), ...(tlsFingerprint ? { tlsFingerprint } : {}), ...(timeoutMs === undefined ? {} : { timeoutMs }) }));
    }
    case 'rest': {
      const password = env['BULWARK_REST_PASSWORD'] || undefined;
      const tlsCa = env['BULWARK_REST_CA'] || undefined;
      const tlsFingerprint = env['BULWARK_REST_FINGERPRINT'] || undefined;
      return retrying(new RestBackend(location, { ...(password ? { password } : {}), ...(tlsCa ? { tlsCa } : {}), ...(tlsFingerprint ? { tlsFingerprint } : {}), ...(timeoutMs === undefined ? {} : { timeoutMs }) }));
    }
    case 's3':
      // Credentials: the SDK's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws).
      // One attempt per SDK call: the retry wrapper around it is the one policy (BULWARK_RETRIES); the
      // SDK's own three attempts inside each of ours made a dead store take three times as long to fail.
      return retrying(new S3Backend(location, { maxAttempts: 1, ...(timeoutMs === undefined ? {} : { timeoutMs }) }));
  }
  if (PLANNED.has(scheme)) {
    throw new BulwarkError('usage', `the ${scheme} backend is not available yet (location '${redact(location)}')`, { hint: 'use a local path, sftp:, ftp(s)://, s3:, rest: or a mounted file system' });
  }
  // An unknown prefix is more likely a mistyped scheme than a folder named "x:…"; such a folder can
  // still be reached as ./x:… or local:x:….
  throw new BulwarkError('usage', `unknown repository location scheme '${scheme}:' in '${redact(location)}'`, {
    hint: 'give a local path (write ./name or local:name if it contains a colon), sftp:user@host:/path, ftp(s)://user@host/path or s3:https://host/bucket',
  });
}

/** Locations may carry credentials (rest:https://user:pass@host/); messages must not. */
function redact(location: string): string {
  return location.replace(/\/\/[^/@\s]*@/, '//***@');
}
