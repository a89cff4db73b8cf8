// What lies on a disk, for granular restore: its partitions (MBR, GPT), the logical volumes of LVM
// physical volumes among them, and the file system on each part, found by its own signature (never
// by a partition type, which lies as often as not). Each part gets a name that paths use:
// p1, p2, … for partitions (Linux's numbering: logical MBR partitions from 5), <vg>-<lv> for logical
// volumes (linear; thin, RAID and volumes spanning disks are listed with the reason they cannot be
// read), fs for a file system on the whole disk.
import { openExt4, isExt } from './ext4/reader.js';
import { isNtfs, openNtfs } from './ntfs/reader.js';
import { isFat, openFat } from './fat/reader.js';
import { readLvm, type LogicalVolume } from './lvm/lvm.js';
import { readPartitions } from './partitions/table.js';
import { FileSystemError, type FileSystem, type Volume } from './types.js';
import { isXfs, openXfs } from './xfs/reader.js';

export interface DiskPart {
  name: string;
  size: number;
  /** The file system found, opened; absent when there is none (or none Bulwark reads). */
  fs?: FileSystem;
  /** Why there is no file system to browse. */
  why?: string;
}

/** The file system on a volume, by signature; undefined when none is recognised. */
export async function openFileSystem(vol: Volume): Promise<FileSystem | undefined> {
  if (vol.size < 4096) return undefined;
  const head = Buffer.alloc(4096);
  await vol.read(head, 0);
  if (isNtfs(head.subarray(0, 512))) return openNtfs(vol);
  if (isXfs(head.subarray(0, 512))) return openXfs(vol);
  if (isExt(head.subarray(1024, 2048))) return openExt4(vol);
  if (isFat(head.subarray(0, 512))) return openFat(vol);
  return undefined;
}

async function describe(vol: Volume, name: string): Promise<DiskPart[]> {
  // An LVM physical volume: its logical volumes are the parts, named <vg>-<lv>.
  const lvs = await readLvm(vol).catch((err: unknown): LogicalVolume[] => {
    if (err instanceof FileSystemError) return [{ vg: '', name, size: vol.size, unsupported: err.message }];
    throw err;
  });
  if (lvs) {
    const out: DiskPart[] = [];
    for (const lv of lvs) {
      const part = lv.vg ? `${lv.vg}-${lv.name}` : name;
      if (!lv.volume) out.push({ name: part, size: lv.size, why: lv.unsupported ?? 'not readable' });
      else out.push(...(await describe(lv.volume, part)));
    }
    return out;
  }
  try {
    const fs = await openFileSystem(vol);
    return [fs ? { name, size: vol.size, fs } : { name, size: vol.size, why: 'no file system Bulwark reads (ext2/3/4, XFS, FAT, NTFS)' }];
  } catch (err) {
    return [{ name, size: vol.size, why: err instanceof FileSystemError ? err.message : String(err) }];
  }
}

export async function partsOf(disk: Volume): Promise<DiskPart[]> {
  const table = await readPartitions(disk);
  if (!table) return describe(disk, 'fs');
  const out: DiskPart[] = [];
  for (const p of table) {
    if (p.kind === 'extended') continue;
    out.push(...(await describe(p.volume, `p${p.index}`)));
  }
  return out;
}
