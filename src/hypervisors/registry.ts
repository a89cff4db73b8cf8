// Where VMs are found: their QMP socket (and guest agent socket), given on the command line or listed
// in a configuration file.
//
//   --connect qmp:/run/qemu/web01.qmp[,qga=/run/qemu/web01.qga][,name=web01][,hooks=/etc/qemu/fsfreeze-hook]
//   --connect file:/etc/bulwark/vms.json     (also the default when it exists, or BULWARK_VMS)
//
// vms.json: { "vms": [ { "name": "web01", "qmp": "/run/qemu/web01.qmp", "qga": "/run/qemu/web01.qga" } ] }
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { BulwarkError } from '../util/errors.js';

export interface VmEndpoint {
  /** The name given, or undefined to ask QEMU (query-name). */
  name?: string;
  qmp: string;
  qga?: string;
  /** Paths inside the guest whose presence means fsfreeze hooks notify applications. */
  hookPaths?: string[];
}

export const DEFAULT_VMS_FILE = '/etc/bulwark/vms.json';

function socketPath(value: string, what: string, spec: string): string {
  if (!isAbsolute(value)) throw new BulwarkError('usage', `${what} socket in '${spec}' must be an absolute path`);
  return value;
}

export function parseConnect(spec: string): { endpoint?: VmEndpoint; file?: string } {
  if (spec.startsWith('file:')) return { file: spec.slice('file:'.length) };
  if (!spec.startsWith('qmp:')) {
    throw new BulwarkError('usage', `unknown --connect '${spec}'`, { hint: 'use qmp:/path/to/qmp.sock[,qga=/path/to/qga.sock][,name=NAME] or file:/path/to/vms.json' });
  }
  const [first, ...rest] = spec.slice('qmp:'.length).split(',');
  const endpoint: VmEndpoint = { qmp: socketPath(first ?? '', 'QMP', spec) };
  for (const kv of rest) {
    const eq = kv.indexOf('=');
    const key = eq < 0 ? kv : kv.slice(0, eq);
    const value = eq < 0 ? '' : kv.slice(eq + 1);
    if (key === 'qga') endpoint.qga = socketPath(value, 'guest agent', spec);
    else if (key === 'name' && value) endpoint.name = value;
    else if (key === 'hooks' && value) endpoint.hookPaths = [...(endpoint.hookPaths ?? []), value];
    else throw new BulwarkError('usage', `unknown option '${kv}' in --connect '${spec}'`, { hint: 'options: qga=, name=, hooks=' });
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
  return doc.vms.map((v, i) => {
    const e = v as Partial<VmEndpoint>;
    if (typeof e.qmp !== 'string') throw new BulwarkError('usage', `VM list '${path}': entry ${i} has no "qmp" socket path`);
    return {
      qmp: socketPath(e.qmp, 'QMP', path),
      ...(typeof e.name === 'string' ? { name: e.name } : {}),
      ...(typeof e.qga === 'string' ? { qga: socketPath(e.qga, 'guest agent', path) } : {}),
      ...(Array.isArray(e.hookPaths) ? { hookPaths: e.hookPaths.filter((p): p is string => typeof p === 'string') } : {}),
    };
  });
}

/** All endpoints the connect options name; with none given, the default VM list if it exists. */
export async function endpointsFrom(connects: string[]): Promise<VmEndpoint[]> {
  const specs = connects.length > 0 ? connects : process.env['BULWARK_VMS'] ? [`file:${process.env['BULWARK_VMS']}`] : existsSync(DEFAULT_VMS_FILE) ? [`file:${DEFAULT_VMS_FILE}`] : [];
  if (specs.length === 0) {
    throw new BulwarkError('usage', 'no VMs to look at', { hint: `pass --connect qmp:/path/to/qmp.sock[,qga=…] or list VMs in ${DEFAULT_VMS_FILE}` });
  }
  const out: VmEndpoint[] = [];
  for (const spec of specs) {
    const p = parseConnect(spec);
    if (p.endpoint) out.push(p.endpoint);
    if (p.file) out.push(...(await readVmsFile(p.file)));
  }
  return out;
}
