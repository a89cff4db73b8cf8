// Single-core throughput of the content-defined chunker on incompressible data. Timing lives here, not
// in the unit tests, because it depends on the machine.
//
// Node 20 cannot run TypeScript directly, so compile first:
//   npx tsc -p tsconfig.json --outDir /tmp/bulwark-bench; node /tmp/bulwark-bench/bench/chunker.js [MiB]
// (tsc still emits when some unrelated file fails to typecheck.)
import { createCipheriv } from 'node:crypto';
import { Chunker, chunkStream, DEFAULT_CHUNKER_PARAMS, gearTable } from '../src/repository/chunker.js';

const MiB = 1024 * 1024;
const size = Number(process.argv[2] ?? 256) * MiB;
const data = createCipheriv('aes-256-ctr', Buffer.alloc(32, 1), Buffer.alloc(16)).update(Buffer.alloc(size));
const chunker = new Chunker(DEFAULT_CHUNKER_PARAMS, gearTable(Buffer.alloc(32, 0x42)));

function seconds(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e9;
}

function rate(bytes: number, s: number): string {
  return `${(bytes / s / 1e6).toFixed(0)} MB/s`;
}

// Several rounds: the first ones include JIT warm-up.
for (let round = 0; round < 5; round++) {
  const t0 = process.hrtime.bigint();
  let chunks = 0;
  for (let at = 0; at < data.length; chunks++) at += chunker.cut(data, at, data.length, true);
  const s = seconds(t0);
  // The first minSize bytes of each chunk are skipped, not hashed; the scan rate shows the hash loop alone.
  const hashed = data.length - chunks * DEFAULT_CHUNKER_PARAMS.minSize;
  console.log(`cut(): ${rate(data.length, s)} of input, gear scan ${rate(hashed, s)}, ${chunks} chunks, mean ${(data.length / chunks / MiB).toFixed(2)} MiB`);
}

for (const piece of [64 * 1024, 4 * MiB]) {
  async function* source(): AsyncGenerator<Uint8Array> {
    for (let at = 0; at < data.length; at += piece) yield data.subarray(at, at + piece);
  }
  const t0 = process.hrtime.bigint();
  let chunks = 0;
  for await (const _chunk of chunkStream(source(), chunker)) chunks++;
  console.log(`chunkStream(${piece / 1024} KiB pieces): ${rate(data.length, seconds(t0))}, ${chunks} chunks`);
}
