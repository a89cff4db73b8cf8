// A fake hypervisor behind the real seam (hypervisors/session.ts), for the backup job's own tests:
// every call lands in a journal, any step can be made to fail, and the VM's state (frozen, paused,
// down, guarded, bitmaps) is kept so a test can see what a failure left behind. Disks are real
// images: the point in time is a copy made by take(), exported by a real qemu-nbd.
import { copyFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { qemuImg, startQemuNbd, type QemuNbdServer } from '../../protocols/nbd/testing/qemu-nbd.js';
import type { VmConfig } from '../../repository/snapshot.js';
import { BulwarkError } from '../../util/errors.js';
import { OfflinePoint } from '../offline-point.js';
import type { VmEndpoint } from '../registry.js';
import type { GuardOptions, GuestAgent, PointExport, PointInTime, VmDisk, VmDriver, VmInfo, VmSession } from '../session.js';

export type FakeStep =
  | 'open' | 'cleanup' | 'inspect' | 'prepare' | 'guard' | 'agent-info' | 'freeze' | 'thaw' | 'pause' | 'resume'
  | 'take' | 'export' | 'read' | 'finish' | 'shutdown' | 'start';

export interface FakeVm {
  name: string;
  /** A qcow2 image made by qemu-img: the VM's one disk. */
  image: string;
  agent?: { canFreeze?: boolean; hooks?: boolean };
  /** Steps that fail for this VM, with the error each throws (default: a plain 'failed'). */
  fail?: Partial<Record<FakeStep, BulwarkError>>;
  /** What cleanupLeftovers reports (an interrupted run's guardian log). */
  leftovers?: string[];
  /** The VM is not running: its image is read as it lies (hypervisors/offline-point.ts). */
  offline?: { consistency: 'application' | 'crash'; why: string; startsDuringRead?: boolean };
}

export interface FakeState {
  frozen: boolean;
  paused: boolean;
  down: boolean;
  guarded: boolean;
  /** A session was opened (and must be closed). */
  opened: boolean;
  closed: boolean;
  /** preparePoint succeeded: the point must be finished. */
  prepared: boolean;
  /** Bitmaps on the disk: the base, and a new one while a point is prepared. */
  bitmaps: Set<string>;
  /** What finish() did: 'kept' (ok) or 'merged' (failed: the new bitmap's changes went back to the base). */
  finished?: 'kept' | 'merged';
}

export class FakeDriver implements VmDriver {
  readonly name = 'fake';
  readonly journal: string[] = [];
  readonly state = new Map<string, FakeState>();

  constructor(
    private readonly vms: FakeVm[],
    private readonly scratch: string,
  ) {
    for (const vm of vms) this.state.set(vm.name, { frozen: false, paused: false, down: false, guarded: false, opened: false, closed: false, prepared: false, bitmaps: new Set() });
  }

  endpoint(name: string): VmEndpoint {
    return { name, qmp: `/fake/${name}.qmp` };
  }

  private vm(endpoint: VmEndpoint): FakeVm {
    const vm = this.vms.find((v) => v.name === endpoint.name);
    if (!vm) throw new Error(`no fake VM ${endpoint.name}`);
    return vm;
  }

  /** Records the step; throws if the VM was told to fail there. */
  step(vm: FakeVm, step: FakeStep): void {
    this.journal.push(`${vm.name} ${step}`);
    const err = vm.fail?.[step];
    if (err) throw err;
  }

  async open(endpoint: VmEndpoint): Promise<VmSession> {
    const vm = this.vm(endpoint);
    this.step(vm, 'open');
    this.state.get(vm.name)!.opened = true;
    return new FakeSession(this, vm, this.state.get(vm.name)!, this.scratch);
  }

  async describe(endpoint: VmEndpoint): Promise<VmInfo> {
    const vm = this.vm(endpoint);
    return { name: vm.name, address: `/fake/${vm.name}.qmp`, status: 'running', qemuVersion: '7.2.0', disks: [], scratchRule: 'shadow', agent: { state: vm.agent ? 'responding' : 'not configured' } };
  }

  async list(endpoint: VmEndpoint): Promise<VmEndpoint[]> {
    return [endpoint];
  }

  async nameOf(endpoint: VmEndpoint): Promise<string | undefined> {
    return endpoint.name;
  }

  canFleece(): { ok: true } {
    return { ok: true };
  }
}

class FakeSession implements VmSession {
  private point: FakePoint | undefined;

  constructor(
    private readonly driver: FakeDriver,
    private readonly vm: FakeVm,
    private readonly st: FakeState,
    private readonly scratch: string,
  ) {}

  get name(): string {
    return this.vm.name;
  }
  get address(): string {
    return `/fake/${this.vm.name}.qmp`;
  }
  get hasAgent(): boolean {
    return this.vm.agent !== undefined;
  }
  readonly scratchRule = 'shadow';

  get offline(): { consistency: 'application' | 'crash'; why: string } | undefined {
    return this.vm.offline ? { consistency: this.vm.offline.consistency, why: this.vm.offline.why } : undefined;
  }

  async inspect(): Promise<{ disks: VmDisk[]; config: VmConfig }> {
    this.driver.step(this.vm, 'inspect');
    const info = JSON.parse(await qemuImg('info', '--output=json', this.vm.image)) as { 'virtual-size': number };
    const disk: VmDisk = { name: 'vda', format: 'qcow2', size: info['virtual-size'], file: this.vm.image, bitmaps: [...this.st.bitmaps].map((name) => ({ name, recording: true, inconsistent: false, count: 0 })) };
    return { disks: [disk], config: { name: this.vm.name, disks: [{ name: 'vda', device: 'vd0', format: 'qcow2', size: disk.size, file: disk.file }], qemuVersion: '7.2.0' } };
  }

  async cleanupLeftovers(): Promise<string[]> {
    this.driver.step(this.vm, 'cleanup');
    return this.vm.leftovers ?? [];
  }

  async dropStaleBitmaps(_disk: VmDisk, base: string | undefined): Promise<void> {
    for (const b of this.st.bitmaps) if (b !== base) this.st.bitmaps.delete(b);
  }

  async preparePoint(_disks: VmDisk[], opts: { scratchDir: string; newBitmap: string; previousBitmap?: string }): Promise<PointInTime> {
    this.driver.step(this.vm, 'prepare');
    if (this.vm.offline) {
      // The real offline point over the real image; "is it still down?" answers as the test says.
      let asked = 0;
      const starts = this.vm.offline.startsDuringRead;
      return new OfflinePoint(this.vm.name, [{ name: 'vda', file: this.vm.image, format: 'qcow2' }], async () => (starts && ++asked > 1 ? 'was started' : undefined));
    }
    this.st.prepared = true;
    this.point = new FakePoint(this.driver, this.vm, this.st, join(this.scratch, `${this.vm.name}-point.qcow2`), opts.newBitmap, opts.previousBitmap);
    return this.point;
  }

  async guard(opts: GuardOptions): Promise<void> {
    if (!((opts.agent && this.hasAgent) || opts.power)) return;
    this.driver.step(this.vm, 'guard');
    this.st.guarded = true;
  }

  agent(): GuestAgent | undefined {
    if (!this.vm.agent || !this.st.guarded) return undefined;
    const a = this.vm.agent;
    return {
      info: async () => {
        this.driver.step(this.vm, 'agent-info');
        return { version: '7.2.0', canFreeze: a.canFreeze ?? true };
      },
      exists: async () => a.hooks ?? false,
      freeze: async () => {
        this.driver.step(this.vm, 'freeze');
        this.st.frozen = true;
        return 1;
      },
      thaw: async () => {
        this.driver.step(this.vm, 'thaw');
        this.st.frozen = false;
        return 1;
      },
    };
  }

  async pause(): Promise<void> {
    this.driver.step(this.vm, 'pause');
    this.st.paused = true;
  }

  async resume(): Promise<void> {
    this.driver.step(this.vm, 'resume');
    this.st.paused = false;
  }

  async shutdown(): Promise<'agent' | 'acpi'> {
    this.driver.step(this.vm, 'shutdown');
    this.st.down = true;
    return 'agent';
  }

  async start(): Promise<{ settled: Promise<void> }> {
    this.driver.step(this.vm, 'start');
    this.st.down = false;
    return { settled: Promise.resolve() };
  }

  async close(): Promise<void> {
    this.driver.journal.push(`${this.vm.name} close`);
    // Like the real guardian: a freeze still on is undone when the session ends.
    this.st.frozen = false;
    this.st.guarded = false;
    this.st.closed = true;
  }
}

class FakePoint implements PointInTime {
  readonly pausesVcpus = false;
  private server: QemuNbdServer | undefined;

  constructor(
    private readonly driver: FakeDriver,
    private readonly vm: FakeVm,
    private readonly st: FakeState,
    private readonly file: string,
    private readonly newBitmap: string,
    private readonly previous: string | undefined,
  ) {}

  async take(): Promise<void> {
    this.driver.step(this.vm, 'take');
    this.st.bitmaps.add(this.newBitmap);
    await copyFile(this.vm.image, this.file);
  }

  async export(): Promise<PointExport> {
    this.driver.step(this.vm, 'export');
    const socket = `${this.file}.nbd`;
    // A read that fails: the export points where no server listens.
    if (this.vm.fail?.read) return { socket: `${socket}.nobody`, disks: [{ name: 'vda', exportName: 'vda' }] };
    this.server = await startQemuNbd({ image: this.file, format: 'qcow2', socket });
    return { socket, disks: [{ name: 'vda', exportName: 'vda' }] };
  }

  async diagnose(): Promise<string | undefined> {
    return undefined;
  }

  async finish(ok: boolean): Promise<void> {
    this.driver.journal.push(`${this.vm.name} finish ${ok ? 'ok' : 'failed'}`);
    await this.server?.stop();
    await rm(this.file, { force: true });
    if (ok) {
      if (this.previous) this.st.bitmaps.delete(this.previous);
      this.st.finished = 'kept';
    } else {
      this.st.bitmaps.delete(this.newBitmap);
      this.st.finished = 'merged';
    }
    this.driver.step(this.vm, 'finish');
  }
}
