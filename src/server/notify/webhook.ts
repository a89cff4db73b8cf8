// Webhook notifications: one signed JSON POST per run. The body is signed as sent (HMAC-SHA256 over
// its exact bytes) and carries its own timestamp, so a receiver can check both who sent it and that it
// is not a replay; the delivery id stays the same across retries, so a receiver can drop duplicates.
import { createHmac, randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type RequestOptions } from 'node:http';
import https from 'node:https';
import { systemClock } from '../../util/clock.js';
import { errnoCode } from '../../util/errors.js';
import { deliver, isCertificateError, isLoopback, oneLine, readCa, Redactor, refused, TLS_HINT, timeoutOf, type AttemptOutcome } from './delivery.js';
import { emailSubject } from './email.js';
import type { NotifyOptions, NotifyResult, RunStatus, RunSummary, WebhookTarget } from './types.js';

export interface WebhookPayload {
  event: 'backup.run';
  /** Of this payload's shape; grows only by new fields within a version. */
  version: 1;
  /** When the notification was made (ISO 8601); signed with the rest, for receivers that refuse old ones. */
  timestamp: string;
  deliveryId: string;
  /** One line for people: the email's subject. */
  text: string;
  summary: Omit<RunSummary, 'startedAt' | 'endedAt' | 'itemNoun'> & {
    startedAt: string;
    endedAt: string;
    durationMs: number;
    counts: Record<RunStatus, number> & { total: number };
  };
}

/** What one POST came to: an answer, or the error that stopped it and why. */
type Exchange =
  | { status: number; statusMessage: string; snippet: string; retryAfterMs: number | undefined }
  | { err: Error; timedOut: boolean; cancelled: boolean; invalid: boolean };

export const SIGNATURE_HEADER = 'X-Bulwark-Signature';
const RESPONSE_SNIPPET = 200;
const USER_AGENT = 'bulwark-notify/1';

