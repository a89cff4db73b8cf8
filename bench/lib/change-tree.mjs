// The "2 % of files changed" step of the tree data sets, the same files and bytes every run and for
// every tool: files are picked by a hash of their path, and each gets 4 KiB of new bytes written over
// it at an offset taken from the same hash (appended to files shorter than that). `revert` puts back
// the old bytes, sizes and times, from the state file `apply` wrote.
//
//   node change-tree.mjs apply <dir> <percent> <state-file>
//   node change-tree.mjs revert <dir> <state-file>
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, readSync, statSync, truncateSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { join, relative } from 'node:path';
import process from 'node:process';

const CHANGE = 4096;
const [mode, dir, a, b] = process.argv.slice(2);

function* files(d) {
  for (const e of readdirSync(d, { withFileTypes: true }).sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))) {
    const p = join(d, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (e.isFile()) yield p;
  }
}

/** 4 KiB of new, incompressible bytes, the same for the same file every run. */
function newBytes(seed) {
  const parts = [];
  for (let i = 0; i < CHANGE / 64; i++) parts.push(createHash('sha512').update(seed).update(String(i)).digest());
  return Buffer.concat(parts);
}

function rewrite(path, at, bytes) {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, at);
  } finally {
    closeSync(fd);
  }
}

if (mode === 'apply') {
  const percent = Number(a);
  const state = [];
  let n = 0;
  for (const p of files(dir)) {
    const h = createHash('sha256').update(relative(dir, p)).digest();
    if (h.readUInt32BE(0) / 2 ** 32 >= percent / 100) continue;
    const st = statSync(p);
    const at = st.size > CHANGE ? h.readUInt32BE(4) % (st.size - CHANGE) : st.size;
    const old = Buffer.alloc(Math.min(CHANGE, st.size - at));
    const fd = openSync(p, 'r');
    try {
      readSync(fd, old, 0, old.length, at);
    } finally {
      closeSync(fd);
    }
    state.push({ path: relative(dir, p), at, size: st.size, old: old.toString('base64'), atime: st.atimeMs / 1000, mtime: st.mtimeMs / 1000 });
    rewrite(p, at, newBytes(h));
    n++;
  }
  writeFileSync(b, JSON.stringify(state));
  process.stdout.write(`${n}\n`);
} else if (mode === 'revert') {
  for (const s of JSON.parse(readFileSync(a, 'utf8'))) {
    const p = join(dir, s.path);
    rewrite(p, s.at, Buffer.from(s.old, 'base64'));
    truncateSync(p, s.size);
    utimesSync(p, s.atime, s.mtime);
  }
} else {
  process.stderr.write('usage: change-tree.mjs apply <dir> <percent> <state-file> | revert <dir> <state-file>\n');
  process.exit(2);
}
