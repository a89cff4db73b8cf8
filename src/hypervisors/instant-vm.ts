// What instant restore needs from a hypervisor (docs/architecture.md, "Instant restore"): a VM started
// on one qcow2 overlay per disk whose backing is the disk's NBD export, and a copy that fills the
// overlays while the VM runs. QEMU command lines (qemu/instant.ts) and libvirt domains
// (libvirt/instant.ts) both give one.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BulwarkError } from '../util/errors.js';

const run = promisify(execFile);

/** Seconds QEMU holds a disk request while the export is unreachable before failing (pausing) it. */
export const RECONNECT_DELAY_S = 15;

export interface InstantDisk {
  name: string;
  size: number;
  /** The export's UNIX socket and the disk's export name on it. */
  socket: string;
  exportName: string;
  /** The local qcow2 image the VM runs on, filled while it runs. */
  path: string;
}

export interface CopyOptions {
  /** Bytes per second for the copy, all of it; absent: as fast as the export serves. */
  speed?: number;
  onProgress?: (done: number, total: number) => void;
  /** A copy or a guest read could not reach the export and waits; said once per stall. */
  onStall?: (message: string) => void;
  /** How long a stall is retried before the copy is given up (the VM keeps running on the export). */
  giveUpAfterMs?: number;
}

/** Where the user finds the restored VM. */
export interface InstantWhere {
  pid?: number;
  qmp?: string;
  qga?: string;
  console?: string;
  domain?: { uri: string; name: string; uuid: string };
}

export interface InstantMachine {
  readonly where: InstantWhere;
  /** Copies every disk still backed by the export into its local image; resolves when none reads it. */
  copy(opts?: CopyOptions): Promise<void>;
  /** Whether the VM still runs (and so may still read the export). */
  running(): Promise<boolean>;
  close(): Promise<void>;
}

/** The overlay's backing: QEMU's NBD client with reconnection, so a lost export stalls instead of failing. */
export function nbdBacking(socket: string, exportName: string): string {
  // The format layer is spelt out: with only the protocol's options QEMU would put them on the raw node.
  return `json:${JSON.stringify({ driver: 'raw', file: { driver: 'nbd', server: { type: 'unix', path: socket }, export: exportName, 'reconnect-delay': RECONNECT_DELAY_S } })}`;
}

/** One qcow2 overlay per disk on its export; the export is not opened here (-u), QEMU opens it. */
export async function createOverlays(disks: InstantDisk[]): Promise<void> {
  for (const d of disks) {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', nbdBacking(d.socket, d.exportName), '-F', 'raw', d.path, String(d.size)]).catch((err: { stderr?: string }) => {
      throw new BulwarkError('failed', `cannot create '${d.path}': ${err.stderr?.trim() ?? String(err)}`);
    });
  }
}
