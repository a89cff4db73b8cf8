#!/usr/bin/env bash
# Bulwark against restic and borg, in one run, on the same data: a VM-disk-like raw image and a tree of
# real files. Prints a markdown table (also bench/out/results.md) and writes bench/out/results.json.
# See bench/README.md for what is measured and the BENCH_* knobs. Needs root (apt-get, mkfs).
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
# npm puts the node22/node24 devDependencies' `node` first on PATH: measure on the machine's own Node,
# as users run it (scripts/system-node.sh, shared with the test scripts).
# shellcheck source=../scripts/system-node.sh
(cd "$ROOT" && . scripts/system-node.sh && printf '%s\n' "$SYSTEM_NODE") >/dev/null
export PATH="$ROOT/.cache/system-node:$PATH"
OUT=${BENCH_OUT:-$BENCH_DIR/out}
DATA=$OUT/data
WORK=$OUT/work
LOGS=$OUT/logs
IMAGE_MIB=${BENCH_IMAGE_MIB:-2048}
TREE_MIB=${BENCH_TREE_MIB:-1024}
SMALL_FILES=${BENCH_SMALL_FILES:-30000}    # files in the small-files tree
TREE_CHANGE_PCT=${BENCH_TREE_CHANGE_PCT:-2} # share of the files changed for the trees' "changed" step
SMALL_MAX_KIB=${BENCH_SMALL_MAX_KIB:-16}  # each at most this large
FILL_PCT=${BENCH_IMAGE_FILL_PCT:-70}      # share of the image filled with files, the rest stays empty
CHANGE_PCT=${BENCH_CHANGE_PCT:-1}         # share of the image rewritten for the "changed" re-backup
TOOLS=${BENCH_TOOLS:-bulwark restic borg}
TIMEOUT=${BENCH_TIMEOUT:-1800}            # seconds, per timed command
BULWARK_JS=${BENCH_BULWARK_JS:-$ROOT/bin/bulwark.js}
DATA_ROOTS=${BENCH_DATA_ROOTS:-/usr/bin /usr/sbin /usr/lib /usr/libexec /usr/share /usr/include /usr/local}
PASSWORD=bench

RESULTS=$OUT/results.tsv
META=$OUT/meta.txt

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/common.sh
. "$BENCH_DIR/lib/common.sh"
read -ra BW_NODE < <(bulwark_node "$BULWARK_JS")

