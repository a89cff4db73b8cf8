// LVM2 physical volumes made by the real tools (pvcreate, vgcreate, lvcreate) on a loop device, for the
// LVM reader's tests. Device-mapper targets are missing in this container ("striped: Required
// device-mapper target(s) not detected"), so LVs are created with activation disabled
// (global/activation=0) and their bytes written into the image at the places `lvs --segments` and
// `pvs -o pe_start` report: the tools' own view of the layout is the outside witness.
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import { patchFile } from './patch.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const NOACT = ['--config', 'global { activation = 0 }'];
const env = { ...process.env, LVM_SUPPRESS_FD_WARNINGS: '1' };
const lvm = (...a: string[]): Promise<{ stdout: string }> => exec(a[0]!, a.slice(1), { env });

export interface LvSpec {
  name: string;
  sizeMiB: number;
  /** Grown by this much after every LV exists: a second segment elsewhere on the PV. */
  extendMiB?: number;
  /** The LV's bytes, given its size. */
  fill(size: number): Buffer | Promise<Buffer>;
}

export interface PhysicalVolume {
  /** Each LV's bytes as written, in LV order. */
  data: Record<string, Buffer>;
  /** Detaches the loop device and forgets the VG; the image file keeps its bytes. */
  release(): Promise<void>;
}

/** Makes `file` (sizeMiB) a PV holding VG `vg` with the LVs given, each filled with its bytes. */
export async function makePhysicalVolume(file: string, sizeMiB: number, vg: string, lvs: LvSpec[]): Promise<PhysicalVolume> {
  await fsp.writeFile(file, '');
  await fsp.truncate(file, sizeMiB * MiB);
  const loop = (await exec('losetup', ['-f', '--show', file])).stdout.trim();
  const release = async (): Promise<void> => {
    // LVM keeps no daemon state here: a detached device takes its VG with it. Metadata backups
    // (/etc/lvm/backup) are removed so runs leave nothing behind.
    await exec('losetup', ['-d', loop]).catch(() => undefined);
    await fsp.rm(`/etc/lvm/backup/${vg}`, { force: true });
    await exec('sh', ['-c', `rm -f /etc/lvm/archive/${vg}_*.vg`]).catch(() => undefined);
  };
  try {
    await lvm('pvcreate', ...NOACT, loop);
    await lvm('vgcreate', ...NOACT, vg, loop);
    for (const l of lvs) await lvm('lvcreate', ...NOACT, '-an', '-Zn', '-L', `${l.sizeMiB}M`, '-n', l.name, vg);
    for (const l of lvs) if (l.extendMiB) await lvm('lvextend', ...NOACT, '-L', `+${l.extendMiB}M`, `${vg}/${l.name}`);
    const pe = Number((await lvm('pvs', '--noheadings', '--units', 'b', '--nosuffix', '-o', 'pe_start', loop)).stdout.trim());
    const seg = JSON.parse((await lvm('lvs', '--segments', '--units', 'b', '--nosuffix', '--reportformat', 'json', '-o', 'lv_name,seg_start_pe,seg_size_pe,seg_pe_ranges,vg_extent_size', vg)).stdout) as { report: { seg: Record<string, string>[] }[] };
    const data: Record<string, Buffer> = {};
    for (const l of lvs) {
      const segs = seg.report[0]!.seg.filter((s) => s.lv_name === l.name);
      const ext = Number(segs[0]!.vg_extent_size);
      const size = segs.reduce((n, s) => n + Number(s.seg_size_pe) * ext, 0);
      const bytes = await l.fill(size);
      for (const s of segs) {
        const [, from] = /:(\d+)-/.exec(s.seg_pe_ranges!)!;
        const at = Number(s.seg_start_pe) * ext;
        patchFile(file, pe + Number(from) * ext, bytes.subarray(at, at + Number(s.seg_size_pe) * ext));
      }
      data[l.name] = bytes;
    }
    return { data, release };
  } catch (err) {
    await release();
    throw err;
  }
}
