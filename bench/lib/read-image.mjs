// Reads a disk image whole through Bulwark's format readers (dist/formats), as `backup disk` does:
// 1 MiB at a time, holes skipped. Prints JSON: virtual size, data bytes read, seconds.
//   node bench/lib/read-image.mjs FORMAT FILE
import { openDiskImage } from '../../dist/formats/open.js';

const [format, file] = process.argv.slice(2);
const t0 = process.hrtime.bigint();
const img = await openDiskImage(file, format);
const buf = Buffer.alloc(1 << 20);
let x = 0;
for (let off = 0; off < img.size; off += buf.length) {
  const len = Math.min(buf.length, img.size - off);
  if (await img.hasData(off, len)) {
    await img.read(buf.subarray(0, len), off);
    x ^= buf[len - 1]; // keep the read from being optimised away
  }
}
await img.close();
const s = Number(process.hrtime.bigint() - t0) / 1e9;
console.log(JSON.stringify({ format, size: img.size, dataBytesRead: img.dataBytesRead, seconds: s, x }));
