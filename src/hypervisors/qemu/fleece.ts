// Point-in-time images of a running QEMU VM's disks by image fleecing (QEMU 7.2), exported over NBD.
//
// Before the freeze (slow work): an empty qcow2 overlay per disk in the scratch folder, added as a
// node whose backing is the disk. During the freeze (one QMP transaction): a `blockdev-backup
// sync=none` per disk into its overlay, so every guest write first copies the old data there, and a
// new persistent dirty bitmap per qcow2 disk. After the thaw: an NBD export of each overlay, which
// reads as the disk at the freeze point; for incrementals the previous bitmap is exposed through it.
//
// Everything is named with PREFIX so a killed run's leftovers can be found and removed next time.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { QmpClient } from '../../protocols/qmp/client.js';
import { BulwarkError } from '../../util/errors.js';

const run = promisify(execFile);
export const PREFIX = 'bulwark-';

export interface FleeceDisk {
  name: string;
  node: string;
  format: string;
  size: number;
}

export interface FleeceSession {
  actions: unknown[];
  export(previousBitmap: string | undefined): Promise<{ socket: string; disks: { name: string; exportName: string; dirtyContext?: string }[] }>;
  finish(ok: boolean): Promise<void>;
}

interface Leftovers {
  exports: string[];
  jobs: string[];
  nodes: string[];
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

async function leftovers(qmp: QmpClient): Promise<Leftovers> {
  const exports = ((await quiet(qmp.execute<{ id: string }[]>('query-block-exports'))) ?? []).map((e) => e.id).filter((id) => id.startsWith(PREFIX));
  const jobs = (await qmp.execute<{ id?: string; device: string }[]>('query-block-jobs')).map((j) => j.id ?? j.device).filter((id) => id.startsWith(PREFIX));
  const nodes = (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true })).map((n) => n['node-name']).filter((n) => n.startsWith(PREFIX));
  return { exports, jobs, nodes: [...new Set(nodes)] };
}

/** Removes exports, the NBD server, jobs, nodes and scratch files a killed run left behind. */
export async function cleanupLeftovers(qmp: QmpClient, scratchDir?: string): Promise<void> {
  const l = await leftovers(qmp);
  for (const id of l.exports) await quiet(qmp.execute('block-export-del', { id, mode: 'hard' }));
  if (l.exports.length > 0 || l.nodes.length > 0) await quiet(qmp.execute('nbd-server-stop'));
  for (const id of l.jobs) {
    await quiet(qmp.execute('block-job-cancel', { device: id, force: true }));
    await waitJobGone(qmp, id);
  }
  // Formats before their files: the overlay's protocol node (…-fp-…) is its child.
  const isProto = (n: string): number => Number(n.startsWith(`${PREFIX}fp-`));
  for (const node of l.nodes.sort((a, b) => isProto(a) - isProto(b))) await quiet(qmp.execute('blockdev-del', { 'node-name': node }));
  if (scratchDir) {
    const inUse = new Set((await leftovers(qmp)).nodes);
    if (inUse.size === 0) {
      for (const f of (await quiet(readdir(scratchDir))) ?? []) if (f.startsWith(PREFIX) && f.endsWith('.qcow2')) await rm(join(scratchDir, f), { force: true });
    }
  }
}

/** Bitmaps of ours that are not the incremental base (a killed run's new bitmap): merged into the base, then removed. */
export async function dropStaleBitmaps(qmp: QmpClient, node: string, bitmaps: string[], base: string | undefined): Promise<void> {
  for (const b of bitmaps) {
    if (!b.startsWith(PREFIX) || b === base) continue;
    if (base && bitmaps.includes(base)) await quiet(qmp.execute('block-dirty-bitmap-merge', { node, target: base, bitmaps: [b] }));
    await quiet(qmp.execute('block-dirty-bitmap-remove', { node, name: b }));
  }
}

