import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { makeDataDisk, startGuest, type RunningGuest } from '../../../test/guest/guest.js';
import { BulwarkError } from '../../util/errors.js';
import { QmpClient, QmpError, type QmpEvent } from './client.js';

describe('QmpClient against QEMU', () => {
  let dir: string;
  let guest: RunningGuest | undefined;
  let qmp: QmpClient;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-qmp-'));
    await makeDataDisk(path.join(dir, 'd0.qcow2'), { sizeMiB: 16, format: 'qcow2' });
    guest = await startGuest({ dir, name: 'qmp-test', disks: [{ path: path.join(dir, 'd0.qcow2'), format: 'qcow2' }], writer: false });
    qmp = await QmpClient.connect(guest.qmpSocket);
  });

  afterAll(async () => {
    await qmp?.close();
    await guest?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('reads the greeting and negotiates capabilities', async () => {
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(await qmp.execute('query-status')).toMatchObject({ running: true, status: 'running' });
  });

  it('lists the guest disk by node name', async () => {
    const blocks = await qmp.execute('query-block');
    const disk0 = blocks.find((b) => b.inserted?.['node-name'] === 'disk0');
    expect(disk0?.inserted?.image.format).toBe('qcow2');
    expect(disk0?.inserted?.image['virtual-size']).toBe(16 * 1024 * 1024);
  });

  it('turns an error reply into a QmpError with its class and command', async () => {
    const err = await qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect(err).toMatchObject({ code: 'protocol', errorClass: 'CommandNotFound', command: 'no-such-command' });
    const bad = await qmp.execute('block-dirty-bitmap-add', { node: 'no-such-node', name: 'b' }).catch((e: unknown) => e);
    expect(bad).toMatchObject({ errorClass: 'GenericError', command: 'block-dirty-bitmap-add' });
    expect((bad as QmpError).desc).toMatch(/no-such-node/);
    // The connection is still usable after errors.
    expect((await qmp.execute('query-status')).running).toBe(true);
  });

  it('delivers events: stop and cont produce STOP and RESUME', async () => {
    const seen: string[] = [];
    const listener = (e: QmpEvent): void => void seen.push(e.event);
    qmp.on('event', listener);
    try {
      // Events can precede the command's reply: wait first, then execute.
      const stopped = qmp.waitForEvent('STOP', undefined, 10_000);
      await qmp.execute('stop');
      const ev = await stopped;
      expect(ev.timestamp.seconds).toBeGreaterThan(0);
      expect((await qmp.execute('query-status')).status).toBe('paused');
      const resumed = qmp.waitForEvent('RESUME', undefined, 10_000);
      await qmp.execute('cont');
      await resumed;
      expect(seen).toEqual(expect.arrayContaining(['STOP', 'RESUME']));
      expect((await qmp.execute('query-status')).status).toBe('running');
    } finally {
      qmp.off('event', listener);
      await qmp.execute('cont').catch(() => undefined);
    }
  });

  it('matches concurrent commands to their replies', async () => {
    const [status, version, name, blocks, err] = await Promise.all([
      qmp.execute('query-status'),
      qmp.execute('query-version'),
      qmp.execute('query-name'),
      qmp.execute('query-block'),
      qmp.execute('no-such-command').catch((e: unknown) => e),
    ]);
    expect(status.status).toBe('running');
    expect(version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(name.name).toBe('qmp-test');
    expect(Array.isArray(blocks)).toBe(true);
    expect(err).toBeInstanceOf(QmpError);
  });

  it('times out on a monitor another client holds (QEMU serves one at a time)', async () => {
    const started = Date.now();
    const err = await QmpClient.connect(guest!.qmpSocket, { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BulwarkError);
    expect(err).toMatchObject({ code: 'timeout' });
    expect((err as BulwarkError).hint).toMatch(/one client/);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('with retryForMs, connects once the client holding the monitor leaves', async () => {
    const holder = qmp;
    setTimeout(() => void holder.close(), 1500);
    const second = await QmpClient.connect(guest!.qmpSocket, { timeoutMs: 500, retryForMs: 10_000 });
    try {
      expect((await second.execute('query-status')).status).toBe('running');
    } finally {
      await second.close();
    }
  });
});

// Behaviour QEMU will not show on demand (no reply, out-of-order replies, a dropped connection),
// driven by a scripted server speaking QMP's framing.
describe('QmpClient protocol handling', () => {
  let dir: string;
  let server: net.Server;
  let script: (msg: { execute: string; id: unknown }, sock: net.Socket) => void;
  const sockets = new Set<net.Socket>();
  const sockPath = (): string => path.join(dir, 'fake.sock');

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-qmpfake-'));
    server = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: [] } }) + '\r\n');
      let buf = '';
      sock.on('data', (d) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id: unknown };
          buf = buf.slice(nl + 1);
          if (msg.execute === 'qmp_capabilities') sock.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
          else script(msg, sock);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(sockPath(), resolve));
  });

  afterEach(() => {
    for (const s of sockets) s.destroy();
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('matches replies that arrive in reverse order', async () => {
    const held: { execute: string; id: unknown }[] = [];
    script = (msg, sock) => {
      held.push(msg);
      if (held.length === 3) for (const m of held.reverse()) sock.write(JSON.stringify({ return: { echo: m.execute }, id: m.id }) + '\r\n');
    };
    const qmp = await QmpClient.connect(sockPath());
    try {
      const replies = await Promise.all(['a', 'b', 'c'].map((c) => qmp.execute<{ echo: string }>(c)));
      expect(replies.map((r) => r.echo)).toEqual(['a', 'b', 'c']);
    } finally {
      await qmp.close();
    }
  });

  it('times out a command without a reply and drops the late reply', async () => {
    let late: (() => void) | undefined;
    script = (msg, sock) => {
      const reply = (): boolean => sock.write(JSON.stringify({ return: { echo: msg.execute }, id: msg.id }) + '\r\n');
      if (msg.execute === 'slow') late = reply;
      else reply();
    };
    const qmp = await QmpClient.connect(sockPath());
    try {
      const started = Date.now();
      const err = await qmp.execute('slow', undefined, { timeoutMs: 200 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'timeout' });
      expect((err as Error).message).toMatch(/'slow'/);
      expect(Date.now() - started).toBeLessThan(2000);
      late?.();
      expect(await qmp.execute<{ echo: string }>('fast')).toEqual({ echo: 'fast' });
    } finally {
      await qmp.close();
    }
  });

  it('rejects pending commands when the peer closes the connection', async () => {
    script = (_msg, sock) => sock.destroy();
    const qmp = await QmpClient.connect(sockPath());
    const closed = new Promise((resolve) => qmp.once('close', resolve));
    const waiting = qmp.waitForEvent('SHUTDOWN', undefined, 10_000);
    const err = await qmp.execute('anything').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'protocol' });
    expect((err as Error).message).toMatch(/'anything' got no reply: .*closed/);
    await expect(waiting).rejects.toThrow(/closed while waiting for event SHUTDOWN/);
    expect(await closed).toBeInstanceOf(BulwarkError);
    await expect(qmp.execute('after')).rejects.toThrow(/is closed/);
    await qmp.close();
  });

  it('says so when the socket is missing', async () => {
    await expect(QmpClient.connect(path.join(dir, 'nothing.sock'), { timeoutMs: 1000 })).rejects.toMatchObject({ code: 'not-found' });
  });
});
