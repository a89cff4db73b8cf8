# Shell functions both benchmarks use (bench/run.sh, bench/vm.sh). Sourced, not run.

has() { command -v "$1" >/dev/null 2>&1; }

# Share of CPU time idle over 2 seconds, from /proc/stat (idle + iowait of all CPUs).
idle_pct() {
  local a b
  a=$(head -n 1 /proc/stat)
  sleep 2
  b=$(head -n 1 /proc/stat)
  printf '%s\n%s\n' "$a" "$b" | awk '{t = 0; for (i = 2; i <= NF; i++) t += $i; tot[NR] = t; idle[NR] = $5 + $6}
    END {printf "%.0f", 100 * (idle[2] - idle[1]) / (tot[2] - tot[1])}'
}

# Node and its flags for Bulwark, as the `bulwark` command starts it: the flags are on its launcher's
# first line (src/cli/launcher.ts; an older build's launcher has none). Usage: read -ra BW_NODE < <(bulwark_node "$BULWARK_JS")
bulwark_node() { printf 'node %s\n' "$(sed -n '1s|^#!/usr/bin/env -S node ||p' "$1")"; }
