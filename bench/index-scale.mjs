#!/usr/bin/env node
// Scale simulation of the index: a repository whose index lists N blobs (100 million by default, what
// 100 TB holds at 1 MiB blocks; no pack data: only index files), then `backup disk` of an image
// against it, timed with its peak RSS, and the lookup rate of the index as the backup sees it.
//
//   node bench/index-scale.mjs [--entries N] [--image PATH] [--out DIR] [--json FILE]
//
// Needs `npm run build` first (it drives dist/ and bin/bulwark.js). The repository is made once per
// entry count in DIR (default bench/out/scale) and kept; the index cache is emptied before the first
// backup, so the first run shows building it and the second the steady state. A baseline backup into
// an empty repository shows what the index costs on top. Prints a markdown table.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Repository } from '../dist/repository/repository.js';
import { LocalBackend } from '../dist/storage/local.js';
import { launcherFlags } from '../dist/cli/launcher.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const BIN = join(ROOT, 'bin/bulwark.js');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const ENTRIES = Number(opt('entries', 100_000_000));
const IMAGE = resolve(opt('image', join(ROOT, 'bench/out/data/vm-disk.img')));
const OUT = resolve(opt('out', join(ROOT, 'bench/out/scale')));
const JSON_OUT = opt('json', undefined);
const PASSWORD = 'scale';
const KDF = { N: 4096, r: 8, p: 1 };
/** As a backup writes them: 64 packs per index file, 16 blobs of ~1 MiB per 16 MiB pack. */
const PACKS_PER_FILE = 64;
const BLOBS_PER_PACK = 16;
const SAMPLE = 20_000;

const log = (m) => process.stderr.write(`[index-scale] ${m}\n`);

/** Writes the synthetic index (once per entry count) and returns a sample of the blob ids in it. */
async function makeRepository(path) {
  const samplePath = `${path}.sample`;
  if (existsSync(join(path, 'config')) && existsSync(samplePath) && readFileSync(`${path}.entries`, 'utf8') === String(ENTRIES)) {
    return readFileSync(samplePath, 'utf8').split('\n').filter(Boolean);
  }
  rmSync(path, { recursive: true, force: true });
  mkdirSync(dirname(path), { recursive: true });
  const repo = await Repository.init(new LocalBackend(path), PASSWORD, { kdf: KDF });
  const sample = [];
  const perFile = PACKS_PER_FILE * BLOBS_PER_PACK;
  const files = Math.ceil(ENTRIES / perFile);
  const every = Math.max(1, Math.floor(ENTRIES / SAMPLE));
  let made = 0;
  const t0 = Date.now();
  let next = 0;
  const worker = async () => {
    for (let f = next++; f < files; f = next++) {
      const n = Math.min(perFile, ENTRIES - f * perFile);
      const ids = randomBytes(32 * n).toString('hex');
      const packs = [];
      for (let p = 0; p * BLOBS_PER_PACK < n; p++) {
        const blobs = [];
        for (let b = 0; b < BLOBS_PER_PACK && p * BLOBS_PER_PACK + b < n; b++) {
          const i = p * BLOBS_PER_PACK + b;
          const id = ids.slice(i * 64, i * 64 + 64);
          if ((f * perFile + i) % every === 0) sample.push(id);
          blobs.push({ id, offset: b * 1_050_000, length: 1_050_000, ulen: 0 });
        }
        packs.push({ id: randomBytes(32).toString('hex'), type: 'data', blobs });
      }
      await repo.saveDocument('index', { version: 1, packs });
      made += n;
      if (f % 2000 === 0) log(`index: ${made.toLocaleString('en')} of ${ENTRIES.toLocaleString('en')} entries (${Math.round((Date.now() - t0) / 1000)} s)`);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  await repo.close();
  writeFileSync(samplePath, sample.join('\n'));
  writeFileSync(`${path}.entries`, String(ENTRIES));
  log(`wrote ${files} index files for ${ENTRIES.toLocaleString('en')} entries in ${Math.round((Date.now() - t0) / 1000)} s`);
  return sample;
}

/** Runs the CLI under GNU time; returns wall seconds and peak RSS in MB. */
function timed(argv, env) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('/usr/bin/time', ['-f', 'TIME %e %M', process.execPath, ...launcherFlags(BIN), BIN, ...argv], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const m = /TIME ([\d.]+) (\d+)/.exec(err);
      if (code !== 0 || !m) return reject(new Error(`bulwark ${argv.join(' ')} failed (${code}): ${err}${out}`));
      resolvePromise({ seconds: Number(m[1]), rssMB: Math.round(Number(m[2]) / 1024) });
    });
  });
}

