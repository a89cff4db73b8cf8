#!/usr/bin/env bash
# Bulwark against virtnbdbackup on a live VM, in one run, on the same test guest and the same data
# disk: full backup of the running guest, incremental backup after the guest wrote new data, restore
# of the latest point and a check of the restored disk. Prints a markdown table (also
# bench/out/vm-results.md). Three tools: Bulwark on plain QEMU (QMP + guest-agent sockets, tool
# "bulwark"), Bulwark on a libvirt domain (its libvirt driver, tool "bulwark-libvirt") and
# virtnbdbackup on the same kind of libvirt domain: all boot the same kernel/initramfs
# (test/guest/build.sh) on their own copy of the same qcow2 data disk. See bench/README.md for the
# BENCH_VM_* knobs. Needs root (apt-get, libvirtd).
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
OUT=${BENCH_OUT:-$BENCH_DIR/out}
VMOUT=$OUT/vm
DATA=$VMOUT/data
WORK=$VMOUT/work
LOGS=$VMOUT/logs
DISK_MIB=${BENCH_VM_DISK_MIB:-2048}
FILL_PCT=${BENCH_VM_FILL_PCT:-60}          # share of the data disk filled with real files
WRITE_MIB=${BENCH_VM_WRITE_MIB:-96}        # new data the guest writes between full and incremental
TOOLS=${BENCH_VM_TOOLS:-bulwark bulwark-libvirt virtnbdbackup}
TIMEOUT=${BENCH_VM_TIMEOUT:-900}           # seconds, per timed step
BOOT_TIMEOUT=${BENCH_VM_BOOT_TIMEOUT:-180} # seconds until the guest agent answers
MEM_MIB=${BENCH_VM_MEM_MIB:-256}
VNB_ARGS=${BENCH_VM_VNB_ARGS:-}            # extra virtnbdbackup arguments, e.g. -z (lz4)
BULWARK_JS=${BENCH_BULWARK_JS:-$ROOT/bin/bulwark.js}
DATA_ROOTS=${BENCH_DATA_ROOTS:-/usr/bin /usr/sbin /usr/lib /usr/libexec /usr/share /usr/include /usr/local}
DOMAIN=${BENCH_VM_DOMAIN:-bulwark-bench-vm}
PASSWORD=bench
AGENT="$BENCH_DIR/lib/vm-agent.mjs"
VIRSH=(virsh -q -c qemu:///system)

RESULTS=$VMOUT/results.tsv
META=$VMOUT/meta.txt
REPORT=$OUT/vm-results.md

log() { printf '[bench-vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/common.sh
. "$BENCH_DIR/lib/common.sh"
read -ra BW_NODE < <(bulwark_node "$BULWARK_JS")

# -------------------------------------------------------------------------------- cleanup (trap)
QEMU_PID=''          # plain QEMU of the Bulwark half
DOMAIN_DEFINED=0     # we defined $DOMAIN in libvirt
STARTED_LIBVIRTD=''  # pid of the libvirtd this run started (never another's)

stop_plain_qemu() {
  [[ -n $QEMU_PID ]] || return 0
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    kill -TERM "$QEMU_PID" 2>/dev/null
    local i
    for ((i = 0; i < 50; i++)); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$QEMU_PID" 2>/dev/null && kill -KILL "$QEMU_PID" 2>/dev/null
  fi
  wait "$QEMU_PID" 2>/dev/null
  QEMU_PID=''
}

remove_domain() {
  ((DOMAIN_DEFINED)) || return 0
  timeout 60 "${VIRSH[@]}" domjobabort "$DOMAIN" >/dev/null 2>&1
  timeout 60 "${VIRSH[@]}" destroy "$DOMAIN" >/dev/null 2>&1
  timeout 60 "${VIRSH[@]}" undefine "$DOMAIN" --checkpoints-metadata >/dev/null 2>&1 ||
    timeout 60 "${VIRSH[@]}" undefine "$DOMAIN" >/dev/null 2>&1
  DOMAIN_DEFINED=0
}

stop_daemon() { # pid
  [[ -n $1 ]] && kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null
  local i
  for ((i = 0; i < 50; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null
}

STEP_PID=''          # /usr/bin/time of the step running now

cleanup() {
  if [[ -n $STEP_PID ]]; then
    # timeout (the child of time) passes the signal on to the tool.
    local t
    for t in $(pgrep -P "$STEP_PID" 2>/dev/null); do kill -TERM "$t" 2>/dev/null; done
    wait "$STEP_PID" 2>/dev/null
    STEP_PID=''
  fi
  stop_plain_qemu
  remove_domain
  stop_daemon "$STARTED_LIBVIRTD"
  STARTED_LIBVIRTD=''
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------------------------------ tools
ensure_packages() {
  local need=()
  [[ -x /usr/bin/time ]] || need+=(time)
  has mkfs.ext4 && has debugfs && has e2fsck || need+=(e2fsprogs)
  has qemu-system-x86_64 || need+=(qemu-system-x86)
  has qemu-img && has qemu-nbd || need+=(qemu-utils)
  [[ " $TOOLS " == *" virtnbdbackup "* ]] && ! has virtnbdbackup && need+=(virtnbdbackup)
  if [[ " $TOOLS " == *" virtnbdbackup "* || " $TOOLS " == *" bulwark-libvirt "* ]]; then
    has libvirtd || need+=(libvirt-daemon)
    [[ -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ]] || need+=(libvirt-daemon-driver-qemu)
    has virsh || need+=(libvirt-clients)
  fi
  ((${#need[@]} == 0)) && return 0
  log "installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${need[@]}" >"$LOGS/apt.log" 2>&1; then
    apt-get update >>"$LOGS/apt.log" 2>&1
    apt-get install -y --no-install-recommends "${need[@]}" >>"$LOGS/apt.log" 2>&1 ||
      log "apt-get install failed, see $LOGS/apt.log"
  fi
}

# ------------------------------------------------------------------------------------------- data
# The data disk: real files put in with mkfs.ext4 -d (no mount), then qemu-img convert to qcow2. A
# sha256 manifest of those files is what every restore is checked against. Cached in $DATA, rebuilt
# when a knob that shapes it changes.
make_data() {
  mkdir -p "$DATA"
  local key="v1 disk=$DISK_MIB fill=$FILL_PCT roots=$DATA_ROOTS"
  if [[ -f $DATA/disk.qcow2 && -f $DATA/files.sha256 && "$(cat "$DATA/disk.key" 2>/dev/null)" == "$key" ]]; then
    log "data disk cached: $DATA/disk.qcow2"
    return 0
  fi
  rm -rf "$DATA/staging" "$DATA/disk.qcow2" "$DATA/disk.raw" "$DATA/disk.key" "$DATA/files.sha256"
  local fill_bytes=$((DISK_MIB * 1048576 * FILL_PCT / 100))
  log "choosing ~$((fill_bytes / 1048576)) MiB of files from $DATA_ROOTS"
  # shellcheck disable=SC2086
  node "$BENCH_DIR/lib/pick-files.mjs" "$DATA/files.list" "$fill_bytes" "$DATA/unused.list" 0 $DATA_ROOTS >&2 ||
    die "pick-files failed"
  mkdir -p "$DATA/staging"
  tar -C / --null --no-recursion -T "$DATA/files.list" -cf - | tar -C "$DATA/staging" -xf - ||
    die "copying files for the data disk failed"
  log "checksumming the files"
  (cd "$DATA/staging" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) >"$DATA/files.sha256.new" ||
    die "sha256sum of the staging files failed"
  find "$DATA/staging" -type f -printf '%i %s\n' | sort -u | awk '{s += $2} END {print s + 0}' >"$DATA/files.bytes"
  find "$DATA/staging" -type f | wc -l >"$DATA/files.count"
  local nfiles inodes=$((DISK_MIB * 64))
  nfiles=$(find "$DATA/staging" | wc -l)
  ((nfiles * 3 / 2 > inodes)) && inodes=$((nfiles * 3 / 2))
  log "building the ${DISK_MIB} MiB ext4 data disk (mkfs.ext4 -d, then qcow2)"
  # Eager inode-table/journal init (as test/guest's makeDataDisk): no ext4lazyinit writing in the
  # guest's background between the backups. Fixed UUID and hash seed: the same disk every rebuild.
  E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L data -N "$inodes" -E lazy_itable_init=0,lazy_journal_init=0,hash_seed=0d9a8b7c-6e5f-4a3b-8c2d-1e0f9a8b7c6d \
    -U 3b1d7e0a-5c2f-4e8b-9a61-c4d5e6f7a8b9 -d "$DATA/staging" "$DATA/disk.raw" "${DISK_MIB}M" >"$LOGS/mkfs.log" 2>&1 ||
    die "mkfs.ext4 -d failed, see $LOGS/mkfs.log"
  qemu-img convert -f raw -O qcow2 "$DATA/disk.raw" "$DATA/disk.qcow2" >>"$LOGS/mkfs.log" 2>&1 ||
    die "qemu-img convert failed, see $LOGS/mkfs.log"
  rm -rf "$DATA/staging" "$DATA/disk.raw"
  mv "$DATA/files.sha256.new" "$DATA/files.sha256"
  echo "$key" >"$DATA/disk.key"
}

# ------------------------------------------------------------------------------------- recording
record() { # tool metric status value rss_kib cpu_s text
  local text=${7:-}
  text=${text//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${text//$'\n'/ ⏎ }" >>"$RESULTS"
}

# What a failed command said: its first two error lines, then its last lines.
tail_of() { # log-prefix rc
  local f=$1.err
  [[ -s $f ]] || f=$1.out
  local t e
  e=$(grep -iE 'error|fatal|fail' "$f" 2>/dev/null | head -n 2 | cut -c1-300)
  t=$(grep -v '^[[:space:]]*$' "$f" 2>/dev/null | tail -n 5 | cut -c1-300)
  [[ -n $e ]] && t="$e"$'\n''…'$'\n'"$t"
  case $2 in
    124 | 137) t="timed out after ${TIMEOUT}s"$'\n'"$t" ;;
    127) t="command not found"$'\n'"$t" ;;
  esac
  printf '%s\nexit status %s' "$t" "$2"
}

# One measured command: wall time, peak RSS (largest single process of the tool's process tree,
# as GNU time reports it) and CPU time (user + sys of the tool and its children).
LAST_OK=0
timed() { # tool metric argv...
  local tool=$1 metric=$2
  shift 2
  local lp=$LOGS/$tool-$metric
  sync
  # In the background + wait, so that a signal to this script is handled at once (see cleanup).
  /usr/bin/time -f '%e %M %U %S' -o "$lp.time" timeout -k 10 "$TIMEOUT" "$@" >"$lp.out" 2>"$lp.err" </dev/null &
  STEP_PID=$!
  wait "$STEP_PID"
  local rc=$? secs='' rss='' usr='' sys='' cpu=''
  STEP_PID=''
  read -r secs rss usr sys < <(tail -n 1 "$lp.time" 2>/dev/null)
  [[ -n $usr && -n $sys ]] && cpu=$(awk -v u="$usr" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
  if ((rc == 0)); then
    record "$tool" "$metric" ok "$secs" "$rss" "$cpu" ''
    log "$tool $metric: ${secs}s (CPU ${cpu}s), peak RSS $((rss / 1024)) MiB"
    LAST_OK=1
  else
    record "$tool" "$metric" FAILED "$secs" "$rss" "$cpu" "$(tail_of "$lp" "$rc")"
    log "$tool $metric: FAILED (exit $rc), see $lp.err"
    LAST_OK=0
  fi
}

output_size() { # tool metric dir
  if [[ -d $3 ]]; then
    record "$1" "$2" ok "$(du -sb "$3" | cut -f1)" '' '' ''
  else
    record "$1" "$2" FAILED '' '' '' "no output at $3"
  fi
}

fail_rest() { # tool text metric...
  local tool=$1 text=$2 m
  shift 2
  for m in "$@"; do record "$tool" "$m" FAILED '' '' '' "$text"; done
}

# --------------------------------------------------------------------------------- the guest
GUEST_DIR=''
GUEST_KERNEL=''
GUEST_INITRD=''
CMDLINE='console=ttyS0 quiet panic=-1 bulwark.writer=off'

ensure_guest() {
  if [[ -n ${BENCH_VM_GUEST_DIR:-} ]]; then
    GUEST_DIR=$BENCH_VM_GUEST_DIR
  else
    GUEST_DIR=$(bash "$ROOT/test/guest/build.sh" 2>"$LOGS/guest-build.log" | tail -n 1)
  fi
  [[ -n $GUEST_DIR && -f $GUEST_DIR/vmlinuz && -f $GUEST_DIR/initrd.gz ]] ||
    die "building the test guest failed, see $LOGS/guest-build.log"
  # A copy for this run: both tools boot the very same files even if the cache is rebuilt meanwhile.
  mkdir -p "$WORK/guest"
  cp "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initrd.gz" "$WORK/guest/" || die "copying the guest's kernel and initrd failed"
  cp "$GUEST_DIR/manifest.json" "$WORK/guest/" 2>/dev/null
  GUEST_KERNEL=$WORK/guest/vmlinuz
  GUEST_INITRD=$WORK/guest/initrd.gz
}

agent() { # target timeout-s argv... : run a command in the guest through its agent
  local target=$1 t=$2
  shift 2
  node "$AGENT" exec "$target" "$t" "$@"
}

# Booted as in the integration tests (test/guest/qemu.sh): QMP socket, agent socket, blockdev disk0.
# shellcheck source=../test/guest/qemu.sh
. "$ROOT/test/guest/qemu.sh"
start_plain_guest() { # dir disk
  guest_qemu_start "$1" "$2" "$GUEST_KERNEL" "$GUEST_INITRD" "$CMDLINE" "$DOMAIN" "$MEM_MIB"
  QEMU_PID=$GUEST_QEMU_PID
}

# libvirt: libvirtd is started here when none runs (no systemd), and stopped at the end. Its
# configuration is a folder of our own ($WORK/libvirt-etc, bind-mounted on /etc/libvirt in a mount
# namespace of its own), so nothing under /etc changes: QEMU runs as root without relabelling files
# (this machine has no libvirt-qemu user: libvirt-daemon-system, which makes it, wants systemd),
# writes its stdio to a file (no virtlogd), and no cgroup controllers are used.
ensure_libvirtd() {
  if timeout 20 "${VIRSH[@]}" version >/dev/null 2>&1; then
    log "libvirtd already running: using it (its qemu.conf must let QEMU run these files)"
    return 0
  fi
  local etc=$WORK/libvirt-etc
  rm -rf "$etc" && mkdir -p "$etc"
  cp -a /etc/libvirt/. "$etc/" 2>/dev/null
  rm -f "$etc/libvirtd.conf" "$etc/qemu.conf"
  cat >"$etc/libvirtd.conf" <<CONF
log_outputs = "3:file:$LOGS/libvirtd-daemon.log"
CONF
  cat >"$etc/qemu.conf" <<'CONF'
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
CONF
  # libvirtd looks the user libvirt-qemu up at start whatever qemu.conf says: it sees a passwd and
  # group file of its own that has it (what libvirt-daemon-system's postinst would add).
  cp /etc/passwd "$WORK/passwd" && cp /etc/group "$WORK/group"
  getent passwd libvirt-qemu >/dev/null || echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>"$WORK/passwd"
  getent group libvirt-qemu >/dev/null || echo 'libvirt-qemu:x:64055:' >>"$WORK/group"
  mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu /run/libvirt
  rm -f "$WORK/libvirtd.pid"
  unshare -m sh -c 'mount --bind "$1" /etc/libvirt && mount --bind "$2" /etc/passwd && mount --bind "$3" /etc/group &&
    exec libvirtd -d -p "$4"' sh "$etc" "$WORK/passwd" "$WORK/group" "$WORK/libvirtd.pid" \
    >>"$LOGS/libvirtd.log" 2>&1 || { log "starting libvirtd failed, see $LOGS/libvirtd.log"; return 1; }
  local i
  for ((i = 0; i < 60; i++)); do
    [[ -s $WORK/libvirtd.pid ]] && timeout 10 "${VIRSH[@]}" version >/dev/null 2>&1 && break
    sleep 0.5
  done
  STARTED_LIBVIRTD=$(cat "$WORK/libvirtd.pid" 2>/dev/null)
  if ! timeout 20 "${VIRSH[@]}" version >/dev/null 2>&1; then
    tail -n 5 "$LOGS/libvirtd-daemon.log" >>"$LOGS/libvirtd.log" 2>/dev/null
    log "libvirtd does not answer, see $LOGS/libvirtd.log"
    return 1
  fi
  log "started libvirtd (pid $STARTED_LIBVIRTD) with the configuration in $etc"
}

# Same guest as the plain-QEMU one: TCG (type qemu, cpu max), q35, same kernel/initrd/cmdline, one
# virtio data disk (qcow2), agent channel, 1 vCPU.
define_domain() { # dir disk
  local dir=$1 disk=$2
  cat >"$dir/domain.xml" <<XML
<domain type='qemu'>
  <name>$DOMAIN</name>
  <memory unit='MiB'>$MEM_MIB</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$GUEST_KERNEL</kernel>
    <initrd>$GUEST_INITRD</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$disk'/>
      <target dev='vda' bus='virtio'/>
      <serial>disk0</serial>
    </disk>
    <serial type='file'>
      <source path='$dir/console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  # A domain left over from an interrupted run
  if timeout 30 "${VIRSH[@]}" dominfo "$DOMAIN" >/dev/null 2>&1; then
    DOMAIN_DEFINED=1
    remove_domain
  fi
  timeout 60 "${VIRSH[@]}" define "$dir/domain.xml" >>"$LOGS/libvirtd.log" 2>&1 || return 1
  DOMAIN_DEFINED=1
}

# New data in the guest between full and incremental: $WRITE_MIB MiB from /dev/urandom (the same
# amount for both tools, incompressible, not a copy of anything on the disk), synced; prints its
# sha256 as the guest computes it.
guest_write() { # tool target
  local tool=$1 target=$2 t0=$SECONDS out
  if out=$(agent "$target" 600 /bin/sh -c \
    "mkdir -p /data/bench && dd if=/dev/urandom of=/data/bench/inc.bin bs=1M count=$WRITE_MIB 2>/dev/null && sync && sha256sum /data/bench/inc.bin" \
    2>"$LOGS/$tool-guest-write.err"); then
    local sum=${out%% *}
    [[ $sum =~ ^[0-9a-f]{64}$ ]] || { log "$tool: unexpected guest output: $out"; return 1; }
    printf '%s  ./bench/inc.bin\n' "$sum" >"$WORK/$tool/inc.sha256"
    record "$tool" guest_write ok "$((SECONDS - t0))" '' '' ''
    log "$tool: guest wrote $WRITE_MIB MiB to /data/bench/inc.bin in $((SECONDS - t0)) s"
    return 0
  fi
  log "$tool: writing in the guest failed: $(cat "$LOGS/$tool-guest-write.err")"
  return 1
}

# The restored disk must hold a clean ext4 (e2fsck -fn) with every original file and the file the
# guest wrote, byte for byte (debugfs rdump, sha256sum -c). The extra files the guest made
# (hooks.log, lost+found) are not compared.
verify_restore() { # tool dir
  local tool=$1 dir=$2 files img
  mapfile -t files < <(find "$dir" -type f \( -name '*.raw' -o -name '*.qcow2' -o -name '*.img' -o -name 'vda*' -o -name 'disk*' \) ! -name '*.log' ! -name '*.xml')
  if ((${#files[@]} != 1)); then
    record "$tool" verify FAIL '' '' '' "expected one restored disk image in $dir, found ${#files[@]}: $(find "$dir" -type f | head -n 5 | tr '\n' ' ')"
    log "*** FAIL: $tool restore: ${#files[@]} disk images in $dir ***"
    return
  fi
  img=${files[0]}
  # virtnbdrestore returns while its qemu-nbd may still hold the image (and its lock) for a moment.
  local t0=$SECONDS
  until qemu-img info "$img" >/dev/null 2>&1 || ((SECONDS - t0 > 120)); do sleep 0.2; done
  ((SECONDS - t0 > 0)) && log "$tool: the restored image was still locked (by qemu-nbd) for ~$((SECONDS - t0)) s after the restore returned"
  record "$tool" restore_locked ok "$((SECONDS - t0))" '' '' ''
  local fmt
  fmt=$(qemu-img info --output=json "$img" 2>/dev/null | sed -n 's/.*"format": "\([a-z0-9]*\)".*/\1/p' | head -n 1)
  log "$tool: restored ${img#"$dir"/} ($fmt, $(du -sm "$img" | cut -f1) MiB allocated): checking it"
  if [[ $fmt != raw ]]; then
    qemu-img convert -O raw "$img" "$WORK/$tool/check.raw" >"$LOGS/$tool-verify.log" 2>&1 || {
      record "$tool" verify FAIL '' '' '' "qemu-img convert of the restored $fmt image failed"
      return
    }
    img=$WORK/$tool/check.raw
  fi
  local fsck
  if ! fsck=$(e2fsck -fn "$img" 2>&1); then
    record "$tool" verify FAIL '' '' '' "e2fsck -fn: $(printf '%s\n' "$fsck" | grep -v '^Pass\|^e2fsck' | head -n 3)"
    log "*** FAIL: $tool restore: e2fsck -fn found problems ***"
    printf '%s\n' "$fsck" >>"$LOGS/$tool-verify.log"
    return
  fi
  printf '%s\n' "$fsck" >>"$LOGS/$tool-verify.log"
  rm -rf "$WORK/$tool/files" && mkdir -p "$WORK/$tool/files"
  debugfs -R "rdump / $WORK/$tool/files" "$img" >>"$LOGS/$tool-verify.log" 2>&1
  cat "$DATA/files.sha256" "$WORK/$tool/inc.sha256" >"$WORK/$tool/expected.sha256"
  local n bad
  n=$(wc -l <"$WORK/$tool/expected.sha256")
  if bad=$(cd "$WORK/$tool/files" && sha256sum -c --quiet "$WORK/$tool/expected.sha256" 2>&1); then
    record "$tool" verify ok '' '' '' "e2fsck clean; $n files match"
    log "$tool: restore verified: e2fsck -fn clean, $n files match their checksums"
  else
    record "$tool" verify FAIL '' '' '' "$(printf '%s\n' "$bad" | grep -c 'FAILED') of $n files differ or are missing, e.g. $(printf '%s\n' "$bad" | head -n 2)"
    log "*** FAIL: $tool restore: files differ (see $LOGS/$tool-verify.log) ***"
    printf '%s\n' "$bad" >>"$LOGS/$tool-verify.log"
  fi
  rm -rf "$WORK/$tool/files" "$WORK/$tool/check.raw"
}

ALL_METRICS=(full size_full inc size_inc restore verify)

# ------------------------------------------------------------------------------ shared by halves
copy_disk() { # tool dir
  log "$1: copying the data disk"
  cp --sparse=always "$DATA/disk.qcow2" "$2/disk.qcow2" && return 0
  fail_rest "$1" "copying the disk failed" "${ALL_METRICS[@]}"
  return 1
}

# Restore the latest point into dir/restore (argv: the tool's restore command), then check it.
restore_and_verify() { # tool dir argv...
  local tool=$1 w=$2
  shift 2
  rm -rf "$w/restore"
  timed "$tool" restore "$@"
  if ((LAST_OK)); then verify_restore "$tool" "$w/restore"; else record "$tool" verify skipped '' '' '' 'restore failed'; fi
  rm -rf "$w/restore"
}

# The libvirt halves (bulwark-libvirt, virtnbdbackup): libvirtd up, $DOMAIN defined on dir/disk.qcow2,
# started, its agent answering; the boot time recorded. On failure every measure is FAILED.
boot_domain() { # tool dir
  local tool=$1 w=$2
  if ! ensure_libvirtd; then
    fail_rest "$tool" "libvirtd could not be started: $(tail -n 3 "$LOGS/libvirtd.log" 2>/dev/null)" "${ALL_METRICS[@]}"
    return 1
  fi
  if ! define_domain "$w" "$w/disk.qcow2"; then
    fail_rest "$tool" "virsh define failed: $(tail -n 3 "$LOGS/libvirtd.log")" "${ALL_METRICS[@]}"
    return 1
  fi
  log "$tool: booting the guest (libvirt domain type qemu, TCG)"
  local t0=$SECONDS
  if ! timeout 120 "${VIRSH[@]}" start "$DOMAIN" >"$LOGS/$tool-start.out" 2>&1; then
    fail_rest "$tool" "virsh start failed: $(tail -n 5 "$LOGS/$tool-start.out")" "${ALL_METRICS[@]}"
    remove_domain
    return 1
  fi
  if ! node "$AGENT" ping "virsh:$DOMAIN" "$BOOT_TIMEOUT" 2>"$LOGS/$tool-boot.err"; then
    fail_rest "$tool" "guest did not boot: $(cat "$LOGS/$tool-boot.err"; tail -n 5 "$w/console.log" 2>/dev/null)" "${ALL_METRICS[@]}"
    remove_domain
    return 1
  fi
  record "$tool" boot ok "$((SECONDS - t0))" '' '' ''
  log "$tool: guest agent up after $((SECONDS - t0)) s"
  cat "$w/disk.qcow2" >/dev/null # warm cache, the same for every tool
}

# --------------------------------------------------------------------------------------- Bulwark
# The Bulwark halves (bulwark, bulwark-libvirt): BW is the command (node bin/bulwark.js with the
# repository and password in its environment), made by bulwark_init.
BW=()
bulwark_init() { # tool repo
  BW=(env BULWARK_REPOSITORY="$2" BULWARK_PASSWORD="$PASSWORD" "${BW_NODE[@]}" "$BULWARK_JS")
  timeout 120 "${BW[@]}" init >"$LOGS/$1-init.out" 2>"$LOGS/$1-init.err" && return 0
  fail_rest "$1" "init failed"$'\n'"$(tail_of "$LOGS/$1-init" $?)" "${ALL_METRICS[@]}"
  return 1
}

# What the incremental read, from its JSON summary (it must say "incremental", not "full").
bulwark_inc_read() { # tool
  local inc_read
  inc_read=$(node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
    const s = lines.map((l) => { try { return JSON.parse(l); } catch { return {}; } }).find((m) => m.type === "summary");
    const d = s?.results?.[0]?.disks?.[0];
    if (d) console.log(`${d.bytesRead}\t${d.read}`);' "$LOGS/$1-inc.out" 2>/dev/null)
  [[ -n $inc_read ]] || return 0
  record "$1" inc_read ok "${inc_read%%$'\t'*}" '' '' "${inc_read#*$'\t'}"
  [[ ${inc_read#*$'\t'} == incremental ]] || log "warning: $1's second backup read the disk as '${inc_read#*$'\t'}', not incremental"
}

# Full backup, the guest writes, incremental backup (argv: the backup command, run twice). Returns 1
# when the guest could not write (the rest is then recorded as FAILED).
bulwark_backups() { # tool repo agent-target argv...
  local tool=$1 repo=$2 target=$3
  shift 3
  timed "$tool" full "$@"
  output_size "$tool" size_full "$repo"
  if ! guest_write "$tool" "$target"; then
    fail_rest "$tool" "writing in the guest failed" inc size_inc restore verify
    return 1
  fi
  timed "$tool" inc "$@"
  output_size "$tool" size_inc "$repo"
  bulwark_inc_read "$tool"
  timeout 120 "${BW[@]}" snapshots --json >"$LOGS/$tool-snapshots.json" 2>&1
  return 0
}

bench_bulwark() {
  local w=$WORK/bulwark repo=$WORK/bulwark/repo
  mkdir -p "$w/scratch"
  local connect="qmp:$w/qmp.sock,qga=$w/qga.sock,name=$DOMAIN"
  copy_disk bulwark "$w" || return
  bulwark_init bulwark "$repo" || return
  log "bulwark: booting the guest (plain QEMU, TCG)"
  local t0=$SECONDS
  start_plain_guest "$w" "$w/disk.qcow2"
  if ! node "$AGENT" ping "$w/qga.sock" "$BOOT_TIMEOUT" 2>"$LOGS/bulwark-boot.err"; then
    fail_rest bulwark "guest did not boot: $(cat "$LOGS/bulwark-boot.err"; tail -n 5 "$w/qemu.log" "$w/console.log" 2>/dev/null)" "${ALL_METRICS[@]}"
    stop_plain_qemu
    return
  fi
  record bulwark boot ok "$((SECONDS - t0))" '' '' ''
  log "bulwark: guest agent up after $((SECONDS - t0)) s"
  cat "$w/disk.qcow2" >/dev/null # warm cache, as for the other tools

  if ! bulwark_backups bulwark "$repo" "$w/qga.sock" \
    "${BW[@]}" backup vm "$DOMAIN" --connect "$connect" --scratch-dir "$w/scratch" --json; then
    stop_plain_qemu
    return
  fi
  log "bulwark: stopping the guest"
  stop_plain_qemu
  restore_and_verify bulwark "$w" "${BW[@]}" restore vm latest --target "$w/restore"
}

# ------------------------------------------------------------------------------- Bulwark, libvirt
# Bulwark on the same libvirt domain as virtnbdbackup, through its libvirt driver. The driver
# reserves the disk's whole size in the scratch folder (fallocate), made before the backup starts:
# --scratch-min 0 skips the free-space rule of thumb. QEMU (maybe not root) must reach the scratch
# image: the folders are 755.
bench_bulwark_libvirt() {
  local w=$WORK/bulwark-libvirt repo=$WORK/bulwark-libvirt/repo
  mkdir -p "$w/scratch" && chmod 755 "$WORK" "$w" "$w/scratch"
  copy_disk bulwark-libvirt "$w" || return
  bulwark_init bulwark-libvirt "$repo" || return
  boot_domain bulwark-libvirt "$w" || return

  if ! bulwark_backups bulwark-libvirt "$repo" "virsh:$DOMAIN" \
    "${BW[@]}" backup vm "$DOMAIN" --connect qemu:///system --scratch-dir "$w/scratch" --scratch-min 0 --json; then
    remove_domain
    return
  fi
  log "bulwark-libvirt: stopping the guest"
  remove_domain
  restore_and_verify bulwark-libvirt "$w" "${BW[@]}" restore vm latest --target "$w/restore"
}

# --------------------------------------------------------------------------------- virtnbdbackup
bench_virtnbdbackup() {
  local w=$WORK/virtnbdbackup backup=$WORK/virtnbdbackup/backup
  mkdir -p "$w/scratch" && chmod 755 "$WORK" "$w" "$w/scratch"
  copy_disk virtnbdbackup "$w" || return
  boot_domain virtnbdbackup "$w" || return

  # QEMU itself binds the NBD socket: under a libvirtd already running it may not be root, so the
  # socket goes into a folder anyone can write to (sticky, as /tmp).
  mkdir -p "$w/sock" && chmod 1777 "$w/sock"
  local VNB=(virtnbdbackup -d "$DOMAIN" -o "$backup" -S "$w/scratch" -f "$w/sock/nbd.sock" -n)
  # shellcheck disable=SC2206
  VNB+=($VNB_ARGS)
  rm -rf "$backup"
  timed virtnbdbackup full "${VNB[@]}" -l full
  output_size virtnbdbackup size_full "$backup"
  if ! guest_write virtnbdbackup "virsh:$DOMAIN"; then
    fail_rest virtnbdbackup "writing in the guest failed" inc size_inc restore verify
    remove_domain
    return
  fi
  timed virtnbdbackup inc "${VNB[@]}" -l inc
  output_size virtnbdbackup size_inc "$backup"
  local incdata
  incdata=$(find "$backup" -maxdepth 1 -type f -name 'vda.inc.*.data' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  ((incdata > 0)) && record virtnbdbackup inc_read ok "$incdata" '' '' incremental
  # The domain boots a kernel and initrd from files: virtnbdbackup copies them into every backup.
  record virtnbdbackup boot_files ok "$(find "$backup" -maxdepth 1 -type f \( -name 'vmlinuz.*' -o -name 'initrd.gz.*' \) -printf '%s\n' | awk '{s += $1} END {print s + 0}')" '' '' ''
  log "virtnbdbackup: stopping the guest"
  remove_domain
  restore_and_verify virtnbdbackup "$w" virtnbdrestore -i "$backup" -o "$w/restore" -f "$w/nbd-restore.sock" -n -L "$LOGS/virtnbdrestore.log"
}

# -------------------------------------------------------------------------------------------- meta
write_meta() {
  local cpu os commit
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
  os=$(. /etc/os-release && echo "$PRETTY_NAME")
  # The checkout Bulwark runs from (BENCH_BULWARK_JS may point at a copy of the project).
  local broot
  broot=$(cd "$(dirname "$BULWARK_JS")/.." && pwd)
  commit=$(git -C "$broot" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$broot" diff --quiet HEAD -- src 2>/dev/null || commit="$commit+uncommitted changes in src"
  if [[ -f $broot/dist/cli/main.js && -n "$(find "$broot/src" -name '*.ts' ! -name '*.test.ts' -newer "$broot/dist/cli/main.js" -print -quit 2>/dev/null)" ]]; then
    log "warning: $broot/src has changes newer than its dist/: measuring the old build"
    commit="$commit, dist older than src"
  fi
  {
    echo "DATE=$(date -u +%Y-%m-%dT%H:%MZ)"
    echo "CPU=$cpu"
    echo "NPROC=$(nproc)"
    echo "RAM_GIB=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
    echo "OS=$os"
    echo "KERNEL=$(uname -r)"
    echo "NODE_VERSION=$(node --version)"
    echo "QEMU_VERSION=$(qemu-system-x86_64 --version | head -n 1 | sed 's/^QEMU emulator version //')"
    echo "BULWARK_VERSION=$(timeout 60 "${BW_NODE[@]}" "$BULWARK_JS" --version 2>/dev/null | head -n 1)"
    echo "BULWARK_COMMIT=$commit"
    echo "BULWARK_CMD=${BW_NODE[*]} $BULWARK_JS"
    echo "VNB_VERSION=$(dpkg-query -W -f '${Version}' virtnbdbackup 2>/dev/null)"
    echo "LIBVIRT_VERSION=$(dpkg-query -W -f '${Version}' libvirt-daemon 2>/dev/null)"
    echo "VNB_ARGS=$VNB_ARGS"
    echo "TOOLS=$TOOLS"
    echo "DISK_MIB=$DISK_MIB"
    echo "DISK_QCOW2_BYTES=$(stat -c %s "$DATA/disk.qcow2")"
    echo "FILES=$(cat "$DATA/files.count")"
    echo "FILES_MIB=$(($(cat "$DATA/files.bytes") / 1048576))"
    echo "WRITE_MIB=$WRITE_MIB"
    echo "MEM_MIB=$MEM_MIB"
    echo "TIMEOUT=$TIMEOUT"
    echo "IDLE_START=$IDLE_START"
    echo "LOAD_START=$LOAD_START"
  } >"$META"
}

# -------------------------------------------------------------------------------------------- main
main() {
  ((EUID == 0)) || die "run as root (apt-get, libvirtd, QEMU as root)"
  mkdir -p "$OUT"
  exec 9>"$OUT/.lock" # shared with run.sh: one benchmark at a time on this machine's CPUs
  if ! flock -n 9; then
    log "another benchmark run is using $OUT: waiting for it to finish"
    flock 9
  fi
  rm -rf "$LOGS" "$WORK"
  mkdir -p "$LOGS" "$WORK/bulwark" "$WORK/bulwark-libvirt" "$WORK/virtnbdbackup"
  local t0=$SECONDS
  LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
  IDLE_START=$(idle_pct)
  awk -v i="$IDLE_START" 'BEGIN {exit !(i < 90)}' &&
    log "warning: the CPUs are only $IDLE_START % idle before the run: other processes will skew the times"

  ensure_packages
  has node || die "node not found"
  [[ -f $BULWARK_JS ]] || die "no Bulwark at $BULWARK_JS (set BENCH_BULWARK_JS)"
  local free_gib
  free_gib=$(df -P -B1G "$WORK" | awk 'NR == 2 {print $4}')
  ((free_gib >= 12)) || log "warning: only $free_gib GiB free under $WORK (Bulwark's scratch wants 10 GiB, the run ~8 GiB)"
  ensure_guest
  make_data

  : >"$RESULTS"
  write_meta
  local tool
  for tool in $TOOLS; do
    case $tool in
      bulwark) bench_bulwark ;;
      bulwark-libvirt) bench_bulwark_libvirt ;;
      virtnbdbackup) bench_virtnbdbackup ;;
      *) log "unknown tool $tool (bulwark, bulwark-libvirt, virtnbdbackup)" ;;
    esac
  done
  cleanup

  echo "LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"
  echo "TOTAL_SECONDS=$((SECONDS - t0))" >>"$META"
  node "$BENCH_DIR/lib/vm-report.mjs" "$VMOUT" "$REPORT" || die "report failed"
  log "done in $((SECONDS - t0)) s; table in $REPORT, logs in $LOGS"
  if [[ ${BENCH_KEEP:-0} != 1 ]]; then
    rm -rf "$WORK"
  else
    log "kept the disks, repository and backup folder in $WORK"
  fi
  if awk -F'\t' '$3 == "FAIL" || (($1 == "bulwark" || $1 == "bulwark-libvirt") && $3 == "FAILED") {bad = 1} END {exit !bad}' "$RESULTS"; then
    log "exit 1: a restore verification failed or a Bulwark step failed (see the table)"
    return 1
  fi
}

main "$@"
