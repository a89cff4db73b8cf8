#!/usr/bin/env bash
# Bulwark's disk image readers (src/formats) against `qemu-img convert` of the same image, in one
# run on the same data: a raw disk of real files (mkfs.ext4 -d from the host's /usr) converted by
# qemu-img into every subformat Bulwark reads, then each image read whole, warm in the page cache,
# by both (qemu-img converts into its null driver, so neither writes anything). Holes are skipped by
# both. Prints a markdown table (also bench/out/formats-results.md).
#   BENCH_FORMATS_MIB (default 1024): size of the disk; BENCH_FORMATS_RUNS (default 3): best of N;
#   BENCH_FORMATS_ONLY: a space-separated list of the formats to run (default all).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OUT=${BENCH_OUT:-$BENCH_DIR/out}
WORK=$OUT/formats
MIB=${BENCH_FORMATS_MIB:-1024}
RUNS=${BENCH_FORMATS_RUNS:-3}
ONLY=${BENCH_FORMATS_ONLY:-} # e.g. "vhdx qcow2": only these formats
[[ -f $ROOT/dist/formats/open.js ]] || { echo "build first: npm run build" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK/fill"

# About 60 % of the disk in real files.
budget=$((MIB * 6 / 10 * 1024 * 1024))
find /usr/lib /usr/share -type f -size -8M -readable 2>/dev/null | head -n 200000 | while read -r f; do
  s=$(stat -c %s "$f"); budget=$((budget - s)); ((budget > 0)) || break
  d="$WORK/fill/$(dirname "${f#/}")"; mkdir -p "$d"; cp "$f" "$d/" 2>/dev/null || true
done || true # find and head end early by design (SIGPIPE)
mkfs.ext4 -q -F -d "$WORK/fill" "$WORK/disk.raw" "${MIB}M"
rm -rf "$WORK/fill"

best() { sort -n | head -1; }
report=$OUT/formats-results.md
{
  echo "# Disk image readers: Bulwark vs qemu-img convert — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "A ${MIB} MiB ext4 disk of real files, converted by qemu-img $(qemu-img --version | head -1 | awk '{print $3}') into each subformat; each read whole, warm in the page cache, best of $RUNS. MB/s = virtual disk bytes (10^6) per second. Node $(node --version), $(nproc) cores."
  echo
  echo "| format | image MiB | bulwark s | bulwark MB/s | data read MiB | qemu-img s | qemu-img MB/s | ratio (qemu-img ÷ bulwark time) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} >"$report"

for spec in "qcow2:qcow2:" "qcow2-zlib:qcow2:-c" "qcow2-zstd:qcow2:-c -o compression_type=zstd" "vmdk-sparse:vmdk:-o subformat=monolithicSparse" "vmdk-stream:vmdk:-o subformat=streamOptimized" "vmdk-flat:vmdk:-o subformat=monolithicFlat" "vdi:vdi:" "vhd:vpc:-o subformat=dynamic" "vhdx:vhdx:-o subformat=dynamic"; do
  IFS=: read -r name fmt opts <<<"$spec"
  [[ -z $ONLY || " $ONLY " == *" $name "* ]] || continue
  img="$WORK/$name.img"
  # shellcheck disable=SC2086
  qemu-img convert -f raw -O "$fmt" $opts "$WORK/disk.raw" "$img"
  reader=$fmt; [[ $fmt == vpc ]] && reader=vhd
  cat "$WORK/$name"* >/dev/null
  size=$(qemu-img info --output=json "$img" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)["virtual-size"]))')
  bw=$(for _ in $(seq "$RUNS"); do node "$BENCH_DIR/lib/read-image.mjs" "$reader" "$img" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);console.log(r.seconds.toFixed(3), r.dataBytesRead)})'; done | sort -n | head -1)
  qi=$(for _ in $(seq "$RUNS"); do /usr/bin/time -f %e qemu-img convert -n -f "$fmt" --target-image-opts "$img" "driver=null-co,size=$size" 2>&1 >/dev/null | tail -1; done | best)
  bws=${bw%% *}; read_b=${bw##* }
  du_mib=$(du -sm "$WORK/$name"* | awk '{s += $1} END {print s}')
  node -e '
    const [name, du, bws, readB, qis, size] = process.argv.slice(1);
    const mbs = (s) => (Number(size) / 1e6 / Number(s)).toFixed(0);
    console.log(`| ${name} | ${du} | ${Number(bws).toFixed(2)} | ${mbs(bws)} | ${(Number(readB) / 2 ** 20).toFixed(0)} | ${Number(qis).toFixed(2)} | ${mbs(qis)} | ${(Number(qis) / Number(bws)).toFixed(2)}× |`);
  ' "$name" "$du_mib" "$bws" "$read_b" "$qi" "$size" >>"$report"
  rm -f "$WORK/$name"*
done
cat "$report"
rm -rf "$WORK"