# ---------------------------------------------------------------------------------------------- tools
ensure_packages() {
  local need=()
  has restic || need+=(restic)
  has borg || need+=(borgbackup)
  [[ -x /usr/bin/time ]] || need+=(time)
  has mkfs.ext4 || need+=(e2fsprogs)
  ((${#need[@]} == 0)) && return 0
  log "installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y "${need[@]}" >"$LOGS/apt.log" 2>&1; then
    apt-get update >>"$LOGS/apt.log" 2>&1
    apt-get install -y "${need[@]}" >>"$LOGS/apt.log" 2>&1 || log "apt-get install failed, see $LOGS/apt.log"
  fi
}

ensure_bulwark_built() {
  [[ " $TOOLS " == *" bulwark "* ]] || return 0
  if [[ ! -f $ROOT/dist/cli/main.js ]]; then
    log "dist/ missing: npm run build"
    (cd "$ROOT" && npm run build) >"$LOGS/build.log" 2>&1 || log "build failed, see $LOGS/build.log (bulwark rows will say FAILED)"
  elif [[ -n "$(find "$ROOT/src" -name '*.ts' ! -name '*.test.ts' -newer "$ROOT/dist/cli/main.js" -print -quit 2>/dev/null)" ]]; then
    log "warning: src/ has changes newer than dist/: measuring the old build (run npm run build first)"
    DIST_STALE=1
  fi
}

# ----------------------------------------------------------------------------------------------- data
# Cached in $DATA and rebuilt only when a parameter that shapes it changes (recorded in *.key files).
make_data() {
  mkdir -p "$DATA"
  local image_key="v2 image=$IMAGE_MIB fill=$FILL_PCT roots=$DATA_ROOTS"
  local tree_key="v1 $image_key tree=$TREE_MIB"
  local patch_key="v1 image=$IMAGE_MIB change=$CHANGE_PCT"
  local small_key="v1 files=$SMALL_FILES max=$SMALL_MAX_KIB roots=$DATA_ROOTS"
  local image_ok=0 tree_ok=0
  [[ -f $DATA/vm-disk.img && -f $DATA/vm-disk.img.sha256 && "$(cat "$DATA/image.key" 2>/dev/null)" == "$image_key" ]] && image_ok=1
  [[ -d $DATA/tree && "$(cat "$DATA/tree.key" 2>/dev/null)" == "$tree_key" ]] && tree_ok=1

  if ((!image_ok || !tree_ok)); then
    local fill_bytes=$((IMAGE_MIB * 1048576 * FILL_PCT / 100))
    log "choosing files from $DATA_ROOTS"
    # shellcheck disable=SC2086
    node "$BENCH_DIR/lib/pick-files.mjs" "$DATA/image.list" "$fill_bytes" "$DATA/tree.list" \
      "$((TREE_MIB * 1048576))" $DATA_ROOTS >&2 || die "pick-files failed"
  fi

  if ((!image_ok)); then
    log "building vm-disk.img ($IMAGE_MIB MiB, ${FILL_PCT} % files) with mkfs.ext4 -d"
    rm -rf "$DATA/staging" "$DATA/vm-disk.img" "$DATA/vm-disk.img.sha256" "$DATA/image.key"
    mkdir -p "$DATA/staging"
    tar -C / --null --no-recursion -T "$DATA/image.list" -cf - | tar -C "$DATA/staging" -xf - \
      || die "copying files for the image failed"
    local nfiles
    nfiles=$(find "$DATA/staging" | wc -l) # files and directories: each needs an inode
    truncate -s "${IMAGE_MIB}M" "$DATA/vm-disk.img"
    # Fixed UUID and hash seed: the same image every time it is rebuilt from the same files. Inode
    # count: the default, or more when the files need it (small images of many small files).
    local inodes=$((IMAGE_MIB * 64)) # default ratio, 16 KiB per inode
    ((nfiles * 3 / 2 > inodes)) && inodes=$((nfiles * 3 / 2))
    E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -N "$inodes" -L benchdisk \
      -U 6f1c2a3e-0b5d-4c7a-9e21-b3d4f5a6c7e8 -E hash_seed=0d9a8b7c-6e5f-4a3b-8c2d-1e0f9a8b7c6d \
      -d "$DATA/staging" "$DATA/vm-disk.img" >"$LOGS/mkfs.log" 2>&1 || die "mkfs.ext4 -d failed, see $LOGS/mkfs.log"
    # bytes of file data, hard links once
    find "$DATA/staging" -type f -printf '%i %s\n' | sort -u | awk '{s += $2} END {print s + 0}' >"$DATA/image.files-bytes"
    find "$DATA/staging" -type f | wc -l >"$DATA/image.files-count"
    rm -rf "$DATA/staging"
    sha256sum "$DATA/vm-disk.img" | cut -d' ' -f1 >"$DATA/vm-disk.img.sha256"
    echo "$image_key" >"$DATA/image.key"
  fi

  if ((!tree_ok)); then
    log "building tree/ (~$TREE_MIB MiB of real files)"
    rm -rf "$DATA/tree" "$DATA/tree.new" "$DATA/tree.key"
    mkdir -p "$DATA/tree.new"
    tar -C / --null --no-recursion -T "$DATA/tree.list" -cf - | tar -C "$DATA/tree.new" -xf - \
      || die "copying files for the tree failed"
    mv "$DATA/tree.new" "$DATA/tree"
    echo "$tree_key" >"$DATA/tree.key"
  fi

  if [[ ! -d $DATA/small || "$(cat "$DATA/small.key" 2>/dev/null)" != "$small_key" ]]; then
    log "building small/ ($SMALL_FILES real files of at most $SMALL_MAX_KIB KiB)"
    rm -rf "$DATA/small" "$DATA/small.new" "$DATA/small.key"
    # shellcheck disable=SC2086
    node "$BENCH_DIR/lib/pick-small.mjs" "$DATA/small.list" "$SMALL_FILES" "$((SMALL_MAX_KIB * 1024))" $DATA_ROOTS >&2 \
      || die "pick-small failed"
    mkdir -p "$DATA/small.new"
    tar -C / --null --no-recursion -T "$DATA/small.list" -cf - | tar -C "$DATA/small.new" -xf - \
      || die "copying files for the small-files tree failed"
    mv "$DATA/small.new" "$DATA/small"
    echo "$small_key" >"$DATA/small.key"
  fi

  if [[ ! -f $DATA/patch.bin || "$(cat "$DATA/patch.key" 2>/dev/null)" != "$patch_key" ]]; then
    node "$BENCH_DIR/lib/make-patch.mjs" "$IMAGE_MIB" "$CHANGE_PCT" "$DATA/patch.offsets" "$DATA/patch.bin" >&2 \
      || die "make-patch failed"
    echo "$patch_key" >"$DATA/patch.key"
  fi
}

# Overwrite (or, with "revert", put back) the changed blocks of the working image in place.
patch_image() { # apply|revert <image>
  local mode=$1 img=$2 i=0 block
  while read -r block; do
    if [[ $mode == apply ]]; then
      dd if="$img" of="$WORK/orig-blocks.bin" bs=1M skip="$block" seek="$i" count=1 conv=notrunc status=none
      dd if="$DATA/patch.bin" of="$img" bs=1M skip="$i" seek="$block" count=1 conv=notrunc status=none
    else
      dd if="$WORK/orig-blocks.bin" of="$img" bs=1M skip="$i" seek="$block" count=1 conv=notrunc status=none
    fi
    i=$((i + 1))
  done <"$DATA/patch.offsets"
}

# ------------------------------------------------------------------------------------------ recording
record() { # tool dataset metric status value rss text [cpu-seconds] [minor-page-faults]
  local text=${7:-}
  text=${text//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${text//$'\n'/ ⏎ }" "${8:-}" "${9:-}" >>"$RESULTS"
}

# What a failed command said: its first two error lines, then its last lines (of stderr, or of stdout
# when stderr is empty).
tail_of() { # log-prefix rc
  local f=$1.err
  [[ -s $f ]] || f=$1.out
  local t e
  e=$(grep -iE 'error|fatal' "$f" 2>/dev/null | head -n 2 | cut -c1-300)
  t=$(grep -v '^[[:space:]]*$' "$f" 2>/dev/null | tail -n 5 | cut -c1-300)
  [[ -n $e ]] && t="$e"$'\n''…'$'\n'"$t"
  case $2 in
    124) t="timed out after ${TIMEOUT}s"$'\n'"$t" ;;
    127) t="command not found"$'\n'"$t" ;;
  esac
  printf '%s\nexit status %s' "$t" "$2"
}

# Run one measured command: wall time, peak RSS, CPU time and minor page faults via /usr/bin/time, cwd
# as given, argv as given. Page faults are counted because a fresh page can cost far more on a virtual
# machine than on bare metal (docs/performance.md): they explain swings the wall time alone does not.
LAST_OK=0
timed() { # tool dataset metric cwd argv...
  local tool=$1 ds=$2 metric=$3 cwd=$4
  shift 4
  local lp=$LOGS/$tool-$ds-$metric
  sync
  (cd "$cwd" && exec /usr/bin/time -f '%e %M %U %S %R' -o "$lp.time" timeout -k 10 "$TIMEOUT" "$@") >"$lp.out" 2>"$lp.err"
  local rc=$? secs='' rss='' usr='' sys='' cpu='' faults=''
  read -r secs rss usr sys faults < <(tail -n 1 "$lp.time" 2>/dev/null)
  [[ -n $usr && -n $sys ]] && cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
  if ((rc == 0)); then
    record "$tool" "$ds" "$metric" ok "$secs" "$rss" '' "$cpu" "$faults"
    log "$tool $ds $metric: ${secs}s (CPU ${cpu}s), peak RSS $((rss / 1024)) MiB, ${faults:-?} page faults"
    LAST_OK=1
  else
    record "$tool" "$ds" "$metric" FAILED "$secs" "$rss" "$(tail_of "$lp" "$rc")" "$cpu" "$faults"
    log "$tool $ds $metric: FAILED (exit $rc), see $lp.err"
    LAST_OK=0
  fi
}

repo_size() { # tool dataset metric repo
  if [[ -d $4 ]]; then
    record "$1" "$2" "$3" ok "$(du -sb "$4" | cut -f1)" '' ''
  else
    record "$1" "$2" "$3" FAILED '' '' "no repository at $4"
  fi
}

# ------------------------------------------------------------------------------------- tool commands
# Each prints nothing and sets CMD (argv array) for the step; environments keep the tools' caches in
# $WORK so every run starts cold on metadata and the user's own caches are left alone.
tool_env() { # tool repo -> ENVV (array of VAR=value)
  case $1 in
    bulwark) ENVV=(BULWARK_REPOSITORY="$2" BULWARK_PASSWORD="$PASSWORD") ;;
    restic) ENVV=(RESTIC_REPOSITORY="$2" RESTIC_PASSWORD="$PASSWORD" RESTIC_CACHE_DIR="$WORK/cache/restic") ;;
    borg) ENVV=(BORG_REPO="$2" BORG_PASSPHRASE="$PASSWORD" BORG_BASE_DIR="$WORK/cache/borg") ;;
  esac
}

