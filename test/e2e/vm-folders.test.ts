// Issue "libvirt domains, a hypervisor seam …, every common VM disk format": VirtualBox, VMware
// Workstation and Hyper-V machine folders backed up offline (--connect dir:) and restored as folders.
// The disks are made by qemu-img from a raw source with known data; the machine files are written as
// those hypervisors write them (VirtualBox's .vbox XML, VMware's .vmx, a Hyper-V .vmcx holding its disk
// paths as UTF-16 text amid binary). Witnesses: qemu-img compare of every restored disk against the
// source, the restored configuration files' own contents and the restored VDI's header bytes.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jsonResult, runCli } from '../helpers/cli.js';
import { makeVdiChild, vdiCreateBytes } from '../helpers/diff-images.js';
import { tempDir } from '../helpers/repo.js';

interface Result {
  vm: string;
  snapshot?: string;
  error?: string;
  consistency?: string;
  freezeMs?: number;
  warnings: string[];
  disks: { name: string; read: string; bytesRead: number }[];
}

let tmp: { path: string; cleanup(): Promise<void> };
let env: Record<string, string>;
let src: string;
const MiB = 1024 * 1024;
const BASE_UUID = '1b2c3d4e-5f60-4172-8394-a5b6c7d8e9f0';
const MACHINE_UUID = '0a0b0c0d-1111-4222-8333-444455556666';

async function backup(name: string, dir: string, ...extra: string[]): Promise<{ code: number; result: Result; stderr: string }> {
  const r = await runCli(['backup', 'vm', name, '--connect', `dir:${dir}`, '--json', ...extra], { env });
  return { code: r.code, result: jsonResult<{ results: Result[] }>(r).results[0]!, stderr: r.stderr };
}

async function restoreFolder(snapshot: string, target: string): Promise<{ disks: { path: string }[]; folder: { hypervisor: string; config: string } }> {
  const r = await runCli(['restore', 'vm', snapshot, '--target', target, '--json'], { env });
  expect(r.code, r.stderr).toBe(0);
  return jsonResult(r);
}

/** VirtualBox's text form of a UUID stored in a VDI header (RTUUID: first three fields little-endian). */
function uuidText(u: Buffer): string {
  return [u.subarray(0, 4).reverse(), u.subarray(4, 6).reverse(), u.subarray(6, 8).reverse(), u.subarray(8, 10), u.subarray(10, 16)].map((b) => Buffer.from(b).toString('hex')).join('-');
}

function vbox(opts: { disk: string; uuid: string; stateFile?: string; child?: { uuid: string; location: string } }): string {
  return `<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.16-linux">
  <Machine uuid="{${MACHINE_UUID}}" name="vbweb" OSType="Debian_64" snapshotFolder="Snapshots"${opts.stateFile ? ` stateFile="${opts.stateFile}"` : ''} lastStateChange="2026-11-27T10:00:00Z">
    <MediaRegistry>
      <HardDisks>
        <HardDisk uuid="{${opts.uuid}}" location="${opts.disk}" format="VDI" type="Normal">${opts.child ? `
          <HardDisk uuid="{${opts.child.uuid}}" location="${opts.child.location}" format="VDI"/>` : ''}
        </HardDisk>
      </HardDisks>
    </MediaRegistry>${opts.child ? `
    <Snapshot uuid="{77777777-1111-4222-8333-444455556666}" name="before upgrade" timeStamp="2026-11-26T10:00:00Z">
      <Hardware><CPU count="2"/><Memory RAMSize="1024"/></Hardware>
      <StorageControllers><StorageController name="SATA" type="AHCI" PortCount="2"><AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{${opts.uuid}}"/></AttachedDevice></StorageController></StorageControllers>
    </Snapshot>` : ''}
    <Hardware>
      <CPU count="2"/>
      <Memory RAMSize="1024"/>
    </Hardware>
    <StorageControllers>
      <StorageController name="SATA" type="AHCI" PortCount="2" useHostIOCache="false" Bootable="true">
        <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
          <Image uuid="{${opts.child?.uuid ?? opts.uuid}}"/>
        </AttachedDevice>
      </StorageController>
    </StorageControllers>
  </Machine>
</VirtualBox>
`;
}

beforeAll(async () => {
  tmp = await tempDir('bw-folders-');
  env = { BULWARK_REPOSITORY: `${tmp.path}/repo`, BULWARK_PASSWORD: 'folders' };
  expect((await runCli(['init'], { env })).code).toBe(0);
  src = `${tmp.path}/src.raw`;
  execFileSync('truncate', ['-s', '48M', src]);
  execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 1M', '-c', 'write -P 0x62 17M 192k', '-c', 'write -P 0x63 40M 4k', src]);
});

