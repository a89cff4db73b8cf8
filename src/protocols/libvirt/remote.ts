// The libvirt calls Bulwark makes, typed: each encodes its remote_CALL_args and decodes its
// remote_CALL_ret exactly as remote_protocol.x (and qemu_protocol.x for the agent) lays them out.
import { existsSync } from 'node:fs';
import { BulwarkError } from '../../util/errors.js';
import { LibvirtClient, QEMU_PROGRAM } from './client.js';
import { XdrReader, XdrWriter } from './xdr.js';

export interface Domain {
  name: string;
  /** 16 bytes. */
  uuid: Buffer;
  /** -1 while shut off. */
  id: number;
}

export interface Checkpoint {
  name: string;
  dom: Domain;
}

/** virDomainState. */
export const DomainState = { nostate: 0, running: 1, blocked: 2, paused: 3, shutdown: 4, shutoff: 5, crashed: 6, pmsuspended: 7 } as const;
export const STATE_NAMES = ['no state', 'running', 'blocked', 'paused', 'shutting down', 'shut off', 'crashed', 'suspended (power management)'];

export const XML_INACTIVE = 2;
export const BACKUP_BEGIN_REUSE_EXTERNAL = 1;
export const SHUTDOWN_ACPI = 1;
export const SHUTDOWN_AGENT = 2;
export const START_PAUSED = 1;
/** Why a domain is shut off (virDomainShutoffReason). */
export const ShutoffReason = { unknown: 0, shutdown: 1, destroyed: 2, crashed: 3, migrated: 4, saved: 5, failed: 6, fromSnapshot: 7, daemon: 8 } as const;
export const UNDEFINE_CHECKPOINTS_METADATA = 256;
/** virDomainBlockPull's bandwidth is in bytes/s, not MiB/s. */
export const BLOCK_PULL_BANDWIDTH_BYTES = 64;

const P = {
  connectGetCapabilities: 7,
  connectGetVersion: 4,
  domainCreateXml: 10,
  domainCreate: 9,
  domainGetXmlDesc: 14,
  domainLookupByName: 23,
  domainLookupByUuid: 24,
  domainResume: 28,
  domainSuspend: 34,
  connectGetLibVersion: 157,
  domainGetJobInfo: 163,
  domainAbortJob: 164,
  domainIsPersistent: 151,
  domainGetBlockInfo: 194,
  domainCreateWithFlags: 196,
  domainGetState: 212,
  domainUndefineFlags: 231,
  domainBlockJobAbort: 237,
  domainGetBlockJobInfo: 238,
  domainBlockPull: 240,
  domainDestroyFlags: 234,
  domainShutdownFlags: 258,
  connectListAllDomains: 273,
  domainFsfreeze: 335,
  domainFsthaw: 336,
  domainDefineXmlFlags: 350,
  checkpointCreateXml: 411,
  checkpointGetXmlDesc: 412,
  listAllCheckpoints: 413,
  checkpointLookupByName: 415,
  checkpointDelete: 417,
  backupBegin: 421,
  backupGetXmlDesc: 422,
  qemuAgentCommand: 3,
} as const;

function writeDomain(w: XdrWriter, d: Domain): XdrWriter {
  return w.string(d.name).fixed(d.uuid).int(d.id);
}

function readDomain(r: XdrReader): Domain {
  return { name: r.string(), uuid: r.fixed(16), id: r.int() };
}

function readCheckpoint(r: XdrReader): Checkpoint {
  return { name: r.string(), dom: readDomain(r) };
}

