// Turns the raw measurements of run.sh into bench/out/results.md (also printed) and results.json.
//
//   node report.mjs <out-dir>
//
// Reads <out-dir>/results.tsv (tool, dataset, metric, status, value, rss_kib, text, cpu_s, minor page faults; one
// measurement per line) and <out-dir>/meta.txt (KEY=VALUE lines).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import process from 'node:process';

const out = process.argv[2];
if (!out) {
  process.stderr.write('usage: report.mjs <out-dir>\n');
  process.exit(2);
}

const meta = {};
for (const line of readFileSync(join(out, 'meta.txt'), 'utf8').split('\n')) {
  const i = line.indexOf('=');
  if (i > 0) meta[line.slice(0, i)] = line.slice(i + 1);
}

const TOOLS = ['bulwark', 'restic', 'borg'];
const ran = (meta.TOOLS ?? TOOLS.join(' ')).split(/\s+/).filter(Boolean);

/** results[tool][dataset][metric] = {status, value, rss_kib, text} */
const results = {};
for (const line of readFileSync(join(out, 'results.tsv'), 'utf8').split('\n')) {
  if (!line.trim()) continue;
  const [tool, dataset, metric, status, value, rss, text, cpu, faults] = line.split('\t');
  results[tool] ??= {};
  results[tool][dataset] ??= {};
  results[tool][dataset][metric] = {
    status,
    value: value === '' || value === undefined ? null : Number(value),
    rss_kib: rss === '' || rss === undefined ? null : Number(rss),
    text: text ?? '',
    cpu_s: cpu === '' || cpu === undefined ? null : Number(cpu),
    minor_faults: faults === '' || faults === undefined ? null : Number(faults),
  };
}

const MB = 1e6;
const get = (tool, ds, metric) => results[tool]?.[ds]?.[metric];

// A cell is {num} for a measured number, or {text} for anything else (FAILED, not run, ...). A failed
// step gets one numbered note with its stderr tail; every row of that step refers to it.
const notes = [];
const noteIndex = new Map();
function failCell(r, tool, ds, what) {
  const tail = r.text || 'no output';
  const key = `${tool}/${ds}/${tail}`; // the same failure (say, of init) is listed once
  let n = noteIndex.get(key);
  if (n === undefined) {
    notes.push(`${what}: ${tail.replaceAll(' ⏎ ', '\n    ')}`);
    n = notes.length;
    noteIndex.set(key, n);
  }
  const lines = tail.split(' ⏎ ').filter((l) => l && l !== '…' && !/^exit status/.test(l));
  const init = lines[0] === 'init failed' ? 'init: ' : '';
  const short = lines.find((l) => /error|fatal|timed out|not found/i.test(l)) ?? lines.at(-1) ?? tail;
  return { text: `FAILED [${n}]: ${init}${short.trim().slice(0, 100)}` };
}
function cell(tool, ds, metric, pick, label) {
  if (!ran.includes(tool)) return { text: 'not run' };
  const r = get(tool, ds, metric);
  if (!r) return { text: 'n/a' };
  if (r.status !== 'ok') {
    return r.status === 'FAILED' ? failCell(r, tool, ds, `${tool} ${ds} ${label}`) : { text: r.status };
  }
  const num = pick(r);
  return num === null || Number.isNaN(num) ? { text: 'n/a' } : { num };
}

const seconds = (r) => r.value;
const cpuSeconds = (r) => r.cpu_s;
const faultsK = (r) => (r.minor_faults === null ? null : r.minor_faults / 1000);
const rssMB = (r) => (r.rss_kib === null ? null : (r.rss_kib * 1024) / MB);
const bytesMB = (r) => r.value / MB;

const rows = [];
function section(title) {
  rows.push({ section: title });
}
function row(label, unit, ds, metric, pick) {
  rows.push({ label, unit, cells: Object.fromEntries(TOOLS.map((t) => [t, cell(t, ds, metric, pick, label.replace(/^(peak RSS|CPU time|\d\.) /, '').replace(/ \((s|MB|s, user\+sys)\)$/, ''))])) });
}
function derived(label, unit, fn) {
  rows.push({ label, unit, cells: Object.fromEntries(TOOLS.map((t) => [t, ran.includes(t) ? fn(t) : { text: 'not run' }])) });
}
function throughput(ds, bytes) {
  return (tool) => {
    const r = get(tool, ds, 'first');
    if (!r || r.status !== 'ok' || !r.value) return { text: r?.status === 'FAILED' ? 'FAILED' : 'n/a' };
    return { num: bytes / r.value / MB };
  };
}
function growth(ds, before, after) {
  return (tool) => {
    const a = get(tool, ds, before);
    const b = get(tool, ds, after);
    if (a?.status !== 'ok' || b?.status !== 'ok') return { text: 'n/a' };
    return { num: (b.value - a.value) / MB };
  };
}
function verified(ds) {
  return (tool) => {
    const r = get(tool, ds, 'verify');
    if (!r) return { text: 'n/a' };
    if (r.status === 'ok') return { text: 'ok' };
    if (r.status === 'FAIL') return { text: `**FAIL**: ${r.text}` };
    return { text: r.status };
  };
}

