// The libvirt driver: a domain reached through libvirt's RPC protocol (protocols/libvirt), by name or
// UUID on a connection such as qemu:///system. libvirt holds the VM's QMP monitor and its guest
// agent, so everything goes through libvirt's API: the agent freeze (virDomainFSFreeze), the point in
// time (a pull-mode backup job, virDomainBackupBegin) and checkpoints for incrementals.
//
// Scratch space (docs/architecture.md, "libvirt domains"): libvirt 9's pull-mode backup fails the
// guest's writes when its scratch image cannot grow (measured: the domain paused with an I/O error,
// "vda: no space"). The rule is that running out fails the backup, never the guest, so Bulwark makes
// the scratch images itself, each reserving its disk's whole size up front (qcow2 with extended L2
// entries, preallocation=falloc, the disk as backing), and hands them to libvirt with
// REUSE_EXTERNAL: a copy-before-write then writes into space that is already allocated, and too
// little space fails the backup before anything is frozen.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chown, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Libvirt, STATE_NAMES, BACKUP_BEGIN_REUSE_EXTERNAL, DomainState, SHUTDOWN_ACPI, SHUTDOWN_AGENT, ShutoffReason, START_PAUSED, XML_INACTIVE, uuidString, type Checkpoint, type Domain } from '../../protocols/libvirt/remote.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import { openImage } from '../../formats/open.js';
import { agentFileWriter } from '../guest-agent-ops.js';
import { Guardian, guardianLogsLeft } from '../guardian.js';
import { OfflinePoint } from '../offline-point.js';
import { addressOf, isLibvirt, type LibvirtEndpoint, type VmEndpoint } from '../registry.js';
import type { GuardOptions, GuestAgent, PointExport, PointInTime, VmDisk, VmDriver, VmInfo, VmSession } from '../session.js';
import { backupExports, backupXml, checkpointDisks, checkpointXml, parseDomain, type DomainInfo } from './domain-xml.js';

const run = promisify(execFile);
const PREFIX = 'bulwark-';
const isOurs = (name: string): boolean => name.startsWith(PREFIX);

function asLibvirt(e: VmEndpoint): LibvirtEndpoint {
  if (!isLibvirt(e)) throw new Error('the libvirt driver was handed a QMP endpoint');
  return e;
}

/** Per-VM folder stem in the scratch folder (several VMs share one). */
function jobStem(vm: string): string {
  return `${PREFIX}lv-${vm.replace(/[^A-Za-z0-9_.]/g, '_')}-`;
}

async function connect(e: LibvirtEndpoint): Promise<Libvirt> {
  return Libvirt.open(e.libvirt.uri).catch((err: unknown) => {
    throw new BulwarkError(err instanceof BulwarkError ? err.code : 'failed', `cannot reach libvirt at ${e.libvirt.uri}: ${(err as Error).message}`, { cause: err, ...((err as BulwarkError).hint ? { hint: (err as BulwarkError).hint! } : {}) });
  });
}

async function lookup(lv: Libvirt, e: LibvirtEndpoint): Promise<Domain> {
  const name = e.libvirt.domain ?? e.name;
  if (!name) throw new BulwarkError('usage', `no domain named for ${e.libvirt.uri}`, { hint: "name the VM on the command line, or see 'bulwark vm list --connect " + e.libvirt.uri + "'" });
  return lv.lookup(name).catch((err: unknown) => {
    throw new BulwarkError('not-found', `no libvirt domain '${name}' on ${e.libvirt.uri}`, { cause: err, hint: `see 'bulwark vm list --connect ${e.libvirt.uri}'` });
  });
}