cmd_for() { # tool step name [dir] -> CMD ; step: init | backup-image | backup-tree | restore-image | restore-tree
  local tool=$1 step=$2 name=${3:-} dir=${4:-tree}
  case $tool:$step in
    bulwark:init) CMD=("${BW_NODE[@]}" "$BULWARK_JS" init) ;;
    bulwark:backup-image) CMD=("${BW_NODE[@]}" "$BULWARK_JS" backup disk vm-disk.img) ;;
    bulwark:backup-tree) CMD=("${BW_NODE[@]}" "$BULWARK_JS" backup files "$dir") ;;
    bulwark:restore-image) CMD=("${BW_NODE[@]}" "$BULWARK_JS" restore vm latest --target .) ;;
    bulwark:restore-tree) CMD=("${BW_NODE[@]}" "$BULWARK_JS" restore latest --target .) ;;
    restic:init) CMD=(restic init) ;;
    restic:backup-image) CMD=(restic backup vm-disk.img) ;;
    restic:backup-tree) CMD=(restic backup "$dir/") ;;
    restic:restore-*) CMD=(restic restore latest --target .) ;;
    borg:init) CMD=(borg init -e repokey) ;;
    borg:backup-image) CMD=(borg create "::$name" vm-disk.img) ;;
    borg:backup-tree) CMD=(borg create "::$name" "$dir") ;;
    borg:restore-*) CMD=(borg extract "::$name") ;;
  esac
  CMD=(env "${ENVV[@]}" "${CMD[@]}")
}

