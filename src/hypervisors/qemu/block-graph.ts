// QEMU's block graph as one value: which node each guest device is attached to, each node's driver,
// size, file and dirty bitmaps, and the edges between nodes (root, file, backing, target).
//
// query-block names devices and their root node; query-named-block-nodes describes nodes;
// x-debug-query-block-graph (present since QEMU 4.0, "x-" only because its shape may change) is the
// only QMP command that names a node's *children*. Fleecing inserts filter nodes between a device and
// its disk, and a killed run can leave them there: finding the real disk under them needs the edges.
import type { QmpClient } from '../../protocols/qmp/client.js';
import { BulwarkError } from '../../util/errors.js';

export interface BitmapInfo {
  name: string;
  granularity: number;
  /** Enabled: records guest writes. */
  recording: boolean;
  /** Stored in the qcow2 image when QEMU closes it. */
  persistent: boolean;
  /** In use by an operation (an export, a job): cannot be changed or removed now. */
  busy: boolean;
  /** Was not stored properly (QEMU crashed or was killed): can only be removed. */
  inconsistent: boolean;
  /** Dirty bytes. */
  count: number;
}

export interface NodeInfo {
  name: string;
  driver: string;
  readOnly: boolean;
  virtualSize: number;
  /** The image's file name as QEMU reports it (a json: pseudo-name for stacked filters). */
  filename: string;
  /** Named dirty bitmaps on this node (QEMU's internal unnamed ones are left out). */
  bitmaps: BitmapInfo[];
}

export interface DeviceInfo {
  /** BlockBackend name: '' for devices defined with -blockdev, the drive id with legacy -drive. */
  device: string;
  /** The device's id or QOM path, as query-block's `qdev`. */
  qdev: string;
  /** QOM path of the device that owns the `drive` property. */
  qomPath: string;
  /** Root node: the node the device reads and writes. */
  root: string;
  removable: boolean;
  ioStatus?: string;
}

export interface BlockGraph {
  nodes: Map<string, NodeInfo>;
  /** parent node name → edge name → child node name. */
  children: Map<string, Map<string, string>>;
  /** child node name → parent node names (block backends excluded). */
  parents: Map<string, string[]>;
  devices: DeviceInfo[];
}

/**
 * Drivers that pass requests through to one child (`file`) without a format of their own: a device's
 * disk is the first node under its root that is not one of these.
 */
export const FILTER_DRIVERS = new Set(['throttle', 'copy-on-read', 'compress', 'preallocate', 'copy-before-write', 'blkdebug', 'blklogwrites', 'blkverify', 'blkreplay']);

interface RawNode {
  'node-name': string;
  drv: string;
  ro: boolean;
  file: string;
  image?: { 'virtual-size'?: number; filename?: string };
  'dirty-bitmaps'?: { name?: string; granularity?: number; recording?: boolean; persistent?: boolean; busy?: boolean; inconsistent?: boolean; count?: number }[];
}

interface RawGraph {
  nodes: { id: number; type: string; name: string }[];
  edges: { parent: number; child: number; name: string }[];
}

interface RawBlock {
  device: string;
  qdev?: string;
  removable: boolean;
  'io-status'?: string;
  inserted?: { 'node-name': string };
}

/** A device id becomes its QOM path under /machine/peripheral; query-block gives paths for anonymous devices. */
export function qomPathOf(qdev: string): string {
  return qdev.startsWith('/') ? qdev : `/machine/peripheral/${qdev}`;
}

export async function readBlockGraph(qmp: QmpClient): Promise<BlockGraph> {
  const [blocks, rawNodes, rawGraph] = await Promise.all([
    qmp.execute<RawBlock[]>('query-block'),
    qmp.execute<RawNode[]>('query-named-block-nodes', { flat: true }),
    qmp.execute<RawGraph>('x-debug-query-block-graph').catch((err: unknown) => {
      throw new BulwarkError('failed', `QEMU did not describe its block graph (x-debug-query-block-graph): ${(err as Error).message}`, {
        cause: err,
        hint: 'Bulwark needs QEMU 7.1 or newer for safe fleecing',
      });
    }),
  ]);
  const nodes = new Map<string, NodeInfo>();
  for (const n of rawNodes) {
    nodes.set(n['node-name'], {
      name: n['node-name'],
      driver: n.drv,
      readOnly: n.ro,
      virtualSize: n.image?.['virtual-size'] ?? 0,
      filename: n.image?.filename ?? n.file,
      bitmaps: (n['dirty-bitmaps'] ?? [])
        .filter((b) => typeof b.name === 'string' && b.name !== '')
        .map((b) => ({
          name: b.name as string,
          granularity: b.granularity ?? 0,
          recording: b.recording ?? false,
          persistent: b.persistent ?? false,
          busy: b.busy ?? false,
          inconsistent: b.inconsistent ?? false,
          count: b.count ?? 0,
        })),
    });
  }
  const byId = new Map(rawGraph.nodes.map((n) => [n.id, n]));
  const children = new Map<string, Map<string, string>>();
  const parents = new Map<string, string[]>();
  for (const e of rawGraph.edges) {
    const p = byId.get(e.parent);
    const c = byId.get(e.child);
    if (!p || !c || p.type !== 'block-driver' || c.type !== 'block-driver') continue;
    let m = children.get(p.name);
    if (!m) children.set(p.name, (m = new Map()));
    m.set(e.name, c.name);
    parents.set(c.name, [...(parents.get(c.name) ?? []), p.name]);
  }
  const devices: DeviceInfo[] = [];
  for (const b of blocks) {
    if (!b.qdev || !b.inserted) continue;
    devices.push({
      device: b.device,
      qdev: b.qdev,
      qomPath: qomPathOf(b.qdev),
      root: b.inserted['node-name'],
      removable: b.removable,
      ...(b['io-status'] ? { ioStatus: b['io-status'] } : {}),
    });
  }
  return { nodes, children, parents, devices };
}

/**
 * The node a device's disk really is, below any layers `isOurs` recognises (fleecing nodes a killed run
 * left between the device and its disk).
 */
export function diskRootOf(graph: BlockGraph, root: string, isOurs: (node: string) => boolean): string {
  let node = root;
  for (let depth = 0; isOurs(node); depth++) {
    const next = graph.children.get(node)?.get('file');
    if (!next || depth > 8) throw new BulwarkError('failed', `cannot find the disk under block node '${root}'`, { hint: 'inspect the block graph with x-debug-query-block-graph' });
    node = next;
  }
  return node;
}

/** The first node at or below `node` that is not a filter: the format node (qcow2, raw) that holds bitmaps. */
export function formatNodeOf(graph: BlockGraph, node: string): string {
  let n = node;
  for (let depth = 0; depth < 16; depth++) {
    const info = graph.nodes.get(n);
    const next = graph.children.get(n)?.get('file');
    if (!info || !FILTER_DRIVERS.has(info.driver) || !next) return n;
    n = next;
  }
  return n;
}