const imageBytes = Number(meta.IMAGE_BYTES);
const treeBytes = Number(meta.TREE_BYTES);
const imageSteps = [
  ['first', '1. first backup'],
  ['unchanged', '2. unchanged re-backup'],
  ['changed', '3. 1 %-changed re-backup'],
  ['restore', '4. restore'],
];
const treeSteps = [
  ['first', '1. first backup'],
  ['unchanged', '2. unchanged re-backup'],
  ['changed', `3. ${meta.TREE_CHANGE_PCT ?? 2} %-of-files-changed re-backup`],
  ['restore', '4. restore'],
];

section(
  `image: ${meta.IMAGE_MIB} MiB raw ext4 disk image holding ${meta.IMAGE_FILES_MIB} MiB in ${meta.IMAGE_FILES} real files`,
);
for (const [m, l] of imageSteps) row(`${l} (s)`, 's', 'image', m, seconds);
derived('restore verified (sha256 = latest backed-up image)', '', verified('image'));
derived('first backup (MB/s of image size)', 'MB/s', throughput('image', imageBytes));
row('repo size after first backup (MB)', 'MB', 'image', 'repo_after_first', bytesMB);
derived('repo growth by 1 %-changed backup (MB)', 'MB', growth('image', 'repo_after_unchanged', 'repo_after_changed'));
row('repo size after image runs (MB)', 'MB', 'image', 'repo_after_changed', bytesMB);
for (const [m, l] of imageSteps) row(`peak RSS ${l.slice(3)} (MB)`, 'MB', 'image', m, rssMB);
for (const [m, l] of imageSteps) row(`CPU time ${l.slice(3)} (s, user+sys)`, 's', 'image', m, cpuSeconds);
for (const [m, l] of imageSteps) row(`page faults ${l.slice(3)} (thousands)`, 'k', 'image', m, faultsK);

/** The rows of a file-tree data set (the bench tree, the small-files tree). */
function treeSection(title, ds, bytes) {
  section(title);
  for (const [m, l] of treeSteps) row(`${l} (s)`, 's', ds, m, seconds);
  derived('restore verified (diff -r against the source)', '', verified(ds));
  derived('first backup (MB/s of file data)', 'MB/s', throughput(ds, bytes));
  row('repo size after first backup (MB)', 'MB', ds, 'repo_after_first', bytesMB);
  derived(`repo growth by the changed backup (MB)`, 'MB', growth(ds, 'repo_after_unchanged', 'repo_after_changed'));
  row(`repo size after ${ds} runs (MB)`, 'MB', ds, 'repo_after_changed', bytesMB);
  for (const [m, l] of treeSteps) row(`peak RSS ${l.slice(3)} (MB)`, 'MB', ds, m, rssMB);
  for (const [m, l] of treeSteps) row(`CPU time ${l.slice(3)} (s, user+sys)`, 's', ds, m, cpuSeconds);
  for (const [m, l] of treeSteps) row(`page faults ${l.slice(3)} (thousands)`, 'k', ds, m, faultsK);
}

treeSection(`tree: ${meta.TREE_MIB_ACTUAL} MiB in ${meta.TREE_FILES} real files, ${meta.TREE_DIRS} directories`, 'tree', treeBytes);
if (meta.SMALL_FILES) {
  treeSection(
    `small files: ${(Number(meta.SMALL_BYTES) / 1048576).toFixed(0)} MiB in ${meta.SMALL_FILES} real files of at most ${meta.SMALL_MAX_KIB} KiB, ${meta.SMALL_DIRS} directories`,
    'small',
    Number(meta.SMALL_BYTES),
  );
}

function fmt(num, unit) {
  if (unit === 's') return num < 10 ? num.toFixed(2) : num.toFixed(1);
  if (Math.abs(num) < 10) return num.toFixed(1);
  return num.toFixed(0);
}
function show(c, unit) {
  return c.num !== undefined ? fmt(c.num, unit) : c.text.replaceAll('|', '\\|');
}
function ratioNum(a, b) {
  if (a.num === undefined || b.num === undefined || b.num === 0) return null;
  return Number((a.num / b.num).toFixed(3));
}
function ratio(a, b) {
  const x = ratioNum(a, b);
  return x === null ? '' : `${x.toFixed(2)}×`;
}