init_repo() { # tool dataset repo -> 0 if ready; else records every metric as FAILED
  local tool=$1 ds=$2 repo=$3 lp=$LOGS/$1-$2-init rc
  shift 3
  rm -rf "$repo"
  tool_env "$tool" "$repo"
  cmd_for "$tool" init
  (cd "$WORK" && timeout "$TIMEOUT" "${CMD[@]}") >"$lp.out" 2>"$lp.err"
  rc=$?
  ((rc == 0)) && return 0
  local t m
  t="init failed"$'\n'"$(tail_of "$lp" "$rc")"
  log "$tool $ds: init failed (exit $rc), see $lp.err"
  for m in "$@"; do record "$tool" "$ds" "$m" FAILED '' '' "$t"; done
  return 1
}

# The restored file/dir: tolerant of where each tool puts it.
find_restored_file() { # dir -> path of the single regular file below it
  local files
  mapfile -t files < <(find "$1" -type f)
  ((${#files[@]} == 1)) && printf '%s' "${files[0]}" && return 0
  printf 'expected one restored file, found %s' "${#files[@]}"
  return 1
}
find_restored_tree() { # dir name -> the shortest path of a directory of that name below it
  find "$1" -mindepth 1 -type d -name "$2" -prune -printf '%d\t%p\n' | sort -n | head -n 1 | cut -f2-
}

# --------------------------------------------------------------------------------------------- runs
bench_image() { # tool
  local tool=$1 repo=$WORK/repos/$1-image target=$WORK/restore/$1-image src=$WORK/src
  init_repo "$tool" image "$repo" first repo_after_first unchanged repo_after_unchanged changed \
    repo_after_changed restore verify || return 0
  tool_env "$tool" "$repo"
  log "$tool image: warming the page cache"
  cat "$src/vm-disk.img" >/dev/null

  cmd_for "$tool" backup-image img-1 && timed "$tool" image first "$src" "${CMD[@]}"
  repo_size "$tool" image repo_after_first "$repo"
  cmd_for "$tool" backup-image img-2 && timed "$tool" image unchanged "$src" "${CMD[@]}"
  repo_size "$tool" image repo_after_unchanged "$repo"

  patch_image apply "$src/vm-disk.img"
  cmd_for "$tool" backup-image img-3 && timed "$tool" image changed "$src" "${CMD[@]}"
  repo_size "$tool" image repo_after_changed "$repo"
  patch_image revert "$src/vm-disk.img"

  rm -rf "$target" && mkdir -p "$target"
  cmd_for "$tool" restore-image img-3 && timed "$tool" image restore "$target" "${CMD[@]}"
  if ((LAST_OK)); then
    local f sum
    if f=$(find_restored_file "$target"); then
      sum=$(sha256sum "$f" | cut -d' ' -f1)
      if [[ $sum == "$CHANGED_SHA" ]]; then
        record "$tool" image verify ok '' '' "$f"
      else
        record "$tool" image verify FAIL '' '' "sha256 of ${f#"$target"/} differs from the backed-up image"
        log "*** FAIL: $tool image restore: sha256 $sum != $CHANGED_SHA ($f) ***"
      fi
    else
      record "$tool" image verify FAIL '' '' "$f"
      log "*** FAIL: $tool image restore: $f ***"
    fi
  else
    record "$tool" image verify skipped '' '' 'restore failed'
  fi
  rm -rf "$target"
  # The next tool must see the original image: check the revert.
  if [[ "$(sha256sum "$src/vm-disk.img" | cut -d' ' -f1)" != "$IMAGE_SHA" ]]; then
    log "working image differs from the original after revert: copying it again"
    cp --sparse=always "$DATA/vm-disk.img" "$src/vm-disk.img" && sync
  fi
}

bench_tree() { # tool dataset (tree | small: a folder of that name in $DATA)
  local tool=$1 ds=$2 repo=$WORK/repos/$1-$2 target=$WORK/restore/$1-$2 state=$WORK/$1-$2.change
  init_repo "$tool" "$ds" "$repo" first repo_after_first unchanged repo_after_unchanged changed \
    repo_after_changed restore verify || return 0
  tool_env "$tool" "$repo"
  log "$tool $ds: warming the page cache"
  tar -C "$DATA" -cf - "$ds" | cat >/dev/null

  cmd_for "$tool" backup-tree "$ds-1" "$ds" && timed "$tool" "$ds" first "$DATA" "${CMD[@]}"
  repo_size "$tool" "$ds" repo_after_first "$repo"
  cmd_for "$tool" backup-tree "$ds-2" "$ds" && timed "$tool" "$ds" unchanged "$DATA" "${CMD[@]}"
  repo_size "$tool" "$ds" repo_after_unchanged "$repo"

  # 2 % of the files get 4 KiB of new bytes (lib/change-tree.mjs); put back after the restore is checked.
  node "$BENCH_DIR/lib/change-tree.mjs" apply "$DATA/$ds" "$TREE_CHANGE_PCT" "$state" >/dev/null
  cmd_for "$tool" backup-tree "$ds-3" "$ds" && timed "$tool" "$ds" changed "$DATA" "${CMD[@]}"
  repo_size "$tool" "$ds" repo_after_changed "$repo"

  rm -rf "$target" && mkdir -p "$target"
  cmd_for "$tool" restore-tree "$ds-3" "$ds" && timed "$tool" "$ds" restore "$target" "${CMD[@]}"
  if ((LAST_OK)); then
    local d diffout
    d=$(find_restored_tree "$target" "$ds")
    if [[ -z $d ]]; then
      record "$tool" "$ds" verify FAIL '' '' "no directory named $ds under the restore target"
      log "*** FAIL: $tool $ds restore: no $ds/ under $target ***"
    elif diffout=$(diff -rq --no-dereference "$DATA/$ds" "$d" 2>&1); then
      record "$tool" "$ds" verify ok '' '' "$d"
    else
      record "$tool" "$ds" verify FAIL '' '' "diff -r: $(printf '%s\n' "$diffout" | wc -l) differences, e.g. $(printf '%s\n' "$diffout" | head -n 2)"
      log "*** FAIL: $tool $ds restore differs from the source (diff -rq $DATA/$ds $d) ***"
    fi
  else
    record "$tool" "$ds" verify skipped '' '' 'restore failed'
  fi
  rm -rf "$target"
  node "$BENCH_DIR/lib/change-tree.mjs" revert "$DATA/$ds" "$state" || die "could not undo the change of $DATA/$ds: delete it to have it made again"
}

version_of() {
  case $1 in
    bulwark) (cd "$WORK" && timeout 60 "${BW_NODE[@]}" "$BULWARK_JS" --version 2>/dev/null) | head -n 1 ;;
    restic) restic version 2>/dev/null | cut -d' ' -f1-2 ;;
    borg) borg --version 2>/dev/null ;;
  esac
}

