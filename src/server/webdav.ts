// The restore-point drive (restore/drive.ts) over WebDAV, read-only (RFC 4918 class 1: OPTIONS,
// PROPFIND at depth 0 and 1, GET and HEAD with ranges): mappable as a network drive by Windows,
// macOS and Linux file managers, and readable by rclone, cadaver or curl. Every request needs the
// login given (HTTP Basic), so it is served over HTTPS when a certificate is given, and plain HTTP is
// meant for loopback only (the default).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { isIPv4, type AddressInfo } from 'node:net';
import { DriveNotFoundError, type DriveNode, type RestorePointDrive } from '../restore/drive.js';
import { MIN_TLS_VERSION, type TlsFiles } from './tls.js';
import { sameSecret } from './credentials.js';

export interface WebDavOptions {
  host: string;
  port: number;
  user: string;
  password: string;
  /** PEM certificate and key: HTTPS instead of plain HTTP. */
  tls?: TlsFiles;
  log?: (line: string) => void;
}

export interface RunningWebDav {
  url: string;
  /** Logins cross a network in the clear: plain HTTP on an address other than loopback. */
  cleartextOnNetwork: boolean;
  close(): Promise<void>;
}

/** Bytes read from the drive per chunk of a GET: large enough to be fast, small enough to stay bounded. */
const CHUNK = 1024 * 1024;

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function hrefOf(segments: string[], dir: boolean): string {
  return `/${segments.map((s) => encodeURIComponent(s)).join('/')}${dir && segments.length > 0 ? '/' : ''}`;
}

function propEntry(segments: string[], n: DriveNode): string {
  const dir = n.kind === 'dir';
  const modified = new Date(n.mtimeMs || 0).toUTCString();
  return [
    '<D:response>',
    `<D:href>${esc(hrefOf(segments, dir))}</D:href>`,
    '<D:propstat><D:prop>',
    `<D:displayname>${esc(n.name)}</D:displayname>`,
    dir ? '<D:resourcetype><D:collection/></D:resourcetype>' : '<D:resourcetype/>',
    dir ? '' : `<D:getcontentlength>${n.size}</D:getcontentlength><D:getcontenttype>application/octet-stream</D:getcontenttype>`,
    `<D:getlastmodified>${modified}</D:getlastmodified>`,
    `<D:getetag>"${n.size.toString(16)}-${Math.floor(n.mtimeMs).toString(16)}"</D:getetag>`,
    '</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>',
    '</D:response>',
  ].join('');
}

/** The request path as segments; undefined when it tries to leave the drive or is not decodable. */
function segmentsOf(url: string): string[] | undefined {
  const path = url.split('?')[0] ?? '/';
  const out: string[] = [];
  for (const raw of path.split('/')) {
    if (raw === '') continue;
    let seg: string;
    try {
      seg = decodeURIComponent(raw);
    } catch {
      return undefined;
    }
    if (seg === '.' ) continue;
    if (seg === '..' || seg.includes('/') || seg.includes('\0')) return undefined;
    out.push(seg);
  }
  return out;
}

function isLoopback(address: string): boolean {
  const v4 = address.replace(/^::ffff:/i, '');
  return isIPv4(v4) ? v4.startsWith('127.') : address === '::1';
}

