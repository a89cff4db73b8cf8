// The guardian process of one VM (started by guardian.ts; its role is described there). Requests come
// on stdin as JSON lines and are answered on stdout; what it does on its own is logged to stderr (a
// file the parent opened) and, while the parent listens, sent up as {log}.
//
// On its own it acts in two cases:
//   - a freeze outlives its deadline, or a thaw asked for fails: thaw, retrying for 30 s;
//   - stdin closes without "done" (Bulwark killed, crashed, out of memory): thaw if frozen, then act
//     on the last phase:
//       paused     the parent stopped the vCPUs      → resume them (if still paused)
//       stopping   a clean shutdown was asked for    → wait for it (up to the stop timeout), then restart
//       down       the guest is shut down, QEMU kept  → restart
//       restarted  the guest boots again              → put the reboot action back once it has booted
//     and, for libvirt, end the pull-mode backup job the run left (its scratch space is reserved).
// QEMU is reached through the QMP connection inherited as fd 3, libvirt through a connection of its own.
import { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { DomainState, Libvirt, uuidBytes, type Domain } from '../protocols/libvirt/remote.js';
import { QgaClient } from '../protocols/qga/client.js';
import { QmpClient } from '../protocols/qmp/client.js';
import { BulwarkError } from '../util/errors.js';
import { backupExports } from './libvirt/domain-xml.js';
import type { GuardianConfig, GuardianControl, GuardianPhase, GuardianReply, GuardianRequest, GuardedVm } from './guardian.js';
import { restartGuest, settleRebootAction } from './qemu/power.js';

/** The VM as the guardian reaches it. */
interface Backend {
  info(): Promise<{ version: string; canFreeze: boolean }>;
  exists(path: string): Promise<boolean>;
  freeze(): Promise<number>;
  thaw(): Promise<number>;
  status(): Promise<'frozen' | 'thawed'>;
  /** Lets go of the agent after a thaw: its channel serves one client. */
  releaseAgent(): Promise<void>;
  /** Bulwark is gone: the power side of putting the VM right. */
  takeOver(phase: GuardianPhase): Promise<void>;
  close(): Promise<void>;
}

const config = JSON.parse(process.argv[2] ?? '{}') as GuardianConfig;
let phase: GuardianPhase = 'none';
let done = false;
let frozen = false;
let deadline: NodeJS.Timeout | undefined;
let parentListens = true;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function send(msg: GuardianReply): void {
  if (parentListens) process.stdout.write(JSON.stringify(msg) + '\n');
}

function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} VM ${config.vm}: ${message}\n`);
  send({ log: message });
}

class QemuBackend implements Backend {
  private client: Promise<QgaClient> | undefined;

  constructor(private readonly t: Extract<GuardedVm, { kind: 'qemu' }>) {}

  /** The one agent connection, made when first needed (the deadline's thaw and the parent's may race for it). */
  private async agent(): Promise<QgaClient> {
    if (!this.t.qga) throw new BulwarkError('failed', 'no guest agent configured for this VM');
    const current = await this.client?.catch(() => undefined);
    if (current && !current.closed) return current;
    this.client = QgaClient.connect(this.t.qga, { timeoutMs: config.agentTimeoutMs, commandTimeoutMs: config.agentTimeoutMs });
    return this.client;
  }

  async releaseAgent(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    await (await c?.catch(() => undefined))?.close().catch(() => undefined);
  }

  async info(): Promise<{ version: string; canFreeze: boolean }> {
    const i = await (await this.agent()).info();
    return { version: i.version, canFreeze: i.commands.some((c) => c.name === 'guest-fsfreeze-freeze' && c.enabled) };
  }

  async exists(path: string): Promise<boolean> {
    const a = await this.agent();
    try {
      const handle = await a.execute<number>('guest-file-open', { path, mode: 'r' });
      await a.execute('guest-file-close', { handle });
      return true;
    } catch {
      return false;
    }
  }

  async freeze(): Promise<number> {
    return (await this.agent()).fsfreezeFreeze();
  }

  async thaw(): Promise<number> {
    return (await this.agent()).fsfreezeThaw();
  }

  async status(): Promise<'frozen' | 'thawed'> {
    return (await this.agent()).fsfreezeStatus();
  }

  async takeOver(last: GuardianPhase): Promise<void> {
    if (last === 'none') return;
    if (!this.t.qmp) {
      log(`cannot act on phase ${last}: no QMP connection was handed over`);
      return;
    }
    const qmp = QmpClient.adopt(new Socket({ fd: 3, readable: true, writable: true }), `VM ${config.vm}`);
    try {
      const status = async (): Promise<string> => (await qmp.execute('query-status')).status;
      let p = last;
      if (p === 'paused') {
        if ((await status()) === 'paused') {
          await qmp.execute('cont');
          log('resumed the VM (its vCPUs were paused for the point in time)');
        }
        return;
      }
      if (p === 'stopping') {
        const end = Date.now() + config.stopTimeoutMs;
        while ((await status()) !== 'shutdown') {
          if (Date.now() > end) {
            await qmp.execute('set-action', { shutdown: this.t.actions.shutdown });
            log(`the guest did not finish shutting down within ${Math.round(config.stopTimeoutMs / 1000)} s; its shutdown action is back as it was`);
            return;
          }
          await sleep(500);
        }
        p = 'down';
      }
      if (p === 'down') {
        await restartGuest(qmp, this.t.actions);
        log('started the VM again (it was shut down for the backup)');
        p = 'restarted';
      }
      if (p === 'restarted') await settleRebootAction(qmp, this.t.actions, { ...(this.t.qga ? { qgaSocket: this.t.qga } : {}), settleMs: this.t.qga ? 120_000 : 30_000 });
    } finally {
      await qmp.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    await this.releaseAgent();
  }
}

class LibvirtBackend implements Backend {
  private conn: Promise<{ lv: Libvirt; dom: Domain }> | undefined;

  constructor(private readonly t: Extract<GuardedVm, { kind: 'libvirt' }>) {}

  private async vm(): Promise<{ lv: Libvirt; dom: Domain }> {
    const current = await this.conn?.catch(() => undefined);
    if (current) return current;
    this.conn = (async () => {
      const lv = await Libvirt.open(this.t.uri, { timeoutMs: config.agentTimeoutMs });
      return { lv, dom: await lv.lookupByUuid(uuidBytes(this.t.uuid)!) };
    })();
    return this.conn;
  }

  private async agentCall<T>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (!this.t.agent) throw new BulwarkError('failed', 'no guest agent configured for this VM');
    const { lv, dom } = await this.vm();
    return lv.agentCommand<T>(dom, command, args, Math.max(1, Math.round(config.agentTimeoutMs / 1000)));
  }

  async releaseAgent(): Promise<void> {
    // libvirt holds the agent's channel: nothing of ours to let go.
  }

  async info(): Promise<{ version: string; canFreeze: boolean }> {
    const i = await this.agentCall<{ version: string; supported_commands: { name: string; enabled: boolean }[] }>('guest-info');
    return { version: i.version, canFreeze: i.supported_commands.some((c) => c.name === 'guest-fsfreeze-freeze' && c.enabled) };
  }

  async exists(path: string): Promise<boolean> {
    try {
      const handle = await this.agentCall<number>('guest-file-open', { path, mode: 'r' });
      await this.agentCall('guest-file-close', { handle });
      return true;
    } catch {
      return false;
    }
  }

  async freeze(): Promise<number> {
    // libvirt's own freeze: it knows the guest is frozen and refuses what would hang meanwhile.
    const { lv, dom } = await this.vm();
    return lv.fsfreeze(dom, config.agentTimeoutMs + 5000);
  }

  async thaw(): Promise<number> {
    const { lv, dom } = await this.vm();
    return lv.fsthaw(dom, config.agentTimeoutMs + 5000);
  }

  async status(): Promise<'frozen' | 'thawed'> {
    return this.agentCall<'frozen' | 'thawed'>('guest-fsfreeze-status');
  }

  async takeOver(last: GuardianPhase): Promise<void> {
    const { lv, dom } = await this.vm();
    const state = async (): Promise<number> => (await lv.state(dom)).state;
    if (last === 'paused' && (await state()) === DomainState.paused) {
      await lv.resume(dom);
      log('resumed the VM (its vCPUs were paused for the point in time)');
    }
    if (last === 'stopping') {
      const end = Date.now() + config.stopTimeoutMs;
      while ((await state()) !== DomainState.shutoff && Date.now() < end) await sleep(500);
    }
    if (last === 'stopping' || last === 'down') {
      // --mode stop: the domain is shut off, or was started paused for the point in time.
      const s = await state();
      if (s === DomainState.shutoff) {
        await lv.start(dom);
        log('started the VM again (it was shut down for the backup)');
      } else if (s === DomainState.paused) {
        await lv.resume(dom);
        log('resumed the VM (it was started paused for the point in time after its shutdown)');
      } else if (last === 'stopping') log(`the guest did not finish shutting down within ${Math.round(config.stopTimeoutMs / 1000)} s; it was left as it is`);
    }
    if (await lv.jobType(dom).catch(() => 0)) {
      const ours = await lv.backupXml(dom).then((x) => backupExports(x).socket?.startsWith(this.t.jobDir), () => false);
      if (ours) {
        await lv.abortJob(dom);
        log("ended the run's backup job (its scratch space is free again)");
      }
    }
  }

  async close(): Promise<void> {
    const c = await this.conn?.catch(() => undefined);
    await c?.lv.close().catch(() => undefined);
  }
}

const backend: Backend = config.target.kind === 'qemu' ? new QemuBackend(config.target) : new LibvirtBackend(config.target);

async function thaw(): Promise<number> {
  clearTimeout(deadline);
  const n = await backend.thaw();
  frozen = false;
  await backend.releaseAgent();
  return n;
}

/** Thaws, trying for a while: a guest that was slow to answer may answer later. */
async function thawForSure(why: string): Promise<void> {
  for (let i = 0; i < 30; i++) {
    try {
      if ((await backend.status()) === 'frozen') {
        await thaw();
        log(`thawed the guest's file systems (${why})`);
      }
      frozen = false;
      return;
    } catch {
      await backend.releaseAgent();
      await sleep(1000);
    }
  }
  log(`could not thaw the guest's file systems (${why}): the guest agent did not answer for 30 s; thaw them with 'fsfreeze -u' in the guest or QMP guest-fsfreeze-thaw`);
}