afterAll(async () => {
  await tmp?.cleanup();
});

describe('machine folders (--connect dir:)', () => {
  it('VirtualBox: listed, backed up offline through the VDI reader, restored as a folder VirtualBox opens', async () => {
    const vms = `${tmp.path}/VirtualBox VMs`;
    const dir = `${vms}/vbweb`;
    await mkdir(`${dir}/Logs`, { recursive: true });
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vdi', src, `${dir}/vbweb.vdi`]);
    await writeFile(`${dir}/vbweb.vbox`, vbox({ disk: 'vbweb.vdi', uuid: BASE_UUID }));
    const nvram = randomBytes(64 * 1024);
    await writeFile(`${dir}/vbweb.nvram`, nvram);
    await writeFile(`${dir}/Logs/VBox.log`, 'log lines\n');

    const list = jsonResult<{ name: string; status: string; disks: { name: string; format: string; size: number }[] }[]>(await runCli(['vm', 'list', '--connect', `dir:${vms}`, '--json'], { env }));
    expect(list).toMatchObject([{ name: 'vbweb', status: 'shut off', disks: [{ name: 'sata-0-0', format: 'vdi', size: 48 * MiB }] }]);

    const r = await backup('vbweb', dir);
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    expect(r.result.consistency).toBe('application');
    expect(r.result.freezeMs).toBe(0);
    expect(r.result.warnings.join('\n')).toMatch(/VirtualBox VM vbweb is not running/);
    expect(r.result.disks[0]!.bytesRead, 'holes are not read').toBeLessThanOrEqual(3 * MiB);

    const target = `${tmp.path}/r-vbox`;
    const restored = await restoreFolder(r.result.snapshot!, target);
    expect(restored.folder).toEqual({ hypervisor: 'virtualbox', config: `${target}/vbweb.vbox` });
    expect((await readdir(target)).sort()).toEqual(['vbweb.nvram', 'vbweb.vbox', 'vbweb.vdi']);
    execFileSync('qemu-img', ['compare', '-f', 'vdi', '-F', 'raw', `${target}/vbweb.vdi`, src], { stdio: 'pipe' });
    expect((await readFile(`${target}/vbweb.nvram`)).equals(nvram)).toBe(true);
    // VirtualBox opens a VDI only under the UUID its registry gives: the header's uuidCreate (0x188,
    // RTUUID: first three fields little-endian) must be the attached one.
    const fh = await open(`${target}/vbweb.vdi`, 'r');
    const head = Buffer.alloc(0x1c8);
    await fh.read(head, 0, head.length, 0);
    await fh.close();
    const u = head.subarray(0x188, 0x198);
    const asText = [u.subarray(0, 4).reverse(), u.subarray(4, 6).reverse(), u.subarray(6, 8).reverse(), u.subarray(8, 10), u.subarray(10, 16)].map((b) => Buffer.from(b).toString('hex')).join('-');
    expect(asText).toBe(BASE_UUID);
    const xml = await readFile(`${target}/vbweb.vbox`, 'utf8');
    expect(xml).toContain(`<HardDisk uuid="{${BASE_UUID}}" location="vbweb.vdi" format="VDI" type="Normal"`);
    expect(xml).toContain(`<Image uuid="{${BASE_UUID}}"`);
    expect(xml).toContain('name="vbweb"');
  });

  it('VirtualBox: a running VM is refused; a saved one is only crash-consistent (refused under --consistency application)', async () => {
    const dir = `${tmp.path}/VirtualBox VMs/vbweb`;
    // A process started for the VM, as VBoxHeadless is: --startvm <name>.
    const holder = spawn('sh', ['-c', 'sleep 60', 'VBoxHeadless', '--startvm', 'vbweb'], { stdio: 'ignore' });
    try {
      const deadline = Date.now() + 5000;
      while (!(await readFile(`/proc/${holder.pid}/cmdline`, 'latin1').catch(() => '')).includes('--startvm')) {
        expect(Date.now()).toBeLessThan(deadline);
        await new Promise((r) => setTimeout(r, 20));
      }
      const r = await backup('vbweb', dir);
      expect(r.code).toBe(1);
      expect(r.result.error).toMatch(/VirtualBox VM vbweb is running \(process \d+/);
    } finally {
      holder.kill();
    }
    await writeFile(`${dir}/vbweb.vbox`, vbox({ disk: 'vbweb.vdi', uuid: BASE_UUID, stateFile: 'Snapshots/2026.sav' }));
    const strict = await backup('vbweb', dir, '--consistency', 'application');
    expect(strict.code).not.toBe(0);
    expect(strict.result.error).toMatch(/saved with its memory/);
    const auto = await backup('vbweb', dir);
    expect(auto.code, JSON.stringify(auto.result)).toBe(0);
    expect(auto.result.consistency).toBe('crash');
    await writeFile(`${dir}/vbweb.vbox`, vbox({ disk: 'vbweb.vdi', uuid: BASE_UUID }));
  });

  it('VMware Workstation: backed up offline through the VMDK reader, restored as a folder; a running VM (.lck) is refused', async () => {
    const dir = `${tmp.path}/vmware/vmweb`;
    await mkdir(dir, { recursive: true });
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', src, `${dir}/vmweb.vmdk`]);
    await writeFile(
      `${dir}/vmweb.vmx`,
      ['.encoding = "UTF-8"', 'config.version = "8"', 'virtualHW.version = "19"', 'displayName = "vmweb"', 'memsize = "2048"', 'numvcpus = "2"', 'scsi0.present = "TRUE"', 'scsi0.virtualDev = "lsisas1068"', 'scsi0:0.present = "TRUE"', 'scsi0:0.fileName = "vmweb.vmdk"', 'sata0.present = "TRUE"', 'sata0:1.present = "TRUE"', 'sata0:1.deviceType = "cdrom-image"', 'sata0:1.fileName = "/isos/debian.iso"', 'checkpoint.vmState = ""', ''].join('\n'),
    );
    await writeFile(`${dir}/vmweb.nvram`, randomBytes(8192));
    await writeFile(`${dir}/vmweb.vmsd`, '.encoding = "UTF-8"\n');
    await mkdir(`${dir}/vmweb.vmx.lck`);
    const running = await backup('vmweb', dir);
    expect(running.code).toBe(1);
    expect(running.result.error).toMatch(/is running \(VMware holds '.*vmweb\.vmx\.lck'\)/);
    execFileSync('rmdir', [`${dir}/vmweb.vmx.lck`]);

    const r = await backup('vmweb', dir);
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    expect(r.result.consistency).toBe('application');
    expect(r.result.disks.map((d) => d.name)).toEqual(['scsi0-0']);
    const target = `${tmp.path}/r-vmware`;
    await restoreFolder(r.result.snapshot!, target);
    expect((await readdir(target)).sort()).toEqual(['vmweb.nvram', 'vmweb.vmdk', 'vmweb.vmx']);
    execFileSync('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', `${target}/vmweb.vmdk`, src], { stdio: 'pipe' });
    const vmx = await readFile(`${target}/vmweb.vmx`, 'utf8');
    expect(vmx).toContain('scsi0:0.fileName = "vmweb.vmdk"');
    expect(vmx).toContain('sata0:1.fileName = "/isos/debian.iso"');
  });

  it('Hyper-V: the disks a .vmcx names are found in the copied folder, read through the VHDX reader, and restored as a folder', async () => {
    const dir = `${tmp.path}/hyperv/hvweb`;
    const guid = '5C1D3F2A-9B8E-4C7D-A6F5-0E1D2C3B4A59';
    await mkdir(`${dir}/Virtual Machines`, { recursive: true });
    await mkdir(`${dir}/Virtual Hard Disks`, { recursive: true });
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vhdx', '-o', 'subformat=dynamic', src, `${dir}/Virtual Hard Disks/hvweb.vhdx`]);
    const path = Buffer.from('C:\\ProgramData\\Microsoft\\Windows\\Hyper-V\\Virtual Hard Disks\\hvweb.vhdx', 'utf16le');
    const vmcx = Buffer.concat([Buffer.from('fkcv', 'latin1'), randomBytes(3000), path, Buffer.alloc(2), randomBytes(2000)]);
    await writeFile(`${dir}/Virtual Machines/${guid}.vmcx`, vmcx);
    await writeFile(`${dir}/Virtual Machines/${guid}.vmgs`, randomBytes(256 * 1024));

    const r = await backup('hvweb', dir);
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    expect(r.result.warnings.join('\n')).toMatch(/Hyper-V VM hvweb is not running/);
    const target = `${tmp.path}/r-hyperv`;
    await restoreFolder(r.result.snapshot!, target);
    execFileSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', `${target}/Virtual Hard Disks/hvweb.vhdx`, src], { stdio: 'pipe' });
    expect((await readFile(`${target}/Virtual Machines/${guid}.vmcx`)).equals(vmcx)).toBe(true);
    // --format: the disks alone, as asked.
    const raw = await runCli(['restore', 'vm', r.result.snapshot!, '--target', `${tmp.path}/r-hyperv-raw`, '--format', 'raw'], { env });
    expect(raw.code, raw.stderr).toBe(0);
    execFileSync('cmp', [`${tmp.path}/r-hyperv-raw/disk0.raw`, src]);
    // Restore never overwrites.
    const again = await runCli(['restore', 'vm', r.result.snapshot!, '--target', target], { env });
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already exists; restore never overwrites/);
  });

  it('snapshot chains (a VirtualBox differencing VDI, a VMware child VMDK) are read through to their bases and restored flattened', async () => {
    // The changes after the snapshot: 1 MiB blocks the guest rewrote.
    const delta = `${tmp.path}/delta.raw`;
    execFileSync('truncate', ['-s', '48M', delta]);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x71 0 512k', '-c', 'write -P 0x72 30M 1M', delta]);
    const expected = `${tmp.path}/expected.raw`;
    execFileSync('cp', [src, expected]);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x71 0 512k', '-c', 'write -P 0x72 30M 1M', expected]);
    // The first block is partly rewritten: a VDI child holds whole blocks, so the rest of it is the base's.
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 512k 512k', delta]);

    const dir = `${tmp.path}/VirtualBox VMs/vbchain`;
    await mkdir(`${dir}/Snapshots`, { recursive: true });
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vdi', src, `${dir}/vbchain.vdi`]);
    const baseUuid = uuidText(vdiCreateBytes(`${dir}/vbchain.vdi`));
    const childFile = `${dir}/Snapshots/child.vdi`;
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vdi', delta, childFile]);
    const childUuid = uuidText(makeVdiChild(childFile, vdiCreateBytes(`${dir}/vbchain.vdi`)));
    const childLocation = `Snapshots/{${childUuid}}.vdi`;
    execFileSync('mv', [childFile, `${dir}/${childLocation}`]);
    await writeFile(`${dir}/vbchain.vbox`, vbox({ disk: 'vbchain.vdi', uuid: baseUuid, child: { uuid: childUuid, location: childLocation } }).replace(/name="vbweb"/, 'name="vbchain"').replace('snapshotFolder="Snapshots"', `snapshotFolder="Snapshots" currentSnapshot="{77777777-1111-4222-8333-444455556666}"`));
    const r = await backup('vbchain', dir);
    expect(r.code, JSON.stringify(r.result) + r.stderr).toBe(0);
    const target = `${tmp.path}/r-vbchain`;
    await restoreFolder(r.result.snapshot!, target);
    const restoredVdi = `${target}/${childLocation}`;
    execFileSync('qemu-img', ['compare', '-f', 'vdi', '-F', 'raw', restoredVdi, expected], { stdio: 'pipe' });
    expect(uuidText(vdiCreateBytes(restoredVdi))).toBe(childUuid);
    const xml = await readFile(`${target}/vbchain.vbox`, 'utf8');
    expect(xml).not.toContain('<Snapshot');
    expect(xml).not.toContain('currentSnapshot');
    expect(xml).not.toContain(baseUuid);
    expect(xml).toContain(`<HardDisk uuid="{${childUuid}}" location="${childLocation}" format="VDI" type="Normal"`);

    const vm = `${tmp.path}/vmware/vmchain`;
    await mkdir(vm, { recursive: true });
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', src, `${vm}/vmchain.vmdk`]);
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'vmchain.vmdk', '-F', 'vmdk', `${vm}/vmchain-000001.vmdk`]);
    execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x71 0 512k', '-c', 'write -P 0x72 30M 1M', `${vm}/vmchain-000001.vmdk`]);
    await writeFile(`${vm}/vmchain.vmx`, ['displayName = "vmchain"', 'memsize = "1024"', 'scsi0:0.present = "TRUE"', 'scsi0:0.fileName = "vmchain-000001.vmdk"', ''].join('\n'));
    const v = await backup('vmchain', vm);
    expect(v.code, JSON.stringify(v.result) + v.stderr).toBe(0);
    const vt = `${tmp.path}/r-vmchain`;
    await restoreFolder(v.result.snapshot!, vt);
    expect((await readdir(vt)).sort()).toEqual(['vmchain-000001.vmdk', 'vmchain.vmx']);
    execFileSync('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', `${vt}/vmchain-000001.vmdk`, expected], { stdio: 'pipe' });
    expect(execFileSync('qemu-img', ['info', '--output=json', `${vt}/vmchain-000001.vmdk`]).toString()).not.toContain('backing-filename');
  });
});