/** Statuses another attempt may cure: the server was overloaded, restarting or rate-limiting us. */
function transientStatus(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

/** Connection failures worth another attempt; DNS names that do not exist and TLS refusals are not. */
const TRANSIENT_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENETDOWN', 'EHOSTDOWN']);

export function webhookPayload(summary: RunSummary, now: Date, deliveryId: string = randomUUID()): WebhookPayload {
  const { startedAt, endedAt, itemNoun: _noun, ...rest } = summary;
  const counts = { total: summary.items.length, success: 0, warning: 0, failure: 0 };
  for (const i of summary.items) counts[i.status]++;
  return {
    event: 'backup.run',
    version: 1,
    timestamp: now.toISOString(),
    deliveryId,
    text: emailSubject(summary),
    summary: { ...rest, startedAt: startedAt.toISOString(), endedAt: endedAt.toISOString(), durationMs: endedAt.getTime() - startedAt.getTime(), counts },
  };
}

/** The header value for a body: `sha256=<hex>`. Receivers compute the same over the raw bytes they got. */
export function signBody(body: Buffer | string, secret: string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
}

function retryAfterMs(res: IncomingMessage): number | undefined {
  const v = res.headers['retry-after'];
  if (v === undefined) return undefined;
  const s = Number(v);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** One POST, its answer read (the start of it) or why there is none; never rejects. */
function post(request: RequestOptions, body: Buffer, timeoutMs: number, signal: AbortSignal | undefined): Promise<Exchange> {
  return new Promise((resolve) => {
    let settled = false;
    let timedOut = false;
    let req: http.ClientRequest | undefined;
    const onAbort = (): void => {
      req?.destroy(new Error('cancelled'));
    };
    const timer = setTimeout(() => {
      timedOut = true;
      req?.destroy(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (e: Exchange): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(e);
    };
    const failed = (err: Error): void => done({ err, timedOut, cancelled: signal?.aborted === true, invalid: false });
    if (signal?.aborted) return failed(new Error('cancelled'));
    try {
      req = (request.protocol === 'https:' ? https : http).request(request);
    } catch (err) {
      // Node checks header names and values before connecting: a line break in one is a configuration mistake.
      done({ err: err instanceof Error ? err : new Error(String(err)), timedOut: false, cancelled: false, invalid: true });
      return;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', failed);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        // Enough to show why it was refused; a huge answer is not kept.
        if (size < RESPONSE_SNIPPET * 4) chunks.push(c);
        size += c.length;
      });
      res.on('error', failed);
      // A connection cut mid-answer (or our timeout) may end the response without 'end' or 'error'.
      res.on('close', () => {
        if (!res.complete) failed(Object.assign(new Error('connection closed before the answer was complete'), { code: 'ECONNRESET' }));
      });
      res.on('end', () => {
        const snippet = oneLine(Buffer.concat(chunks).toString('utf8')).slice(0, RESPONSE_SNIPPET);
        done({ status: res.statusCode ?? 0, statusMessage: res.statusMessage ?? '', snippet, retryAfterMs: retryAfterMs(res) });
      });
    });
    req.end(body);
  });
}

/** Posts the run's summary to the target's URL; never throws. */
export async function sendWebhook(target: WebhookTarget, summary: RunSummary, options: NotifyOptions = {}): Promise<NotifyResult> {
  let url: URL;
  try {
    url = new URL(target.url);
  } catch {
    // Not even the origin is safe to show: the text may hold credentials where the parser failed.
    return refused(target, options, new Redactor([target.url]).error('usage', `webhook '${target.name}': the URL is not valid`, 'give an absolute http:// or https:// URL'));
  }
  const user = decodeURIComponent(url.username);
  const password = decodeURIComponent(url.password);
  // Secrets for sure: the signing key and the URL's credentials (a user name alone is often a token).
  // Perhaps secrets: header values (tokens), the path and query (many services put their key there);
  // short ones are left alone, as they hold no key and masking them would garble every message.
  const perhaps = [url.pathname, url.search, ...Object.values(target.headers ?? {})].filter((v) => v.length >= 6);
  const redactor = new Redactor([target.secret, user, password, url.username, url.password, ...perhaps], [[user, password]]);
  // The origin only: the path and query of a webhook URL are often its key.
  const label = `webhook '${target.name}' (${url.protocol}//${url.host})`;
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return refused(target, options, redactor.error('usage', `${label}: unsupported scheme ${url.protocol}`, 'give an http:// or https:// URL'));
  if ((user || password) && url.protocol === 'http:' && !isLoopback(url.hostname)) {
    return refused(target, options, redactor.error('usage', `${label}: refusing to send the URL credentials over plain HTTP`, 'use https://'));
  }
  const { ca, error: caError } = url.protocol === 'https:' ? await readCa(target.tls?.caFile, label, redactor) : {};
  if (caError) return refused(target, options, caError);

  const body = Buffer.from(JSON.stringify(webhookPayload(summary, (options.clock ?? systemClock).now())));
  const headers: Record<string, string> = { ...target.headers };
  // Ours last: an extra header may add to the request but not change what the signature vouches for.
  Object.assign(headers, {
    'Content-Type': 'application/json',
    'Content-Length': String(body.length),
    'User-Agent': USER_AGENT,
    ...(user || password ? { Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` } : {}),
    ...(target.secret ? { [SIGNATURE_HEADER]: signBody(body, target.secret) } : {}),
  });
  const timeoutMs = timeoutOf(target);

  const request: RequestOptions = {
    method: 'POST',
    protocol: url.protocol,
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port || undefined,
    path: url.pathname + url.search,
    headers,
    // A fresh connection per attempt: a kept-alive socket to a server that went away fails slowly.
    agent: false,
    ...(url.protocol === 'https:' ? { rejectUnauthorized: target.tls?.rejectUnauthorized ?? true, ...(ca ? { ca } : {}) } : {}),
  };

  const attempt = async (): Promise<AttemptOutcome> => {
    const exchange = await post(request, body, timeoutMs, options.signal);
    if ('status' in exchange) {
      const { status } = exchange;
      if (status >= 200 && status < 300) return { ok: true, detail: `HTTP ${status}` };
      const what = `HTTP ${status}${exchange.statusMessage ? ` ${oneLine(exchange.statusMessage)}` : ''}${exchange.snippet ? `: ${exchange.snippet}` : ''}`;
      if (status >= 300 && status < 400) {
        // Following it would post the signed summary to a URL nobody configured.
        return { ok: false, transient: false, error: redactor.error('protocol', `${label}: ${what}`, 'redirects are not followed: give the final URL') };
      }
      const transient = transientStatus(status);
      const hint = status === 401 || status === 403 ? 'check the credentials, headers or secret the receiver expects' : status === 404 ? 'check the URL path' : undefined;
      const after = transient ? exchange.retryAfterMs : undefined;
      return { ok: false, transient, error: redactor.error('protocol', `${label}: ${what}`, hint), ...(after !== undefined ? { retryAfterMs: after } : {}) };
    }
    const { err } = exchange;
    if (exchange.invalid) return { ok: false, transient: false, error: redactor.error('usage', `${label}: ${oneLine(err.message)}`, 'check the headers of the webhook target') };
    if (exchange.cancelled) return { ok: false, transient: false, error: redactor.error('failed', `${label}: cancelled`) };
    if (exchange.timedOut) {
      return { ok: false, transient: true, error: redactor.error('timeout', `${label}: no answer within ${timeoutMs} ms`, 'check the URL, and that the receiver answers promptly (it may queue the work)') };
    }
    const code = errnoCode(err);
    if (isCertificateError(code)) return { ok: false, transient: false, error: redactor.error('protocol', `${label}: ${oneLine(err.message)}`, TLS_HINT) };
    const transient = code !== undefined && TRANSIENT_ERRNO.has(code);
    const hint = code === 'ECONNREFUSED' ? 'check the URL, and that the receiver is running' : code === 'ENOTFOUND' ? 'check the host name in the URL' : undefined;
    return { ok: false, transient, error: redactor.error('io', `${label}: ${oneLine(err.message)}`, hint) };
  };

  return deliver(target, label, redactor, options, attempt);
}