interface LibvirtDisk extends VmDisk {
  type: 'file' | 'block';
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A shut-off domain's disks are as consistent as the way it stopped (libvirt's shut-off reason). */
function offlineState(reason: number): { consistency: 'application' | 'crash'; why: string } {
  switch (reason) {
    case ShutoffReason.shutdown:
      return { consistency: 'application', why: 'the VM is shut down (cleanly): its disks were read as they lie' };
    case ShutoffReason.saved:
      return { consistency: 'crash', why: 'the VM is saved with its memory (managed save): its disks alone are as after a power cut' };
    case ShutoffReason.destroyed:
      return { consistency: 'crash', why: 'the VM was forced off (destroyed): its disks are as after a power cut' };
    case ShutoffReason.crashed:
    case ShutoffReason.failed:
      return { consistency: 'crash', why: 'the VM crashed or failed: its disks are as after a power cut' };
    default:
      // Also after libvirtd restarted: it forgets why an inactive domain stopped.
      return { consistency: 'crash', why: 'the VM is shut off and libvirt does not know how it stopped: its disks are taken as after a power cut' };
  }
}

class LibvirtSession implements VmSession {
  readonly scratchRule = 'full';
  private guardian: Guardian | undefined;
  private guardAgent = false;
  private info: DomainInfo;

  constructor(
    readonly name: string,
    private readonly endpoint: LibvirtEndpoint,
    private readonly lv: Libvirt,
    private readonly dom: Domain,
    info: DomainInfo,
    private readonly log: (message: string) => void,
    readonly offline?: { consistency: 'application' | 'crash'; why: string },
  ) {
    this.info = info;
  }

  get address(): string {
    return `${this.endpoint.libvirt.uri}#${this.name}`;
  }

  get hasAgent(): boolean {
    return !this.endpoint.noAgent && this.info.agent !== undefined;
  }

  /** Our checkpoints and the disks each tracks. */
  private async ourCheckpoints(): Promise<{ cp: Checkpoint; disks: string[] }[]> {
    const out: { cp: Checkpoint; disks: string[] }[] = [];
    for (const cp of await this.lv.checkpoints(this.dom)) {
      if (!isOurs(cp.name)) continue;
      out.push({ cp, disks: checkpointDisks(await this.lv.checkpointXml(cp)) });
    }
    return out;
  }

  async inspect(): Promise<{ disks: VmDisk[]; config: VmConfig }> {
    const [live, inactive, qemuVersion, checkpoints] = await Promise.all([this.lv.xml(this.dom), this.lv.xml(this.dom, XML_INACTIVE), this.lv.hypervisorVersion(), this.ourCheckpoints()]);
    this.info = parseDomain(live);
    const disks: LibvirtDisk[] = [];
    for (const d of this.info.disks) {
      const capacity = await this.lv.blockInfo(this.dom, d.target).then(
        (b) => b.capacity,
        // A shut-off domain's disk: its image says.
        async (err: unknown) => {
          if (!this.offline) throw err;
          const img = await openImage(d.source, d.format);
          await img.close();
          return img.size;
        },
      );
      disks.push({
        name: d.target,
        format: d.format,
        size: capacity,
        file: d.source,
        type: d.type,
        bitmaps: checkpoints.filter((c) => c.disks.includes(d.target)).map((c) => ({ name: c.cp.name, recording: true, inconsistent: false, count: 0 })),
      });
    }
    const config: VmConfig = {
      name: this.name,
      uuid: this.info.uuid,
      ...(this.info.machine ? { machine: this.info.machine } : {}),
      ...(this.info.memoryBytes ? { memoryBytes: this.info.memoryBytes } : {}),
      ...(this.info.cpus ? { cpus: this.info.cpus } : {}),
      disks: disks.map((d) => ({ name: d.name, device: d.name, format: d.format, size: d.size, file: d.file })),
      ...(this.info.nics.length ? { nics: this.info.nics.map((n, i) => ({ id: `net${i}`, ...n })) } : {}),
      qemuVersion,
      libvirt: { uri: this.endpoint.libvirt.uri, xml: inactive },
    };
    return { disks, config };
  }