write_meta() {
  local cpu os commit
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  os=$(. /etc/os-release && echo "$PRETTY_NAME")
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit+uncommitted changes"
  {
    echo "DATE=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "CPU=$cpu"
    echo "NPROC=$(nproc)"
    echo "RAM_GIB=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
    echo "OS=$os"
    echo "KERNEL=$(uname -r)"
    echo "NODE_VERSION=$(node --version)"
    echo "BULWARK_VERSION=$(version_of bulwark || true)"
    echo "BULWARK_COMMIT=$commit"
    echo "BULWARK_CMD=${BW_NODE[*]} $BULWARK_JS"
    echo "RESTIC_VERSION=$(version_of restic || true)"
    echo "BORG_VERSION=$(version_of borg || true)"
    echo "TOOLS=$TOOLS"
    echo "IMAGE_MIB=$IMAGE_MIB"
    echo "IMAGE_BYTES=$(stat -c %s "$DATA/vm-disk.img")"
    echo "IMAGE_FILES=$(cat "$DATA/image.files-count")"
    echo "IMAGE_FILES_MIB=$(($(cat "$DATA/image.files-bytes") / 1048576))"
    echo "IMAGE_SHA256=$IMAGE_SHA"
    echo "CHANGED_IMAGE_SHA256=$CHANGED_SHA"
    echo "PATCH_BLOCKS=$(wc -l <"$DATA/patch.offsets")"
    echo "TREE_MIB=$TREE_MIB"
    echo "TREE_BYTES=$(find "$DATA/tree" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
    echo "TREE_MIB_ACTUAL=$(find "$DATA/tree" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s / 1048576}')"
    echo "TREE_FILES=$(find "$DATA/tree" -type f | wc -l)"
    echo "TREE_DIRS=$(find "$DATA/tree" -type d | wc -l)"
    echo "SMALL_BYTES=$(find "$DATA/small" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
    echo "SMALL_FILES=$(find "$DATA/small" -type f | wc -l)"
    echo "SMALL_DIRS=$(find "$DATA/small" -type d | wc -l)"
    echo "SMALL_MAX_KIB=$SMALL_MAX_KIB"
    echo "TREE_CHANGE_PCT=$TREE_CHANGE_PCT"
    echo "TIMEOUT=$TIMEOUT"
    echo "RESTORE_FS=$RESTORE_FS"
    echo "DIST_STALE=${DIST_STALE:-0}"
    echo "LOAD_START=$LOAD_START"
    echo "IDLE_START=$IDLE_START"
  } >"$META"
}

