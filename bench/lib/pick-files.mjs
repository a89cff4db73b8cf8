// Picks real system files for the benchmark data sets, deterministically and without overlap.
//
//   node pick-files.mjs <image-list> <image-budget-bytes> <tree-list> <tree-budget-bytes> <root>...
//
// Walks the roots (regular files only, symlinks are not followed), groups files by the directory that
// holds them, orders those directories by a hash of their path (a stable pseudo-random mix of the whole
// system instead of one alphabetical corner of it) and takes whole directories until each budget is
// spent: first for the image, then, from the directories left, for the tree. A directory larger than
// what is left of a budget is passed over. Hard-linked files count once. Lists are NUL-separated paths relative to '/', for `tar -T`.
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import process from 'node:process';

const [imageList, imageBudgetArg, treeList, treeBudgetArg, ...roots] = process.argv.slice(2);
if (!imageList || !treeList || roots.length === 0) {
  process.stderr.write('usage: pick-files.mjs <image-list> <image-bytes> <tree-list> <tree-bytes> <root>...\n');
  process.exit(2);
}

/** @type {Map<string, {files: string[], bytes: number}>} */
const dirs = new Map();
const seenInodes = new Set();

function walk(dir) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return; // unreadable: leave it out
  }
  const files = [];
  let bytes = 0;
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory()) walk(path);
    else if (e.isFile()) {
      try {
        const st = lstatSync(path);
        // Hard links (e.g. Mesa's DRI drivers) take space once: count each inode once, where first seen.
        const inode = `${st.dev}:${st.ino}`;
        if (!seenInodes.has(inode)) {
          seenInodes.add(inode);
          bytes += st.size;
        }
        files.push(relative('/', path));
      } catch {
        // vanished or unreadable
      }
    }
  }
  if (files.length > 0) dirs.set(dir, { files: files.sort(), bytes });
}

for (const root of roots) walk(root);

const order = [...dirs.keys()]
  .map((dir) => ({ dir, key: createHash('sha256').update(`bulwark-bench:${dir}`).digest('hex') }))
  .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  .map((x) => x.dir);

function take(budget) {
  const picked = [];
  let bytes = 0;
  let files = 0;
  for (let i = 0; i < order.length; i++) {
    const dir = order[i];
    if (dir === undefined) continue;
    const d = dirs.get(dir);
    if (d === undefined || bytes + d.bytes > budget) continue;
    picked.push(...d.files);
    bytes += d.bytes;
    files += d.files.length;
    order[i] = undefined; // used: not available to the next data set
    if (bytes >= budget * 0.995) break;
  }
  return { picked, bytes, files };
}

const image = take(Number(imageBudgetArg));
const tree = take(Number(treeBudgetArg));
writeFileSync(imageList, image.picked.map((p) => `${p}\0`).join(''));
writeFileSync(treeList, tree.picked.map((p) => `${p}\0`).join(''));
const mib = (b) => (b / 1048576).toFixed(0);
process.stdout.write(
  `image: ${image.files} files, ${mib(image.bytes)} MiB; tree: ${tree.files} files, ${mib(tree.bytes)} MiB\n`,
);
