// Point-in-time images of a running QEMU VM's disks by image fleecing, exported over NBD.
//
// The fleecing layer is QEMU's copy-before-write filter (7.1+) with `on-cbw-error: break-snapshot`:
// before a guest write lands, the filter copies the old data into a scratch image; when that copy
// fails (the scratch space is full) or takes longer than `cbw-timeout`, the *snapshot* breaks and
// the guest's write goes on. Running out of scratch space therefore fails the backup, never the
// guest. (`blockdev-backup sync=none`, the older way, fails the guest's write instead.)
//
// Before the freeze (slow work): per disk, an empty qcow2 scratch image and a copy-before-write node
// above the disk's node, not yet in the guest's path. During the freeze: the new dirty bitmaps (one
// transaction), then each device is switched onto its filter (`qom-set drive`, which drains the
// device's I/O): that switch is the point in time. A VM with several disks is paused for the
// switches unless already paused, so all its disks share one instant. After the thaw: a
// snapshot-access node per disk, which reads as the disk at the point, exported over NBD.
//
// Everything is named with PREFIX so a killed run's leftovers can be found and removed next time.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { QmpClient } from '../../protocols/qmp/client.js';
import { BulwarkError } from '../../util/errors.js';
import { diskRootOf, readBlockGraph } from './block-graph.js';
import type { QemuDisk } from './inspect.js';

const run = promisify(execFile);
export const PREFIX = 'bulwark-';
/** Longest a guest write may wait for its old data to be copied before the snapshot gives way. */
const CBW_TIMEOUT_S = 20;

export const isOurNode = (node: string): boolean => node.startsWith(PREFIX);

export interface FleeceSession {
  /** Runs inside the freeze window: new bitmaps, then every device onto its filter. */
  takePoint(opts: { paused: boolean; onPause?: (paused: boolean) => void }): Promise<void>;
  /** Several disks: takePoint pauses the vCPUs for the switches unless the caller already has. */
  readonly pausesVcpus: boolean;
  export(previousBitmap: string | undefined): Promise<{ socket: string; disks: { name: string; exportName: string; dirtyContext?: string }[] }>;
  /** After a failed read: why, if the scratch space is the reason. */
  diagnose(): Promise<string | undefined>;
  finish(ok: boolean): Promise<void>;
}

async function quiet<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch {
    return undefined;
  }
}

