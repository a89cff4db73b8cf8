// Where VMs are found: a QEMU process's QMP socket (and guest agent socket), or a libvirt connection
// and its domains, given on the command line or listed in a configuration file.
//
//   --connect qmp:/run/qemu/web01.qmp[,qga=/run/qemu/web01.qga|off][,name=web01][,hooks=/etc/qemu/fsfreeze-hook]
//   --connect qemu:///system[,hooks=…][,qga=off]     (also qemu:///session, qemu+unix:///system?socket=PATH)
//   --connect dir:/srv/vms/web01            (a VirtualBox, VMware Workstation or Hyper-V machine folder,
//                                            read offline; or a folder of them)
//   --connect file:/etc/bulwark/vms.json     (also the default when it exists, or BULWARK_VMS)
//
// Without qga=, the guest agent's socket is asked of QEMU (the org.qemu.guest_agent.0 port's
// chardev); libvirt holds the agent itself. qga=off means: do not use the agent (crash-consistent).
// A libvirt connection names no domain: the VMs named on the command line are looked up on it (by
// name or UUID), and `vm list` shows all of its domains.
//
// vms.json: { "vms": [ { "name": "web01", "qmp": "/run/qemu/web01.qmp", "qga": "/run/qemu/web01.qga" },
//                      { "name": "db01", "libvirt": "qemu:///system", "domain": "db01" } ] }
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { BulwarkError } from '../util/errors.js';

interface EndpointCommon {
  /** The name given, or undefined to ask the hypervisor. */
  name?: string;
  /** qga=off: the guest agent is not used, not even looked for. */
  noAgent?: boolean;
  /** Paths inside the guest whose presence means fsfreeze hooks notify applications. */
  hookPaths?: string[];
}

export interface QmpEndpoint extends EndpointCommon {
  qmp: string;
  qga?: string;
}

export interface LibvirtEndpoint extends EndpointCommon {
  /** `domain`: a name or UUID; absent for a connection whose domains are chosen by name later. */
  libvirt: { uri: string; domain?: string };
}

/** A VirtualBox, VMware Workstation or Hyper-V machine folder, read offline (or a folder of them). */
export interface FolderEndpoint extends EndpointCommon {
  dir: string;
}

export type VmEndpoint = QmpEndpoint | LibvirtEndpoint | FolderEndpoint;

export function isLibvirt(e: VmEndpoint): e is LibvirtEndpoint {
  return 'libvirt' in e;
}

export function isFolder(e: VmEndpoint): e is FolderEndpoint {
  return 'dir' in e;
}

/** What the endpoint addresses, for messages and the restore point: a socket path, or URI#domain. */
export function addressOf(e: VmEndpoint): string {
  if (isFolder(e)) return `dir:${e.dir}`;
  return isLibvirt(e) ? `${e.libvirt.uri}${e.libvirt.domain ? `#${e.libvirt.domain}` : ''}` : e.qmp;
}

/** The endpoint as a person would call it. */
export function labelOf(e: VmEndpoint): string {
  return e.name ?? (isFolder(e) ? e.dir : isLibvirt(e) ? (e.libvirt.domain ?? e.libvirt.uri) : e.qmp);
}

const LIBVIRT_URI = /^qemu(\+unix)?:\/\/\/(system|session)(\?[^,]*)?$/;

export const DEFAULT_VMS_FILE = '/etc/bulwark/vms.json';

function socketPath(value: string, what: string, spec: string): string {
  if (!isAbsolute(value)) throw new BulwarkError('usage', `${what} socket in '${spec}' must be an absolute path`);
  return value;
}

function libvirtEndpoint(spec: string): LibvirtEndpoint {
  const [uri, ...rest] = spec.split(',');
  if (!LIBVIRT_URI.test(uri!)) {
    throw new BulwarkError('usage', `unsupported libvirt URI '${uri}'`, { hint: 'use qemu:///system, qemu:///session or qemu+unix:///system?socket=PATH' });
  }
  const endpoint: LibvirtEndpoint = { libvirt: { uri: uri! } };
  for (const kv of rest) {
    const [key, value = ''] = kv.split('=');
    if (key === 'qga' && value === 'off') endpoint.noAgent = true;
    else if (key === 'hooks' && value) endpoint.hookPaths = [...(endpoint.hookPaths ?? []), value];
    else throw new BulwarkError('usage', `unknown option '${kv}' in --connect '${spec}'`, { hint: 'options for a libvirt connection: qga=off, hooks=' });
  }
  return endpoint;
}

