import { describe, expect, it } from 'vitest';
import type { BlockGraph, NodeInfo } from './block-graph.js';
import { disksOfGraph } from './inspect.js';

function node(name: string, driver: string, extra: Partial<NodeInfo> = {}): [string, NodeInfo] {
  return [name, { name, driver, readOnly: false, virtualSize: 1 << 30, filename: `/img/${name}`, bitmaps: [], ...extra }];
}

describe('disksOfGraph', () => {
  const graph: BlockGraph = {
    nodes: new Map([
      node('bulwark-cbw-1-vda', 'copy-before-write'),
      node('disk0', 'qcow2', { bitmaps: [{ name: 'bulwark-a', granularity: 65536, recording: true, persistent: true, busy: false, inconsistent: false, count: 0 }] }),
      node('file0', 'file'),
      node('thr1', 'throttle'),
      node('disk1', 'raw'),
      node('cd', 'raw', { readOnly: true }),
    ]),
    children: new Map([
      ['bulwark-cbw-1-vda', new Map([['file', 'disk0'], ['target', 'x']])],
      ['disk0', new Map([['file', 'file0']])],
      ['thr1', new Map([['file', 'disk1']])],
    ]),
    parents: new Map(),
    devices: [
      { device: '', qdev: '/machine/peripheral/vd0/virtio-backend', qomPath: '/machine/peripheral/vd0/virtio-backend', root: 'bulwark-cbw-1-vda', removable: false },
      { device: '', qdev: 'cd0', qomPath: '/machine/peripheral/cd0', root: 'cd', removable: true },
      { device: '', qdev: 'vd1', qomPath: '/machine/peripheral/vd1', root: 'thr1', removable: false },
    ],
  };

  it('finds the disk below a filter a killed run left, and the bitmaps on the format node below a user filter', () => {
    const disks = disksOfGraph(graph, (n) => n.startsWith('bulwark-'));
    expect(disks.map((d) => [d.name, d.node, d.bitmapNode, d.format, d.layered])).toEqual([
      ['vda', 'disk0', 'disk0', 'qcow2', true],
      ['vdb', 'thr1', 'disk1', 'raw', false],
    ]);
    expect(disks[0]!.bitmaps.map((b) => b.name)).toEqual(['bulwark-a']);
  });
});
