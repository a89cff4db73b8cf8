#!/usr/bin/env bash
# Writing a qcow2 image as `restore --format qcow2` does, against `qemu-img convert -f raw -O qcow2` of
# the same data, in one run: a raw disk of real files (mkfs.ext4 -d from the host's /usr), warm in
# the page cache; Bulwark's writer (dist/formats/qcow2/writer.js) gets its non-zero 1 MiB blocks in
# order, as a restore delivers them (its time includes reading them). Bulwark fsyncs the image; so does
# qemu-img with -t writeback, the fair pair; qemu-img's default for convert (cache=unsafe) does not
# sync, shown too. Outputs are checked with qemu-img check and compare. Prints a markdown table (also
# bench/out/qcow2-write-results.md).
#   BENCH_QCOW2_MIB (default 1024): size of the disk; BENCH_QCOW2_RUNS (default 3): best of N;
#   BENCH_QCOW2_RAW: use this raw disk instead of making one (making it copies ~600 MiB of files).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OUT=${BENCH_OUT:-$BENCH_DIR/out}
WORK=$OUT/qcow2-write
MIB=${BENCH_QCOW2_MIB:-1024}
RUNS=${BENCH_QCOW2_RUNS:-3}
[[ -f $ROOT/dist/formats/qcow2/writer.js ]] || { echo "build first: npm run build" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK/fill"
RAW=$WORK/disk.raw
if [[ -n ${BENCH_QCOW2_RAW:-} ]]; then
  RAW=$BENCH_QCOW2_RAW
  MIB=$(($(stat -c %s "$RAW") / 1024 / 1024))
else
  # About 60 % of the disk in real files.
  budget=$((MIB * 6 / 10 * 1024 * 1024))
  find /usr/lib /usr/share -type f -size -8M -readable 2>/dev/null | head -n 200000 | while read -r f; do
    s=$(stat -c %s "$f"); budget=$((budget - s)); ((budget > 0)) || break
    d="$WORK/fill/$(dirname "${f#/}")"; mkdir -p "$d"; cp "$f" "$d/" 2>/dev/null || true
  done || true # find and head end early by design (SIGPIPE)
  mkfs.ext4 -q -F -d "$WORK/fill" "$RAW" "${MIB}M"
fi
rm -rf "$WORK/fill"
cat "$RAW" >/dev/null

# Bulwark: the raw disk read 1 MiB at a time, all-zero blocks skipped (a backup stores them as holes),
# the rest written through the writer. Prints seconds.
bulwark() {
  node --input-type=module -e '
    import { openSync, readSync, fstatSync } from "node:fs";
    const [root, src, dst] = process.argv.slice(1);
    const { Qcow2Writer } = await import(`${root}/dist/formats/qcow2/writer.js`);
    const t0 = process.hrtime.bigint();
    const fd = openSync(src, "r");
    const size = fstatSync(fd).size;
    const w = await Qcow2Writer.create(dst, size);
    const zero = Buffer.alloc(1 << 20);
    const block = Buffer.alloc(1 << 20); // the writer keeps no reference once a write resolves
    for (let off = 0; off < size; off += zero.length) {
      const buf = block.subarray(0, Math.min(zero.length, size - off));
      readSync(fd, buf, 0, buf.length, off);
      if (!buf.equals(zero.subarray(0, buf.length))) await w.write(off, buf);
    }
    await w.close();
    console.log(Number(process.hrtime.bigint() - t0) / 1e9);
  ' "$ROOT" "$1" "$2"
}
qemu() { /usr/bin/time -f %e qemu-img convert "$@" 2>&1 | tail -1; }

best() { sort -n | head -1; }
b_best=$(for _ in $(seq "$RUNS"); do rm -f "$WORK/bulwark.qcow2"; bulwark "$RAW" "$WORK/bulwark.qcow2"; done | best)
w_best=$(for _ in $(seq "$RUNS"); do rm -f "$WORK/qemu.qcow2"; qemu -t writeback -f raw -O qcow2 "$RAW" "$WORK/qemu.qcow2"; done | best)
q_best=$(for _ in $(seq "$RUNS"); do rm -f "$WORK/qemu.qcow2"; qemu -f raw -O qcow2 "$RAW" "$WORK/qemu.qcow2"; done | best)
qemu-img check -q -f qcow2 "$WORK/bulwark.qcow2"
qemu-img compare -q -f raw -F qcow2 "$RAW" "$WORK/bulwark.qcow2"
qemu-img compare -q -f raw -F qcow2 "$RAW" "$WORK/qemu.qcow2"

report=$OUT/qcow2-write-results.md
node -e '
  const [mib, runs, bs, ws, qs, bsz, qsz, qv] = process.argv.slice(1);
  const size = Number(mib) * 2 ** 20;
  const mbs = (s) => (size / 1e6 / Number(s)).toFixed(0);
  const MiB = (b) => (Number(b) / 2 ** 20).toFixed(0);
  console.log(`# qcow2 writing: Bulwark vs qemu-img convert — ${new Date().toISOString().slice(0, 16)}Z\n`);
  console.log(`A ${mib} MiB raw disk (warm in the page cache) written as qcow2 (64 KiB clusters), best of ${runs}. MB/s = virtual disk bytes (10^6) per second. qemu-img ${qv}, Node ${process.version}.\n`);
  console.log("| writer | synced | seconds | MB/s | image MiB | qemu-img ÷ bulwark time |");
  console.log("|---|---|---:|---:|---:|---:|");
  console.log(`| bulwark | yes | ${Number(bs).toFixed(2)} | ${mbs(bs)} | ${MiB(bsz)} | |`);
  console.log(`| qemu-img convert -t writeback | yes | ${Number(ws).toFixed(2)} | ${mbs(ws)} | ${MiB(qsz)} | ${(Number(ws) / Number(bs)).toFixed(2)}× |`);
  console.log(`| qemu-img convert (default, cache=unsafe) | no | ${Number(qs).toFixed(2)} | ${mbs(qs)} | ${MiB(qsz)} | ${(Number(qs) / Number(bs)).toFixed(2)}× |`);
' "$MIB" "$RUNS" "$b_best" "$w_best" "$q_best" "$(stat -c %s "$WORK/bulwark.qcow2")" "$(stat -c %s "$WORK/qemu.qcow2")" "$(qemu-img --version | head -1 | awk '{print $3}')" >"$report"
cat "$report"
rm -rf "$WORK"
