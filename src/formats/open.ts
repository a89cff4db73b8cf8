// Opens a disk image file as the virtual disk it holds, by its container format.
import { BulwarkError } from '../util/errors.js';
import type { DiskImage } from './image.js';
import { Qcow2Image } from './qcow2/reader.js';
import { VdiImage } from './vdi.js';
import { VhdImage } from './vhd.js';
import { VmdkImage } from './vmdk.js';

export type ContainerFormat = 'qcow2' | 'vhdx' | 'vmdk' | 'vdi' | 'vhd';

export async function openDiskImage(path: string, format: ContainerFormat): Promise<DiskImage> {
  switch (format) {
    case 'qcow2':
      return Qcow2Image.open(path);
    case 'vdi':
      return VdiImage.open(path);
    case 'vhd':
      return VhdImage.open(path);
    case 'vmdk':
      return VmdkImage.open(path);
    case 'vhdx':
      throw new BulwarkError('usage', `'${path}' is a VHDX image, which this version does not read yet`, {
        hint: `convert it first: qemu-img convert -O qcow2 '${path}' disk.qcow2`,
      });
  }
}
