// Opens a disk image file as the virtual disk it holds, by its container format.
import { BulwarkError } from '../util/errors.js';
import { RawImage, type DiskImage } from './image.js';
import { Qcow2Image } from './qcow2/reader.js';
import { VdiImage } from './vdi.js';
import { VhdImage } from './vhd.js';
import { VhdxImage } from './vhdx.js';
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
      return VhdxImage.open(path);
  }
}

const CONTAINERS: readonly string[] = ['qcow2', 'vhdx', 'vmdk', 'vdi', 'vhd'];

/**
 * Opens an image by the format its owner records (a libvirt disk's driver type, a machine folder's
 * disk): raw (a file or a block device of `size` bytes) or a container.
 */
export async function openImage(path: string, format: string, opts: { size?: number; parentOf?: (uuid: string) => Promise<string | undefined> } = {}): Promise<DiskImage> {
  if (format === 'raw') return RawImage.open(path, opts.size);
  if (format === 'vpc') return openDiskImage(path, 'vhd');
  if (!CONTAINERS.includes(format)) throw new BulwarkError('usage', `'${path}' is a ${format} image, which Bulwark does not read`, { hint: `convert it to qcow2 or raw first (qemu-img convert -O qcow2 '${path}' disk.qcow2)` });
  if (format === 'vdi' && opts.parentOf) return VdiImage.open(path, [], { parentOf: opts.parentOf });
  return openDiskImage(path, format as ContainerFormat);
}
