// The VM backup job's failure paths, driven through a fake hypervisor behind the real seam. Real
// guests prove the protocol end to end (test/e2e/vm-backup.test.ts); here every step of it fails on
// purpose and the test looks at what the job left behind: nothing frozen, paused or down, every
// point finished (its new bitmap merged back unless the backup was committed), every session closed.
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestRepository, type TestRepository } from '../../test/helpers/repo.js';
import { FakeDriver, type FakeStep, type FakeVm } from '../hypervisors/testing/fake-driver.js';
import { qemuImg, qemuIo } from '../protocols/nbd/testing/qemu-nbd.js';
import { restoreDisk } from '../restore/disk.js';
import { listSnapshots } from '../repository/snapshot.js';
import { BulwarkError } from '../util/errors.js';
import { backupVms, type VmBackupOptions } from './backup-vm.js';

const run = promisify(execFile);
let t: TestRepository;
let images: string[];
let scratch: string;

beforeAll(async () => {
  t = await createTestRepository();
  scratch = join(t.dir, 'scratch');
  await mkdir(scratch);
  images = [];
  for (const [i, name] of ['web', 'db'].entries()) {
    const img = join(t.dir, `${name}.qcow2`);
    await qemuImg('create', '-q', '-f', 'qcow2', img, '4M');
    await qemuIo(img, 'qcow2', `write -P 0x${(0x41 + i).toString(16)} 64k 128k`, `write -P 0x5a 3M 4k`);
    images.push(img);
  }
});
afterAll(async () => {
  await t.cleanup();
});

function vms(extra: Partial<Record<'web' | 'db', Partial<FakeVm>>> = {}): FakeVm[] {
  return [
    { name: 'web', image: images[0]!, agent: { hooks: true }, ...extra.web },
    { name: 'db', image: images[1]!, agent: { hooks: true }, ...extra.db },
  ];
}

function options(driver: FakeDriver, names: string[], o: Partial<VmBackupOptions> = {}): VmBackupOptions {
  return { endpoints: names.map((n) => driver.endpoint(n)), group: false, policy: 'auto', mode: 'snapshot', full: false, scratchDir: scratch, scratchMin: 0, ...o };
}

/** Nothing of the run is left in any VM. */
function expectLeftClean(driver: FakeDriver): void {
  for (const [name, s] of driver.state) {
    expect({ vm: name, frozen: s.frozen, paused: s.paused, down: s.down, open: s.opened && !s.closed }).toEqual({ vm: name, frozen: false, paused: false, down: false, open: false });
    if (s.prepared && !driver.journal.includes(`${name} finish ok`)) expect(s.finished, `${name}'s point`).toBe('merged');
  }
}

const boom = (step: string): BulwarkError => new BulwarkError('failed', `${step} broke`, { hint: `fix the ${step}` });

