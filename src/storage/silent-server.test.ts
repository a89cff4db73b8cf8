// Every remote backend against a server that accepts the TCP connection and then says nothing, as a
// frozen or hung server does: the request must fail within about its timeout, as a transient error
// (for the retry policy), and name the server. The real servers frozen mid-backup are in
// test/e2e/offsite-faults.test.ts.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from './backend.js';
import { FtpBackend } from './ftp.js';
import { RestBackend } from './rest.js';
import { S3Backend } from './s3.js';
import { SftpBackend } from './sftp.js';

const TIMEOUT_MS = 700;
let server: net.Server;
let port = 0;
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  server = net.createServer((s) => {
    // Reads what comes and never answers.
    sockets.add(s);
    s.on('data', () => undefined);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((resolve) => server.close(resolve));
});

const NAME = 'a'.repeat(64);

async function silentFailure(b: Backend): Promise<{ err: unknown; ms: number }> {
  const t0 = performance.now();
  try {
    await b.stat({ type: 'index', name: NAME });
  } catch (err) {
    return { err, ms: performance.now() - t0 };
  } finally {
    await b.close();
  }
  throw new Error('a silent server answered');
}

describe('a server that accepts and never answers', () => {
  const cases: [string, () => Backend][] = [
    ['sftp', () => new SftpBackend(`sftp://u@127.0.0.1:${port}//repo`, { password: 'x', knownHostsFile: '/dev/null', readyTimeoutMs: TIMEOUT_MS })],
    ['ftp', () => new FtpBackend(`ftp://u@127.0.0.1:${port}/repo`, { password: 'x', timeoutMs: TIMEOUT_MS })],
    ['s3', () => new S3Backend(`s3:http://127.0.0.1:${port}/bucket`, { accessKeyId: 'k', secretAccessKey: 's', maxAttempts: 1, timeoutMs: TIMEOUT_MS })],
    ['rest', () => new RestBackend(`rest:http://u@127.0.0.1:${port}/repo`, { password: 'x', timeoutMs: TIMEOUT_MS })],
  ];
  for (const [label, make] of cases) {
    it(`${label}: fails after about its timeout, transiently, naming the server`, async () => {
      const b = make();
      const { err, ms } = await silentFailure(b);
      expect(ms).toBeGreaterThanOrEqual(TIMEOUT_MS * 0.9);
      // Generous for a loaded machine; without a timeout it would never end.
      expect(ms).toBeLessThan(TIMEOUT_MS + 10_000);
      expect(b.isPermanent(err), String(err)).toBe(false);
      expect(b.isNotFound(err)).toBe(false);
      expect(String(err)).toContain(`127.0.0.1:${port}`);
    });
  }
});
