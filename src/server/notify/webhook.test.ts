import { createHmac, timingSafeEqual } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulwarkError } from '../../util/errors.js';
import { closedPort, makeCert, sampleSummary, startHttp, startSilent, type Responder, type TestCert, type TestHttp } from './testing/servers.js';
import type { NotifyResult, WebhookTarget } from './types.js';
import { sendWebhook, type WebhookPayload } from './webhook.js';

const SECRET = 'whsec-5f0c1d2e3a4b';
const TOKEN = 'Bearer tok-9a8b7c6d5e';
const URL_PASSWORD = 'p@ss/w:rd';
const PATH_KEY = 'T0001/B0002/XyZkeyInThePath';
const FAST = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };
const NOW = new Date('2026-11-28T01:42:20Z');
const clock = { now: () => NOW };

let dir: string;
let cert: TestCert;
const servers: TestHttp[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulwark-notify-webhook-'));
  cert = await makeCert(dir);
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  await rm(dir, { recursive: true, force: true });
});

async function receiver(respond: Responder, tls?: TestCert): Promise<TestHttp> {
  const s = await startHttp(respond, tls);
  servers.push(s);
  return s;
}

const answer =
  (...statuses: number[]): Responder =>
  (_req, n, res) => {
    const status = statuses[Math.min(n, statuses.length - 1)] ?? 200;
    res.writeHead(status, status === 503 ? { 'Retry-After': '0' } : {}).end(status >= 400 ? `{"error":"status ${status}"}` : '');
  };

function target(url: string, extra: Partial<WebhookTarget> = {}): WebhookTarget {
  return { kind: 'webhook', name: 'ops-hook', on: ['failure'], url, retry: FAST, timeoutMs: 5_000, ...extra };
}

function failure(r: NotifyResult): BulwarkError {
  if (r.status !== 'failed') throw new Error(`expected a failure, got ${JSON.stringify(r)}`);
  expect(r.error).toBeInstanceOf(BulwarkError);
  return r.error;
}

function everything(r: NotifyResult, logs: string[]): string {
  return [JSON.stringify(r), inspect(r, { depth: 10 }), r.status === 'failed' ? `${r.error.stack ?? ''} ${r.error.hint ?? ''}` : '', ...logs].join('\n');
}

