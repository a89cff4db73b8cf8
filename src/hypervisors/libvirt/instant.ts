// Instant restore as a libvirt domain (docs/architecture.md, "Instant restore"): the recorded domain
// XML with a new name, UUID and MACs, each disk a qcow2 overlay whose backing store is given in the
// XML as the disk's NBD export (libvirt honours a backing chain given on input), started as a
// transient domain; then virDomainBlockPull fills every overlay while it runs. When every pull is done
// and no disk has a backing store left, the domain is defined from its live XML: from then on it is an
// ordinary persistent domain on local disks. A pull that ends with a backing store left means the copy
// failed: the domain stays transient, running on the export.
//
// libvirt 9.0 has no element for the NBD client's reconnect delay, so unlike a QEMU command line a
// domain cannot ride out the export going away: its disks are set to pause the domain on an I/O error
// (error_policy/rerror_policy=stop) so the guest never sees one, and the caller keeps serving.
import { chown, stat } from 'node:fs/promises';
import { Libvirt, BLOCK_PULL_BANDWIDTH_BYTES, DomainState, uuidString, type Domain } from '../../protocols/libvirt/remote.js';
import { BulwarkError } from '../../util/errors.js';
import { createOverlays, type CopyOptions, type InstantDisk, type InstantMachine } from '../instant-vm.js';
import { restoredDomainXml, type RestoredDomainDisk } from './domain-xml.js';

export interface DomainInstantOptions {
  uri: string;
  /** The domain XML the restore point recorded. */
  xml: string;
  name: string;
  /** Each disk with its target device in the domain (vda). */
  disks: (InstantDisk & { target: string })[];
  dir: string;
}

/** uid:gid QEMU runs as on this connection (the DAC base label), when libvirt relabels. */
export function qemuUserOf(capabilities: string): { uid: number; gid: number } | undefined {
  for (const m of capabilities.matchAll(/<secmodel>([\s\S]*?)<\/secmodel>/g)) {
    if (!/<model>dac<\/model>/.test(m[1]!)) continue;
    const label = /<baselabel type='(?:kvm|qemu)'>\+?(\d+):\+?(\d+)<\/baselabel>/.exec(m[1]!);
    if (label) return { uid: Number(label[1]), gid: Number(label[2]) };
  }
  return undefined;
}

export async function bootDomainOnExport(opts: DomainInstantOptions): Promise<InstantMachine> {
  const lv = await Libvirt.open(opts.uri);
  try {
    const user = qemuUserOf(await lv.capabilities());
    if (user && process.getuid?.() === 0) {
      // QEMU runs as another user here: it must reach the overlays' folder, and connect to the export.
      const dir = await stat(opts.dir);
      const reachable = (dir.mode & 0o001) !== 0 || (dir.uid === user.uid && (dir.mode & 0o100) !== 0) || (dir.gid === user.gid && (dir.mode & 0o010) !== 0);
      if (!reachable) throw new BulwarkError('usage', `libvirt's QEMU runs as uid ${user.uid} and cannot enter ${opts.dir}`, { hint: `let it through (chmod o+x ${opts.dir}) or choose a target under /var/lib/libvirt/images` });
      for (const socket of new Set(opts.disks.map((d) => d.socket))) await chown(socket, user.uid, user.gid);
    }
    await createOverlays(opts.disks);
    const disks = new Map<string, RestoredDomainDisk>(opts.disks.map((d) => [d.target, { path: d.path, format: 'qcow2', backing: { socket: d.socket, exportName: d.exportName } }]));
    const xml = restoredDomainXml(opts.xml, { name: opts.name, keepIdentity: false, disks, logDir: opts.dir });
    const dom = await lv.createTransient(xml).catch((err: Error) => {
      throw new BulwarkError('failed', `libvirt could not start the restored domain ${opts.name} on ${opts.uri}: ${err.message}`, { cause: err });
    });
    return domainMachine(lv, dom, opts);
  } catch (err) {
    await lv.close();
    throw err;
  }
}

function domainMachine(lv: Libvirt, dom: Domain, opts: DomainInstantOptions): InstantMachine {
  const where = { domain: { uri: opts.uri, name: dom.name, uuid: uuidString(dom.uuid) } };
  const running = async (): Promise<boolean> => {
    try {
      const s = (await lv.state(dom)).state;
      return s !== DomainState.shutoff && s !== DomainState.crashed;
    } catch {
      return false;
    }
  };
  return {
    where,
    running,
    async copy(c: CopyOptions = {}) {
      for (const d of opts.disks) await lv.blockPull(dom, d.target, c.speed ?? 0, BLOCK_PULL_BANDWIDTH_BYTES);
      for (;;) {
        const jobs = await Promise.all(opts.disks.map((d) => lv.blockJob(dom, d.target)));
        const live = jobs.filter((j) => j !== undefined);
        c.onProgress?.(live.reduce((n, j) => n + j.cur, 0), live.reduce((n, j) => n + j.end, 0));
        if (live.length === 0) break;
        if (!(await running())) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      // libvirt drops a disk's backing store from the live XML when its pull completed: what is left
      // is a pull that failed (or a domain that is gone).
      const live = await lv.xml(dom).catch(() => '');
      const left = opts.disks.filter((d) => new RegExp(`<source protocol='nbd' name='${d.exportName}'`).test(live));
      if (live === '' || left.length > 0) {
        throw new BulwarkError('failed', `copying the disks failed (${live === '' ? 'the domain is gone' : `${left.map((d) => d.target).join(', ')} still read the export`}); the domain keeps running on the export, whose disks are whole`, {
          hint: 'keep this command running until the domain is shut down',
        });
      }
      // Persistent from now on: a domain whose disks are all local, as 'restore vm --define' gives.
      await lv.define(live).catch((err: Error) => {
        throw new BulwarkError('failed', `the disks are local, but libvirt would not define ${dom.name} persistently: ${err.message}`, { hint: `it runs on as a transient domain; 'virsh dumpxml ${dom.name} > x.xml && virsh define x.xml' keeps it` });
      });
    },
    close: () => lv.close(),
  };
}
