// Format 2 binds every sealed object to what it is. These are the attacks of someone who can write the
// repository's storage but has no password, and got one file of their choosing into a backed-up folder:
// its data blob, copied to a document's place, used to pass as that document in format 1. Each attack
// runs against both formats: format 1 shows the hole is real (and why `bulwark migrate` exists), format 2
// that it is closed.
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { compress } from 'zstd-napi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/storage/local.js';
import { Repository } from '../../src/repository/repository.js';
import { jsonResult, runCli } from '../helpers/cli.js';
import { objectPath } from '../helpers/hostile.js';
import { tempDir } from '../helpers/repo.js';

const PASSWORD = 'format-two';

/** A file whose bytes are a sealed document's plaintext in format 1: 0x01 ‖ zstd(JSON), incompressible. */
function craftedDocument(doc: Record<string, unknown>): Buffer {
  // Random padding inside the JSON makes the zstd frame incompressible, so the blob is stored raw and its
  // sealed bytes have exactly the shape of a sealed document.
  const json = Buffer.from(JSON.stringify({ ...doc, pad: randomBytes(600).toString('hex') }));
  return Buffer.concat([Buffer.from([0x01]), compress(json)]);
}

interface Setup {
  dir: string;
  repoPath: string;
  env: Record<string, string>;
  /** The real snapshot's root tree: what a forged snapshot would point at. */
  tree: string;
}

async function setup(root: string, version: 1 | 2): Promise<Setup> {
  const repoPath = `${root}/repo-v${version}`;
  const env = { BULWARK_REPOSITORY: repoPath, BULWARK_PASSWORD: PASSWORD, BULWARK_STATE_DIR: `${root}/state-v${version}` };
  const init = await runCli(['init', '--repository-version', String(version)], { env });
  expect(init.code, init.stderr).toBe(0);
  const src = `${root}/src-v${version}`;
  await fsp.mkdir(src, { recursive: true });
  await fsp.writeFile(`${src}/ordinary.txt`, 'an ordinary file\n');
  const r = await runCli(['backup', 'files', src, '--json'], { env });
  expect(r.code, r.stderr).toBe(0);
  const snaps = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { tree: string }[];
  return { dir: src, repoPath, env, tree: snaps[0]!.tree };
}

/**
 * Backs up a crafted file and returns the exact sealed bytes of its data blob, as someone watching the
 * storage could cut them out (the strongest attacker: told the blob's exact place).
 */
async function plantAndCut(s: Setup, content: Buffer): Promise<Buffer> {
  const name = `crafted-${randomBytes(4).toString('hex')}`;
  await fsp.writeFile(`${s.dir}/${name}`, content);
  const r = await runCli(['backup', 'files', s.dir, '--json'], { env: s.env });
  expect(r.code, r.stderr).toBe(0);
  const repo = await Repository.open(new LocalBackend(s.repoPath), PASSWORD);
  try {
    await repo.loadIndex();
    const e = repo.index.lookup(repo.blobId(content))!;
    expect(e.ulen, 'the crafted blob is stored uncompressed').toBe(0);
    const pack = await fsp.readFile(objectPath(s.repoPath, 'data', e.pack));
    return pack.subarray(e.offset, e.offset + e.length);
  } finally {
    await repo.close();
  }
}

async function placeAs(s: Setup, type: 'snapshots' | 'locks' | 'index', bytes: Buffer): Promise<string> {
  const name = createHash('sha256').update(bytes).digest('hex');
  await fsp.mkdir(`${s.repoPath}/${type}`, { recursive: true });
  await fsp.writeFile(objectPath(s.repoPath, type, name), bytes);
  return name;
}

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

