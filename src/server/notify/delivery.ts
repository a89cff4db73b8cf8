// What email and webhook delivery share: retries with backoff around one attempt, the removal of
// secrets from every message that leaves a notifier, and reading a target's CA file. A notification
// is best effort next to the backup it reports on, so nothing here throws: every outcome is a result.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { BulwarkError, errnoCode, type ErrorCode } from '../../util/errors.js';
import type { NotifyOptions, NotifyResult, NotifyTarget, RetryPolicy } from './types.js';

export type AttemptOutcome =
  | { ok: true; detail: string }
  | {
      ok: false;
      error: BulwarkError;
      /** Worth another attempt: the server was down, busy or slow, not refusing this message. */
      transient: boolean;
      /** The server's own Retry-After, which beats our backoff when it is shorter than maxDelayMs. */
      retryAfterMs?: number;
    };

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 2_000, maxDelayMs: 30_000 };

const MASK = '***';

/**
 * Replaces each secret, and the encodings in which it crosses the wire (Basic and SASL PLAIN base64,
 * URL escaping), wherever it appears: servers echo commands and headers back in their errors.
 */
export class Redactor {
  private readonly needles: string[];

  constructor(secrets: (string | undefined)[], pairs: [string | undefined, string | undefined][] = []) {
    const all = new Set<string>();
    for (const s of secrets) {
      if (!s) continue;
      all.add(s);
      all.add(encodeURIComponent(s));
      all.add(Buffer.from(s).toString('base64'));
    }
    for (const [user, pass] of pairs) {
      if (!pass) continue;
      all.add(Buffer.from(`${user ?? ''}:${pass}`).toString('base64'));
      all.add(Buffer.from(`\0${user ?? ''}\0${pass}`).toString('base64'));
    }
    // Longest first, so a secret's encoding is not half-masked by a shorter secret inside it.
    this.needles = [...all].filter((n) => n.length > 0).sort((a, b) => b.length - a.length);
  }

  redact(text: string): string {
    let out = text;
    for (const n of this.needles) out = out.split(n).join(MASK);
    return out;
  }

  error(code: ErrorCode, message: string, hint?: string): BulwarkError {
    // No cause: library errors keep the commands, responses and options that held the secrets.
    return new BulwarkError(code, this.redact(message), hint ? { hint: this.redact(hint) } : {});
  }
}

export function retryPolicy(target: NotifyTarget): RetryPolicy {
  const p = { ...DEFAULT_RETRY, ...target.retry };
  return { attempts: Math.max(1, Math.floor(p.attempts)), baseDelayMs: Math.max(0, p.baseDelayMs), maxDelayMs: Math.max(0, p.maxDelayMs) };
}

export function timeoutOf(target: NotifyTarget): number {
  return target.timeoutMs !== undefined && target.timeoutMs > 0 ? target.timeoutMs : DEFAULT_TIMEOUT_MS;
}

/** Exponential with jitter, so the targets of many hosts that failed together do not retry together. */
export function backoffMs(policy: RetryPolicy, failedAttempt: number, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined && retryAfterMs >= 0) return Math.min(retryAfterMs, policy.maxDelayMs);
  const full = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (failedAttempt - 1));
  return Math.round(full / 2 + (Math.random() * full) / 2);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs attempts until one succeeds, one fails for good, the policy's attempts are spent or the signal
 * aborts. `attempt` may throw: that counts as a permanent failure, described without its secrets.
 */
