// Picks many small real files for the small-files data set, deterministically.
//
//   node pick-small.mjs <list> <count> <max-bytes> <root>...
//
// Walks the roots (regular files only, symlinks not followed), keeps files of 1 byte to <max-bytes>,
// orders them by a hash of their path (a stable pseudo-random mix of docs, headers, modules and data
// files from the whole system) and takes the first <count>, hard links once. The list is
// NUL-separated paths relative to '/', sorted, for `tar -T`.
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import process from 'node:process';

const [list, countArg, maxArg, ...roots] = process.argv.slice(2);
const count = Number(countArg);
const max = Number(maxArg);
if (!list || !(count > 0) || !(max > 0) || roots.length === 0) {
  process.stderr.write('usage: pick-small.mjs <list> <count> <max-bytes> <root>...\n');
  process.exit(2);
}

const found = [];
const inodes = new Set();
const pending = [...roots];
while (pending.length > 0) {
  const dir = pending.pop();
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    continue; // unreadable: leave it out
  }
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) pending.push(path);
    else if (e.isFile()) {
      try {
        const st = lstatSync(path);
        const inode = `${st.dev}:${st.ino}`;
        if (st.size < 1 || st.size > max || inodes.has(inode)) continue;
        inodes.add(inode);
        found.push({ path: relative('/', path), key: createHash('sha256').update(`bulwark-bench-small:${path}`).digest('hex') });
      } catch {
        // vanished or unreadable
      }
    }
  }
}
found.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
const picked = found
  .slice(0, count)
  .map((f) => f.path)
  .sort();
writeFileSync(list, picked.length > 0 ? `${picked.join('\0')}\0` : '');
process.stderr.write(`small files: ${picked.length} of ${found.length} files up to ${max} bytes\n`);
if (picked.length < count) process.stderr.write(`warning: only ${picked.length} small files found (wanted ${count})\n`);