  async cleanupLeftovers(scratchDir: string): Promise<string[]> {
    const notes: string[] = [];
    const stem = join(scratchDir, jobStem(this.name));
    if ((await this.lv.jobType(this.dom).catch(() => 0)) !== 0) {
      const socket = await this.lv.backupXml(this.dom).then((x) => backupExports(x).socket, () => undefined);
      if (socket?.startsWith(stem)) {
        await this.lv.abortJob(this.dom);
        notes.push('ended the backup job an interrupted run left running');
      }
    }
    for (const f of await readdir(scratchDir).catch(() => [] as string[])) {
      if (f.startsWith(jobStem(this.name))) await rm(join(scratchDir, f), { recursive: true, force: true });
    }
    return [...notes, ...(await guardianLogsLeft(scratchDir, this.name))];
  }

  async dropStaleBitmaps(_disk: VmDisk, base: string | undefined): Promise<void> {
    // Checkpoints belong to the domain, not a disk: a disk without a base (one added since) says
    // nothing about which are stale; any disk with one does. Deleting a checkpoint merges its
    // changes into its parent's, so no change is lost; a successful run removes the rest.
    if (base === undefined) return;
    for (const { cp } of await this.ourCheckpoints()) {
      if (cp.name !== base) await this.lv.deleteCheckpoint(cp).catch(() => undefined);
    }
  }

