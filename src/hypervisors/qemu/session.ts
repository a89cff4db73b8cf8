// The QEMU driver: a VM reached through its QMP socket (and its guest agent's socket, given or found
// through QMP). One session holds the VM's QMP connection for a whole backup run, its power actions
// and its guardian; everything QEMU-specific the backup job needs goes through here.
import { QgaClient } from '../../protocols/qga/client.js';
import { QmpClient } from '../../protocols/qmp/client.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import { type QmpEndpoint, type VmEndpoint } from '../registry.js';
import type { GuardOptions, GuestAgent, PointInTime, VmDisk, VmDriver, VmInfo, VmSession } from '../session.js';
import { agentFileWriter } from '../guest-agent-ops.js';
import { findAgentSocket, type AgentSocket } from './agent-socket.js';
import { cleanupLeftovers, dropStaleBitmaps, isOurNode, prepareFleece } from './fleece.js';
import { Guardian, guardianLogsLeft } from '../guardian.js';
import { inspectDisks, inspectQemu, type QemuDisk } from './inspect.js';
import { powerActionsOf, restartGuest, settleRebootAction, shutdownGuest, type PowerActions } from './power.js';

/** QEMU 7.1 brought copy-before-write's on-cbw-error=break-snapshot, which fleecing relies on. */
export function qemuCanFleece(version: string): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 7 || (major === 7 && minor >= 1);
}

function asQmp(e: VmEndpoint): QmpEndpoint {
  if (!('qmp' in e)) throw new Error('the QEMU driver was handed an endpoint without a QMP socket');
  return e;
}

async function connect(endpoint: QmpEndpoint, opts: { retryForMs?: number } = {}): Promise<QmpClient> {
  return QmpClient.connect(endpoint.qmp, { timeoutMs: 5000, commandTimeoutMs: 30_000, ...opts }).catch((err: unknown) => {
    throw new BulwarkError(err instanceof BulwarkError ? err.code : 'failed', `cannot reach QEMU at '${endpoint.qmp}': ${(err as Error).message}`, {
      hint: (err as BulwarkError).hint ?? 'is the VM running, and is this its QMP socket (-qmp unix:…,server=on,wait=off)?',
      cause: err,
    });
  });
}

/** The agent's socket: the one given, else the one QEMU has for the org.qemu.guest_agent.0 port. */
async function agentSocketOf(qmp: QmpClient, endpoint: QmpEndpoint): Promise<AgentSocket> {
  if (endpoint.noAgent) return { why: 'the guest agent is turned off for this VM (qga=off)' };
  if (endpoint.qga) return { path: endpoint.qga };
  return findAgentSocket(qmp);
}

class QemuSession implements VmSession {
  private guardian: Guardian | undefined;
  private guardAgent = false;
  private actions: PowerActions = { shutdown: 'poweroff', reboot: 'reset' };
  readonly scratchRule = 'shadow';

  constructor(
    readonly name: string,
    readonly agentSocket: string | undefined,
    private readonly endpoint: QmpEndpoint,
    private readonly qmp: QmpClient,
    private readonly log: (message: string) => void,
  ) {}

  get address(): string {
    return this.endpoint.qmp;
  }

  get hasAgent(): boolean {
    return this.agentSocket !== undefined;
  }

  inspect(): Promise<{ disks: VmDisk[]; config: VmConfig }> {
    return inspectQemu(this.qmp, isOurNode);
  }

  async cleanupLeftovers(scratchDir: string): Promise<string[]> {
    await cleanupLeftovers(this.qmp, scratchDir);
    return guardianLogsLeft(scratchDir, this.name);
  }

  dropStaleBitmaps(disk: VmDisk, base: string | undefined): Promise<void> {
    const d = disk as QemuDisk;
    return dropStaleBitmaps(
      this.qmp,
      d.bitmapNode,
      d.bitmaps.map((b) => b.name),
      base,
    );
  }

  async preparePoint(disks: VmDisk[], opts: { scratchDir: string; newBitmap: string; previousBitmap?: string }): Promise<PointInTime> {
    const fleece = await prepareFleece(this.qmp, disks as QemuDisk[], opts);
    return {
      pausesVcpus: fleece.pausesVcpus,
      take: ({ paused }) => fleece.takePoint({ paused, onPause: (on) => this.guardian?.phase(on ? 'paused' : 'none') }),
      export: () => fleece.export(opts.previousBitmap),
      diagnose: () => fleece.diagnose(),
      finish: (ok) => fleece.finish(ok),
    };
  }

  async guard(opts: GuardOptions): Promise<void> {
    // A process per VM only where this run freezes, pauses or shuts the VM down.
    if (this.guardian || !((opts.agent && this.hasAgent) || opts.power)) return;
    this.actions = await powerActionsOf(this.endpoint.qmp);
    this.guardAgent = opts.agent && this.agentSocket !== undefined;
    this.guardian = Guardian.start(
      {
        vm: this.name,
        target: { kind: 'qemu', ...(this.guardAgent ? { qga: this.agentSocket! } : {}), qmp: true, actions: this.actions },
        freezeDeadlineMs: opts.freezeDeadlineMs ?? 10_000,
        agentTimeoutMs: opts.agentTimeoutMs ?? 5_000,
        stopTimeoutMs: opts.stopTimeoutMs,
      },
      { qmpFd: this.qmp.socketForWatchdog(), logDir: opts.logDir, onLog: (m) => this.log(`guardian: ${m}`) },
    );
  }

