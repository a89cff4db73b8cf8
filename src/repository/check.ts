// Verification. Structure: every index file opens, every indexed pack exists with the right size,
// every snapshot's trees load and every blob they name is indexed. With readData: every pack's bytes
// hash to its name and every blob decrypts and hashes to its id. Damage is traced to the snapshots
// and files that depend on it, so an administrator knows exactly what a broken pack costs.
import { createHash } from 'node:crypto';
import { decompress } from 'zstd-napi';
import { unseal } from './crypto.js';
import { decodePage } from './fixed-index.js';
import type { IndexFile } from './index.js';
import { readPackHeader } from './pack.js';
import type { Repository } from './repository.js';
import { listSnapshots, type SnapshotWithId } from './snapshot.js';
import { walk } from './walk.js';

export interface CheckOptions {
  readData?: boolean;
  /** Percentage of packs to read (1–100), chosen at random. */
  readDataSubset?: number;
  onProgress?: (done: number, total: number, stage: string) => void;
}

export interface CheckProblem {
  kind: 'index' | 'pack-missing' | 'pack-size' | 'pack-damaged' | 'blob-damaged' | 'blob-missing' | 'tree' | 'snapshot';
  object: string;
  message: string;
}

export interface AffectedItem {
  snapshot: string;
  /** File path in the snapshot, or "<disk>@<offset>" for disk blocks. */
  path: string;
}

export interface CheckResult {
  snapshots: number;
  packs: number;
  packsRead: number;
  blobsRead: number;
  unreferencedPacks: number;
  problems: CheckProblem[];
  affected: AffectedItem[];
}

type CheckRepo = Pick<Repository, 'backend' | 'loadDocument' | 'loadBlob' | 'index' | 'key' | 'blobId'>;

export async function checkRepository(repo: CheckRepo, opts: CheckOptions = {}): Promise<CheckResult> {
  const problems: CheckProblem[] = [];
  // Index: load each file separately so one bad file is reported, not fatal.
  for await (const f of repo.backend.list('index')) {
    try {
      repo.index.addFile(await repo.loadDocument<IndexFile>('index', f.name));
    } catch (err) {
      problems.push({ kind: 'index', object: f.name, message: (err as Error).message });
    }
  }
  const stored = new Map<string, number>();
  for await (const f of repo.backend.list('data')) stored.set(f.name, f.size);
  let unreferencedPacks = 0;
  for (const name of stored.keys()) if (!repo.index.packs.has(name)) unreferencedPacks++;
  const brokenPacks = new Set<string>();
  for (const [pack, end] of repo.index.packs) {
    const size = stored.get(pack);
    if (size === undefined) {
      problems.push({ kind: 'pack-missing', object: pack, message: `pack ${pack} is in the index but not in storage` });
      brokenPacks.add(pack);
    } else if (size < end) {
      problems.push({ kind: 'pack-size', object: pack, message: `pack ${pack} is ${size} bytes, the index needs ${end}` });
      brokenPacks.add(pack);
    }
  }

  const damaged = new Set<string>();
  let packsRead = 0;
  let blobsRead = 0;
  if (opts.readData || opts.readDataSubset !== undefined) {
    const byPack = new Map<string, [string, { offset: number; length: number; ulen: number }][]>();
    for (const [id, e] of repo.index.entries()) {
      let l = byPack.get(e.pack);
      if (!l) byPack.set(e.pack, (l = []));
      l.push([id, e]);
    }
    let packs = [...byPack.keys()].filter((p) => !brokenPacks.has(p));
    if (opts.readDataSubset !== undefined && opts.readDataSubset < 100) {
      const want = Math.max(1, Math.ceil((packs.length * opts.readDataSubset) / 100));
      packs = packs.map((p) => [Math.random(), p] as const).sort((a, b) => a[0] - b[0]).slice(0, want).map(([, p]) => p);
    }
    for (const pack of packs) {
      opts.onProgress?.(packsRead, packs.length, 'read data');
      const bytes = await repo.backend.load({ type: 'data', name: pack });
      packsRead++;
      if (createHash('sha256').update(bytes).digest('hex') !== pack) {
        problems.push({ kind: 'pack-damaged', object: pack, message: `pack ${pack} does not hash to its name (its bytes changed)` });
      }
      try {
        readPackHeader(repo.key.encrypt, bytes, pack);
      } catch (err) {
        problems.push({ kind: 'pack-damaged', object: pack, message: (err as Error).message });
      }
      for (const [id, e] of byPack.get(pack)!) {
        blobsRead++;
        try {
          let plain = unseal(repo.key.encrypt, bytes.subarray(e.offset, e.offset + e.length), `blob ${id}`);
          if (e.ulen > 0) plain = decompress(plain);
          if (repo.blobId(plain) !== id) throw new Error('content does not hash to its id');
        } catch (err) {
          damaged.add(id);
          problems.push({ kind: 'blob-damaged', object: id, message: `blob ${id} in pack ${pack}: ${(err as Error).message}` });
        }
      }
    }
  }
  for (const [pack] of repo.index.packs) {
    if (!brokenPacks.has(pack)) continue;
    for (const [id, e] of repo.index.entries()) if (e.pack === pack) damaged.add(id);
  }

  // Snapshots: every referenced blob must be indexed (and undamaged); trace damage to paths.
  const snapshots: SnapshotWithId[] = await listSnapshots(repo).catch((err: unknown) => {
    problems.push({ kind: 'snapshot', object: '-', message: (err as Error).message });
    return [];
  });
  const affected: AffectedItem[] = [];
  const missingReported = new Set<string>();
  const bad = (id: string): boolean => {
    if (!repo.index.has(id)) {
      if (!missingReported.has(id)) {
        missingReported.add(id);
        problems.push({ kind: 'blob-missing', object: id, message: `blob ${id} is referenced but not in the index` });
      }
      return true;
    }
    return damaged.has(id);
  };
  for (const sn of snapshots) {
    try {
      if (sn.tree) {
        if (bad(sn.tree)) affected.push({ snapshot: sn.id, path: '/' });
        else {
          for await (const { path, node } of walk(repo, sn.tree, '', bad)) {
            if (node.subtree && bad(node.subtree)) affected.push({ snapshot: sn.id, path });
            if (node.content?.some(bad)) affected.push({ snapshot: sn.id, path });
          }
        }
      }
      for (const disk of sn.disks ?? []) {
        let block = 0;
        for (const pageId of disk.pages) {
          if (bad(pageId)) {
            affected.push({ snapshot: sn.id, path: `${disk.name}@index-page:${pageId.slice(0, 12)}` });
            continue;
          }
          for (const id of decodePage(await repo.loadBlob('tree', pageId), pageId)) {
            if (id !== null && bad(id)) affected.push({ snapshot: sn.id, path: `${disk.name}@${block * disk.blockSize}` });
            block++;
          }
        }
      }
    } catch (err) {
      problems.push({ kind: 'tree', object: sn.id, message: `snapshot ${sn.id.slice(0, 8)}: ${(err as Error).message}` });
    }
  }
  return { snapshots: snapshots.length, packs: repo.index.packs.size, packsRead, blobsRead, unreferencedPacks, problems, affected };
}