const requests: { [K in GuardianRequest['op']]: (req: Extract<GuardianRequest, { op: K }>) => Promise<unknown> } = {
  info: () => backend.info(),
  exists: (req) => backend.exists(req.path),
  async freeze() {
    // A freeze that times out may still happen in the guest: from here on it counts as frozen.
    frozen = true;
    deadline = setTimeout(() => void thawForSure(`the freeze outlived its deadline of ${config.freezeDeadlineMs} ms`), config.freezeDeadlineMs);
    return backend.freeze();
  },
  async thaw() {
    try {
      return await thaw();
    } catch (err) {
      // The parent carries on with its transfer: the guest must not stay frozen meanwhile.
      void thawForSure(`the thaw asked for failed: ${(err as Error).message}`);
      throw err;
    }
  },
  status: () => backend.status(),
};

async function end(): Promise<void> {
  parentListens = false;
  try {
    if (!done) {
      if (frozen || phase !== 'none' || config.target.kind === 'libvirt') {
        if (frozen || phase !== 'none') log(`Bulwark went away during the backup (phase ${phase}${frozen ? ', guest frozen' : ''}); putting the VM right`);
        if (frozen) await thawForSure('Bulwark went away');
        await backend.takeOver(phase);
      }
    } else if (frozen) await thawForSure('the backup ended with the guest still frozen');
  } catch (err) {
    log(`failed to put the VM right: ${(err as Error).message}`);
  } finally {
    await backend.close();
    process.exit(0);
  }
}

createInterface({ input: process.stdin })
  .on('line', (line) => {
    let msg: GuardianRequest | GuardianControl;
    try {
      msg = JSON.parse(line) as GuardianRequest | GuardianControl;
    } catch {
      return;
    }
    if (msg.op === 'phase') phase = msg.phase;
    else if (msg.op === 'done') done = true;
    else {
      const req = msg;
      const handler = requests[req.op] as (r: GuardianRequest) => Promise<unknown>;
      handler(req).then(
        (result) => send({ id: req.id, result: result ?? null }),
        (err: unknown) => send({ id: req.id, error: (err as Error).message, code: err instanceof BulwarkError ? err.code : 'failed' }),
      );
    }
  })
  .on('close', () => void end());
process.stdout.on('error', () => {
  parentListens = false;
});