  agent(): GuestAgent | undefined {
    return this.guardAgent ? this.guardian?.agent : undefined;
  }

  private guarded(): Guardian {
    if (!this.guardian) throw new Error('QemuSession: pause, resume and shutdown need guard() first');
    return this.guardian;
  }

  async pause(): Promise<void> {
    this.guarded().phase('paused');
    await this.qmp.execute('stop');
  }

  async resume(): Promise<void> {
    await this.qmp.execute('cont');
    this.guardian?.phase('none');
  }

  async shutdown(timeoutMs: number): Promise<'agent' | 'acpi'> {
    const g = this.guarded();
    g.phase('stopping');
    try {
      const via = await shutdownGuest(this.qmp, { actions: this.actions, ...(this.agentSocket ? { qgaSocket: this.agentSocket } : {}), timeoutMs });
      g.phase('down');
      return via;
    } catch (err) {
      // The shutdown action is the VM's own again: a guest still shutting down ends as it would anyway.
      g.phase('none');
      throw err;
    }
  }

  async start(): Promise<{ settled: Promise<void> }> {
    const g = this.guarded();
    await restartGuest(this.qmp, this.actions);
    g.phase('restarted');
    const settled = settleRebootAction(this.qmp, this.actions, { ...(this.agentSocket ? { qgaSocket: this.agentSocket } : {}), settleMs: this.agentSocket ? 120_000 : 30_000 });
    void settled.then(() => g.phase('none'), () => undefined);
    return { settled };
  }

  async close(): Promise<void> {
    await this.guardian?.release().catch(() => undefined);
    await this.qmp.close().catch(() => undefined);
  }
}

export const qemuDriver: VmDriver = {
  name: 'qemu',

  async list(endpoint) {
    return [endpoint];
  },

  async open(e, opts = {}) {
    const endpoint = asQmp(e);
    // A monitor briefly held by another tool (QEMU serves one client at a time) must not fail a backup.
    const qmp = await connect(endpoint, { retryForMs: 60_000 });
    try {
      const name = endpoint.name ?? (await qmp.execute('query-name')).name ?? endpoint.qmp;
      return new QemuSession(name, (await agentSocketOf(qmp, endpoint)).path, endpoint, qmp, opts.log ?? (() => undefined));
    } catch (err) {
      await qmp.close();
      throw err;
    }
  },

  async describe(e, opts = {}): Promise<VmInfo> {
    const endpoint = asQmp(e);
    const qmp = await connect(endpoint);
    try {
      const [status, named, version, disks] = await Promise.all([qmp.execute('query-status'), qmp.execute('query-name'), qmp.execute('query-version'), inspectDisks(qmp, isOurNode)]);
      const q = version.qemu;
      const found = await agentSocketOf(qmp, endpoint);
      const info: VmInfo = {
        name: endpoint.name ?? named.name ?? endpoint.qmp,
        address: endpoint.qmp,
        ...(found.path ? { qga: found.path } : {}),
        status: status.status,
        qemuVersion: `${q.major}.${q.minor}.${q.micro}`,
        disks,
        scratchRule: 'shadow',
        agent: { state: 'not configured', ...(found.path === undefined ? { error: found.why } : {}) },
      };
      if (found.path) {
        let qga: QgaClient | undefined;
        try {
          const t = opts.agentTimeoutMs ?? 3000;
          qga = await QgaClient.connect(found.path, { timeoutMs: t, commandTimeoutMs: t });
          const gi = await qga.info();
          info.agent = { state: 'responding', version: gi.version };
          if (gi.commands.some((c) => c.name === 'guest-get-fsinfo' && c.enabled)) info.agent.filesystems = (await qga.getFsinfo()).map(({ mountpoint, type }) => ({ mountpoint, type }));
        } catch (err) {
          info.agent = { state: 'not responding', error: (err as Error).message };
        } finally {
          await qga?.close().catch(() => undefined);
        }
      }
      return info;
    } finally {
      await qmp.close();
    }
  },

  async guestFiles(e) {
    const endpoint = asQmp(e);
    const qmp = await connect(endpoint);
    let found: AgentSocket;
    try {
      found = await agentSocketOf(qmp, endpoint);
    } finally {
      await qmp.close();
    }
    if (found.path === undefined) throw new BulwarkError('failed', `cannot reach the guest agent of ${endpoint.name ?? endpoint.qmp}: ${found.why}`, { hint: 'give its socket with qga=PATH in --connect' });
    const qga = await QgaClient.connect(found.path, { timeoutMs: 10_000, commandTimeoutMs: 60_000 });
    return agentFileWriter((command, args) => qga.execute(command, args), () => qga.close());
  },

  async nameOf(e) {
    if (e.name) return e.name;
    const qmp = await QmpClient.connect(asQmp(e).qmp).catch(() => undefined);
    const n = qmp ? (await qmp.execute('query-name').catch(() => ({}) as { name?: string })).name : undefined;
    await qmp?.close();
    return n;
  },

  canFleece(qemuVersion) {
    if (!qemuVersion || qemuCanFleece(qemuVersion)) return { ok: true };
    return {
      ok: false,
      why: `QEMU ${qemuVersion} is too old for safe live backups: the copy-before-write filter that fails the backup rather than the guest's writes when scratch space runs out needs QEMU 7.1`,
      fix: "upgrade QEMU to 7.1 or newer (Debian 12 ships 7.2), then restart the VM; or back its disks up offline with 'bulwark backup disk'",
    };
  },
};
