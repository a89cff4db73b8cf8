// The hypervisor seam: what the VM backup job (jobs/backup-vm.ts) needs from one VM, whatever runs
// it. A driver (hypervisors/qemu, later libvirt) opens a session per VM; the session owns the
// connection to the hypervisor, the VM's power actions and the guardian process that puts the VM
// right if Bulwark dies. Nothing above this layer speaks a hypervisor's wire protocol.
//
// A session's life in one backup run (docs/architecture.md, "The VM path"):
//   open → cleanupLeftovers → inspect → dropStaleBitmaps → preparePoint → guard
//   → [freeze through agent()] → pause? → point.take → resume? → [thaw] (or shutdown → take → start)
//   → point.export → point.finish(ok) → close
import type { DiskImage } from '../formats/image.js';
import type { VmConfig } from '../repository/snapshot.js';
import type { VmEndpoint } from './registry.js';

export interface VmBitmap {
  name: string;
  /** Records guest writes. */
  recording: boolean;
  /** Was not stored properly (the hypervisor crashed): cannot be trusted, only removed. */
  inconsistent: boolean;
  /** Dirty bytes. */
  count: number;
}

/** A writable disk of a VM, as the job sees it; drivers extend it with what they need to find it again. */
export interface VmDisk {
  /** Name in the restore point: vda, vdb, … in the order the hypervisor lists the disks. */
  name: string;
  format: string;
  size: number;
  file: string;
  bitmaps: VmBitmap[];
  /** A layer of an interrupted Bulwark run is still in the guest's write path. */
  layered?: boolean;
}

/** The guest agent, as the consistency protocol uses it; calls go through the session's guardian. */
export interface GuestAgent {
  info(): Promise<{ version: string; canFreeze: boolean }>;
  exists(path: string): Promise<boolean>;
  /** Resolves with the number of file systems frozen. The guardian thaws by itself after its deadline. */
  freeze(): Promise<number>;
  thaw(): Promise<number>;
}

/** A running VM's disks exported at the point in time, over NBD. */
export interface NbdPointExport {
  /** Unix socket of the NBD server that serves them. */
  socket: string;
  disks: { name: string; exportName: string; dirtyContext?: string }[];
}

/** A stopped VM's disks, read where they lie through the format readers (formats/). */
export interface ImagePointExport {
  images: { name: string; open(): Promise<DiskImage> }[];
}

export type PointExport = NbdPointExport | ImagePointExport;

export function isImageExport(e: PointExport): e is ImagePointExport {
  return 'images' in e;
}

/** The point-in-time image of a VM's disks: prepared before the freeze, taken inside it. */
export interface PointInTime {
  /** take() pauses the vCPUs itself (several disks switched at one instant) unless already paused. */
  readonly pausesVcpus: boolean;
  /** The point in time; `paused` when the caller has stopped the vCPUs. */
  take(opts: { paused: boolean }): Promise<void>;
  /** After the point: its disks over NBD, with the changes since the incremental base as a dirty context. */
  export(): Promise<PointExport>;
  /**
   * After the transfer, before the restore point is written: fails when the point no longer holds
   * (a stopped VM started, or its disk images changed, while they were read).
   */
  verify?(): Promise<void>;
  /** After a failed read: the driver's explanation, when it has one (scratch space ran out). */
  diagnose(): Promise<string | undefined>;
  /** Tears everything down. `ok`: the new bitmap becomes the incremental base; otherwise it is merged back. */
  finish(ok: boolean): Promise<void>;
}

export interface GuardOptions {
  /** The guardian holds the guest agent for freeze and thaw (and thaws after `freezeDeadlineMs`). */
  agent: boolean;
  /** The run pauses or shuts the VM down. */
  power: boolean;
  /** A freeze is undone by the guardian after this long, whatever happens (VSS allows writers 10 s). */
  freezeDeadlineMs?: number;
  /** Per guest agent call. */
  agentTimeoutMs?: number;
  /** --mode stop: how long a shutdown may take before the guardian gives up waiting and restarts. */
  stopTimeoutMs: number;
  /** Where the guardian keeps its log while it runs (the next run reports a log left behind). */
  logDir: string;
}

