import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulwarkError } from '../../util/errors.js';
import { emailBody, emailSubject, sendEmail } from './email.js';
import { closedPort, makeCert, sampleSummary, startSilent, startSmtp, type TestCert, type TestSmtp } from './testing/servers.js';
import type { EmailTarget, NotifyResult } from './types.js';

const PASSWORD = 'Sm7p-p@ss:wörd';
const FAST = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };

let dir: string;
let cert: TestCert;
const servers: TestSmtp[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulwark-notify-email-'));
  cert = await makeCert(dir);
});

afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  await rm(dir, { recursive: true, force: true });
});

async function smtp(script: Parameters<typeof startSmtp>[0] = {}): Promise<TestSmtp> {
  const s = await startSmtp(script);
  servers.push(s);
  return s;
}

function target(port: number, extra: Partial<EmailTarget> = {}): EmailTarget {
  return { kind: 'email', name: 'ops-mail', on: ['failure', 'warning'], host: '127.0.0.1', port, security: 'none', from: 'bulwark@host01.example', to: ['ops@example.com', 'oncall@example.com'], retry: FAST, timeoutMs: 5_000, ...extra };
}

function failure(r: NotifyResult): BulwarkError {
  if (r.status !== 'failed') throw new Error(`expected a failure, got ${JSON.stringify(r)}`);
  expect(r.error).toBeInstanceOf(BulwarkError);
  return r.error;
}

/** Every form in which a result or log could reach a person or a file. */
function everything(r: NotifyResult, logs: string[]): string {
  return [JSON.stringify(r), inspect(r, { depth: 10 }), r.status === 'failed' ? `${r.error.stack ?? ''} ${r.error.hint ?? ''}` : '', ...logs].join('\n');
}

describe('email rendering', () => {
  it('names the status, job, host and how many items in the subject', () => {
    expect(emailSubject(sampleSummary('failure'))).toBe('[Bulwark] FAILED nightly-vms on host01 (2 of 3 VMs)');
    expect(emailSubject(sampleSummary('warning'))).toBe('[Bulwark] WARNING nightly-vms on host01 (1 of 3 VMs)');
    expect(emailSubject(sampleSummary('success'))).toBe('[Bulwark] OK nightly-vms on host01 (3 VMs)');
    expect(emailSubject({ ...sampleSummary('success'), job: 'a\r\nBcc: x@evil', itemNoun: { one: 'folder', many: 'folders' } })).toBe('[Bulwark] OK a Bcc: x@evil on host01 (3 folders)');
  });

  it('puts what failed first, with its hint, then warnings, then what succeeded', () => {
    const text = emailBody(sampleSummary('failure'));
    const at = (s: string): number => {
      const i = text.indexOf(s);
      expect(i, s).toBeGreaterThanOrEqual(0);
      return i;
    };
    expect(at('FAILED (2)')).toBeLessThan(at('WARNINGS (1)'));
    expect(at('WARNINGS (1)')).toBeLessThan(at('SUCCEEDED (1)'));
    expect(at('web01')).toBeLessThan(at('mail01'));
    at('Hint:  install qemu-guest-agent in the guest, or pass --consistency crash');
    at('Error: unable to read disk vda of VM db01: connection reset');
    at('scratch space below 10 GiB');
    at('mail01  filesystem-consistent, read 3.00 GiB, stored 256 MiB in 1m35s');
    at('Started:  2026-11-28 01:00:00 UTC');
    at('(42m13s)');
    expect(text.split('\n').every((l) => l.length <= 120)).toBe(true);
  });

  it('reports a failure of the run itself, before any item', () => {
    const summary = { ...sampleSummary('failure'), items: [], warnings: [], error: "unable to open repository 'sftp://backup@nas/vms': connection refused", hint: 'check the NAS is up' };
    expect(emailSubject(summary)).toBe('[Bulwark] FAILED nightly-vms on host01 (the run failed)');
    const text = emailBody(summary);
    expect(text).toContain('Backup job nightly-vms on host01 FAILED.\n');
    expect(text).toContain("RUN FAILED\n\n  Error: unable to open repository 'sftp://backup@nas/vms': connection refused\n  Hint:  check the NAS is up");
    expect(text).not.toContain('SUCCEEDED');
  });
});