const lines = [];
lines.push(`# Bulwark vs restic vs borg — ${meta.DATE}`);
lines.push('');
lines.push(
  `Machine: ${meta.CPU} (${meta.NPROC} cores), ${meta.RAM_GIB} GiB RAM, ${meta.OS}, kernel ${meta.KERNEL}. ` +
    `Versions: bulwark ${meta.BULWARK_VERSION} (${meta.BULWARK_COMMIT}), ${meta.RESTIC_VERSION}, ${meta.BORG_VERSION}, node ${meta.NODE_VERSION}.`,
);
lines.push('');
lines.push(
  'Warm cache: the page cache cannot be dropped reliably here, so before each tool\'s first backup the data is ' +
    'read once (`cat` / `tar | cat` to /dev/null) and every tool runs with its source data in RAM; `sync` runs ' +
    'before each timed step, and the timings do not include writing the repository or restored data back to disk. ' +
    (meta.RESTORE_FS === 'tmpfs' ? 'Restores go to a tmpfs (on ext4, creating inodes is slow for minutes after the previous tool\'s restore was deleted). ' : '') +
    'Wall seconds, peak RSS and CPU time from `/usr/bin/time -f "%e %M %U %S"`. MB = 10^6 bytes. ' +
    'Ratios are tool ÷ bulwark: above 1× means bulwark is faster / smaller / leaner; for MB/s rows, below 1× means bulwark is faster.',
);
lines.push('');
const load = `CPU idle just before the run: ${meta.IDLE_START ?? '?'} %; load average at start ${meta.LOAD_START ?? '?'}, at end ${meta.LOAD_END ?? '?'}.`;
if (Number(meta.IDLE_START) < 90) {
  lines.push(`**Warning: other processes were using the CPUs.** ${load} Wall times are skewed; CPU times less so.`);
} else {
  lines.push(load);
}
if (meta.DIST_STALE === '1') lines.push('**Warning: src/ was newer than dist/: this measured an older build of Bulwark.**');
lines.push('');
lines.push('| scenario | bulwark | restic | borg | restic÷bulwark | borg÷bulwark |');
lines.push('| --- | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  if (r.section) {
    lines.push(`| **${r.section}** | | | | | |`);
    continue;
  }
  const b = r.cells.bulwark;
  const rs = r.cells.restic;
  const bg = r.cells.borg;
  lines.push(
    `| ${r.label} | ${show(b, r.unit)} | ${show(rs, r.unit)} | ${show(bg, r.unit)} | ${ratio(rs, b)} | ${ratio(bg, b)} |`,
  );
}
lines.push('');
lines.push(
  `Commands: restic \`backup vm-disk.img\` / \`backup tree/\` (\`small/\`) / \`restore latest --target\`; ` +
    `borg \`create\` (default compression, lz4) / \`extract\`, repos \`init -e repokey\`; ` +
    `bulwark \`backup disk vm-disk.img\` / \`backup files tree\` / \`restore vm latest --target\` / \`restore latest --target\`. ` +
    `The 1 % change: ${meta.PATCH_BLOCKS} random 1 MiB-aligned blocks of the image overwritten in place with incompressible data.`,
);
if (notes.length > 0) {
  lines.push('');
  lines.push('Failures (last lines of stderr; full logs in bench/out/logs/):');
  lines.push('');
  lines.push('```');
  notes.forEach((n, i) => lines.push(`[${i + 1}] ${n}`));
  lines.push('```');
}
const md = `${lines.join('\n')}\n`;
writeFileSync(join(out, 'results.md'), md);

const json = {
  meta,
  note: 'warm page cache for all tools; seconds = wall clock; rss_kib = peak resident set (KiB); repo_* values in bytes',
  results,
  table: rows.map((r) =>
    r.section
      ? { section: r.section }
      : {
          label: r.label,
          unit: r.unit,
          ...Object.fromEntries(TOOLS.map((t) => [t, r.cells[t].num ?? r.cells[t].text])),
          restic_over_bulwark: ratioNum(r.cells.restic, r.cells.bulwark),
          borg_over_bulwark: ratioNum(r.cells.borg, r.cells.bulwark),
        },
  ),
};
writeFileSync(join(out, 'results.json'), `${JSON.stringify(json, null, 2)}\n`);
process.stdout.write(md);