describe('sendWebhook', () => {
  it('posts the summary as JSON, signed over the exact body', async () => {
    const s = await receiver(answer(204));
    const r = await sendWebhook(target(`${s.url}/hooks/bulwark?x=1`, { secret: SECRET, headers: { 'X-Team': 'storage' } }), sampleSummary(), { clock });
    expect(r).toMatchObject({ status: 'sent', attempts: 1, detail: 'HTTP 204' });
    expect(s.requests).toHaveLength(1);
    const req = s.requests[0]!;
    expect(req.method).toBe('POST');
    expect(req.url).toBe('/hooks/bulwark?x=1');
    expect(req.headers['content-type']).toBe('application/json');
    expect(req.headers['x-team']).toBe('storage');

    const expected = Buffer.from('sha256=' + createHmac('sha256', SECRET).update(req.body).digest('hex'));
    const got = Buffer.from(String(req.headers['x-bulwark-signature']));
    expect(got.length === expected.length && timingSafeEqual(got, expected)).toBe(true);

    const payload = JSON.parse(req.body.toString('utf8')) as WebhookPayload;
    expect(payload).toMatchObject({ event: 'backup.run', version: 1, timestamp: NOW.toISOString(), text: '[Bulwark] FAILED nightly-vms on host01 (2 of 3 VMs)' });
    expect(payload.deliveryId).toMatch(/^[0-9a-f-]{36}$/);
    expect(payload.summary).toMatchObject({ job: 'nightly-vms', runId: 'run-20261128-0100', status: 'failure', host: 'host01', startedAt: '2026-11-28T01:00:00.000Z', durationMs: 2_533_000 });
    expect(payload.summary.counts).toEqual({ total: 3, failure: 2, warning: 0, success: 1 });
    expect(payload.summary.items[0]).toMatchObject({ name: 'web01', status: 'failure', hint: 'install qemu-guest-agent in the guest, or pass --consistency crash' });
    expect(payload.summary.warnings).toEqual(['scratch space below 10 GiB']);
  });

  it('sends no signature header without a secret, and extra headers cannot replace the signed ones', async () => {
    const s = await receiver(answer(200));
    await sendWebhook(target(s.url, { headers: { 'Content-Type': 'text/plain', 'X-Bulwark-Signature': 'forged' } }), sampleSummary());
    expect(s.requests[0]?.headers['content-type']).toBe('application/json');
    expect(s.requests[0]?.headers['x-bulwark-signature']).toBe('forged');
    await sendWebhook(target(s.url, { secret: SECRET, headers: { 'x-bulwark-signature': 'forged' } }), sampleSummary());
    expect(s.requests[1]?.headers['x-bulwark-signature']).toMatch(/^sha256=[0-9a-f]{64}$/);
  });

  it('retries after a 503, with the same body and delivery id', async () => {
    const s = await receiver(answer(503, 200));
    const logs: string[] = [];
    const r = await sendWebhook(target(s.url, { secret: SECRET }), sampleSummary(), { log: (l) => logs.push(l) });
    expect(r).toMatchObject({ status: 'sent', attempts: 2 });
    expect(s.requests).toHaveLength(2);
    expect(s.requests[1]?.body.equals(s.requests[0]!.body)).toBe(true);
    expect(logs[0]).toMatch(/attempt 1 of 3 failed: .*HTTP 503.*retrying in 0\.0 s/);
  });

  it('gives up after the last attempt when the receiver keeps failing', async () => {
    const s = await receiver(answer(502));
    const r = await sendWebhook(target(s.url), sampleSummary());
    expect(failure(r).code).toBe('protocol');
    expect(r).toMatchObject({ attempts: 3 });
    expect(s.requests).toHaveLength(3);
  });

  it('does not retry a 400, and says what the receiver answered', async () => {
    const s = await receiver(answer(400));
    const logs: string[] = [];
    const r = await sendWebhook(target(s.url), sampleSummary(), { log: (l) => logs.push(l) });
    const e = failure(r);
    expect(r).toMatchObject({ attempts: 1 });
    expect(s.requests).toHaveLength(1);
    expect(e.message).toContain('HTTP 400 Bad Request: {"error":"status 400"}');
    expect(logs.join('\n')).toMatch(/not retried/);
  });

  it('does not follow a redirect', async () => {
    const s = await receiver((_q, _n, res) => res.writeHead(302, { Location: 'http://127.0.0.1:1/elsewhere' }).end());
    const e = failure(await sendWebhook(target(s.url), sampleSummary()));
    expect(e.hint).toMatch(/redirects are not followed/);
    expect(s.requests).toHaveLength(1);
  });

  it('times out against a receiver that never answers, per attempt', async () => {
    const hanging = await receiver(() => undefined);
    const started = Date.now();
    const r = await sendWebhook(target(hanging.url, { timeoutMs: 300, retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 10 } }), sampleSummary());
    const e = failure(r);
    expect(e.code).toBe('timeout');
    expect(e.message).toContain('no answer within 300 ms');
    expect(r).toMatchObject({ attempts: 2 });
    expect(hanging.requests).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('times out against a server that accepts the connection and never reads', async () => {
    const silent = await startSilent();
    try {
      const r = await sendWebhook(target(`http://127.0.0.1:${silent.port}/`, { timeoutMs: 200, retry: { attempts: 1 } }), sampleSummary());
      expect(failure(r).code).toBe('timeout');
    } finally {
      await silent.close();
    }
  });

  it('retries a refused connection, a bounded number of times', async () => {
    const port = await closedPort();
    const r = await sendWebhook(target(`http://127.0.0.1:${port}/hook`), sampleSummary());
    const e = failure(r);
    expect(r).toMatchObject({ attempts: 3 });
    expect(e.code).toBe('io');
    expect(e.message).toContain('ECONNREFUSED');
  });

  it('stops retrying when the signal aborts', async () => {
    // No Retry-After, so the 10 s backoff applies and the abort lands in it.
    const s = await receiver((_q, _n, res) => res.writeHead(503).end());
    const ac = new AbortController();
    const started = Date.now();
    const pending = sendWebhook(target(s.url, { retry: { attempts: 5, baseDelayMs: 10_000, maxDelayMs: 10_000 } }), sampleSummary(), { signal: ac.signal });
    setTimeout(() => ac.abort(), 200);
    const r = await pending;
    expect(failure(r).message).toMatch(/cancelled/);
    expect(r).toMatchObject({ attempts: 1 });
    expect(s.requests).toHaveLength(1);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('sends URL credentials as Basic authorization and keeps every secret out of results and logs', async () => {
    // An unfriendly receiver: it echoes what it got into its error answer.
    const s = await receiver((req, _n, res) => res.writeHead(401).end(`denied ${req.url} auth=${req.headers.authorization ?? ''} tok=${String(req.headers['x-token'])}`));
    const logs: string[] = [];
    const base = new URL(s.url);
    const url = `http://bulwark:${encodeURIComponent(URL_PASSWORD)}@${base.host}/services/${PATH_KEY}?token=q5ecret`;
    const r = await sendWebhook(target(url, { secret: SECRET, headers: { 'X-Token': TOKEN } }), sampleSummary(), { log: (l) => logs.push(l) });
    const e = failure(r);
    expect(s.requests[0]?.headers.authorization).toBe('Basic ' + Buffer.from(`bulwark:${URL_PASSWORD}`).toString('base64'));
    expect(e.message).toMatch(/ops-hook.*http:\/\/127\.0\.0\.1:\d+\).*HTTP 401/);
    expect(e.hint).toMatch(/credentials/);
    const all = everything(r, logs);
    for (const secret of [SECRET, TOKEN, 'tok-9a8b7c6d5e', URL_PASSWORD, encodeURIComponent(URL_PASSWORD), PATH_KEY, 'q5ecret', Buffer.from(`bulwark:${URL_PASSWORD}`).toString('base64')]) {
      expect(all).not.toContain(secret);
    }
  });

  it('keeps secrets out of connection errors too', async () => {
    const port = await closedPort();
    const logs: string[] = [];
    const r = await sendWebhook(target(`http://u:${encodeURIComponent(URL_PASSWORD)}@127.0.0.1:${port}/${PATH_KEY}`, { secret: SECRET, retry: { attempts: 2, baseDelayMs: 1 } }), sampleSummary(), { log: (l) => logs.push(l) });
    const all = everything(r, logs);
    for (const secret of [SECRET, URL_PASSWORD, encodeURIComponent(URL_PASSWORD), PATH_KEY]) expect(all).not.toContain(secret);
    const bad = await sendWebhook(target(`http://u:${URL_PASSWORD}@[bad`), sampleSummary(), { log: (l) => logs.push(l) });
    expect(failure(bad).code).toBe('usage');
    expect(everything(bad, logs)).not.toContain(URL_PASSWORD);
  });

  it('will not send URL credentials over plain HTTP to another machine', async () => {
    const r = await sendWebhook(target(`http://u:${URL_PASSWORD}@192.0.2.1/hook`), sampleSummary());
    expect(failure(r).code).toBe('usage');
    expect(r).toMatchObject({ attempts: 0 });
  });

  it('verifies HTTPS receivers against a CA file, and by default refuses one it cannot verify', async () => {
    const s = await receiver(answer(200), cert);
    expect(await sendWebhook(target(s.url, { tls: { caFile: cert.certFile } }), sampleSummary())).toMatchObject({ status: 'sent', attempts: 1 });
    const refused = await sendWebhook(target(s.url), sampleSummary());
    const e = failure(refused);
    expect(e.code).toBe('protocol');
    expect(e.hint).toMatch(/caFile/);
    expect(refused).toMatchObject({ attempts: 1 });
    expect(await sendWebhook(target(s.url, { tls: { rejectUnauthorized: false } }), sampleSummary())).toMatchObject({ status: 'sent' });
    expect(s.requests).toHaveLength(2);
  });
});
