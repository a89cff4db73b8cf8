// prune through the real CLI: what it frees, the two runs it takes, that it waits for processes that
// may still reuse what it condemned, that it runs beside backups, and that a kill at any point loses
// nothing. Witnesses: `diff -r` of restores against copies of the sources, `check --read-data`, and the
// files in the repository's own folders.
import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/storage/local.js';
import { Lock } from '../../src/repository/lock.js';
import { Repository } from '../../src/repository/repository.js';
import { makeSeededFiles, patternBytes } from '../fixtures/tree.js';
import { jsonResult, runCli, runCliKilledAfter, seededInts } from '../helpers/cli.js';
import { listObjects } from '../helpers/hostile.js';
import { makeCliRepository, tempDir } from '../helpers/repo.js';

const PASSWORD = 'prune';

let tmp: { path: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await tempDir();
});
afterAll(async () => {
  await tmp.cleanup();
});

interface PruneJson {
  removed: { packs: number; bytes: number };
  marked: { packs: number };
  revived: number;
  waiting: number;
}

/** A repository with small packs (many of them), and the environment that reaches it. */
async function newRepo(name: string): Promise<{ path: string; env: Record<string, string> }> {
  const path = `${tmp.path}/${name}`;
  return { path, env: await makeCliRepository(path, PASSWORD, `${tmp.path}/state-${name}`, { packSize: 64 * 1024 }) };
}

async function backup(env: Record<string, string>, src: string): Promise<string> {
  const r = await runCli(['backup', 'files', src, '--json'], { env });
  expect(r.code, r.stderr).toBe(0);
  return jsonResult<{ snapshot: string }>(r).snapshot;
}

async function pruneJson(env: Record<string, string>, ...args: string[]): Promise<PruneJson> {
  const r = await runCli(['prune', '--json', ...args], { env });
  expect(r.code, r.stderr).toBe(0);
  return jsonResult<PruneJson>(r);
}

async function repoBytes(path: string): Promise<number> {
  return Number(execFileSync('du', ['-sb', `${path}/data`]).toString().split('\t')[0]);
}

/** Changes a seeded tree: rewrites some files, removes some, adds one. */
async function mutate(root: string, round: number): Promise<void> {
  const dirs = (await fsp.readdir(root)).sort();
  for (const [i, d] of dirs.entries()) {
    const files = (await fsp.readdir(`${root}/${d}`)).sort();
    for (const [j, f] of files.entries()) {
      if ((i + j + round) % 5 === 0) await fsp.writeFile(`${root}/${d}/${f}`, patternBytes(3000 + ((round * 31 + j) % 4000), round * 1000 + j + 1));
      else if ((i + j + round) % 17 === 0) await fsp.rm(`${root}/${d}/${f}`);
    }
  }
  await fsp.writeFile(`${root}/${dirs[0]}/round-${round}.txt`, `round ${round}\n`.repeat(200));
}

