// Real servers for the notifier tests, all on 127.0.0.1 with a free port: an SMTP server (smtp-server)
// that keeps what it receives, an HTTP(S) receiver with a scripted answer per request, a listener that
// never says a word, and a certificate for 127.0.0.1 to trust through a CA file.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import type { RunSummary } from '../types.js';

export interface TestCert {
  certFile: string;
  cert: string;
  key: string;
}

export interface ReceivedMail {
  from: string;
  to: string[];
  /** Header names lowercased, folded lines unfolded, encoded words left as they are. */
  headers: Map<string, string>;
  text: string;
  user: string | undefined;
}

export interface TestSmtp {
  port: number;
  mails: ReceivedMail[];
  /** Every AUTH seen, as user:password, to check what crossed the wire. */
  logins: string[];
  close(): Promise<void>;
}

export interface SmtpScript {
  /** Required user and password; without, AUTH is not offered. */
  auth?: { user: string; pass: string };
  /** TLS from the first byte with this certificate, or STARTTLS offered with it. */
  tls?: { cert: TestCert; implicit: boolean };
  /** Answers this many DATA commands with 451 before accepting. */
  busyFirst?: number;
}

export interface ReceivedRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface TestHttp {
  url: string;
  requests: ReceivedRequest[];
  close(): Promise<void>;
}

/** Answers request number n (from 0); return nothing to leave it hanging. */
export type Responder = (req: ReceivedRequest, n: number, res: ServerResponse) => void;

export async function makeCert(dir: string): Promise<TestCert> {
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  await promisify(execFile)('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=bulwark-test', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile]);
  return { certFile, cert: await readFile(certFile, 'utf8'), key: await readFile(keyFile, 'utf8') };
}

function parseMail(raw: string): { headers: Map<string, string>; text: string } {
  const split = raw.indexOf('\r\n\r\n');
  const head = raw.slice(0, split).replace(/\r\n[ \t]+/g, ' ');
  const headers = new Map<string, string>();
  for (const line of head.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
  }
  let body = raw.slice(split + 4);
  const cte = (headers.get('content-transfer-encoding') ?? '').toLowerCase();
  if (cte === 'quoted-printable') {
    const bytes = body.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/gi, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
    body = Buffer.from(bytes, 'latin1').toString('utf8');
  } else if (cte === 'base64') {
    body = Buffer.from(body, 'base64').toString('utf8');
  }
  return { headers, text: body.replace(/\r\n/g, '\n') };
}

export async function startSmtp(script: SmtpScript = {}): Promise<TestSmtp> {
  const mails: ReceivedMail[] = [];
  const logins: string[] = [];
  let dataCommands = 0;
  const options: SMTPServerOptions = {
    logger: false,
    secure: script.tls?.implicit ?? false,
    ...(script.tls ? { key: script.tls.cert.key, cert: script.tls.cert.cert } : { hideSTARTTLS: true, disabledCommands: ['STARTTLS'] }),
    ...(script.auth ? { authMethods: ['PLAIN', 'LOGIN'], allowInsecureAuth: !script.tls } : { authOptional: true, disabledCommands: script.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'] }),
    onAuth(auth, _session, cb) {
      logins.push(`${auth.username ?? ''}:${auth.password ?? ''}`);
      if (script.auth && auth.username === script.auth.user && auth.password === script.auth.pass) cb(null, { user: auth.username });
      else cb(Object.assign(new Error('Invalid username or password'), { responseCode: 535 }));
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        if (dataCommands++ < (script.busyFirst ?? 0)) {
          cb(Object.assign(new Error('Busy, try again later'), { responseCode: 451 }));
          return;
        }
        const { headers, text } = parseMail(Buffer.concat(chunks).toString('latin1'));
        const from = session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address;
        mails.push({ from, to: session.envelope.rcptTo.map((r) => r.address), headers, text, user: session.user as string | undefined });
        cb(null);
      });
    },
  };
  const server = new SMTPServer(options);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.server.address() as AddressInfo).port;
  return { port, mails, logins, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

export async function startHttp(respond: Responder, cert?: TestCert): Promise<TestHttp> {
  const requests: ReceivedRequest[] = [];
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
      requests.push(r);
      respond(r, requests.length - 1, res);
    });
  };
  const server = cert ? https.createServer({ key: cert.key, cert: cert.cert }, handler) : http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${cert ? 'https' : 'http'}://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Accepts connections and never answers: an SMTP server without a greeting, an HTTP server without a response. */
export async function startSilent(): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let count = 0;
  const server = net.createServer((s) => {
    count++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    connections: () => count,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A port nothing listens on: bound, then released. */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export function sampleSummary(status: RunSummary['status'] = 'failure'): RunSummary {
  const failed = status === 'failure';
  return {
    job: 'nightly-vms',
    runId: 'run-20261128-0100',
    status,
    host: 'host01',
    startedAt: new Date('2026-11-28T01:00:00Z'),
    endedAt: new Date('2026-11-28T01:42:13Z'),
    items: [
      failed
        ? { name: 'web01', status: 'failure', error: 'unable to freeze VM web01: guest agent did not answer', hint: 'install qemu-guest-agent in the guest, or pass --consistency crash', bytesRead: 0, bytesStored: 0, durationMs: 12_000 }
        : { name: 'web01', status: 'success', consistency: 'application', bytesRead: 5 * 2 ** 30, bytesStored: 2 ** 29, durationMs: 120_000 },
      failed
        ? { name: 'db01', status: 'failure', error: 'unable to read disk vda of VM db01: connection reset', hint: 'check the hypervisor host is reachable' }
        : { name: 'db01', status: 'success', consistency: 'application', bytesRead: 2 ** 30, bytesStored: 2 ** 20, durationMs: 30_000 },
      status === 'warning'
        ? { name: 'mail01', status: 'warning', consistency: 'crash', bytesRead: 3 * 2 ** 30, bytesStored: 2 ** 28, durationMs: 95_000, warnings: ['the guest agent did not answer: the disks are only crash-consistent'] }
        : { name: 'mail01', status: 'success', consistency: 'filesystem', bytesRead: 3 * 2 ** 30, bytesStored: 2 ** 28, durationMs: 95_000 },
    ],
    warnings: failed ? ['scratch space below 10 GiB'] : [],
  };
}
