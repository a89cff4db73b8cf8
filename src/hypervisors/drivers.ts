// Which driver serves an endpoint: libvirt for a libvirt connection, QEMU for a QMP socket, the
// machine-folder driver for a VirtualBox, VMware or Hyper-V folder.
import { libvirtDriver } from './libvirt/session.js';
import { qemuDriver } from './qemu/session.js';
import { folderDriver } from './folder/session.js';
import { isFolder, isLibvirt, type VmEndpoint } from './registry.js';
import type { VmDriver } from './session.js';

export type DriverFor = (endpoint: VmEndpoint) => VmDriver;

export const driverFor: DriverFor = (endpoint) => (isFolder(endpoint) ? folderDriver : isLibvirt(endpoint) ? libvirtDriver : qemuDriver);

/** Every VM the endpoints stand for: a libvirt connection given without a domain becomes all of its domains. */
export async function expandEndpoints(endpoints: VmEndpoint[], drivers: DriverFor = driverFor): Promise<VmEndpoint[]> {
  const out: VmEndpoint[] = [];
  for (const e of endpoints) out.push(...(await drivers(e).list(e)));
  return out;
}
