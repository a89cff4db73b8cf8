// The restore-point drive (restore/drive.ts) over FTP, read-only (RFC 959 with passive mode, RFC
// 2428 EPSV, RFC 3659 SIZE/MDTM/REST/MLSD, RFC 4217 explicit TLS when a certificate is given): for
// the administrator whose tools speak FTP. One login; every write command is refused with 550.
import net, { type AddressInfo, type Socket } from 'node:net';
import tls from 'node:tls';
import { DriveNotFoundError, type DriveNode, type RestorePointDrive } from '../restore/drive.js';
import { sameSecret } from './credentials.js';

export interface FtpViewOptions {
  host: string;
  port: number;
  user: string;
  password: string;
  /** PEM certificate and key: explicit TLS (AUTH TLS) is offered, and required before the login. */
  tls?: { cert: Buffer; key: Buffer };
  log?: (line: string) => void;
}

export interface RunningFtpView {
  port: number;
  close(): Promise<void>;
}

const CHUNK = 1024 * 1024;
const WRITES = new Set(['STOR', 'STOU', 'APPE', 'DELE', 'MKD', 'XMKD', 'RMD', 'XRMD', 'RNFR', 'RNTO', 'SITE']);

/** '/a/b' joined with a client's path (absolute or relative), without ever leaving the root. */
function resolvePath(cwd: string, arg: string): string {
  const segs = arg.startsWith('/') ? [] : cwd.split('/').filter(Boolean);
  for (const s of arg.split('/')) {
    if (s === '' || s === '.') continue;
    if (s === '..') segs.pop();
    else segs.push(s);
  }
  return `/${segs.join('/')}`;
}

