import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firesOn, notify, type EmailTarget, type NotifyTarget, type RunStatus, type WebhookTarget } from './notify.js';
import { closedPort, sampleSummary, startHttp, startSmtp, type TestHttp, type TestSmtp } from './testing/servers.js';

const PASSWORD = 'smtp-pw-4d3c2b1a';
const SECRET = 'hook-secret-0f1e2d';
const FAST = { attempts: 2, baseDelayMs: 10, maxDelayMs: 20 };

let smtp: TestSmtp;
let hook: TestHttp;

beforeAll(async () => {
  smtp = await startSmtp({ auth: { user: 'bulwark', pass: PASSWORD } });
  hook = await startHttp((_req, _n, res) => res.writeHead(200).end());
});

afterAll(async () => {
  await smtp.close();
  await hook.close();
});

function email(name: string, on: RunStatus[]): EmailTarget {
  return { kind: 'email', name, on, host: '127.0.0.1', port: smtp.port, security: 'none', user: 'bulwark', password: PASSWORD, from: 'bulwark@host01', to: [`${name}@example.com`], retry: FAST };
}

function webhook(name: string, on: RunStatus[], url = `${hook.url}/${name}`): WebhookTarget {
  return { kind: 'webhook', name, on, url, secret: SECRET, retry: FAST };
}

describe('notify', () => {
  it('fires each target only on the statuses it lists', async () => {
    const targets: NotifyTarget[] = [email('failures', ['failure']), email('everything', ['failure', 'warning', 'success']), webhook('problems', ['failure', 'warning']), webhook('successes', ['success'])];
    const sent = (statuses: (string | undefined)[]): string[] => statuses.filter((s): s is string => s !== undefined);

    const plan: [RunStatus, string[]][] = [
      ['failure', ['failures', 'everything', 'problems']],
      ['warning', ['everything', 'problems']],
      ['success', ['everything', 'successes']],
    ];
    for (const [status, expected] of plan) {
      smtp.mails.length = 0;
      hook.requests.length = 0;
      const results = await notify(sampleSummary(status), targets);
      expect(results.map((r) => r.target)).toEqual(targets.map((t) => t.name));
      expect(results.filter((r) => r.status === 'sent').map((r) => r.target)).toEqual(expected);
      expect(results.filter((r) => r.status === 'skipped').map((r) => r.target)).toEqual(targets.map((t) => t.name).filter((n) => !expected.includes(n)));
      const delivered = [...sent(smtp.mails.map((m) => m.to[0]?.split('@')[0])), ...hook.requests.map((r) => r.url.slice(1))].sort();
      expect(delivered).toEqual([...expected].sort());
    }
    expect(firesOn(email('x', []), 'failure')).toBe(false);
  });

  it('reports a failing target next to the others, and never rejects', async () => {
    const port = await closedPort();
    const logs: string[] = [];
    smtp.mails.length = 0;
    const targets: NotifyTarget[] = [
      webhook('down', ['failure'], `http://127.0.0.1:${port}/`),
      email('mail', ['failure']),
      // Node refuses to send a header with a line break: the sender's own error must become a result too.
      { ...webhook('broken', ['failure']), headers: { 'X-Bad': `a\r\nInjected: ${SECRET}` } },
      { ...email('nobody', ['failure']), to: [] },
    ];
    const results = await notify(sampleSummary('failure'), targets, { log: (l) => logs.push(l) });
    expect(results.map((r) => [r.target, r.status])).toEqual([
      ['down', 'failed'],
      ['mail', 'sent'],
      ['broken', 'failed'],
      ['nobody', 'failed'],
    ]);
    expect(smtp.mails).toHaveLength(1);
    const all = [JSON.stringify(results), inspect(results, { depth: 10 }), ...results.map((r) => (r.status === 'failed' ? (r.error.stack ?? '') : '')), ...logs].join('\n');
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain(SECRET);
  });

  it('cancels a request under way when the signal aborts', async () => {
    const hanging = await startHttp(() => undefined);
    try {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      const started = Date.now();
      const [r] = await notify(sampleSummary('failure'), [webhook('slow', ['failure'], hanging.url)], { signal: ac.signal });
      expect(r).toMatchObject({ status: 'failed', attempts: 1 });
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await hanging.close();
    }
  });
});