/** Lookups per second of present and absent ids, through the cache as a backup loads it. */
async function lookupRates(path, cacheDir, sample) {
  const repo = await Repository.open(new LocalBackend(path), PASSWORD, { indexCache: cacheDir });
  try {
    await repo.loadIndex();
    const misses = Array.from({ length: 50_000 }, () => randomBytes(32).toString('hex'));
    let t = process.hrtime.bigint();
    let found = 0;
    for (const id of sample) if (repo.index.has(id)) found++;
    const hitNs = Number(process.hrtime.bigint() - t);
    t = process.hrtime.bigint();
    let wrong = 0;
    for (const id of misses) if (repo.index.has(id)) wrong++;
    const missNs = Number(process.hrtime.bigint() - t);
    return {
      hitsFound: found,
      hitsAsked: sample.length,
      missesFound: wrong,
      hitsPerSecond: Math.round(sample.length / (hitNs / 1e9)),
      missesPerSecond: Math.round(misses.length / (missNs / 1e9)),
      indexMemoryMB: Math.round((repo.index.runMemoryBytes / 1048576) * 10) / 10,
      blobCount: repo.index.blobCount,
    };
  } finally {
    await repo.close();
  }
}

async function main() {
  if (!existsSync(join(ROOT, 'dist/cli/main.js'))) throw new Error("dist/ is missing: run 'npm run build' first");
  if (!existsSync(IMAGE)) throw new Error(`no image at ${IMAGE} (npm run bench makes bench/out/data/vm-disk.img; or pass --image)`);
  const repoPath = join(OUT, `repo-${ENTRIES}`);
  const sample = await makeRepository(repoPath);
  const cacheDir = join(OUT, 'cache');
  const stateDir = join(OUT, 'state');
  rmSync(cacheDir, { recursive: true, force: true });
  mkdirSync(stateDir, { recursive: true });
  const env = { BULWARK_PASSWORD: PASSWORD, BULWARK_CACHE_DIR: cacheDir, BULWARK_STATE_DIR: stateDir };

  const emptyPath = join(OUT, 'repo-empty');
  rmSync(emptyPath, { recursive: true, force: true });
  await (await Repository.init(new LocalBackend(emptyPath), PASSWORD, { kdf: KDF })).close();
  log('backup into an empty repository (baseline)');
  const baseline = await timed(['-r', emptyPath, 'backup', 'disk', IMAGE], env);
  log('backup with the index cache empty (builds it)');
  const cold = await timed(['-r', repoPath, 'backup', 'disk', IMAGE], env);
  // The same image again would find every block; a second, unchanged run shows the steady state of
  // the lookups on a full index (the image's blocks are now in it too).
  log('backup again, cache built');
  const warm = await timed(['-r', repoPath, 'backup', 'disk', IMAGE], env);
  log('lookup rates');
  const rates = await lookupRates(repoPath, cacheDir, sample);
  const result = { entries: ENTRIES, image: IMAGE, baseline, cold, warm, ...rates };
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(result, null, 2));
  const row = (name, r) => `| ${name} | ${r.seconds} | ${r.rssMB} |`;
  process.stdout.write(
    [
      `Index of ${ENTRIES.toLocaleString('en')} entries (${rates.blobCount.toLocaleString('en')} after the backups); image ${IMAGE}`,
      '',
      '| backup disk | wall s | peak RSS MB |',
      '| --- | ---: | ---: |',
      row('empty repository (baseline)', baseline),
      row('full index, cache being built', cold),
      row('full index, cache built', warm),
      '',
      `Lookups: ${rates.hitsPerSecond.toLocaleString('en')}/s present (${rates.hitsFound} of ${rates.hitsAsked} found), ${rates.missesPerSecond.toLocaleString('en')}/s absent (${rates.missesFound} false hits); index memory held ${rates.indexMemoryMB} MB.`,
      '',
    ].join('\n'),
  );
}

main().catch((err) => {
  process.stderr.write(`${err.stack ?? err}\n`);
  process.exit(1);
});