export async function prepareFleece(qmp: QmpClient, disks: FleeceDisk[], opts: { scratchDir: string; newBitmap: string }): Promise<FleeceSession> {
  const tag = randomBytes(4).toString('hex');
  const items = disks.map((d) => ({
    d,
    file: join(opts.scratchDir, `${PREFIX}${tag}-${d.name}.qcow2`),
    // QEMU allows node names of at most 31 characters.
    fleece: `${PREFIX}fl-${tag}-${d.name}`,
    proto: `${PREFIX}fp-${tag}-${d.name}`,
    job: `${PREFIX}j-${tag}-${d.name}`,
    exportId: `${PREFIX}e-${tag}-${d.name}`,
  }));
  const added: typeof items = [];
  try {
    for (const it of items) {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', it.file, String(it.d.size)]);
      await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': it.fleece, file: { driver: 'file', filename: it.file, 'node-name': it.proto }, backing: it.d.node });
      added.push(it);
    }
  } catch (err) {
    for (const it of added) await quiet(qmp.execute('blockdev-del', { 'node-name': it.fleece }));
    for (const it of items) await rm(it.file, { force: true });
    throw new BulwarkError('failed', `cannot prepare fleecing images in '${opts.scratchDir}': ${(err as Error).message}`, { hint: "check free space there ('bulwark doctor'), or choose another --scratch-dir", cause: err });
  }
  const actions: unknown[] = [];
  for (const it of items) {
    actions.push({ type: 'blockdev-backup', data: { device: it.d.node, target: it.fleece, sync: 'none', 'job-id': it.job, 'auto-finalize': true, 'auto-dismiss': true } });
    if (it.d.format === 'qcow2') actions.push({ type: 'block-dirty-bitmap-add', data: { node: it.d.node, name: opts.newBitmap, persistent: true } });
  }
  const socket = join(opts.scratchDir, `${PREFIX}${tag}.nbd`);
  let exported = false;
  let previous: string | undefined;

  return {
    actions,
    async export(previousBitmap) {
      previous = previousBitmap;
      await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
      exported = true;
      const out: { name: string; exportName: string; dirtyContext?: string }[] = [];
      for (const it of items) {
        const bitmaps: string[] = [];
        if (previousBitmap && it.d.format === 'qcow2') {
          // The export shows the fleece node; a disabled copy of the base bitmap there carries what
          // changed since the base (a superset from the freeze on, which only costs a little reading).
          await qmp.execute('block-dirty-bitmap-add', { node: it.fleece, name: previousBitmap, disabled: true, persistent: false });
          await qmp.execute('block-dirty-bitmap-merge', { node: it.fleece, target: previousBitmap, bitmaps: [{ node: it.d.node, name: previousBitmap }] });
          bitmaps.push(previousBitmap);
        }
        await qmp.execute('block-export-add', { type: 'nbd', id: it.exportId, 'node-name': it.fleece, name: it.d.name, writable: false, ...(bitmaps.length ? { bitmaps } : {}) });
        out.push({ name: it.d.name, exportName: it.d.name, ...(bitmaps.length ? { dirtyContext: `qemu:dirty-bitmap:${previousBitmap}` } : {}) });
      }
      return { socket, disks: out };
    },
    async finish(ok) {
      for (const it of items) await quiet(qmp.execute('block-export-del', { id: it.exportId, mode: 'hard' }));
      if (exported) await quiet(qmp.execute('nbd-server-stop'));
      for (const it of items) {
        await quiet(qmp.execute('block-job-cancel', { device: it.job, force: true }));
        await quiet(waitJobGone(qmp, it.job));
        await quiet(qmp.execute('blockdev-del', { 'node-name': it.fleece }));
        await rm(it.file, { force: true });
        if (it.d.format !== 'qcow2') continue;
        if (ok) {
          // The new bitmap is the base of the next incremental; the old base has served.
          if (previous) await quiet(qmp.execute('block-dirty-bitmap-remove', { node: it.d.node, name: previous }));
        } else {
          // Nothing may be missed: what the new bitmap saw goes back into the base, then it goes.
          if (previous) await quiet(qmp.execute('block-dirty-bitmap-merge', { node: it.d.node, target: previous, bitmaps: [opts.newBitmap] }));
          await quiet(qmp.execute('block-dirty-bitmap-remove', { node: it.d.node, name: opts.newBitmap }));
        }
      }
      await rm(socket, { force: true });
    },
  };
}
