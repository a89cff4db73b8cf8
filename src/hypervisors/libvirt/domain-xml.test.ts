import { describe, expect, it } from 'vitest';
import { backupExports, backupXml, checkpointDisks, checkpointXml, parseDomain, restoredDomainXml } from './domain-xml.js';
import { qemuUserOf } from './instant.js';

// As libvirt 9 prints a running domain (trimmed).
const LIVE = `<domain type='qemu' id='3'>
  <name>web01</name>
  <uuid>8e2252f6-d95a-40db-a092-6013194bc925</uuid>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/web01-data'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <serial type='file'><source path='/var/log/web01.log'/><target port='0'/><alias name='serial0'/></serial>
    <console type='file'><source path='/var/log/web01.log'/><target type='serial' port='0'/></console>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><model type='virtio'/></interface>
    <channel type='unix'>
      <source mode='bind' path='/run/web01.qga'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+107</label><imagelabel>+64055:+107</imagelabel></seclabel>
</domain>`;

describe('libvirt domain XML', () => {
  it('reads the writable disks, machine, NICs, agent channel and the user QEMU runs as', () => {
    expect(parseDomain(LIVE)).toEqual({
      name: 'web01',
      uuid: '8e2252f6-d95a-40db-a092-6013194bc925',
      machine: 'pc-q35-7.2',
      memoryBytes: 256 * 1024 * 1024,
      cpus: 2,
      disks: [
        { target: 'vda', format: 'qcow2', source: '/var/lib/libvirt/images/web01.qcow2', type: 'file' },
        { target: 'vdb', format: 'raw', source: '/dev/vg/web01-data', type: 'block' },
      ],
      nics: [{ mac: '52:54:00:aa:bb:cc', model: 'virtio' }],
      agent: { connected: true },
      qemuUser: { uid: 64055, gid: 107 },
    });
  });

  it('writes the backup and checkpoint documents, escaping what it embeds', () => {
    const b = backupXml("/tmp/a'b/nbd.sock", [{ target: 'vda', scratch: '/s/vda.qcow2', incremental: true }, { target: 'vdb', scratch: '/s/vdb.qcow2', incremental: false }], 'bulwark-1');
    expect(b).toContain("<incremental>bulwark-1</incremental>");
    expect(b).toContain("socket='/tmp/a&apos;b/nbd.sock'");
    expect(b).toContain("<disk name='vdb' backup='yes' type='file' backupmode='full'>");
    expect(checkpointDisks(checkpointXml('c1', [{ target: 'vda', bitmap: true }, { target: 'vdb', bitmap: false }]))).toEqual(['vda']);
    expect(backupExports(`<domainbackup mode='pull'><server transport='unix' socket='/s/nbd.sock'/><disks><disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='c1' exportname='vda' exportbitmap='backup-vda'/><disk name='vdb' backup='no'/></disks></domainbackup>`)).toEqual({
      socket: '/s/nbd.sock',
      disks: [{ name: 'vda', exportName: 'vda', bitmap: 'backup-vda', incremental: true }],
    });
  });

  it('makes a restored domain that can run beside the original: new name, no UUID, new MAC, its own logs and agent socket, disks on the restored files', () => {
    const out = restoredDomainXml(LIVE, { name: 'web01-restored', keepIdentity: false, disks: new Map([['vda', { path: '/r/vda.qcow2', format: 'qcow2' }], ['vdb', { path: '/r/vdb.raw', format: 'raw' }]]), logDir: '/r' });
    const again = parseDomain(out);
    expect(again.name).toBe('web01-restored');
    expect(again.uuid).toBe('');
    expect(again.nics[0]!.mac).toMatch(/^52:54:00:/);
    expect(again.nics[0]!.mac).not.toBe('52:54:00:aa:bb:cc');
    expect(again.disks.map((d) => [d.target, d.type, d.source, d.format])).toEqual([
      ['vda', 'file', '/r/vda.qcow2', 'qcow2'],
      ['vdb', 'file', '/r/vdb.raw', 'raw'],
    ]);
    expect(out).not.toContain('/var/log/web01.log');
    expect(out).toContain('/r/web01-restored-console.log');
    expect(out).not.toContain('/run/web01.qga');
    expect(out).not.toMatch(/seclabel|<alias|id="3"/);
    // The CD-ROM is kept as it was.
    expect(out).toContain('/iso/x.iso');
    const same = parseDomain(restoredDomainXml(LIVE, { name: 'web01', keepIdentity: true, disks: new Map(), logDir: '/r' }));
    expect([same.uuid, same.nics[0]!.mac]).toEqual(['8e2252f6-d95a-40db-a092-6013194bc925', '52:54:00:aa:bb:cc']);
  });

  it('instant restore: each disk a qcow2 overlay whose backing store is its NBD export, pausing on I/O errors', () => {
    const xml = restoredDomainXml(LIVE, {
      name: 'web01-restored',
      keepIdentity: false,
      disks: new Map([
        ['vda', { path: '/r/vda.qcow2', format: 'qcow2', backing: { socket: '/r/.nbd', exportName: 'vda' } }],
        ['vdb', { path: '/r/vdb.qcow2', format: 'qcow2', backing: { socket: '/r/.nbd', exportName: 'vdb' } }],
      ]),
    });
    const disks = parseDomain(xml).disks;
    expect(disks.map((d) => [d.target, d.source, d.format])).toEqual([['vda', '/r/vda.qcow2', 'qcow2'], ['vdb', '/r/vdb.qcow2', 'qcow2']]);
    // The <backingStore/> libvirt printed is replaced; a disk without one gets one after its source.
    expect(xml.match(/<backingStore type="network"><format type="raw"\/><source protocol="nbd" name="vd[ab]"><host transport="unix" socket="\/r\/.nbd"\/><\/source><\/backingStore>/g)).toHaveLength(2);
    expect(xml.match(/error_policy="stop" rerror_policy="stop"/g)).toHaveLength(2);
    expect(xml).not.toContain('8e2252f6');
  });

  it("finds the user libvirt's QEMU runs as in the capabilities", () => {
    const caps = `<capabilities><host><secmodel><model>none</model><doi>0</doi></secmodel><secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+64055</baselabel><baselabel type='qemu'>+64055:+64055</baselabel></secmodel></host></capabilities>`;
    expect(qemuUserOf(caps)).toEqual({ uid: 64055, gid: 64055 });
    expect(qemuUserOf('<capabilities><host><secmodel><model>none</model></secmodel></host></capabilities>')).toBeUndefined();
  });
});