export function uuidString(uuid: Buffer): string {
  const h = uuid.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function uuidBytes(s: string): Buffer | undefined {
  const h = s.replace(/-/g, '');
  return /^[0-9a-fA-F]{32}$/.test(h) ? Buffer.from(h, 'hex') : undefined;
}

/** Where a libvirt URI's daemon listens, and the URI to open there (the transport part dropped). */
export function socketOfUri(uri: string): { socket: string; open: string } {
  const m = /^(qemu)(\+unix)?:\/\/\/(system|session)(\?.*)?$/.exec(uri);
  if (!m) {
    throw new BulwarkError('usage', `unsupported libvirt URI '${uri}'`, { hint: 'use qemu:///system, qemu:///session or qemu+unix:///system?socket=PATH (remote transports go through a local socket or ssh tunnel)' });
  }
  const open = `${m[1]}:///${m[3]}`;
  const given = new URLSearchParams((m[4] ?? '').slice(1)).get('socket');
  if (given) return { socket: given, open };
  const base = m[3] === 'system' ? '/run/libvirt' : `${process.env['XDG_RUNTIME_DIR'] ?? `/run/user/${process.getuid?.() ?? 0}`}/libvirt`;
  // The monolithic daemon's socket, else the modular QEMU daemon's (virtqemud).
  const candidates = [`${base}/libvirt-sock`, `${base}/virtqemud-sock`];
  return { socket: candidates.find((c) => existsSync(c)) ?? candidates[0]!, open };
}

/** A libvirt connection with the calls Bulwark makes. */
export class Libvirt {
  private constructor(readonly client: LibvirtClient) {}

  static async open(uri: string, opts: { timeoutMs?: number } = {}): Promise<Libvirt> {
    const { socket, open } = socketOfUri(uri);
    return new Libvirt(await LibvirtClient.connect({ socket, uri: open, ...opts }));
  }

  close(): Promise<void> {
    return this.client.close();
  }

  private async domCall(proc: number, dom: Domain, more?: (w: XdrWriter) => void, opts: { program?: number; timeoutMs?: number } = {}): Promise<XdrReader> {
    const w = writeDomain(new XdrWriter(), dom);
    more?.(w);
    return this.client.call(proc, w.toBuffer(), opts);
  }

  async libVersion(): Promise<string> {
    return versionString((await this.client.call(P.connectGetLibVersion, Buffer.alloc(0))).uhyper());
  }

  /** The hypervisor's version: QEMU's, for the QEMU driver. */
  async hypervisorVersion(): Promise<string> {
    return versionString((await this.client.call(P.connectGetVersion, Buffer.alloc(0))).uhyper());
  }

  async listDomains(): Promise<Domain[]> {
    const r = await this.client.call(P.connectListAllDomains, new XdrWriter().int(1).uint(0).toBuffer());
    return r.array(readDomain, 16384);
  }

  async lookupByName(name: string): Promise<Domain> {
    return readDomain(await this.client.call(P.domainLookupByName, new XdrWriter().string(name).toBuffer()));
  }

  async lookupByUuid(uuid: Buffer): Promise<Domain> {
    return readDomain(await this.client.call(P.domainLookupByUuid, new XdrWriter().fixed(uuid).toBuffer()));
  }

  /** By name, or by UUID when `nameOrUuid` is one. */
  async lookup(nameOrUuid: string): Promise<Domain> {
    const uuid = uuidBytes(nameOrUuid);
    if (uuid) {
      try {
        return await this.lookupByUuid(uuid);
      } catch {
        // a domain may be named like a UUID
      }
    }
    return this.lookupByName(nameOrUuid);
  }

  async xml(dom: Domain, flags = 0): Promise<string> {
    return (await this.domCall(P.domainGetXmlDesc, dom, (w) => w.uint(flags))).string();
  }

  async state(dom: Domain): Promise<{ state: number; reason: number }> {
    const r = await this.domCall(P.domainGetState, dom, (w) => w.uint(0));
    return { state: r.int(), reason: r.int() };
  }

  /** A disk's virtual size (capacity), allocation and physical size, by target or source path. */
  async blockInfo(dom: Domain, disk: string): Promise<{ allocation: number; capacity: number; physical: number }> {
    const r = await this.domCall(P.domainGetBlockInfo, dom, (w) => w.string(disk).uint(0));
    return { allocation: Number(r.uhyper()), capacity: Number(r.uhyper()), physical: Number(r.uhyper()) };
  }

  async suspend(dom: Domain): Promise<void> {
    await this.domCall(P.domainSuspend, dom);
  }

  async resume(dom: Domain): Promise<void> {
    await this.domCall(P.domainResume, dom);
  }

  async shutdown(dom: Domain, flags: number): Promise<void> {
    await this.domCall(P.domainShutdownFlags, dom, (w) => w.uint(flags));
  }

  /** Boots a defined domain; START_PAUSED: its QEMU starts with the vCPUs stopped. */
  async start(dom: Domain, flags = 0): Promise<Domain> {
    return readDomain(await this.domCall(P.domainCreateWithFlags, dom, (w) => w.uint(flags)));
  }

  /** A persistent domain outlives a shutdown; a transient one is gone with its QEMU. */
  async isPersistent(dom: Domain): Promise<boolean> {
    return (await this.domCall(P.domainIsPersistent, dom)).int() === 1;
  }

  /** The host's capabilities XML (virConnectGetCapabilities): among others, the user QEMU runs as. */
  async capabilities(): Promise<string> {
    return (await this.client.call(P.connectGetCapabilities, Buffer.alloc(0))).string();
  }

  /** Starts a transient domain from `xml`: it exists while its QEMU runs, and is defined by no file. */
  async createTransient(xml: string, flags = 0): Promise<Domain> {
    return readDomain(await this.client.call(P.domainCreateXml, new XdrWriter().string(xml).uint(flags).toBuffer()));
  }

  /** Fills a disk's top image from its backing chain while the domain runs (QEMU's block-stream). */
  async blockPull(dom: Domain, disk: string, bandwidth: number, flags = 0): Promise<void> {
    await this.domCall(P.domainBlockPull, dom, (w) => w.string(disk).hyper(BigInt(bandwidth)).uint(flags));
  }

  /** The disk's block job, if one runs: its type and progress (cur of end). */
  async blockJob(dom: Domain, disk: string): Promise<{ type: number; cur: number; end: number } | undefined> {
    const r = await this.domCall(P.domainGetBlockJobInfo, dom, (w) => w.string(disk).uint(0));
    const found = r.int();
    const type = r.int();
    r.uhyper();
    const cur = Number(r.uhyper());
    const end = Number(r.uhyper());
    return found === 1 ? { type, cur, end } : undefined;
  }

  async blockJobAbort(dom: Domain, disk: string, flags = 0): Promise<void> {
    await this.domCall(P.domainBlockJobAbort, dom, (w) => w.string(disk).uint(flags));
  }

  async destroy(dom: Domain): Promise<void> {
    await this.domCall(P.domainDestroyFlags, dom, (w) => w.uint(0));
  }

  async undefine(dom: Domain, flags = 0): Promise<void> {
    await this.domCall(P.domainUndefineFlags, dom, (w) => w.uint(flags));
  }

  async define(xml: string): Promise<Domain> {
    return readDomain(await this.client.call(P.domainDefineXmlFlags, new XdrWriter().string(xml).uint(0).toBuffer()));
  }

  async fsfreeze(dom: Domain, timeoutMs?: number): Promise<number> {
    return (await this.domCall(P.domainFsfreeze, dom, (w) => w.array<string>([], () => undefined).uint(0), timeoutMs ? { timeoutMs } : {})).int();
  }

  async fsthaw(dom: Domain, timeoutMs?: number): Promise<number> {
    return (await this.domCall(P.domainFsthaw, dom, (w) => w.array<string>([], () => undefined).uint(0), timeoutMs ? { timeoutMs } : {})).int();
  }

  /** A guest agent command through libvirt (which holds the agent's channel): JSON in, `return` out. */
  async agentCommand<T = unknown>(dom: Domain, command: string, args?: Record<string, unknown>, timeoutS = 5): Promise<T> {
    const cmd = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command });
    const r = await this.domCall(P.qemuAgentCommand, dom, (w) => w.string(cmd).int(timeoutS).uint(0), { program: QEMU_PROGRAM, timeoutMs: (timeoutS + 5) * 1000 });
    const text = r.optString();
    if (text === undefined) throw new BulwarkError('protocol', `guest agent gave no answer to ${command}`);
    return (JSON.parse(text) as { return: T }).return;
  }

  async backupBegin(dom: Domain, backupXml: string, checkpointXml: string | undefined, flags: number): Promise<void> {
    await this.domCall(P.backupBegin, dom, (w) => w.string(backupXml).optString(checkpointXml).uint(flags));
  }

  async backupXml(dom: Domain): Promise<string> {
    return (await this.domCall(P.backupGetXmlDesc, dom, (w) => w.uint(0))).string();
  }

  /** virDomainJobType: 0 none, 1 bounded, 2 unbounded, 3 completed, 4 failed, 5 cancelled. */
  async jobType(dom: Domain): Promise<number> {
    return (await this.domCall(P.domainGetJobInfo, dom)).int();
  }

  async abortJob(dom: Domain): Promise<void> {
    await this.domCall(P.domainAbortJob, dom);
  }

  async checkpoints(dom: Domain): Promise<Checkpoint[]> {
    return (await this.domCall(P.listAllCheckpoints, dom, (w) => w.int(1).uint(0))).array(readCheckpoint, 16384);
  }

  async checkpointXml(cp: Checkpoint): Promise<string> {
    return (await this.client.call(P.checkpointGetXmlDesc, writeDomain(new XdrWriter().string(cp.name), cp.dom).uint(0).toBuffer())).string();
  }

  /** Deleting a checkpoint merges its bitmap into its parent's: no change is lost. */
  async deleteCheckpoint(cp: Checkpoint): Promise<void> {
    await this.client.call(P.checkpointDelete, writeDomain(new XdrWriter().string(cp.name), cp.dom).uint(0).toBuffer());
  }
}

function versionString(v: bigint): string {
  const n = Number(v);
  return `${Math.floor(n / 1_000_000)}.${Math.floor(n / 1000) % 1000}.${n % 1000}`;
}