function mdtm(ms: number): string {
  return new Date(ms || 0).toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

function listLine(n: DriveNode): string {
  const d = new Date(n.mtimeMs || 0);
  const month = d.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' });
  const perms = n.kind === 'dir' ? 'dr-xr-xr-x' : n.kind === 'symlink' ? 'lrwxrwxrwx' : '-r--r--r--';
  return `${perms} 1 0 0 ${String(n.size).padStart(12)} ${month} ${String(d.getUTCDate()).padStart(2)} ${d.getUTCFullYear()} ${n.name}`;
}

function mlsdFacts(n: DriveNode): string {
  return `type=${n.kind === 'dir' ? 'dir' : 'file'};size=${n.size};modify=${mdtm(n.mtimeMs)}; ${n.name}`;
}

export async function startFtpView(drive: RestorePointDrive, opts: FtpViewOptions): Promise<RunningFtpView> {
  const sessions = new Set<Socket>();
  const secure = opts.tls ? tls.createSecureContext({ cert: opts.tls.cert, key: opts.tls.key }) : undefined;

  const session = (raw: Socket): void => {
    let control: Socket = raw;
    sessions.add(raw);
    raw.once('close', () => sessions.delete(raw));
    let user: string | undefined;
    let loggedIn = false;
    let protectData = false;
    let tlsOn = false;
    let cwd = '/';
    let restAt = 0;
    let passive: { server: net.Server; conn: Promise<Socket> } | undefined;
    const reply = (text: string): void => {
      if (!control.destroyed) control.write(`${text}\r\n`);
    };
    const node = (path: string): Promise<DriveNode> => drive.resolve(path);

    const openPassive = async (): Promise<number> => {
      passive?.server.close();
      const server = net.createServer();
      await new Promise<void>((resolve) => server.listen(0, opts.host, () => resolve()));
      const conn = new Promise<Socket>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no data connection within 30 s')), 30_000);
        server.once('connection', (s) => {
          clearTimeout(timer);
          server.close();
          if (!protectData || !secure) return resolve(s);
          const t = new tls.TLSSocket(s, { isServer: true, secureContext: secure });
          t.once('secure', () => resolve(t));
          t.once('error', reject);
        });
      });
      conn.catch(() => undefined);
      passive = { server, conn };
      return (server.address() as AddressInfo).port;
    };

    const withData = async (send: (data: Socket) => Promise<void>): Promise<void> => {
      if (!passive) return reply('425 use PASV or EPSV first');
      const p = passive;
      passive = undefined;
      reply('150 opening data connection');
      let data: Socket;
      try {
        data = await p.conn;
      } catch (err) {
        return reply(`425 ${(err as Error).message}`);
      }
      try {
        await send(data);
        await new Promise<void>((resolve) => data.end(() => resolve()));
        reply('226 transfer complete');
      } catch (err) {
        data.destroy();
        reply(`451 ${(err as Error).message.replace(/[\r\n]/g, ' ')}`);
      }
    };

    const write = (data: Socket, chunk: Buffer | string): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        if (data.destroyed) return reject(new Error('the client closed the data connection'));
        if (data.write(chunk)) resolve();
        else data.once('drain', () => resolve()).once('close', () => reject(new Error('the client closed the data connection')));
      });

    const command = async (line: string): Promise<void> => {
      const sp = line.indexOf(' ');
      const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
      const arg = sp < 0 ? '' : line.slice(sp + 1);
      if (verb === 'AUTH') {
        if (!secure || !/^(TLS|SSL|TLS-C)$/i.test(arg)) return reply('504 TLS is not offered');
        reply('234 proceed with TLS');
        const t = new tls.TLSSocket(control, { isServer: true, secureContext: secure });
        control.removeAllListeners('data');
        control = t;
        tlsOn = true;
        listen(t);
        return;
      }
      if (verb === 'QUIT') {
        reply('221 bye');
        control.end();
        return;
      }
      if (verb === 'USER') {
        if (secure && !tlsOn) return reply('530 use AUTH TLS first');
        user = arg;
        loggedIn = false;
        return reply('331 password please');
      }
      if (verb === 'PASS') {
        if (user === undefined) return reply('503 USER first');
        const ok = sameSecret(user, opts.user) && sameSecret(arg, opts.password);
        if (!ok) {
          await new Promise((r) => setTimeout(r, 500));
          return reply('530 login incorrect');
        }
        loggedIn = true;
        return reply('230 logged in, read-only');
      }
      if (verb === 'FEAT') return reply(['211-features', ' EPSV', ' MDTM', ' MLST type*;size*;modify*;', ' REST STREAM', ' SIZE', ' UTF8', ...(secure ? [' AUTH TLS', ' PBSZ', ' PROT'] : []), '211 end'].join('\r\n'));
      if (verb === 'PBSZ') return reply('200 PBSZ=0');
      if (verb === 'PROT') {
        if (arg.toUpperCase() === 'P' && secure) protectData = true;
        else if (arg.toUpperCase() === 'C') protectData = false;
        else return reply('536 not supported');
        return reply('200 ok');
      }
      if (verb === 'OPTS' || verb === 'NOOP' || verb === 'TYPE' || verb === 'MODE' || verb === 'STRU') return reply('200 ok');
      if (verb === 'SYST') return reply('215 UNIX Type: L8');
      if (!loggedIn) return reply('530 log in first');
      if (WRITES.has(verb)) return reply('550 read-only: restore points are never changed');
      switch (verb) {
        case 'PWD':
        case 'XPWD':
          return reply(`257 "${cwd.replace(/"/g, '""')}"`);
        case 'CWD':
        case 'CDUP': {
          const to = resolvePath(cwd, verb === 'CDUP' ? '..' : arg);
          const n = await node(to);
          if (n.kind !== 'dir') return reply('550 not a folder');
          cwd = to;
          return reply('250 ok');
        }
        case 'PASV': {
          const port = await openPassive();
          const ip = opts.host === '0.0.0.0' || opts.host.includes(':') ? '127.0.0.1' : opts.host;
          return reply(`227 Entering Passive Mode (${ip.replace(/\./g, ',')},${port >> 8},${port & 255})`);
        }
        case 'EPSV':
          return reply(`229 Entering Extended Passive Mode (|||${await openPassive()}|)`);
        case 'SIZE':
        case 'MDTM': {
          const n = await node(resolvePath(cwd, arg));
          if (n.kind !== 'file') return reply('550 not a file');
          return reply(verb === 'SIZE' ? `213 ${n.size}` : `213 ${mdtm(n.mtimeMs)}`);
        }
        case 'MLST': {
          const n = await node(resolvePath(cwd, arg || '.'));
          return reply(`250-facts\r\n ${mlsdFacts(n)}\r\n250 end`);
        }
        case 'REST':
          restAt = Number(arg);
          if (!Number.isSafeInteger(restAt) || restAt < 0) {
            restAt = 0;
            return reply('501 bad offset');
          }
          return reply(`350 restarting at ${restAt}`);
        case 'LIST':
        case 'NLST':
        case 'MLSD': {
          const path = resolvePath(cwd, arg.replace(/^-[a-zA-Z]+\s*/, '') || '.');
          const n = await node(path);
          const entries = n.kind === 'dir' ? ((await n.list?.()) ?? []) : [n];
          return withData(async (data) => {
            for (const e of entries) await write(data, `${verb === 'LIST' ? listLine(e) : verb === 'MLSD' ? mlsdFacts(e) : e.name}\r\n`);
          });
        }
        case 'RETR': {
          const n = await node(resolvePath(cwd, arg));
          const start = restAt;
          restAt = 0;
          if (n.kind !== 'file' || !n.read) return reply('550 not a file');
          return withData(async (data) => {
            for (let at = start; at < n.size; ) {
              const chunk = await n.read!(at, Math.min(CHUNK, n.size - at));
              if (chunk.length === 0) break;
              at += chunk.length;
              await write(data, chunk);
            }
          });
        }
        default:
          return reply('502 not implemented');
      }
    };

    const listen = (sock: Socket): void => {
      let buf = '';
      let busy = Promise.resolve();
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => {
        buf += d;
        if (buf.length > 8192) {
          reply('500 line too long');
          sock.destroy();
          return;
        }
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const line = buf.slice(0, nl).replace(/\r$/, '');
          buf = buf.slice(nl + 1);
          // One command at a time, in order, as the protocol expects.
          busy = busy.then(() =>
            command(line).catch((err: unknown) => {
              if (err instanceof DriveNotFoundError) return reply('550 no such file or folder');
              opts.log?.(`ftp: ${line.split(' ')[0]}: ${(err as Error).message}`);
              reply('451 local error');
            }),
          );
        }
      });
      sock.on('error', () => sock.destroy());
    };
    listen(raw);
    reply('220 Bulwark restore points (read-only)');
  };

  const server = net.createServer(session);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