  async preparePoint(disks: VmDisk[], opts: { scratchDir: string; newBitmap: string; previousBitmap?: string }): Promise<PointInTime> {
    if (this.offline) {
      return new OfflinePoint(
        this.name,
        (disks as LibvirtDisk[]).map((d) => ({ name: d.name, file: d.file, format: d.format, ...(d.type === 'block' ? { size: d.size } : {}) })),
        async () => ((await this.lv.state(this.dom)).state === DomainState.shutoff ? undefined : 'was started'),
      );
    }
    const dir = join(opts.scratchDir, `${jobStem(this.name)}${randomBytes(4).toString('hex')}`);
    // QEMU runs as another user under qemu:///system: its NBD socket and scratch files live in a
    // folder only it (and root) can enter.
    await mkdir(dir, { mode: 0o700 });
    const owner = this.info.qemuUser;
    try {
      if (owner) await chown(dir, owner.uid, owner.gid);
      const items = (disks as LibvirtDisk[]).map((d) => ({
        d,
        scratch: join(dir, `${d.name}.qcow2`),
        incremental: opts.previousBitmap !== undefined && d.bitmaps.some((b) => b.name === opts.previousBitmap),
      }));
      for (const it of items) {
        try {
          await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,preallocation=falloc', '-b', it.d.file, '-F', it.d.format, it.scratch, String(it.d.size)]);
        } catch (err) {
          const msg = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
          const full = /No space left/i.test(msg);
          throw new BulwarkError('failed', full ? `not enough scratch space in '${opts.scratchDir}' for VM ${this.name}: disk ${it.d.name} needs its whole size (${(it.d.size / 2 ** 30).toFixed(1)} GiB) reserved` : `cannot make the scratch image for disk ${it.d.name} of VM ${this.name}: ${msg}`, {
            hint: full ? 'free space there or pass another --scratch-dir: a libvirt backup reserves the disks\' whole size so that running out can never pause the guest' : 'check that the scratch folder supports fallocate (ext4, xfs, tmpfs) and that qemu-img can read the disk',
            cause: err,
          });
        }
        if (owner) await chown(it.scratch, owner.uid, owner.gid);
      }
      return new LibvirtPoint(this.lv, this.dom, this.name, dir, items, opts, (m) => this.log(m));
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  async guard(opts: GuardOptions): Promise<void> {
    // Always: a killed run leaves a pull-mode backup job holding reserved scratch space, which the
    // guardian ends.
    if (this.guardian) return;
    this.guardAgent = opts.agent && this.hasAgent;
    this.guardian = Guardian.start(
      {
        vm: this.name,
        target: { kind: 'libvirt', uri: this.endpoint.libvirt.uri, uuid: uuidString(this.dom.uuid), agent: this.guardAgent, jobDir: join(opts.logDir, jobStem(this.name)) },
        freezeDeadlineMs: opts.freezeDeadlineMs ?? 10_000,
        agentTimeoutMs: opts.agentTimeoutMs ?? 5_000,
        stopTimeoutMs: opts.stopTimeoutMs,
      },
      { logDir: opts.logDir, onLog: (m) => this.log(`guardian: ${m}`) },
    );
  }

  agent(): GuestAgent | undefined {
    return this.guardAgent ? this.guardian?.agent : undefined;
  }

  async pause(): Promise<void> {
    if (!this.guardian) throw new Error('LibvirtSession: pause needs guard() first');
    this.guardian.phase('paused');
    await this.lv.suspend(this.dom);
  }

  async resume(): Promise<void> {
    await this.lv.resume(this.dom);
    this.guardian?.phase('none');
  }

  async shutdown(timeoutMs: number): Promise<'agent' | 'acpi'> {
    if (!this.guardian) throw new Error('LibvirtSession: shutdown needs guard() first');
    if (!(await this.lv.isPersistent(this.dom))) {
      throw new BulwarkError('usage', `VM ${this.name} is a transient libvirt domain: shut down, it would be gone`, { hint: 'define it (virsh define) to use --mode stop, or use --mode snapshot' });
    }
    this.guardian.phase('stopping');
    let via: 'agent' | 'acpi' = 'acpi';
    if (this.hasAgent) {
      via = await this.lv.shutdown(this.dom, SHUTDOWN_AGENT).then(
        () => 'agent' as const,
        () => this.lv.shutdown(this.dom, SHUTDOWN_ACPI).then(() => 'acpi' as const),
      );
    } else await this.lv.shutdown(this.dom, SHUTDOWN_ACPI);
    const end = Date.now() + timeoutMs;
    while ((await this.lv.state(this.dom)).state !== DomainState.shutoff) {
      if (Date.now() > end) {
        this.guardian.phase('none');
        throw new BulwarkError('failed', `VM ${this.name} did not finish shutting down within ${Math.round(timeoutMs / 1000)} s (asked through the ${via === 'agent' ? 'guest agent' : 'ACPI power button'}); it may still power off`, {
          hint: 'check the guest, or raise --stop-timeout',
        });
      }
      await sleep(250);
    }
    this.guardian.phase('down');
    return via;
  }

  async start(): Promise<{ settled: Promise<void> }> {
    // The point was taken with the domain started paused (libvirt's backup needs a QEMU): resume
    // it; a domain that never got that far is booted.
    const { state } = await this.lv.state(this.dom);
    if (state === DomainState.paused) await this.lv.resume(this.dom);
    else if (state === DomainState.shutoff) await this.lv.start(this.dom);
    this.guardian?.phase('none');
    return { settled: Promise.resolve() };
  }

  async close(): Promise<void> {
    await this.guardian?.release().catch(() => undefined);
    await this.lv.close().catch(() => undefined);
  }
}

class LibvirtPoint implements PointInTime {
  readonly pausesVcpus = false;
  private begun = false;
  private checkpointMade = false;
  private fullFallback = false;

  constructor(
    private readonly lv: Libvirt,
    private readonly dom: Domain,
    private readonly vm: string,
    private readonly dir: string,
    private readonly items: { d: LibvirtDisk; scratch: string; incremental: boolean }[],
    private readonly opts: { newBitmap: string; previousBitmap?: string },
    private readonly log: (message: string) => void,
  ) {}

  private get socket(): string {
    return join(this.dir, 'nbd.sock');
  }

  async take(): Promise<void> {
    // --mode stop: the guest is shut down and its QEMU gone; libvirt's backup needs one, so the
    // domain is started with its vCPUs stopped: the disks are exactly as the shutdown left them.
    if ((await this.lv.state(this.dom)).state === DomainState.shutoff) await this.lv.start(this.dom, START_PAUSED);
    // One call: libvirt takes every disk's point and the checkpoint in one QEMU transaction.
    const cp = checkpointXml(this.opts.newBitmap, this.items.map((it) => ({ target: it.d.name, bitmap: it.d.format === 'qcow2' })));
    const incremental = this.items.some((it) => it.incremental) ? this.opts.previousBitmap : undefined;
    const hasBitmaps = this.items.some((it) => it.d.format === 'qcow2');
    try {
      await this.lv.backupBegin(this.dom, backupXml(this.socket, this.items.map((it) => ({ target: it.d.name, scratch: it.scratch, incremental: it.incremental })), incremental), hasBitmaps ? cp : undefined, BACKUP_BEGIN_REUSE_EXTERNAL);
    } catch (err) {
      if (!incremental) throw err;
      // A checkpoint libvirt no longer trusts (its bitmap gone or broken in the image): read in full.
      this.log(`libvirt refused the incremental from checkpoint ${incremental} (${(err as Error).message}); every disk is read in full`);
      this.fullFallback = true;
      await this.lv.backupBegin(this.dom, backupXml(this.socket, this.items.map((it) => ({ target: it.d.name, scratch: it.scratch, incremental: false })), undefined), hasBitmaps ? cp : undefined, BACKUP_BEGIN_REUSE_EXTERNAL);
    }
    this.begun = true;
    this.checkpointMade = hasBitmaps;
  }

  async export(): Promise<PointExport> {
    const exp = backupExports(await this.lv.backupXml(this.dom));
    return {
      socket: exp.socket ?? this.socket,
      disks: exp.disks.map((d) => ({ name: d.name, exportName: d.exportName, ...(d.incremental && d.bitmap && !this.fullFallback ? { dirtyContext: `qemu:dirty-bitmap:${d.bitmap}` } : {}) })),
    };
  }

  async diagnose(): Promise<string | undefined> {
    const { state, reason } = await this.lv.state(this.dom);
    // Paused for an I/O error (reason 5): the reserved scratch should make this impossible; say it if it happens.
    return state === DomainState.paused && reason === 5 ? `VM ${this.vm} is paused after an I/O error; resume it once its storage is healthy` : undefined;
  }

  async finish(ok: boolean): Promise<void> {
    if (this.begun) {
      await this.lv.abortJob(this.dom).catch(() => undefined);
      // libvirt ends the job after the call returns (filters removed, scratch files closed and
      // relabelled): the files stay until it has.
      const end = Date.now() + 60_000;
      while (Date.now() < end && (await this.lv.jobType(this.dom).catch(() => 0)) !== 0) await new Promise((r) => setTimeout(r, 50));
    }
    await rm(this.dir, { recursive: true, force: true });
    const all = await this.lv.checkpoints(this.dom).catch(() => [] as Checkpoint[]);
    if (ok && this.checkpointMade) {
      // The new checkpoint is the next incremental's base; older ones of ours have served (a --full
      // run has no previous base, but may leave one behind).
      for (const old of all.filter((c) => isOurs(c.name) && c.name !== this.opts.newBitmap)) await this.lv.deleteCheckpoint(old).catch(() => undefined);
    } else if (!ok && this.checkpointMade) {
      // Its changes go back into the base's (libvirt merges a deleted checkpoint into its parent).
      const made = all.find((c) => c.name === this.opts.newBitmap);
      if (made) await this.lv.deleteCheckpoint(made).catch(() => undefined);
    }
  }
}

export const libvirtDriver: VmDriver = {
  name: 'libvirt',

  async list(e) {
    const endpoint = asLibvirt(e);
    if (endpoint.libvirt.domain) return [endpoint];
    const lv = await connect(endpoint);
    try {
      return (await lv.listDomains()).map((d) => ({ ...endpoint, name: d.name, libvirt: { ...endpoint.libvirt, domain: d.name } }));
    } finally {
      await lv.close();
    }
  },

  async open(e, opts = {}) {
    const endpoint = asLibvirt(e);
    const lv = await connect(endpoint);
    try {
      const dom = await lookup(lv, endpoint);
      const { state, reason } = await lv.state(dom);
      if (state !== DomainState.running && state !== DomainState.paused && state !== DomainState.shutoff) {
        throw new BulwarkError('failed', `libvirt domain ${dom.name} is ${STATE_NAMES[state] ?? `in state ${state}`}: it can be backed up running or shut off`, { hint: 'wait until it is running or shut off, then run the backup again' });
      }
      const info = parseDomain(await lv.xml(dom));
      return new LibvirtSession(endpoint.name ?? dom.name, endpoint, lv, dom, info, opts.log ?? (() => undefined), state === DomainState.shutoff ? offlineState(reason) : undefined);
    } catch (err) {
      await lv.close();
      throw err;
    }
  },

  async describe(e, opts = {}): Promise<VmInfo> {
    const endpoint = asLibvirt(e);
    const lv = await connect(endpoint);
    try {
      const dom = await lookup(lv, endpoint);
      const [{ state }, xml, qemuVersion] = await Promise.all([lv.state(dom), lv.xml(dom), lv.hypervisorVersion()]);
      const info = parseDomain(xml);
      const running = state === DomainState.running;
      const disks: VmDisk[] = [];
      for (const d of info.disks) {
        const size = await lv.blockInfo(dom, d.target).then((b) => b.capacity, () => 0);
        disks.push({ name: d.target, format: d.format, size, file: d.source, bitmaps: [] });
      }
      const vm: VmInfo = { name: endpoint.name ?? dom.name, address: addressOf(endpoint), status: STATE_NAMES[state] ?? String(state), qemuVersion, disks, scratchRule: 'full', agent: { state: 'not configured' } };
      if (endpoint.noAgent) vm.agent.error = 'the guest agent is turned off for this VM (qga=off)';
      else if (!info.agent) vm.agent.error = 'the domain has no org.qemu.guest_agent.0 channel';
      else if (running) {
        try {
          const t = Math.max(1, Math.round((opts.agentTimeoutMs ?? 3000) / 1000));
          const gi = await lv.agentCommand<{ version: string; supported_commands: { name: string; enabled: boolean }[] }>(dom, 'guest-info', undefined, t);
          vm.agent = { state: 'responding', version: gi.version };
          if (gi.supported_commands.some((c) => c.name === 'guest-get-fsinfo' && c.enabled)) {
            vm.agent.filesystems = (await lv.agentCommand<{ mountpoint: string; type: string }[]>(dom, 'guest-get-fsinfo', undefined, t)).map(({ mountpoint, type }) => ({ mountpoint, type }));
          }
        } catch (err) {
          vm.agent = { state: 'not responding', error: (err as Error).message };
        }
      } else vm.agent = { state: 'not responding', error: `the domain is ${vm.status}` };
      return vm;
    } finally {
      await lv.close();
    }
  },

  async nameOf(e) {
    return e.name ?? asLibvirt(e).libvirt.domain;
  },

  async guestFiles(e) {
    const endpoint = asLibvirt(e);
    const lv = await connect(endpoint);
    try {
      const dom = await lookup(lv, endpoint);
      return agentFileWriter((command, args) => lv.agentCommand(dom, command, args, 60), () => lv.close());
    } catch (err) {
      await lv.close();
      throw err;
    }
  },

  canFleece() {
    // The libvirt route never lets scratch space fail the guest: it is reserved in full up front.
    return { ok: true };
  },
};