export async function startWebDav(drive: RestorePointDrive, opts: WebDavOptions): Promise<RunningWebDav> {
  const authorised = (req: IncomingMessage): boolean => {
    const m = /^Basic ([A-Za-z0-9+/=]+)$/.exec(req.headers.authorization ?? '');
    if (!m) return false;
    const text = Buffer.from(m[1]!, 'base64').toString('utf8');
    const colon = text.indexOf(':');
    if (colon < 0) return false;
    const okUser = sameSecret(text.slice(0, colon), opts.user);
    const okPass = sameSecret(text.slice(colon + 1), opts.password);
    return okUser && okPass;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!authorised(req)) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="bulwark restore points", charset="UTF-8"', 'Content-Length': '0' });
      res.end();
      return;
    }
    const method = req.method ?? 'GET';
    if (method === 'OPTIONS') {
      res.writeHead(200, { DAV: '1', Allow: 'OPTIONS, GET, HEAD, PROPFIND', 'MS-Author-Via': 'DAV', 'Content-Length': '0' });
      res.end();
      return;
    }
    if (!['GET', 'HEAD', 'PROPFIND'].includes(method)) {
      // Read-only: every write method is refused the same way.
      res.writeHead(405, { Allow: 'OPTIONS, GET, HEAD, PROPFIND', 'Content-Length': '0' });
      res.end();
      return;
    }
    const segments = segmentsOf(req.url ?? '/');
    if (!segments) {
      res.writeHead(400, { 'Content-Length': '0' });
      res.end();
      return;
    }
    let node: DriveNode;
    try {
      node = await drive.resolve(`/${segments.join('/')}`);
    } catch (err) {
      if (!(err instanceof DriveNotFoundError)) throw err;
      res.writeHead(404, { 'Content-Length': '0' });
      res.end();
      return;
    }
    if (method === 'PROPFIND') {
      req.resume(); // the body (which properties) is not needed: all are sent
      const depth = req.headers.depth ?? 'infinity';
      const entries = [propEntry(segments, node)];
      if (node.kind === 'dir' && depth !== '0') for (const child of (await node.list?.()) ?? []) entries.push(propEntry([...segments, child.name], child));
      const body = Buffer.from(`<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">${entries.join('')}</D:multistatus>`);
      res.writeHead(207, { 'Content-Type': 'application/xml; charset=utf-8', 'Content-Length': String(body.length) });
      res.end(body);
      return;
    }
    if (node.kind === 'dir') {
      const items = ((await node.list?.()) ?? []).map((c) => `<li><a href="${esc(hrefOf([...segments, c.name], c.kind === 'dir'))}">${esc(c.name)}${c.kind === 'dir' ? '/' : ''}</a></li>`);
      const body = Buffer.from(`<!doctype html><meta charset="utf-8"><title>${esc(node.name || 'restore points')}</title><ul>${items.join('')}</ul>`);
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': String(body.length) });
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }
    if (node.kind === 'symlink' || !node.read) {
      res.writeHead(404, { 'Content-Length': '0' });
      res.end();
      return;
    }
    let start = 0;
    let end = node.size - 1;
    let status = 200;
    const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
    if (range && (range[1] !== '' || range[2] !== '')) {
      if (range[1] === '') start = Math.max(0, node.size - Number(range[2]));
      else {
        start = Number(range[1]);
        if (range[2] !== '') end = Math.min(end, Number(range[2]));
      }
      if (start > end || start >= node.size) {
        res.writeHead(416, { 'Content-Range': `bytes */${node.size}`, 'Content-Length': '0' });
        res.end();
        return;
      }
      status = 206;
    }
    const length = node.size === 0 ? 0 : end - start + 1;
    res.writeHead(status, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': String(length),
      'Accept-Ranges': 'bytes',
      'Last-Modified': new Date(node.mtimeMs || 0).toUTCString(),
      ...(status === 206 ? { 'Content-Range': `bytes ${start}-${end}/${node.size}` } : {}),
    });
    if (method === 'HEAD' || length === 0) {
      res.end();
      return;
    }
    for (let at = start; at <= end && !res.destroyed; ) {
      const chunk = await node.read(at, Math.min(CHUNK, end - at + 1));
      if (chunk.length === 0) break;
      at += chunk.length;
      // Backpressure: the next chunk is read only once the client has taken this one.
      if (!res.write(chunk)) await new Promise<void>((r) => res.once('drain', () => r()).once('close', () => r()));
    }
    res.end();
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const t0 = Date.now();
    handle(req, res)
      .catch((err: unknown) => {
        opts.log?.(`webdav: ${req.method} ${req.url}: ${(err as Error).message}`);
        if (!res.headersSent) res.writeHead(500, { 'Content-Length': '0' });
        res.destroy();
      })
      .finally(() => opts.log?.(`webdav: ${req.method} ${req.url} ${res.statusCode} ${Date.now() - t0} ms`));
  };
  const server: Server = opts.tls ? createHttpsServer({ ...opts.tls, minVersion: MIN_TLS_VERSION }, onRequest) : createServer(onRequest);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `${opts.tls ? 'https' : 'http'}://${host}:${addr.port}/`,
    cleartextOnNetwork: !opts.tls && !isLoopback(addr.address),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
