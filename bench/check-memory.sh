#!/usr/bin/env bash
# Peak memory and time of `bulwark check` as snapshots accumulate: a tree of BENCH_FOLDERS folders (one
# small file each) backed up BENCH_SNAPSHOTS times, one file changed between runs, so the snapshots
# share almost every tree. check should cost what the distinct trees cost, not that times the
# snapshots. Prints one line per measured snapshot count.
#   BENCH_BULWARK_JS=/path/to/bin/bulwark.js bash bench/check-memory.sh    (another build, to compare)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BULWARK_JS=${BENCH_BULWARK_JS:-$ROOT/bin/bulwark.js}
FOLDERS=${BENCH_FOLDERS:-3000}
SNAPSHOTS=${BENCH_SNAPSHOTS:-40}
MEASURE_AT=${BENCH_MEASURE_AT:-5 40}
WORK=$(mktemp -d /tmp/bulwark-check-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export BULWARK_REPOSITORY=$WORK/repo BULWARK_PASSWORD=bench
# shellcheck source=lib/common.sh
. "$ROOT/bench/lib/common.sh"
read -ra BW_NODE < <(bulwark_node "$BULWARK_JS")
bw() { "${BW_NODE[@]}" "$BULWARK_JS" "$@"; }

for ((i = 0; i < FOLDERS; i++)); do
  d=$WORK/src/d$((i / 100))/f$i
  mkdir -p "$d"
  echo "file $i" > "$d/file"
done
bw init -q >/dev/null
printf '| snapshots | check: peak RSS (MB) | check: seconds |\n| ---: | ---: | ---: |\n'
for ((s = 1; s <= SNAPSHOTS; s++)); do
  k=$(((s * 37) % FOLDERS))
  echo "change $s" > "$WORK/src/d$((k / 100))/f$k/file"
  bw backup files "$WORK/src" -q >/dev/null
  if [[ " $MEASURE_AT " == *" $s "* ]]; then
    /usr/bin/time -f '%M %e' -o "$WORK/time" "${BW_NODE[@]}" "$BULWARK_JS" check -q >/dev/null || true
    read -r kb secs < "$WORK/time"
    printf '| %d | %d | %s |\n' "$s" $((kb / 1024)) "$secs"
  fi
done