describe('sendEmail', () => {
  it('delivers over plain SMTP without AUTH: subject, recipients and body arrive', async () => {
    const s = await smtp();
    const r = await sendEmail(target(s.port), sampleSummary('failure'));
    expect(r).toMatchObject({ status: 'sent', attempts: 1 });
    expect(s.mails).toHaveLength(1);
    const m = s.mails[0]!;
    expect(m.from).toBe('bulwark@host01.example');
    expect(m.to).toEqual(['ops@example.com', 'oncall@example.com']);
    expect(m.headers.get('subject')).toBe('[Bulwark] FAILED nightly-vms on host01 (2 of 3 VMs)');
    expect(m.headers.get('to')).toBe('ops@example.com, oncall@example.com');
    expect(m.headers.get('auto-submitted')).toBe('auto-generated');
    expect(m.headers.get('x-bulwark-run')).toBe('run-20261128-0100');
    expect(m.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(m.text).toContain('Hint:  install qemu-guest-agent in the guest');
    expect(m.text).toContain('FAILED (2)');
    expect(m.user).toBeUndefined();
  });

  it('logs in over STARTTLS, trusting the server through a CA file', async () => {
    const s = await smtp({ auth: { user: 'bulwark', pass: PASSWORD }, tls: { cert, implicit: false } });
    const logs: string[] = [];
    const r = await sendEmail(target(s.port, { security: 'starttls', user: 'bulwark', password: PASSWORD, tls: { caFile: cert.certFile } }), sampleSummary('warning'), { log: (l) => logs.push(l) });
    expect(r).toMatchObject({ status: 'sent', attempts: 1 });
    expect(s.logins).toEqual([`bulwark:${PASSWORD}`]);
    expect(s.mails[0]?.user).toBe('bulwark');
    expect(s.mails[0]?.headers.get('subject')).toBe('[Bulwark] WARNING nightly-vms on host01 (1 of 3 VMs)');
    expect(everything(r, logs)).not.toContain(PASSWORD);
  });

  it('speaks TLS from the first byte in secure mode', async () => {
    const s = await smtp({ auth: { user: 'bulwark', pass: PASSWORD }, tls: { cert, implicit: true } });
    const r = await sendEmail(target(s.port, { security: 'secure', user: 'bulwark', password: PASSWORD, tls: { caFile: cert.certFile } }), sampleSummary());
    expect(r).toMatchObject({ status: 'sent', attempts: 1 });
    expect(s.mails).toHaveLength(1);
  });

  it('refuses a certificate it cannot verify, once, with a hint; accepts it when told not to verify', async () => {
    const s = await smtp({ tls: { cert, implicit: false } });
    const r = await sendEmail(target(s.port, { security: 'starttls' }), sampleSummary());
    const e = failure(r);
    expect(r).toMatchObject({ attempts: 1 });
    expect(e.code).toBe('protocol');
    expect(e.hint).toMatch(/caFile/);
    expect(s.mails).toHaveLength(0);
    const r2 = await sendEmail(target(s.port, { security: 'starttls', tls: { rejectUnauthorized: false } }), sampleSummary());
    expect(r2).toMatchObject({ status: 'sent' });
  });

  it('reports a wrong password without retrying and without the password', async () => {
    const s = await smtp({ auth: { user: 'bulwark', pass: 'the-right-one' }, tls: { cert, implicit: false } });
    const logs: string[] = [];
    const r = await sendEmail(target(s.port, { security: 'starttls', user: 'bulwark', password: PASSWORD, tls: { caFile: cert.certFile } }), sampleSummary(), { log: (l) => logs.push(l) });
    const e = failure(r);
    expect(r).toMatchObject({ attempts: 1 });
    expect(e.message).toMatch(/ops-mail.*127\.0\.0\.1.*535/);
    expect(e.hint).toMatch(/user and password/);
    expect(s.logins).toHaveLength(1);
    const all = everything(r, logs);
    for (const form of [PASSWORD, encodeURIComponent(PASSWORD), Buffer.from(PASSWORD).toString('base64'), Buffer.from(`\0bulwark\0${PASSWORD}`).toString('base64')]) expect(all).not.toContain(form);
    expect(logs.join('\n')).toMatch(/not retried/);
  });

  it('retries a 451 "try again later" and then delivers', async () => {
    const s = await smtp({ busyFirst: 1 });
    const logs: string[] = [];
    const r = await sendEmail(target(s.port), sampleSummary(), { log: (l) => logs.push(l) });
    expect(r).toMatchObject({ status: 'sent', attempts: 2 });
    expect(s.mails).toHaveLength(1);
    expect(logs[0]).toMatch(/attempt 1 of 3 failed: .*451.*retrying/);
  });

  it('retries a refused connection a bounded number of times, then reports it', async () => {
    const port = await closedPort();
    const logs: string[] = [];
    const r = await sendEmail(target(port), sampleSummary(), { log: (l) => logs.push(l) });
    const e = failure(r);
    expect(r).toMatchObject({ attempts: 3 });
    expect(e.code).toBe('io');
    expect(e.message).toContain('ECONNREFUSED');
    expect(e.hint).toMatch(/host and port/);
    expect(logs.filter((l) => /retrying/.test(l))).toHaveLength(2);
  });

  it('gives up on a server that never greets after the timeout, per attempt', async () => {
    const silent = await startSilent();
    try {
      const started = Date.now();
      const r = await sendEmail(target(silent.port, { timeoutMs: 300, retry: { attempts: 2, baseDelayMs: 10, maxDelayMs: 10 } }), sampleSummary());
      const e = failure(r);
      expect(e.code).toBe('timeout');
      expect(r).toMatchObject({ attempts: 2 });
      expect(silent.connections()).toBe(2);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await silent.close();
    }
  });

  it('will not send a password in plain text to another machine, and fails without connecting', async () => {
    const r = await sendEmail({ ...target(25), host: '192.0.2.1', user: 'bulwark', password: PASSWORD }, sampleSummary());
    const e = failure(r);
    expect(e.code).toBe('usage');
    expect(r).toMatchObject({ attempts: 0 });
    expect(e.hint).toMatch(/starttls/);
  });

  it('reports a missing or unreadable CA file as a configuration error, before connecting', async () => {
    const r = await sendEmail(target(25, { security: 'starttls', tls: { caFile: join(dir, 'nope.pem') } }), sampleSummary());
    expect(failure(r).code).toBe('usage');
    expect(failure(r).message).toContain('ENOENT');
    await writeFile(join(dir, 'junk.pem'), 'not a certificate\n');
    const r2 = await sendEmail(target(25, { security: 'starttls', tls: { caFile: join(dir, 'junk.pem') } }), sampleSummary());
    expect(failure(r2).code).toBe('usage');
    expect(failure(r2).message).toMatch(/not PEM certificates/);
    expect(r2).toMatchObject({ attempts: 0 });
  });
});