describe('VM backup job over the seam', () => {
  it('runs the steps in order and restores what the point held', async () => {
    const driver = new FakeDriver(vms(), scratch);
    const [r] = await backupVms(t.repo, () => driver, options(driver, ['web']));
    expect(r!.error).toBeUndefined();
    expect(r!.consistency).toBe('application');
    const steps = driver.journal.filter((j) => j.startsWith('web ')).map((j) => j.slice(4));
    expect(steps).toEqual(['open', 'cleanup', 'inspect', 'inspect', 'prepare', 'guard', 'agent-info', 'freeze', 'take', 'thaw', 'export', 'finish ok', 'finish', 'close']);
    const out = join(t.dir, 'restored-1');
    await mkdir(out);
    const restored = await restoreDisk(t.repo, r!.snapshot!.disks![0]!, { targetDir: out, format: 'raw' });
    // qemu-img compare: the image itself, not our record of it, is the witness.
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', images[0]!, restored.path]);
    expectLeftClean(driver);
  });

  for (const step of ['open', 'cleanup', 'inspect', 'prepare', 'guard'] as FakeStep[]) {
    it(`a group member failing at ${step} fails the group with its code and hint; the other is left as it was`, async () => {
      const driver = new FakeDriver(vms({ db: { fail: { [step]: boom(step) } } }), scratch);
      const err = await backupVms(t.repo, () => driver, options(driver, ['web', 'db'], { group: true })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BulwarkError);
      expect((err as BulwarkError).message).toMatch(`${step} broke`);
      expect((err as BulwarkError).hint).toBe(`fix the ${step}`);
      expect(driver.journal).not.toContain('web freeze');
      expectLeftClean(driver);
    });
  }

  it('a group member whose point cannot be taken: both thawed, the group fails, both points merged back', async () => {
    const driver = new FakeDriver(vms({ db: { fail: { take: boom('take') } } }), scratch);
    await expect(backupVms(t.repo, () => driver, options(driver, ['web', 'db'], { group: true }))).rejects.toThrow(/take broke/);
    expect(driver.journal).toEqual(expect.arrayContaining(['web thaw', 'db thaw']));
    expectLeftClean(driver);
  });

  it('crash-consistent groups pause every VM around the points, and resume them when a point fails', async () => {
    const driver = new FakeDriver(vms({ db: { fail: { take: boom('take') } } }), scratch);
    await expect(backupVms(t.repo, () => driver, options(driver, ['web', 'db'], { group: true, policy: 'crash' }))).rejects.toThrow(/take broke/);
    const order = driver.journal.filter((j) => /pause|resume|take/.test(j));
    expect(order).toEqual(['web pause', 'db pause', 'web take', 'db take', 'web resume', 'db resume']);
    expect(driver.journal).not.toContain('web freeze');
    expectLeftClean(driver);
  });

  it('a failed transfer fails that VM only; its new bitmap is merged back and the next run reads in full', async () => {
    const driver = new FakeDriver(vms({ db: { fail: { read: boom('read') } } }), scratch);
    const results = await backupVms(t.repo, () => driver, options(driver, ['web', 'db'], { group: true }));
    const web = results.find((r) => r.vm === 'web')!;
    const db = results.find((r) => r.vm === 'db')!;
    expect(web.snapshot).toBeDefined();
    expect(db.error).toBeDefined();
    expect(db.consistency).toBe('application');
    expect(driver.state.get('db')!.finished).toBe('merged');
    expect(driver.state.get('web')!.finished).toBe('kept');
    expectLeftClean(driver);
  });

  it('a thaw that fails is a warning on a restore point that is still written', async () => {
    const driver = new FakeDriver(vms({ web: { fail: { thaw: boom('thaw') } } }), scratch);
    const [r] = await backupVms(t.repo, () => driver, options(driver, ['web']));
    expect(r!.snapshot).toBeDefined();
    expect(r!.warnings.join('\n')).toMatch(/thaw failed \(thaw broke\)/);
    // The session's end thaws what is still frozen (the real guardian does, and retries).
    expectLeftClean(driver);
  });

  it('a freeze that fails gives crash consistency under auto, and fails the VM under application', async () => {
    const auto = new FakeDriver(vms({ web: { fail: { freeze: boom('freeze') } } }), scratch);
    const [a] = await backupVms(t.repo, () => auto, options(auto, ['web']));
    expect(a!.consistency).toBe('crash');
    expect(a!.warnings.join('\n')).toMatch(/freeze failed/);
    const strict = new FakeDriver(vms({ web: { fail: { freeze: boom('freeze') } } }), scratch);
    const [s] = await backupVms(t.repo, () => strict, options(strict, ['web'], { policy: 'application' }));
    expect(s!.error).toMatch(/cannot be backed up application-consistent/);
    expect(s!.code).toBe('failed');
    expect(s!.hint).toMatch(/qemu-guest-agent/);
    expect(strict.journal).toContain('web thaw');
    expectLeftClean(auto);
    expectLeftClean(strict);
  });

  it('without an agent: no guardian is needed for a crash-consistent point, and application policy refuses', async () => {
    const driver = new FakeDriver(vms({ web: { agent: undefined } }), scratch);
    const [r] = await backupVms(t.repo, () => driver, options(driver, ['web']));
    expect(r!.consistency).toBe('crash');
    expect(driver.journal).not.toContain('web guard');
    const [s] = await backupVms(t.repo, () => driver, options(driver, ['web'], { policy: 'application' }));
    expect(s!.error).toMatch(/no guest agent/);
    expectLeftClean(driver);
  });

  it('errors keep their code and hint in the default (one VM at a time) mode', async () => {
    const driver = new FakeDriver(vms({ web: { fail: { open: new BulwarkError('not-found', 'no socket', { hint: 'is the VM running?' }) } } }), scratch);
    const [r, d] = await backupVms(t.repo, () => driver, options(driver, ['web', 'db'], { scratchMin: 0 }));
    expect(r).toMatchObject({ vm: 'web', error: 'no socket', code: 'not-found', hint: 'is the VM running?' });
    expect(d!.snapshot).toBeDefined();
    const missing = new FakeDriver(vms(), scratch);
    const [m] = await backupVms(t.repo, () => missing, options(missing, ['web'], { scratchDir: join(t.dir, 'no-such-dir') }));
    expect(m).toMatchObject({ code: 'usage', hint: expect.stringMatching(/--scratch-dir/) });
    expectLeftClean(missing);
  });

  it("an interrupted run's guardian log is reported in the result and the restore point", async () => {
    const note = "an interrupted run's guardian: 2026-11-28T01:00:00Z VM web: thawed the guest's file systems (Bulwark went away)";
    const driver = new FakeDriver(vms({ web: { leftovers: [note] } }), scratch);
    const [r] = await backupVms(t.repo, () => driver, options(driver, ['web']));
    expect(r!.warnings).toContain(note);
    expect(r!.snapshot!.summary.warnings).toContain(note);
  });

  it('mode stop: a group member that cannot shut down fails the group, and every VM that went down is started again', async () => {
    const driver = new FakeDriver(vms({ db: { fail: { shutdown: boom('shutdown') } } }), scratch);
    const results = await backupVms(t.repo, () => driver, options(driver, ['web', 'db'], { group: true, mode: 'stop' }));
    expect(results.every((r) => r.error)).toBe(true);
    expect(results.find((r) => r.vm === 'web')!.error).toMatch(/VM db of the group could not be shut down: shutdown broke/);
    expect(driver.journal).toEqual(expect.arrayContaining(['web shutdown', 'web start']));
    expect(driver.journal).not.toContain('web take');
    expectLeftClean(driver);
  });

  it('mode stop: a VM that cannot be started again is an error that says how', async () => {
    const driver = new FakeDriver(vms({ web: { fail: { start: boom('start') } } }), scratch);
    const [r] = await backupVms(t.repo, () => driver, options(driver, ['web'], { mode: 'stop' }));
    expect(r!.error).toMatch(/could not be started again: start broke/);
    expect(r!.hint).toMatch(/system_reset/);
  });

  it('a stopped VM: no freeze, no guardian, its image read whole through the readers; crash-consistent ones refused under application', async () => {
    const driver = new FakeDriver(vms({ web: { offline: { consistency: 'application', why: 'web is shut down cleanly' } }, db: { offline: { consistency: 'crash', why: 'db was forced off' } } }), scratch);
    const [web] = await backupVms(t.repo, () => driver, options(driver, ['web']));
    expect(web!.error).toBeUndefined();
    expect(web!.consistency).toBe('application');
    expect(web!.freezeMs).toBe(0);
    expect(web!.warnings).toContain('web is shut down cleanly');
    const steps = driver.journal.filter((j) => j.startsWith('web ')).map((j) => j.slice(4));
    expect(steps).toEqual(['open', 'cleanup', 'inspect', 'prepare', 'close']);
    // Holes of the 4 MiB image are not read: the two writes, whole clusters at most.
    expect(web!.disks[0]!.bytesRead).toBeLessThanOrEqual(2 * 65536 + 65536);
    const out = join(t.dir, 'restored-offline');
    await mkdir(out);
    const restored = await restoreDisk(t.repo, web!.snapshot!.disks![0]!, { targetDir: out, format: 'raw' });
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', images[0]!, restored.path]);

    const [strict] = await backupVms(t.repo, () => driver, options(driver, ['db'], { policy: 'application' }));
    expect(strict!.error).toMatch(/not shut down cleanly \(db was forced off\).*--consistency application/);
    const [auto] = await backupVms(t.repo, () => driver, options(driver, ['db']));
    expect(auto!.consistency).toBe('crash');
    expectLeftClean(driver);
  });

  it('a stopped VM started while its disks are read: no restore point is written', async () => {
    const driver = new FakeDriver(vms({ web: { offline: { consistency: 'application', why: 'down', startsDuringRead: true } } }), scratch);
    const before = (await listSnapshots(t.repo, {})).length;
    const [r] = await backupVms(t.repo, () => driver, options(driver, ['web']));
    expect(r!.error).toMatch(/was started while its disks were read: the copy may be torn, so no restore point was written/);
    expect(r!.snapshot).toBeUndefined();
    expect((await listSnapshots(t.repo, {})).length).toBe(before);
    expectLeftClean(driver);
  });
});
