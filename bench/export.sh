#!/usr/bin/env bash
# Restore speed from the repository, three ways on the same backup of the same disk: `bulwark restore
# vm` (raw), `qemu-img convert` reading `bulwark export`'s NBD export (what instant restore's copy
# does), and `qemu-img convert` of the original image file (the speed of the disk itself, the
# ceiling). A raw disk of real files (mkfs.ext4 -d from the host's /usr); caches dropped between runs
# when possible (root), else warm. Prints a markdown table (also bench/out/export-results.md).
#   BENCH_EXPORT_MIB (default 1024): size of the disk.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OUT=${BENCH_OUT:-$BENCH_DIR/out}
WORK=$OUT/export
MIB=${BENCH_EXPORT_MIB:-1024}
BW="node $ROOT/bin/bulwark.js"
[[ -f $ROOT/dist/cli/main.js ]] || { echo "build first: npm run build" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK/fill"
budget=$((MIB * 6 / 10 * 1024 * 1024))
find /usr/lib /usr/share -type f -size -8M -readable 2>/dev/null | head -n 200000 | while read -r f; do
  s=$(stat -c %s "$f"); budget=$((budget - s)); ((budget > 0)) || break
  d="$WORK/fill/$(dirname "${f#/}")"; mkdir -p "$d"; cp "$f" "$d/" 2>/dev/null || true
done || true
mkfs.ext4 -q -F -d "$WORK/fill" "$WORK/disk.raw" "${MIB}M"
rm -rf "$WORK/fill"
export BULWARK_REPOSITORY=$WORK/repo BULWARK_PASSWORD=bench
$BW init >/dev/null
snap=$($BW backup disk "$WORK/disk.raw" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s.trim().split("\n").pop()).snapshots[0].snapshot))')
drop() { sync; if [[ $(id -u) == 0 ]]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); printf "%.2f" "$(echo "$t1 - $t0" | bc)"; }

drop; t_restore=$(secs $BW restore vm "$snap" --target "$WORK/r1")
sock=$WORK/export.nbd
$BW export "$snap" --listen "unix:$sock" >/dev/null &
pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
drop; t_export=$(secs qemu-img convert -f raw -O raw "nbd+unix:///disk?socket=$sock" "$WORK/r2.raw")
kill "$pid"; wait "$pid" 2>/dev/null || true
drop; t_file=$(secs qemu-img convert -f raw -O raw "$WORK/disk.raw" "$WORK/r3.raw")
cmp "$WORK/disk.raw" "$WORK/r2.raw"
mbs() { echo "scale=0; $MIB * 1048576 / 1000000 / $1" | bc; }
report=$OUT/export-results.md
{
  echo "# Restore from the repository — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "A ${MIB} MiB ext4 disk of real files (about 60 % used), backed up once; MB/s = disk bytes (10^6) per second. Node $(node --version), $(nproc) cores$([[ $(id -u) == 0 ]] && echo ', page cache dropped before each run')."
  echo
  echo "| way | seconds | MB/s |"
  echo "|---|---:|---:|"
  echo "| bulwark restore vm (raw) | $t_restore | $(mbs "$t_restore") |"
  echo "| qemu-img convert from bulwark export (NBD) | $t_export | $(mbs "$t_export") |"
  echo "| qemu-img convert of the original image file | $t_file | $(mbs "$t_file") |"
} | tee "$report"