# --------------------------------------------------------------------------------------------- main
main() {
  ((EUID == 0)) || log "warning: not root; apt-get may fail"
  mkdir -p "$OUT"
  # One run at a time per output folder: two runs would share the data and the CPUs.
  exec 9>"$OUT/.lock"
  if ! flock -n 9; then
    log "another benchmark run is using $OUT: waiting for it to finish"
    flock 9
  fi
  umount "$WORK/restore" 2>/dev/null
  rm -rf "$LOGS" "$WORK"
  mkdir -p "$LOGS" "$WORK/src" "$WORK/repos" "$WORK/restore" "$WORK/cache"
  # Restores go to a tmpfs of their own (BENCH_RESTORE_TMPFS=0: to the disk). ext4 creates inodes
  # slowly for minutes after many were deleted (its allocator checks each recently freed one), and the
  # bench deletes each restore before the next tool's: whichever tool came next paid for the one before.
  RESTORE_FS=disk
  if [[ ${BENCH_RESTORE_TMPFS:-1} == 1 ]] && mount -t tmpfs -o size=8g bulwark-bench "$WORK/restore" 2>/dev/null; then
    RESTORE_FS=tmpfs
    trap 'umount "$WORK/restore" 2>/dev/null' EXIT
  fi
  local t0=$SECONDS
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  IDLE_START=$(idle_pct)
  awk -v i="$IDLE_START" 'BEGIN {exit !(i < 90)}' \
    && log "warning: the CPUs are only $IDLE_START % idle before the run: other processes will skew the times"

  ensure_packages
  has node || die "node not found"
  ensure_bulwark_built
  make_data

  log "working copy of the image (the 1 % change is applied to it and reverted)"
  cp --sparse=always "$DATA/vm-disk.img" "$WORK/src/vm-disk.img" || die "cannot copy the image"
  IMAGE_SHA=$(cat "$DATA/vm-disk.img.sha256")
  patch_image apply "$WORK/src/vm-disk.img"
  CHANGED_SHA=$(sha256sum "$WORK/src/vm-disk.img" | cut -d' ' -f1)
  patch_image revert "$WORK/src/vm-disk.img"
  [[ "$(sha256sum "$WORK/src/vm-disk.img" | cut -d' ' -f1)" == "$IMAGE_SHA" ]] || die "the patch does not revert cleanly"
  sync

  : >"$RESULTS"
  write_meta
  log "bulwark runs as: env BULWARK_REPOSITORY=<repo> BULWARK_PASSWORD=$PASSWORD ${BW_NODE[*]} $BULWARK_JS ..."

  local tool
  for tool in $TOOLS; do bench_image "$tool"; done
  for tool in $TOOLS; do bench_tree "$tool" tree; done
  for tool in $TOOLS; do bench_tree "$tool" small; done

  echo "LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"
  node "$BENCH_DIR/lib/report.mjs" "$OUT" || die "report failed"
  log "done in $((SECONDS - t0)) s; results in $OUT/results.md and results.json, logs in $LOGS"
  umount "$WORK/restore" 2>/dev/null
  if [[ ${BENCH_KEEP:-0} != 1 ]]; then
    rm -rf "$WORK"
  else
    log "kept repositories in $WORK/repos"
  fi
  # Exit 1 when a restore did not give back the data, or a Bulwark step failed.
  if awk -F'\t' '$4 == "FAIL" || ($1 == "bulwark" && $4 == "FAILED") {bad = 1} END {exit !bad}' "$RESULTS"; then
    log "exit 1: a restore verification failed or a Bulwark step failed (see the table)"
    return 1
  fi
}

main "$@"
