// The guardian process against scripted QMP and guest agent servers: what it does when Bulwark is
// killed at a known moment, when a freeze outlives its deadline, and that a clean release leaves the
// VM alone. The servers' own logs of the commands they received are the witnesses. Real guests go
// through the same guardian in test/e2e/vm-backup.test.ts (a killed backup, --mode stop killed).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { guardianLogsLeft } from './guardian.js';

const PARENT = fileURLToPath(new URL('../../test/helpers/guardian-parent.ts', import.meta.url));

let dir: string;
let qmpServer: net.Server;
let qgaServer: net.Server;
/** Commands each server received, in order. */
let qmpLog: string[];
let agentLog: string[];
let vmStatus: string;
let frozen: boolean;

function lines(sock: net.Socket, onLine: (text: string) => void): void {
  let buf = '';
  sock.on('data', (d) => {
    // 0xFF resets the agent's parser (guest-sync-delimited); it is not part of a line.
    buf += d.toString('latin1').replace(/\xff/g, '');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (text) onLine(text);
    }
  });
  sock.on('error', () => undefined);
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulwark-guardian-'));
  qmpServer = net.createServer((sock) => {
    sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: [] } }) + '\r\n');
    lines(sock, (text) => {
      let msg: { execute: string; id?: unknown };
      try {
        msg = JSON.parse(text) as { execute: string; id?: unknown };
      } catch {
        return;
      }
      qmpLog.push(msg.execute);
      const reply = (r: unknown): void => void sock.write(JSON.stringify({ return: r, id: msg.id }) + '\r\n');
      if (msg.execute === 'query-status') reply({ status: vmStatus, running: vmStatus === 'running' });
      else if (msg.execute === 'cont') {
        vmStatus = 'running';
        reply({});
      } else reply({});
    });
  });
  qgaServer = net.createServer((sock) => {
    lines(sock, (text) => {
      const msg = JSON.parse(text) as { execute: string; arguments?: { id?: number } };
      agentLog.push(msg.execute);
      const reply = (r: unknown): void => void sock.write(JSON.stringify({ return: r }) + '\n');
      if (msg.execute === 'guest-sync-delimited') sock.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: msg.arguments!.id }) + '\n')]));
      else if (msg.execute === 'guest-fsfreeze-freeze') {
        frozen = true;
        reply(1);
      } else if (msg.execute === 'guest-fsfreeze-thaw') {
        frozen = false;
        reply(1);
      } else if (msg.execute === 'guest-fsfreeze-status') reply(frozen ? 'frozen' : 'thawed');
      else reply({});
    });
  });
  await new Promise<void>((r) => qmpServer.listen(join(dir, 'qmp.sock'), r));
  await new Promise<void>((r) => qgaServer.listen(join(dir, 'qga.sock'), r));
});

afterAll(async () => {
  qmpServer.close();
  qgaServer.close();
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  qmpLog = [];
  agentLog = [];
  vmStatus = 'running';
  frozen = false;
});

/** A stand-in for Bulwark with a guardian; `ask` sends it a command and resolves with its answer. */
function parent(deadlineMs: number): { child: ChildProcess; ask(cmd: string): Promise<{ result?: unknown; error?: string }>; end(): Promise<void>; logs: string[]; ready: Promise<void> } {
  const child = spawn(process.execPath, ['--import', 'tsx', PARENT, join(dir, 'qmp.sock'), join(dir, 'qga.sock'), dir, String(deadlineMs)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: ((m: { result?: unknown; error?: string }) => void)[] = [];
  const logs: string[] = [];
  let onReady: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const m = JSON.parse(line) as { ready?: number; log?: string; cmd?: string; result?: unknown; error?: string };
    if (m.ready !== undefined) onReady();
    else if (m.log !== undefined) logs.push(m.log);
    else waiting.shift()?.(m);
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    child,
    logs,
    ready,
    end: () => {
      child.stdin!.end();
      return exited;
    },
    ask: (cmd) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        child.stdin!.write(cmd + '\n');
      }),
  };
}

describe('guardian', () => {
  it('Bulwark killed while the guest is frozen and paused: it thaws the guest, resumes the VM, and leaves a log the next run reports', async () => {
    const p = parent(60_000);
    await p.ready;
    expect(await p.ask('freeze')).toEqual({ cmd: 'freeze', result: 1 });
    vmStatus = 'paused';
    await p.ask('phase paused');
    p.child.kill('SIGKILL');
    await until('the guest thawed', () => !frozen && agentLog.includes('guest-fsfreeze-thaw'));
    await until('the VM resumed', () => vmStatus === 'running');
    expect(qmpLog).toContain('cont');
    await until('the guardian exited (its log complete)', async () => (await guardianLogsLeftPeek()).some((l) => /resumed the VM/.test(l)));
    const reported = await guardianLogsLeft(dir, 'fake');
    expect(reported.join('\n')).toMatch(/Bulwark went away.*\n.*thawed the guest's file systems.*\n.*resumed the VM/);
    expect(await readdir(dir)).not.toContain(expect.stringMatching(/^bulwark-guardian-/));
  });

  it('a freeze that outlives its deadline is thawed, and Bulwark is told while it runs', async () => {
    const p = parent(300);
    await p.ready;
    await p.ask('freeze');
    await until('the deadline thaw', () => !frozen);
    await until('the log reached the parent', () => p.logs.some((l) => /outlived its deadline of 300 ms/.test(l)));
    expect(await p.ask('release')).toEqual({ cmd: 'release', result: null });
    await p.end();
    // A clean release removes the log: nothing for the next run to report.
    expect(await guardianLogsLeft(dir, 'fake')).toEqual([]);
  });

  it('a clean run: thawed on request, released, the VM untouched by the guardian', async () => {
    const p = parent(60_000);
    await p.ready;
    await p.ask('freeze');
    expect(await p.ask('thaw')).toEqual({ cmd: 'thaw', result: 1 });
    await p.ask('phase none');
    expect(await p.ask('release')).toEqual({ cmd: 'release', result: null });
    await p.end();
    expect(agentLog.filter((c) => c.startsWith('guest-fsfreeze'))).toEqual(['guest-fsfreeze-freeze', 'guest-fsfreeze-thaw']);
    // The parent's own commands only: negotiation, nothing the guardian sent.
    expect(qmpLog).toEqual(['qmp_capabilities']);
    expect(await guardianLogsLeft(dir, 'fake')).toEqual([]);
  });
});

/** The guardian log's lines without consuming them. */
async function guardianLogsLeftPeek(): Promise<string[]> {
  const { readFile } = await import('node:fs/promises');
  const out: string[] = [];
  for (const f of await readdir(dir)) if (f.startsWith('bulwark-guardian-')) out.push(...(await readFile(join(dir, f), 'utf8')).split('\n').filter(Boolean));
  return out;
}