export interface VmSession {
  /** The VM's name: the one given, else the hypervisor's. */
  readonly name: string;
  /** What the session addresses, as the user gave it (recorded in the restore point). */
  readonly address: string;
  /** The VM has a guest agent the session can use (given, or found through the hypervisor). */
  readonly hasAgent: boolean;
  /**
   * Scratch space the point in time needs: 'shadow', a share of the disks (the image breaks, not the
   * guest, if it runs out); 'full', the disks' whole size, reserved before the point (libvirt).
   */
  readonly scratchRule: 'shadow' | 'full';
  /**
   * The VM is not running: its disks are read as they lie (no freeze, no scratch, no guardian), and
   * the point is as consistent as the VM was left: `application` after a clean shutdown.
   */
  readonly offline?: { consistency: 'application' | 'crash'; why: string };
  inspect(): Promise<{ disks: VmDisk[]; config: VmConfig }>;
  /** Files kept whole with the restore point (a machine folder's configuration), relative path and where to read it. */
  configFiles?(): Promise<{ path: string; file: string }[]>;
  /**
   * Removes what a killed run left in the hypervisor and in `scratchDir`; returns what a guardian of
   * that run did on its own (from the log it left), for the user to see.
   */
  cleanupLeftovers(scratchDir: string): Promise<string[]>;
  /** Our bitmaps on a disk other than the incremental base (left by a killed run): merged into the base and removed. */
  dropStaleBitmaps(disk: VmDisk, base: string | undefined): Promise<void>;
  /**
   * Slow work before any freeze: scratch images, filters, new bitmaps prepared. `previousBitmap`: the
   * incremental base, whose changes the export carries as a dirty context.
   */
  preparePoint(disks: VmDisk[], opts: { scratchDir: string; newBitmap: string; previousBitmap?: string }): Promise<PointInTime>;
  /**
   * Starts the guardian process where the run needs one (it freezes, pauses or shuts the VM down,
   * or the driver leaves work behind a killed run); before it, agent() is undefined and
   * pause/shutdown are refused.
   */
  guard(opts: GuardOptions): Promise<void>;
  /** The guest agent through the guardian, when one is configured and the guardian holds it. */
  agent(): GuestAgent | undefined;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** --mode stop: a clean shutdown, the VM kept (not exited); resolves with how it was asked. */
  shutdown(timeoutMs: number): Promise<'agent' | 'acpi'>;
  /** --mode stop: boots the guest again; `settled` once the VM's own settings are back as they were. */
  start(): Promise<{ settled: Promise<void> }>;
  /** Ends the guardian (thawing first if a freeze is still on) and the connection. */
  close(): Promise<void>;
}

/** What `vm list` and `doctor` show of a VM. */
export interface VmInfo {
  name: string;
  address: string;
  qga?: string;
  status: string;
  qemuVersion: string;
  disks: VmDisk[];
  scratchRule: 'shadow' | 'full';
  agent: { state: 'responding' | 'not responding' | 'not configured'; version?: string; error?: string; filesystems?: { mountpoint: string; type: string }[] };
}

/** Files written into a running guest through its agent (restore --to-guest). */
export interface GuestFileWriter {
  /** Makes a folder and its parents in the guest. */
  mkdir(path: string): Promise<void>;
  /** Writes a file; without `overwrite`, a file already there is refused by the guest. */
  write(path: string, data: AsyncIterable<Buffer>, opts: { overwrite: boolean }): Promise<void>;
  close(): Promise<void>;
}

export interface VmDriver {
  readonly name: string;
  /** The VMs an endpoint stands for: itself, or every domain of a libvirt connection. */
  list(endpoint: VmEndpoint): Promise<VmEndpoint[]>;
  /** `log` receives what the session's guardian did, as it happens. */
  open(endpoint: VmEndpoint, opts?: { log?: (message: string) => void }): Promise<VmSession>;
  /** A quick look for `vm list` and `doctor`: never changes the VM. */
  describe(endpoint: VmEndpoint, opts?: { agentTimeoutMs?: number }): Promise<VmInfo>;
  /** The VM's own name, for endpoints given without one; undefined when it cannot be asked. */
  nameOf(endpoint: VmEndpoint): Promise<string | undefined>;
  /** The running guest's agent, to write files into it; undefined when the driver cannot. */
  guestFiles?(endpoint: VmEndpoint): Promise<GuestFileWriter>;
  /** The hypervisor can take point-in-time images that fail the backup, never the guest, when scratch space runs out. */
  canFleece(qemuVersion: string | undefined): { ok: true } | { ok: false; why: string; fix: string };
}
