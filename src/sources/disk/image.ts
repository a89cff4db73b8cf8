// Which container a disk image file is. Only raw images (and block devices) are read directly for now;
// other formats are recognised so the user gets a clear message instead of a backup of the container.
import { promises as fsp } from 'node:fs';

export type ImageFormat = 'raw' | 'qcow2' | 'vhdx' | 'vmdk' | 'vdi' | 'vhd';

export async function detectFormat(path: string, size: number): Promise<ImageFormat> {
  const fh = await fsp.open(path, 'r');
  try {
    const head = Buffer.alloc(512);
    await fh.read(head, 0, 512, 0);
    if (head.subarray(0, 4).equals(Buffer.from([0x51, 0x46, 0x49, 0xfb]))) return 'qcow2';
    if (head.subarray(0, 8).toString('latin1') === 'vhdxfile') return 'vhdx';
    if (head.subarray(0, 4).toString('latin1') === 'KDMV' || head.subarray(0, 21).toString('latin1') === '# Disk DescriptorFile') return 'vmdk';
    if (head.readUInt32LE(0x40) === 0xbeda107f) return 'vdi';
    // Dynamic VHDs start with a copy of the footer; fixed ones are raw data plus a 512-byte footer.
    if (head.subarray(0, 8).toString('latin1') === 'conectix') return 'vhd';
    if (size >= 512) {
      const tail = Buffer.alloc(8);
      await fh.read(tail, 0, 8, size - 512);
      if (tail.toString('latin1') === 'conectix') return 'vhd';
    }
    return 'raw';
  } finally {
    await fh.close();
  }
}

/** Size of a block device from sysfs (fstat reports 0 for devices); regular files use their length. */
export async function deviceSize(rdev: number): Promise<number> {
  const major = (rdev >>> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & ~0xff);
  const sectors = await fsp.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
  return Number(sectors.trim()) * 512;
}
