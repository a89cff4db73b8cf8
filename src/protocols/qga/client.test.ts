import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { makeDataDisk, readHookLog, startGuest, type RunningGuest } from '../../../test/guest/guest.js';
import { QmpClient } from '../qmp/client.js';
import { QgaClient, QgaError } from './client.js';

describe('QgaClient against qemu-ga in a real guest', () => {
  let dir: string;
  let guest: RunningGuest | undefined;
  let qga: QgaClient | undefined;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-qga-'));
    await makeDataDisk(path.join(dir, 'd0.qcow2'), { sizeMiB: 32, format: 'qcow2' });
    guest = await startGuest({ dir, name: 'qga-test', disks: [{ path: path.join(dir, 'd0.qcow2'), format: 'qcow2' }], writer: { kibPerSec: 16 } });
    qga = await QgaClient.connect(guest.qgaSocket);
  });

  afterAll(async () => {
    // Never leave the guest frozen, whatever failed above.
    await qga?.fsfreezeThaw({ timeoutMs: 5000 }).catch(() => undefined);
    await qga?.close();
    await guest?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('pings and reports the agent version and commands', async () => {
    await qga!.ping();
    const info = await qga!.info();
    expect(info.version).toMatch(/^\d+\.\d+/);
    const freeze = info.commands.find((c) => c.name === 'guest-fsfreeze-freeze');
    expect(freeze).toEqual({ name: 'guest-fsfreeze-freeze', enabled: true, successResponse: true });
  });

  it('lists the ext4 filesystem on /data and its disk', async () => {
    const fsinfo = await qga!.getFsinfo();
    const data = fsinfo.find((f) => f.mountpoint === '/data');
    expect(data).toMatchObject({ type: 'ext4', name: 'vda' });
    expect(data!.disks[0]).toMatchObject({ busType: 'virtio', dev: '/dev/vda' });
    expect(data!.totalBytes).toBeGreaterThan(16 * 1024 * 1024);
  });

  it('freezes and thaws, running the hooks in order', async () => {
    expect(await qga!.fsfreezeStatus()).toBe('thawed');
    const t0 = performance.now();
    expect(await qga!.fsfreezeFreeze({ timeoutMs: 30_000 })).toBe(1);
    let thawed = false;
    try {
      expect(await qga!.fsfreezeStatus()).toBe('frozen');
      // The agent disables everything but freeze-safe commands while frozen.
      const refused = await qga!.readFile('/data/hooks.log').catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(QgaError);
      expect((refused as QgaError).desc).toMatch(/frozen/);
      expect(await qga!.fsfreezeThaw({ timeoutMs: 30_000 })).toBe(1);
      thawed = true;
      console.log(`qga-test: freeze→thaw round trip ${Math.round(performance.now() - t0)} ms (${guest!.accel})`);
    } finally {
      if (!thawed) await qga!.fsfreezeThaw().catch(() => undefined);
    }
    expect(await qga!.fsfreezeStatus()).toBe('thawed');
    const hooks = readHookLog(await qga!.readFile('/data/hooks.log'));
    expect(hooks.malformed).toBe(0);
    expect(hooks.events.slice(-2).map((e) => e.action)).toEqual(['freeze', 'thaw']);
    const [f, t] = hooks.events.slice(-2);
    expect(t!.uptimeSeconds).toBeGreaterThanOrEqual(f!.uptimeSeconds);
  });

  it('times out against a paused guest, then resynchronises past the late reply', async () => {
    const qmp = await QmpClient.connect(guest!.qmpSocket);
    try {
      await qmp.execute('stop');
      try {
        const started = performance.now();
        const err = await qga!.ping({ timeoutMs: 1000 }).catch((e: unknown) => e);
        const took = performance.now() - started;
        expect(err).toMatchObject({ code: 'timeout' });
        expect((err as Error).message).toMatch(/guest-ping/);
        expect(took).toBeGreaterThanOrEqual(900);
        expect(took).toBeLessThan(3000);
      } finally {
        await qmp.execute('cont');
      }
    } finally {
      await qmp.close();
    }
    // The agent now answers the stale ping; without the resync, info() would take that `{}`.
    const info = await qga!.info({ timeoutMs: 30_000 });
    expect(info.version).toMatch(/^\d+\.\d+/);
    await qga!.ping();
  });

  it('starts a clean session after a client left half a command in the channel', async () => {
    await qga!.close();
    qga = undefined;
    const raw = net.createConnection(guest!.qgaSocket);
    await new Promise<void>((resolve, reject) => raw.once('connect', resolve).once('error', reject));
    await new Promise<void>((resolve) => raw.end('{"execute": "guest-pi', () => resolve()));
    await new Promise((resolve) => raw.once('close', resolve));
    qga = await QgaClient.connect(guest!.qgaSocket, { timeoutMs: 30_000 });
    await qga.ping();
    expect(await qga.fsfreezeStatus()).toBe('thawed');
  });
});