describe('prune', () => {
  it('condemns what forget left unused, removes it on the next run, and the rest restores exactly', async () => {
    const { path, env } = await newRepo('basic');
    const src = `${tmp.path}/basic-src`;
    await makeSeededFiles(src, 400, 3);
    await backup(env, src);
    await mutate(src, 1);
    const second = await backup(env, src);
    const before = await repoBytes(path);

    expect((await runCli(['forget', '--keep-last', '1'], { env })).code).toBe(0);
    const packsBefore = await listObjects(path, 'data');
    const dry = await pruneJson(env, '--dry-run');
    expect(dry.marked.packs).toBeGreaterThan(0);
    expect(await listObjects(path, 'data')).toEqual(packsBefore);

    const first = await pruneJson(env);
    expect(first.removed.packs).toBe(0);
    expect(first.marked.packs).toBeGreaterThan(0);
    const secondRun = await pruneJson(env);
    expect(secondRun.removed.packs).toBe(first.marked.packs);
    const after = await repoBytes(path);
    console.log(`prune: repository data ${before} → ${after} bytes after forgetting 1 of 2 snapshots`);
    expect(after).toBeLessThan(before * 0.85);

    const check = await runCli(['check', '--read-data'], { env });
    expect(check.code, check.stdout).toBe(0);
    const out = `${tmp.path}/basic-restored`;
    const r = await runCli(['restore', second, '--target', out], { env });
    expect(r.code, r.stderr).toBe(0);
    execFileSync('diff', ['-r', src, `${out}${src}`]);
    // Nothing left to do: a third run changes nothing.
    const third = await pruneJson(env);
    expect(third).toMatchObject({ removed: { packs: 0 }, marked: { packs: 0 } });
  }, 120_000);

  it('keeps a condemned pack while a process that loaded the index before the mark runs, and revives it when that process uses it', async () => {
    const { path, env } = await newRepo('wait');
    const src = `${tmp.path}/wait-src`;
    await makeSeededFiles(src, 200, 4);
    const old = await backup(env, src);
    const expected = `${tmp.path}/wait-expected`;
    execFileSync('cp', ['-a', src, expected]);
    await mutate(src, 1);
    await backup(env, src);

    // A slow backup: it loaded the index (generation 0) and holds its lock, as `backup` does.
    const slow = await Repository.open(new LocalBackend(path), PASSWORD);
    const lock = await Lock.acquire(slow, false, 'backup');
    await slow.loadIndex();
    const oldRecord = await slow.loadDocument<Record<string, unknown>>('snapshots', old);
    try {
      expect((await runCli(['forget', old], { env })).code).toBe(0);
      const marking = await pruneJson(env);
      expect(marking.marked.packs).toBeGreaterThan(0);
      const packs = await listObjects(path, 'data');
      // The slow backup may still reuse those blobs: nothing is removed while it runs.
      const held = await pruneJson(env);
      expect(held).toMatchObject({ removed: { packs: 0 }, waiting: marking.marked.packs });
      expect(await listObjects(path, 'data')).toEqual(packs);
      // It does reuse them: its snapshot (the old tree, all deduplicated) lands after the mark.
      await slow.saveDocument('snapshots', { ...oldRecord, time: new Date().toISOString() });
    } finally {
      await lock.release();
      await slow.close();
    }
    const revived = await pruneJson(env);
    expect(revived.revived).toBeGreaterThan(0);
    const check = await runCli(['check', '--read-data'], { env });
    expect(check.code, check.stdout).toBe(0);
    // The snapshot the slow backup wrote is the newest: it restores the old tree exactly.
    const out = `${tmp.path}/wait-restored`;
    const r = await runCli(['restore', 'latest', '--target', out], { env });
    expect(r.code, r.stderr).toBe(0);
    execFileSync('diff', ['-r', expected, `${out}${src}`]);
  }, 120_000);

  it('runs beside two backups for 20 rounds with random timing; every snapshot restores exactly and check is clean', async () => {
    const { env } = await newRepo('beside');
    const srcs = [`${tmp.path}/beside-a`, `${tmp.path}/beside-b`];
    await makeSeededFiles(srcs[0]!, 120, 5);
    await makeSeededFiles(srcs[1]!, 120, 6);
    const expected = new Map<string, string>();
    const rand = seededInts(12345);
    let removedPacks = 0;
    for (let round = 0; round < 20; round++) {
      for (const [i, s] of srcs.entries()) if (round > 0) await mutate(s, round * 2 + i);
      const copies = srcs.map((s, i) => `${tmp.path}/beside-copy-${round}-${i}`);
      for (const [i, s] of srcs.entries()) execFileSync('cp', ['-a', s, copies[i]!]);
      const delay = rand(1200);
      const [a, b, p] = await Promise.all([
        runCli(['backup', 'files', srcs[0]!, '--json'], { env }),
        runCli(['backup', 'files', srcs[1]!, '--json'], { env }),
        new Promise((r) => setTimeout(r, delay)).then(() => runCli(['prune', '--json'], { env })),
      ]);
      expect(p.code, p.stderr).toBe(0);
      removedPacks += jsonResult<PruneJson>(p).removed.packs;
      for (const [i, r] of [a, b].entries()) {
        expect(r.code, r.stderr).toBe(0);
        const id = jsonResult<{ snapshot: string }>(r).snapshot;
        expected.set(id, copies[i]!);
        // Written while prune ran: it restores exactly, now and (below) after later prunes.
        const out = `${tmp.path}/beside-round-${round}-${i}`;
        const rr = await runCli(['restore', id, '--target', out], { env });
        expect(rr.code, rr.stderr).toBe(0);
        execFileSync('diff', ['-r', copies[i]!, `${out}${srcs[i]}`]);
        await fsp.rm(out, { recursive: true });
      }
      expect((await runCli(['forget', '--keep-last', '2'], { env })).code).toBe(0);
    }
    expect(removedPacks).toBeGreaterThan(0);
    const left = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { id: string }[];
    expect(left).toHaveLength(4);
    const check = await runCli(['check', '--read-data'], { env });
    expect(check.code, check.stdout).toBe(0);
    for (const s of left) {
      const copy = expected.get(s.id)!;
      const out = `${tmp.path}/beside-restored-${s.id.slice(0, 8)}`;
      const r = await runCli(['restore', s.id, '--target', out], { env });
      expect(r.code, r.stderr).toBe(0);
      const src = srcs.find((x) => copy.endsWith(`-${srcs.indexOf(x)}`))!;
      execFileSync('diff', ['-r', copy, `${out}${src}`]);
    }
    console.log(`prune beside backups: 20 rounds, ${removedPacks} packs removed while backups ran`);
  }, 600_000);

  it('survives SIGKILL at 30 random points: check --read-data clean, snapshots restore exactly, the next run succeeds', async () => {
    const { env } = await newRepo('kill');
    const src = `${tmp.path}/kill-src`;
    await makeSeededFiles(src, 150, 7);
    const expected = new Map<string, string>();
    const rand = seededInts(777);
    let killed = 0;
    let removed = 0;
    let fullRun = 0;
    for (let i = 0; i < 30; i++) {
      await mutate(src, i + 1);
      const copy = `${tmp.path}/kill-copy-${i}`;
      execFileSync('cp', ['-a', src, copy]);
      expected.set(await backup(env, src), copy);
      expect((await runCli(['forget', '--keep-last', '2'], { env })).code).toBe(0);
      // Every fifth run is timed, not killed; the others are killed at 10-130 % of the last timed one,
      // so the kills land inside prune on a fast machine and a slow one alike (fixed times killed every
      // run once prune got a little slower), and runs that finish sweep what earlier ones marked.
      const started = Date.now();
      const timedRun = i % 5 === 0;
      const r = timedRun ? { ...(await runCli(['prune', '--json'], { env })), killed: false } : await runCliKilledAfter(['prune', '--json'], Math.round(fullRun * (0.1 + rand(1200) / 1000)), { env });
      if (timedRun) fullRun = Date.now() - started;
      if (r.killed) killed++;
      else {
        expect(r.code, r.stderr).toBe(0);
        removed += jsonResult<PruneJson>(r).removed.packs;
      }
      const check = await runCli(['check', '--read-data'], { env });
      expect(check.code, `after prune run ${i} (${r.killed ? 'killed' : 'finished'}): ${check.stdout}`).toBe(0);
      const left = JSON.parse((await runCli(['snapshots', '--json'], { env })).stdout) as { id: string }[];
      for (const s of left) {
        const out = `${tmp.path}/kill-restored-${i}-${s.id.slice(0, 8)}`;
        const rr = await runCli(['restore', s.id, '--target', out], { env });
        expect(rr.code, rr.stderr).toBe(0);
        execFileSync('diff', ['-r', expected.get(s.id)!, `${out}${src}`]);
        await fsp.rm(out, { recursive: true });
      }
    }
    expect(killed).toBeGreaterThanOrEqual(10);
    const last = await pruneJson(env);
    expect(last.waiting).toBe(0);
    removed += last.removed.packs;
    // The runs did their work between the kills: packs were removed, not just left alone.
    expect(removed).toBeGreaterThan(0);
    console.log(`prune: ${killed} of 30 runs killed mid-way, ${removed} packs removed by the others; every check and restore after them clean`);
  }, 900_000);
});
