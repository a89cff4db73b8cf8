// The "1 % changed" modification of the disk image, made deterministic so every tool and every run sees
// exactly the same change.
//
//   node make-patch.mjs <image-MiB> <percent> <offsets-file> <patch-file>
//
// Picks ceil(image-MiB * percent / 100) distinct 1 MiB-aligned block numbers spread at random over the
// whole image (seeded PRNG; some land in the unused part of the disk, as new writes on a real disk do)
// and writes them, one per line and ascending, to <offsets-file>. <patch-file> gets one MiB of new,
// incompressible content per block (AES-256-CTR keystream from a fixed key), in the same order.
// run.sh applies it with `dd bs=1M seek=<block> conv=notrunc`.
import { createCipheriv, createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import process from 'node:process';

const [mibArg, pctArg, offsetsFile, patchFile] = process.argv.slice(2);
const imageMiB = Number(mibArg);
const percent = Number(pctArg);
if (!(imageMiB > 0) || !(percent > 0) || !offsetsFile || !patchFile) {
  process.stderr.write('usage: make-patch.mjs <image-MiB> <percent> <offsets-file> <patch-file>\n');
  process.exit(2);
}
const count = Math.min(imageMiB, Math.ceil((imageMiB * percent) / 100));

// mulberry32: small, seeded, the same on every Node version.
let state = 0x5eed1234;
function random() {
  state = (state + 0x6d2b79f5) | 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const blocks = new Set();
while (blocks.size < count) blocks.add(Math.floor(random() * imageMiB));
const sorted = [...blocks].sort((a, b) => a - b);

const key = createHash('sha256').update('bulwark-bench-patch').digest();
const data = createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(count * 1048576));
writeFileSync(offsetsFile, sorted.map((b) => `${b}\n`).join(''));
writeFileSync(patchFile, data);
process.stdout.write(`patch: ${count} blocks of 1 MiB (${((count / imageMiB) * 100).toFixed(2)} % of the image)\n`);