describe.each([1, 2] as const)('format %i against forged documents', (version) => {
  const closed = version === 2;
  let s: Setup;
  beforeAll(async () => {
    s = await setup(`${tmp.path}/f${version}`, version);
  });

  it(`${closed ? 'refuses' : 'lists'} a data blob copied in as the latest snapshot (dated 2099, forged host)`, async () => {
    const forged = craftedDocument({ time: '2099-01-01T00:00:00.000Z', hostname: 'forged-host', username: 'x', source: 'files', paths: ['/'], tags: [], tree: s.tree, summary: { totalSize: 1 } });
    const name = await placeAs(s, 'snapshots', await plantAndCut(s, forged));
    const r = await runCli(['snapshots', '--json'], { env: s.env });
    expect(r.code).toBe(0);
    const hosts = (JSON.parse(r.stdout) as { id: string; hostname: string }[]).map((x) => x.hostname);
    if (closed) {
      expect(hosts).not.toContain('forged-host');
      expect(r.stderr).toContain(`snapshot ${name.slice(0, 8)} cannot be read and was skipped: snapshots file ${name} failed authentication (damaged or tampered with)`);
      // And it is no parent of the next backup.
      const b = await runCli(['backup', 'files', s.dir, '--json'], { env: s.env });
      expect(b.code, b.stderr).toBe(0);
      expect(jsonResult<{ parent?: string }>(b).parent).not.toBe(name);
    } else {
      expect(hosts[hosts.length - 1]).toBe('forged-host');
    }
    await fsp.rm(objectPath(s.repoPath, 'snapshots', name));
  });

  it(`${closed ? 'refuses' : 'uses'} a data blob copied over the config (attacker's chunker seed, tiny chunks, one blob per pack)`, async () => {
    const seed = 'ab'.repeat(32);
    const real = await fsp.readFile(`${s.repoPath}/config`);
    const repo = await Repository.open(new LocalBackend(s.repoPath), PASSWORD);
    const config = { ...repo.config, chunker: { seed, minSize: 4096, avgSize: 8192, maxSize: 16384 }, packSize: 65536 };
    await repo.close();
    const cut = await plantAndCut(s, craftedDocument(config));
    await fsp.writeFile(`${s.repoPath}/config`, cut);
    try {
      const r = await runCli(['snapshots'], { env: s.env });
      if (closed) {
        expect(r.code).toBe(1);
        expect(r.stderr).toContain('repository config failed authentication (damaged or tampered with)');
      } else {
        expect(r.code).toBe(0);
        const opened = await Repository.open(new LocalBackend(s.repoPath), PASSWORD);
        expect(opened.config.chunker.seed).toBe(seed);
        await opened.close();
      }
    } finally {
      await fsp.writeFile(`${s.repoPath}/config`, real);
    }
  });

  it(`${closed ? 'ignores' : 'obeys'} a data blob copied in as an exclusive lock held by another host`, async () => {
    const lock = craftedDocument({ time: new Date().toISOString(), exclusive: true, hostname: 'forged-host', username: 'x', pid: 1, purpose: 'prune' });
    const name = await placeAs(s, 'locks', await plantAndCut(s, lock));
    const r = await runCli(['backup', 'files', s.dir], { env: s.env });
    if (closed) {
      expect(r.code, r.stderr).toBe(0);
      const u = await runCli(['unlock', '--json'], { env: s.env });
      expect(jsonResult<{ removed: string[] }>(u).removed).toContain(name);
    } else {
      expect(r.code).toBe(12);
      expect(r.stderr).toMatch(/locked exclusively by prune \(pid 1 on forged-host/);
      await fsp.rm(objectPath(s.repoPath, 'locks', name));
    }
  });
});

describe('format 2: a data blob copied to every document path', () => {
  it('is rejected everywhere with a clear error, and the repository stays usable', async () => {
    const s = await setup(`${tmp.path}/every`, 2);
    const cut = await plantAndCut(s, craftedDocument({ anything: 1 }));
    const index = await placeAs(s, 'index', cut);
    const snapshot = await placeAs(s, 'snapshots', cut);
    const lock = await placeAs(s, 'locks', cut);
    const key = await placeAs(s, 'keys' as 'index', cut);

    const snaps = await runCli(['snapshots'], { env: s.env });
    expect(snaps.code).toBe(0);
    expect(snaps.stderr).toContain(`key file ${key.slice(0, 8)} is damaged and was skipped: is not JSON`);
    expect(snaps.stderr).toContain(`snapshot ${snapshot.slice(0, 8)} cannot be read and was skipped: snapshots file ${snapshot} failed authentication`);

    const check = await runCli(['check', '--read-data', '--no-lock'], { env: s.env });
    expect(check.code).toBe(1);
    expect(check.stdout).toContain(`error: index file ${index} failed authentication (damaged or tampered with)`);
    expect(check.stdout).toContain(`error: snapshots file ${snapshot} failed authentication (damaged or tampered with)`);

    const locks = await runCli(['unlock', '--json'], { env: s.env });
    expect(jsonResult<{ removed: string[] }>(locks).removed).toContain(lock);

    const real = await fsp.readFile(`${s.repoPath}/config`);
    await fsp.writeFile(`${s.repoPath}/config`, cut);
    const cfg = await runCli(['snapshots'], { env: s.env });
    expect(cfg.code).toBe(1);
    expect(cfg.stderr).toContain('repository config failed authentication');
    await fsp.writeFile(`${s.repoPath}/config`, real);

    // The key file content is no pack either: a data blob at a pack's place fails its header.
    expect((await runCli(['backup', 'files', s.dir], { env: s.env })).code).toBe(0);
  });
});

describe('pack sizes and trailers against a known file', () => {
  // The measure: the attacker knows a file that was backed up alone, and sees each data pack's size and
  // the header length in its trailer; we even tell them how many blobs each pack holds. From those they
  // compute each pack's payload: size − trailer − header − per-blob overhead × count. Counted:
  // - exact: packs whose payload is exactly the total length of the chunks in them (what lets a pack of
  //   nearly consecutive chunks pin chunk boundaries, and with them the secret chunker's choices);
  // - runs: packs whose payload equals the total of some run of consecutive chunks of the file (a
  //   boundary given away outright).
  async function exposedPacks(version: 1 | 2): Promise<{ packs: number; exact: number; runs: number; headerLengths: Set<number> }> {
    const root = `${tmp.path}/sizes-v${version}`;
    await fsp.mkdir(`${root}/src`, { recursive: true });
    await fsp.writeFile(`${root}/src/known.bin`, randomBytes(16 * 1024 * 1024));
    const repoPath = `${root}/repo`;
    const init = await Repository.init(new LocalBackend(repoPath), PASSWORD, {
      version,
      kdf: { N: 1024, r: 8, p: 1 },
      packSize: 1024 * 1024,
      chunker: { minSize: 64 * 1024, avgSize: 256 * 1024, maxSize: 1024 * 1024 },
    });
    await init.close();
    const env = { BULWARK_REPOSITORY: repoPath, BULWARK_PASSWORD: PASSWORD, BULWARK_STATE_DIR: `${root}/state` };
    const b = await runCli(['backup', 'files', `${root}/src/known.bin`], { env });
    expect(b.code, b.stderr).toBe(0);

    const repo = await Repository.open(new LocalBackend(repoPath), PASSWORD);
    try {
      await repo.loadIndex();
      const [snap] = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { tree: string }[];
      const { lookupPath } = await import('../../src/repository/walk.js');
      const found = await lookupPath(repo, snap!.tree, `${root}/src/known.bin`);
      const chunkLengths = found!.node!.content!.map((id) => repo.index.lookup(id)!.length - repo.sealer.overhead);
      const starts = [0];
      for (const l of chunkLengths) starts.push(starts[starts.length - 1]! + l);
      const runTotals = new Set<number>();
      for (let i = 0; i < starts.length; i++) for (let j = i + 1; j < starts.length; j++) runTotals.add(starts[j]! - starts[i]!);
      const packs = new Map<string, { count: number; total: number }>();
      for (const [, e] of repo.index.allEntries()) {
        if (e.type !== 'data') continue;
        const p = packs.get(e.pack) ?? { count: 0, total: 0 };
        p.count++;
        p.total += e.length - repo.sealer.overhead;
        packs.set(e.pack, p);
      }
      let exact = 0;
      let runs = 0;
      const headerLengths = new Set<number>();
      for (const [pack, { count, total }] of packs) {
        const bytes = await fsp.readFile(objectPath(repoPath, 'data', pack));
        const hlen = bytes.readUInt32LE(bytes.length - 4);
        headerLengths.add(hlen);
        const payload = bytes.length - 4 - hlen - repo.sealer.overhead * count;
        if (payload === total) exact++;
        if (runTotals.has(payload)) runs++;
      }
      return { packs: packs.size, exact, runs, headerLengths };
    } finally {
      await repo.close();
    }
  }

  it('format 1 gives the exact chunk total of every pack and its blob count; format 2 neither', async () => {
    const v1 = await exposedPacks(1);
    console.log(`pack sizes against a known file: format 1 ${JSON.stringify({ ...v1, headerLengths: v1.headerLengths.size })}`);
    expect(v1.packs).toBeGreaterThanOrEqual(8);
    expect(v1.exact).toBe(v1.packs);
    // Format 1's trailer tells each pack's blob count: header length = 28 + 41 × count.
    expect(v1.headerLengths.size).toBeGreaterThan(1);

    const v2 = await exposedPacks(2);
    console.log(`pack sizes against a known file: format 2 ${JSON.stringify({ ...v2, headerLengths: v2.headerLengths.size })}`);
    expect(v2.packs).toBeGreaterThanOrEqual(8);
    expect(v2.exact).toBe(0);
    expect(v2.runs).toBe(0);
    expect([...v2.headerLengths]).toEqual([2048 + 40]);
  }, 120_000);
});
