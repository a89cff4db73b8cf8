// zstd-compressed qcow2 clusters (compression_type=1). QEMU stops decompressing when the cluster is
// full and allows what follows in the last sector to be anything, so the frame is decompressed into a
// buffer of exactly the cluster size; zstd fails rather than write past it.
import { Decompressor } from 'zstd-napi';
import { BulwarkError } from '../../util/errors.js';

interface DStream {
  decompressStream(out: Uint8Array, input: Uint8Array): [number, number, number];
}

export function decompressZstdCluster(body: Buffer, clusterSize: number): Buffer {
  // The streaming decompressor (ZSTD_decompressStream) consumes one frame and leaves the padding
  // after it alone, unlike the one-shot call.
  const d = (new Decompressor() as unknown as { dctx: DStream }).dctx;
  const out = Buffer.alloc(clusterSize);
  let produced = 0;
  let consumed = 0;
  for (let i = 0; i < 64 && produced < clusterSize && consumed < body.length; i++) {
    const [, wrote, read] = d.decompressStream(out.subarray(produced), body.subarray(consumed));
    produced += wrote;
    consumed += read;
    if (wrote === 0 && read === 0) break;
  }
  if (produced !== clusterSize) throw new BulwarkError('failed', `a zstd-compressed cluster decompresses to ${produced} bytes, not ${clusterSize}`);
  return out;
}