// The agent's sync reply framing and failures it will not show on demand, from a scripted peer.
describe('QgaClient protocol handling', () => {
  let dir: string;
  let server: net.Server;
  let onCommand: (msg: Record<string, unknown>, sock: net.Socket) => void;
  const sockets = new Set<net.Socket>();
  const sockPath = (): string => path.join(dir, 'fake-qga.sock');

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bulwark-qgafake-'));
    server = net.createServer((sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      let buf = Buffer.alloc(0);
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          // Like qemu-ga: 0xFF resets the parser; one JSON object per line here.
          const ff = buf.indexOf(0xff);
          if (ff >= 0) buf = buf.subarray(ff + 1);
          const nl = buf.indexOf(0x0a);
          if (nl < 0) return;
          const msg = JSON.parse(buf.subarray(0, nl).toString()) as Record<string, unknown>;
          buf = buf.subarray(nl + 1);
          onCommand(msg, sock);
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

  const syncId = (msg: Record<string, unknown>): number => (msg['arguments'] as { id: number }).id;

  it('skips stale bytes and delimited replies with another id', async () => {
    onCommand = (msg, sock) => {
      if (msg['execute'] === 'guest-sync-delimited') {
        sock.write('{"return": {}}\n{"error": {"class": "GenericError", "desc": "stale"}}\n');
        sock.write(Buffer.from([0xff]));
        sock.write(`{"return": ${syncId(msg) + 1}}\n`);
        // The right reply, split across writes.
        sock.write(Buffer.from([0xff]));
        sock.write(`{"return": `);
        setTimeout(() => sock.write(`${syncId(msg)}}\n`), 20);
      } else {
        sock.write('{"return": "thawed"}\n');
      }
    };
    const qga = await QgaClient.connect(sockPath(), { timeoutMs: 2000 });
    try {
      expect(await qga.fsfreezeStatus()).toBe('thawed');
    } finally {
      await qga.close();
    }
  });

  it('gives an agent error its class and command', async () => {
    onCommand = (msg, sock) => {
      if (msg['execute'] === 'guest-sync-delimited') sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(`{"return": ${syncId(msg)}}\n`)]));
      else sock.write('{"error": {"class": "CommandNotFound", "desc": "The command guest-nope has not been found"}}\n');
    };
    const qga = await QgaClient.connect(sockPath(), { timeoutMs: 2000 });
    try {
      const err = await qga.execute('guest-nope').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QgaError);
      expect(err).toMatchObject({ code: 'protocol', errorClass: 'CommandNotFound', command: 'guest-nope' });
    } finally {
      await qga.close();
    }
  });

  it('rejects a pending call when the connection drops', async () => {
    onCommand = (msg, sock) => {
      if (msg['execute'] === 'guest-sync-delimited') sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(`{"return": ${syncId(msg)}}\n`)]));
      else sock.destroy();
    };
    const qga = await QgaClient.connect(sockPath(), { timeoutMs: 2000 });
    await expect(qga.ping({ timeoutMs: 5000 })).rejects.toThrow(/gave no reply: .*closed/);
    await expect(qga.ping()).rejects.toThrow(/is closed/);
    await qga.close();
  });

  it('times out a sync the agent never answers', async () => {
    onCommand = () => undefined;
    const started = performance.now();
    await expect(QgaClient.connect(sockPath(), { timeoutMs: 300 })).rejects.toMatchObject({ code: 'timeout' });
    expect(performance.now() - started).toBeLessThan(2000);
  });
});