export async function deliver(
  target: NotifyTarget,
  label: string,
  redactor: Redactor,
  options: NotifyOptions,
  attempt: (n: number) => Promise<AttemptOutcome>,
): Promise<NotifyResult> {
  const policy = retryPolicy(target);
  const log = (line: string): void => options.log?.(redactor.redact(line));
  // The errors start with the label already; a log line names it once.
  const reason = (e: BulwarkError): string => (e.message.startsWith(`${label}: `) ? e.message.slice(label.length + 2) : e.message);
  const base = { target: target.name, kind: target.kind };
  let last: BulwarkError | undefined;
  for (let n = 1; n <= policy.attempts; n++) {
    if (options.signal?.aborted) {
      return { ...base, status: 'failed', attempts: n - 1, error: redactor.error('failed', `${label}: cancelled`, last ? `the last attempt failed: ${reason(last)}` : undefined) };
    }
    let outcome: AttemptOutcome;
    try {
      outcome = await attempt(n);
    } catch (err) {
      outcome = { ok: false, transient: false, error: redactor.error('failed', `${label}: ${err instanceof Error ? err.message : String(err)}`) };
    }
    if (outcome.ok) {
      log(`${label}: sent (attempt ${n} of ${policy.attempts}): ${outcome.detail}`);
      return { ...base, status: 'sent', attempts: n, detail: redactor.redact(outcome.detail) };
    }
    last = outcome.error;
    if (!outcome.transient || n === policy.attempts) {
      const why = outcome.transient ? `gave up after ${n} attempts` : 'not retried';
      log(`${label}: failed (${why}): ${reason(last)}${last.hint ? ` (hint: ${last.hint})` : ''}`);
      return { ...base, status: 'failed', attempts: n, error: last };
    }
    const wait = backoffMs(policy, n, outcome.retryAfterMs);
    log(`${label}: attempt ${n} of ${policy.attempts} failed: ${reason(last)}; retrying in ${(wait / 1000).toFixed(1)} s`);
    if (!(await sleep(wait, options.signal))) {
      return { ...base, status: 'failed', attempts: n, error: redactor.error('failed', `${label}: cancelled while waiting to retry`, `the last attempt failed: ${reason(last)}`) };
    }
  }
  // The loop returns on its last attempt; this satisfies the compiler.
  return { ...base, status: 'failed', attempts: policy.attempts, error: last ?? redactor.error('failed', `${label}: no attempt made`) };
}

/** A target that cannot be tried at all (its configuration is wrong): a result, with no attempt made. */
export function refused(target: NotifyTarget, options: NotifyOptions, error: BulwarkError): NotifyResult {
  options.log?.(`${error.message}${error.hint ? ` (hint: ${error.hint})` : ''}`);
  return { target: target.name, kind: target.kind, status: 'failed', attempts: 0, error };
}

/** The CA file's PEM text, or a usage error: a missing CA file is a configuration mistake, not a transient one. */
export async function readCa(caFile: string | undefined, label: string, redactor: Redactor): Promise<{ ca?: string; error?: BulwarkError }> {
  if (caFile === undefined) return {};
  let ca: string;
  try {
    ca = await readFile(caFile, 'utf8');
  } catch (err) {
    return { error: redactor.error('usage', `${label}: unable to read the CA file '${caFile}': ${errnoCode(err) ?? (err instanceof Error ? err.message : String(err))}`, 'tls.caFile must name a readable PEM file') };
  }
  // Node takes any text as `ca` and fails only at the handshake, which would look like the server's fault.
  const blocks = ca.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  try {
    if (blocks.length === 0) throw new Error('no certificate in it');
    for (const b of blocks) new X509Certificate(b);
  } catch (err) {
    return { error: redactor.error('usage', `${label}: the CA file '${caFile}' is not PEM certificates: ${err instanceof Error ? err.message : String(err)}`, 'tls.caFile must name a PEM file of CA certificates') };
  }
  return { ca };
}

/** Plain-text credentials are accepted only to this machine: a local relay is common, and nothing crosses a network. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** Node's TLS verification codes: a certificate problem is a configuration problem, no retry helps. */
export function isCertificateError(code: unknown): boolean {
  return (
    typeof code === 'string' &&
    (code.startsWith('CERT_') ||
      code.includes('SELF_SIGNED') ||
      code.startsWith('UNABLE_TO_') ||
      code === 'ERR_TLS_CERT_ALTNAME_INVALID' ||
      code === 'HOSTNAME_MISMATCH' ||
      code.startsWith('ERR_SSL_'))
  );
}

export const TLS_HINT = "give the server's certificate authority in tls.caFile, or check the host name it was issued for";

/** Strips control characters from text headed for a one-line place (a subject, a log line). */
export function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
}
