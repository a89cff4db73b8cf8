import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers/repo.js';
import { endpointsFrom, parseConnect } from './registry.js';

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

describe('VM endpoints', () => {
  it('parses qmp: specs with options, and refuses relative paths and unknown options', () => {
    expect(parseConnect('qmp:/run/a.qmp,qga=/run/a.qga,name=web01,hooks=/etc/qemu/fsfreeze-hook').endpoint).toEqual({
      qmp: '/run/a.qmp',
      qga: '/run/a.qga',
      name: 'web01',
      hookPaths: ['/etc/qemu/fsfreeze-hook'],
    });
    expect(parseConnect('qmp:/run/a.qmp,qga=off').endpoint).toEqual({ qmp: '/run/a.qmp', noAgent: true });
    expect(() => parseConnect('qmp:run/a.qmp')).toThrow(/absolute path/);
    expect(() => parseConnect('qmp:/run/a.qmp,colour=red')).toThrow(/unknown option 'colour=red'/);
    expect(() => parseConnect('xen:///system')).toThrow(/unknown --connect/);
  });

  it('reads a VM list file and says what is wrong with a bad one', async () => {
    const good = `${tmp.path}/vms.json`;
    await writeFile(good, JSON.stringify({ vms: [{ name: 'db01', qmp: '/run/db01.qmp', qga: '/run/db01.qga' }, { name: 'web01', libvirt: 'qemu:///system' }] }));
    expect(await endpointsFrom([`file:${good}`, 'qmp:/run/x.qmp', 'qemu:///session,qga=off'])).toEqual([
      { name: 'db01', qmp: '/run/db01.qmp', qga: '/run/db01.qga' },
      { name: 'web01', libvirt: { uri: 'qemu:///system', domain: 'web01' } },
      { qmp: '/run/x.qmp' },
      { libvirt: { uri: 'qemu:///session' }, noAgent: true },
    ]);
    expect(parseConnect('qemu+unix:///system?socket=/run/l.sock').endpoint).toEqual({ libvirt: { uri: 'qemu+unix:///system?socket=/run/l.sock' } });
    expect(() => parseConnect('qemu+ssh://host/system')).toThrow(/unsupported libvirt URI/);
    const bad = `${tmp.path}/bad.json`;
    await writeFile(bad, JSON.stringify({ vms: [{ name: 'x' }] }));
    await expect(endpointsFrom([`file:${bad}`])).rejects.toThrow(/entry 0 has neither a "qmp" socket path nor a "libvirt" URI/);
    await expect(endpointsFrom([`file:${tmp.path}/missing.json`])).rejects.toMatchObject({ code: 'usage' });
  });
});