export function parseConnect(spec: string): { endpoint?: VmEndpoint; file?: string } {
  if (spec.startsWith('file:')) return { file: spec.slice('file:'.length) };
  if (spec.startsWith('dir:')) {
    const dir = spec.slice('dir:'.length);
    if (!isAbsolute(dir) || dir.includes(',')) throw new BulwarkError('usage', `--connect '${spec}' needs an absolute folder path`, { hint: 'dir:/srv/vms/web01 (a VirtualBox, VMware Workstation or Hyper-V machine folder, or a folder of them)' });
    return { endpoint: { dir } };
  }
  if (/^qemu(\+[a-z]+)?:/.test(spec)) return { endpoint: libvirtEndpoint(spec) };
  if (!spec.startsWith('qmp:')) {
    throw new BulwarkError('usage', `unknown --connect '${spec}'`, { hint: 'use qmp:/path/to/qmp.sock[,qga=/path/to/qga.sock][,name=NAME], qemu:///system (libvirt), dir:/path/to/machine-folder or file:/path/to/vms.json' });
  }
  const [first, ...rest] = spec.slice('qmp:'.length).split(',');
  const endpoint: QmpEndpoint = { qmp: socketPath(first ?? '', 'QMP', spec) };
  for (const kv of rest) {
    const eq = kv.indexOf('=');
    const key = eq < 0 ? kv : kv.slice(0, eq);
    const value = eq < 0 ? '' : kv.slice(eq + 1);
    if (key === 'qga' && value === 'off') endpoint.noAgent = true;
    else if (key === 'qga') endpoint.qga = socketPath(value, 'guest agent', spec);
    else if (key === 'name' && value) endpoint.name = value;
    else if (key === 'hooks' && value) endpoint.hookPaths = [...(endpoint.hookPaths ?? []), value];
    else throw new BulwarkError('usage', `unknown option '${kv}' in --connect '${spec}'`, { hint: 'options: qga=PATH or qga=off, name=, hooks=' });
  }
  return { endpoint };
}

export async function readVmsFile(path: string): Promise<VmEndpoint[]> {
  let doc: { vms?: unknown };
  try {
    doc = JSON.parse(await readFile(path, 'utf8')) as { vms?: unknown };
  } catch (err) {
    throw new BulwarkError('usage', `cannot read VM list '${path}': ${(err as Error).message}`, { hint: `expected JSON: {"vms": [{"name": "web01", "qmp": "/run/qemu/web01.qmp", "qga": "/run/qemu/web01.qga"}]}` });
  }
  if (!Array.isArray(doc.vms)) throw new BulwarkError('usage', `VM list '${path}' has no "vms" array`);
  return doc.vms.map((v, i): VmEndpoint => {
    const e = v as { name?: unknown; qmp?: unknown; qga?: unknown; libvirt?: unknown; domain?: unknown; hookPaths?: unknown };
    const common = {
      ...(typeof e.name === 'string' ? { name: e.name } : {}),
      ...(e.qga === 'off' ? { noAgent: true } : {}),
      ...(Array.isArray(e.hookPaths) ? { hookPaths: e.hookPaths.filter((p): p is string => typeof p === 'string') } : {}),
    };
    if (typeof e.libvirt === 'string') {
      if (!LIBVIRT_URI.test(e.libvirt)) throw new BulwarkError('usage', `VM list '${path}': entry ${i} has an unsupported libvirt URI '${e.libvirt}'`);
      const domain = typeof e.domain === 'string' ? e.domain : common.name;
      return { ...common, libvirt: { uri: e.libvirt, ...(domain ? { domain } : {}) } };
    }
    if (typeof e.qmp !== 'string') throw new BulwarkError('usage', `VM list '${path}': entry ${i} has neither a "qmp" socket path nor a "libvirt" URI`);
    return { ...common, qmp: socketPath(e.qmp, 'QMP', path), ...(typeof e.qga === 'string' && e.qga !== 'off' ? { qga: socketPath(e.qga, 'guest agent', path) } : {}) };
  });
}

/** All endpoints the connect options name; with none given, the default VM list if it exists. */
export async function endpointsFrom(connects: string[]): Promise<VmEndpoint[]> {
  const specs = connects.length > 0 ? connects : process.env['BULWARK_VMS'] ? [`file:${process.env['BULWARK_VMS']}`] : existsSync(DEFAULT_VMS_FILE) ? [`file:${DEFAULT_VMS_FILE}`] : [];
  if (specs.length === 0) {
    throw new BulwarkError('usage', 'no VMs to look at', { hint: `pass --connect qmp:/path/to/qmp.sock or --connect qemu:///system, or list VMs in ${DEFAULT_VMS_FILE}` });
  }
  const out: VmEndpoint[] = [];
  for (const spec of specs) {
    const p = parseConnect(spec);
    if (p.endpoint) out.push(p.endpoint);
    if (p.file) out.push(...(await readVmsFile(p.file)));
  }
  return out;
}