async function waitJobGone(qmp: QmpClient, id: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const jobs = await qmp.execute<{ id?: string; device: string }[]>('query-block-jobs');
    if (!jobs.some((j) => (j.id ?? j.device) === id)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Deletion order: a node goes before the nodes it uses (access → filter → scratch image → its file).
const KIND_ORDER = ['sa-', 'cbw-', 'fl-', 'fp-'];
const kindRank = (node: string): number => {
  const i = KIND_ORDER.findIndex((k) => node.startsWith(`${PREFIX}${k}`));
  return i < 0 ? KIND_ORDER.length : i;
};

/** Removes the exports, NBD server, jobs, filters and scratch files a killed run left behind. */
export async function cleanupLeftovers(qmp: QmpClient, scratchDir?: string): Promise<void> {
  const exports = ((await quiet(qmp.execute<{ id: string }[]>('query-block-exports'))) ?? []).map((e) => e.id).filter(isOurNode);
  for (const id of exports) await quiet(qmp.execute('block-export-del', { id, mode: 'hard' }));
  // Jobs: blockdev-backup fleecing of Bulwark before 0.2.
  const jobs = (await qmp.execute<{ id?: string; device: string }[]>('query-block-jobs')).map((j) => j.id ?? j.device).filter(isOurNode);
  for (const id of jobs) {
    await quiet(qmp.execute('block-job-cancel', { device: id, force: true }));
    await waitJobGone(qmp, id);
  }
  let graph = await readBlockGraph(qmp);
  const ours = [...graph.nodes.keys()].filter(isOurNode);
  if (exports.length > 0 || ours.length > 0) await quiet(qmp.execute('nbd-server-stop'));
  for (const node of ours.filter((n) => n.startsWith(`${PREFIX}sa-`))) await quiet(qmp.execute('blockdev-del', { 'node-name': node }));
  // Devices still on a filter of ours go back onto their disk before the filter can go.
  graph = await readBlockGraph(qmp);
  for (const d of graph.devices) {
    if (!isOurNode(d.root)) continue;
    await qmp.execute('qom-set', { path: d.qomPath, property: 'drive', value: diskRootOf(graph, d.root, isOurNode) });
  }
  for (const node of ours.filter((n) => !n.startsWith(`${PREFIX}sa-`)).sort((a, b) => kindRank(a) - kindRank(b))) await quiet(qmp.execute('blockdev-del', { 'node-name': node }));
  if (scratchDir) {
    const left = [...(await readBlockGraph(qmp)).nodes.keys()].filter(isOurNode);
    if (left.length === 0) {
      for (const f of (await quiet(readdir(scratchDir))) ?? []) if (f.startsWith(PREFIX) && f.endsWith('.qcow2')) await rm(join(scratchDir, f), { force: true });
    }
  }
}

/** Bitmaps of ours that are not the incremental base (a killed run's new bitmap): merged into the base, then removed. */
export async function dropStaleBitmaps(qmp: QmpClient, node: string, bitmaps: string[], base: string | undefined): Promise<void> {
  for (const b of bitmaps) {
    if (!isOurNode(b) || b === base) continue;
    if (base && bitmaps.includes(base)) await quiet(qmp.execute('block-dirty-bitmap-merge', { node, target: base, bitmaps: [b] }));
    await quiet(qmp.execute('block-dirty-bitmap-remove', { node, name: b }));
  }
}

export async function prepareFleece(qmp: QmpClient, disks: QemuDisk[], opts: { scratchDir: string; newBitmap: string }): Promise<FleeceSession> {
  const tag = randomBytes(4).toString('hex');
  const items = disks.map((d) => ({
    d,
    file: join(opts.scratchDir, `${PREFIX}${tag}-${d.name}.qcow2`),
    // QEMU allows node names of at most 31 characters.
    scratch: `${PREFIX}fl-${tag}-${d.name}`,
    proto: `${PREFIX}fp-${tag}-${d.name}`,
    filter: `${PREFIX}cbw-${tag}-${d.name}`,
    access: `${PREFIX}sa-${tag}-${d.name}`,
    exportId: `${PREFIX}e-${tag}-${d.name}`,
    switched: false,
    accessAdded: false,
  }));
  const added: typeof items = [];
  const socket = join(opts.scratchDir, `${PREFIX}${tag}.nbd`);
  let serverStarted = false;
  try {
    for (const it of items) {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', it.file, String(it.d.size)]);
      await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': it.scratch, file: { driver: 'file', filename: it.file, 'node-name': it.proto } });
      added.push(it);
      await qmp.execute('blockdev-add', { driver: 'copy-before-write', 'node-name': it.filter, file: it.d.node, target: it.scratch, 'on-cbw-error': 'break-snapshot', 'cbw-timeout': CBW_TIMEOUT_S });
    }
    // Started before the freeze, so a server that cannot start fails the VM before anything is frozen.
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } }).catch((err: unknown) => {
      if (!/already running/i.test((err as Error).message)) throw err;
      // QEMU runs one NBD server; one that is not ours belongs to another tool (libvirt's backup
      // job, a storage migration) and cannot be shared without knowing its address.
      throw new BulwarkError('failed', 'QEMU already runs an NBD server that Bulwark did not start (another backup or a migration is using the VM)', {
        hint: "wait for the other job to end, or stop it with QMP 'nbd-server-stop' if nothing uses it",
        cause: err,
      });
    });
    serverStarted = true;
  } catch (err) {
    if (serverStarted) await quiet(qmp.execute('nbd-server-stop'));
    for (const it of added) {
      await quiet(qmp.execute('blockdev-del', { 'node-name': it.filter }));
      await quiet(qmp.execute('blockdev-del', { 'node-name': it.scratch }));
    }
    for (const it of items) await rm(it.file, { force: true });
    if (err instanceof BulwarkError && err.code === 'failed') throw err;
    throw new BulwarkError('failed', `cannot prepare fleecing for ${disks.map((d) => d.name).join(', ')} in '${opts.scratchDir}': ${(err as Error).message}`, {
      hint: "check free space there ('bulwark doctor'), or choose another --scratch-dir; copy-before-write fleecing needs QEMU 7.1 or newer",
      cause: err,
    });
  }
  let previous: string | undefined;

  const pausesVcpus = items.length > 1;
  return {
    pausesVcpus,
    async takePoint({ paused, onPause }) {
      const bitmaps = items.filter((it) => it.d.format === 'qcow2').map((it) => ({ type: 'block-dirty-bitmap-add', data: { node: it.d.bitmapNode, name: opts.newBitmap, persistent: true } }));
      // Added before the switch, the new bitmap also sees writes just before the point: a superset.
      if (bitmaps.length > 0) await qmp.execute('transaction', { actions: bitmaps });
      const pause = pausesVcpus && !paused;
      if (pause) {
        onPause?.(true);
        await qmp.execute('stop');
      }
      try {
        for (const it of items) {
          await qmp.execute('qom-set', { path: it.d.qomPath, property: 'drive', value: it.filter });
          it.switched = true;
        }
      } finally {
        if (pause) {
          await qmp.execute('cont');
          onPause?.(false);
        }
      }
    },
    async export(previousBitmap) {
      previous = previousBitmap;
      for (const it of items) {
        await qmp.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': it.access, file: it.filter });
        it.accessAdded = true;
      }
      const out: { name: string; exportName: string; dirtyContext?: string }[] = [];
      for (const it of items) {
        const bitmaps: string[] = [];
        if (previousBitmap && it.d.format === 'qcow2') {
          // A disabled copy of the base bitmap on the exported node carries what changed since the
          // base (a superset from the point on, which only costs a little reading).
          await qmp.execute('block-dirty-bitmap-add', { node: it.access, name: previousBitmap, disabled: true, persistent: false });
          await qmp.execute('block-dirty-bitmap-merge', { node: it.access, target: previousBitmap, bitmaps: [{ node: it.d.bitmapNode, name: previousBitmap }] });
          bitmaps.push(previousBitmap);
        }
        await qmp.execute('block-export-add', { type: 'nbd', id: it.exportId, 'node-name': it.access, name: it.d.name, writable: false, ...(bitmaps.length ? { bitmaps } : {}) });
        out.push({ name: it.d.name, exportName: it.d.name, ...(bitmaps.length ? { dirtyContext: `qemu:dirty-bitmap:${previousBitmap}` } : {}) });
      }
      return { socket, disks: out };
    },
    async diagnose() {
      const s = await quiet(statfs(opts.scratchDir));
      if (!s) return undefined;
      const free = s.bavail * s.bsize;
      // The filter copies in clusters of 64 KiB to 1 MiB: with less than a few MiB left, a copy failed.
      if (free >= 4 * 1024 * 1024) return undefined;
      return `the scratch space in '${opts.scratchDir}' ran out while the guest wrote (${Math.round(free / 1024)} KiB free), so the point-in-time image broke; the guest's own writes were not affected`;
    },
    async finish(ok) {
      for (const it of items) await quiet(qmp.execute('block-export-del', { id: it.exportId, mode: 'hard' }));
      if (serverStarted) await quiet(qmp.execute('nbd-server-stop'));
      for (const it of items) if (it.accessAdded) await quiet(qmp.execute('blockdev-del', { 'node-name': it.access }));
      let stuck: Error | undefined;
      for (const it of items) {
        // The device goes back onto its disk (draining its I/O) before the filter can be removed.
        if (it.switched) {
          try {
            await qmp.execute('qom-set', { path: it.d.qomPath, property: 'drive', value: it.d.node });
          } catch (err) {
            stuck = err as Error;
            continue;
          }
        }
        await quiet(qmp.execute('blockdev-del', { 'node-name': it.filter }));
        await quiet(qmp.execute('blockdev-del', { 'node-name': it.scratch }));
        await rm(it.file, { force: true });
      }
      for (const it of items) {
        if (it.d.format !== 'qcow2') continue;
        const node = it.d.bitmapNode;
        if (ok) {
          // The new bitmap is the base of the next incremental; the old base has served.
          if (previous) await quiet(qmp.execute('block-dirty-bitmap-remove', { node, name: previous }));
        } else {
          // Nothing may be missed: what the new bitmap saw goes back into the base, then it goes.
          if (previous) await quiet(qmp.execute('block-dirty-bitmap-merge', { node, target: previous, bitmaps: [opts.newBitmap] }));
          await quiet(qmp.execute('block-dirty-bitmap-remove', { node, name: opts.newBitmap }));
        }
      }
      await rm(socket, { force: true });
      if (stuck) {
        throw new BulwarkError('failed', `a disk could not be switched back from its fleecing filter: ${stuck.message}`, {
          hint: 'the guest runs on through the filter unharmed; the next backup removes it',
          cause: stuck,
        });
      }
    },
  };
}
