#!/usr/bin/env bash
# Builds the integration tests' Linux guest (kernel + initramfs) from Debian packages, so no root
# filesystem image, network installer or hand-kept binary lives in the repository.
#
#   bash test/guest/build.sh        prints the directory holding vmlinuz, initrd.gz, sample/, manifest.json
#
# Output: <repo>/.cache/guest/<key>/ where <key> is derived from this file's bytes, so editing the
# script (or the /init and writer it embeds) rebuilds and nothing else does. test/guest/guest.ts
# computes the same key (sha256 of this file, first 16 hex digits) to skip spawning us when cached.
# Concurrent callers (vitest runs test files in parallel) serialise on a lock; the result appears
# by rename, so a reader never sees half a build.
set -euo pipefail

script="$(readlink -f "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$script")/../.." && pwd)"
cache="${BULWARK_GUEST_CACHE:-$root/.cache/guest}"
key="$(sha256sum "$script" | cut -c1-16)"
out="$cache/$key"

log() { echo "guest-build: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$cache"
if [[ -f "$out/manifest.json" ]]; then echo "$out"; exit 0; fi

exec 9>"$cache/build.lock"
flock 9
# Someone else may have finished while we waited for the lock.
if [[ -f "$out/manifest.json" ]]; then echo "$out"; exit 0; fi

for tool in apt-get apt-cache dpkg-deb cpio gzip ldd flock; do
  command -v "$tool" >/dev/null || die "'$tool' is missing (run: bash scripts/test-setup.sh)"
done

started=$(date +%s%N)
work="$(mktemp -d "$cache/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

# `apt-get download` needs package lists; a fresh machine or container may have none.
apt_update() {
  log "refreshing apt package lists"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq >&2; else sudo -n apt-get update -qq >&2; fi ||
    die "apt-get update failed (needs root and the Debian archive)"
}
resolve_kernel() {
  # The meta package names today's ABI; pinning a version would break once Debian drops it.
  apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kpkg="$(resolve_kernel || true)"
if [[ -z "$kpkg" ]]; then apt_update; kpkg="$(resolve_kernel || true)"; fi
[[ -n "$kpkg" ]] || die "cannot resolve the package behind linux-image-cloud-amd64"

packages=("$kpkg" busybox-static qemu-guest-agent)
download() { apt-get download -q -o APT::Sandbox::User=root "${packages[@]}" >/dev/null 2>dl.err; }
if ! download; then apt_update; download || { cat dl.err >&2; die "apt-get download ${packages[*]} failed"; }; fi

mkdir -p pkg
for deb in ./*.deb; do dpkg-deb -x "$deb" pkg; done
kver="${kpkg#linux-image-}"
moddir="pkg/lib/modules/$kver/kernel"
[[ -f "pkg/boot/vmlinuz-$kver" ]] || die "kernel image missing from $kpkg"

# --- initramfs tree ---------------------------------------------------------------------------
ir="$work/initramfs"
mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,data,lib/modules,etc}
mkdir -p "$ir/var" && ln -s ../run "$ir/var/run"
cp pkg/bin/busybox "$ir/bin/busybox"
for applet in $("$ir/bin/busybox" --list); do
  [[ -e "$ir/bin/$applet" ]] || ln -s busybox "$ir/bin/$applet"
done

cp pkg/usr/sbin/qemu-ga "$ir/usr/sbin/qemu-ga"
# Libraries come from the host: same Debian release as the package, so ABI-compatible.
if ldd pkg/usr/sbin/qemu-ga | grep -q 'not found'; then
  die "qemu-ga needs libraries the host lacks: $(ldd pkg/usr/sbin/qemu-ga | grep 'not found' | tr -s ' \t' ' ') (apt-get install qemu-guest-agent pulls them in)"
fi
for lib in $(ldd pkg/usr/sbin/qemu-ga | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }'); do
  mkdir -p "$ir$(dirname "$lib")"
  cp -L "$lib" "$ir$lib"
done

# insmod does no dependency resolution, hence this order (virtio.ko needs virtio_ring.ko first).
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console)
for m in "${modules[@]}"; do
  f="$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" | head -1)"
  [[ -n "$f" ]] || die "module $m not found in $kpkg"
  case "$f" in
    *.xz) xz -dc "$f" >"$ir/lib/modules/$m.ko" ;;
    *) cp "$f" "$ir/lib/modules/$m.ko" ;;
  esac
done
printf '%s\n' "${modules[@]}" >"$ir/lib/modules/order"

cat >"$ir/init" <<'INIT'
#!/bin/sh
# PID 1 of the Bulwark test guest. Knobs on the kernel command line:
#   bulwark.writer=off               no writer
#   bulwark.writer_kib_per_s=N       writer rate (default 64)
#   bulwark.writer_sync=off          no sync after each batch (default: sync, so I/O reaches the disk)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
say() { echo "bulwark-guest: $*" >/dev/console; }

while read -r m; do insmod "/lib/modules/$m.ko" || say "insmod $m failed"; done </lib/modules/order

writer=on rate=64 sync=on
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    bulwark.writer=*) writer="${arg#*=}" ;;
    bulwark.writer_kib_per_s=*) rate="${arg#*=}" ;;
    bulwark.writer_sync=*) sync="${arg#*=}" ;;
  esac
done

# Block devices appear as the driver probes; a guest booted without disks just waits a moment.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 10 ]; do sleep 0.1; i=$((i + 1)); done
data=no
if [ -b /dev/vda ]; then
  if mount -t ext4 /dev/vda /data; then data=yes; else say "mounting /dev/vda on /data failed"; fi
fi

# No udev here: make the links qemu-ga expects. Port names arrive from the host asynchronously.
mkdir -p /dev/virtio-ports
i=0
while [ $i -lt 50 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] || continue
    n="$(cat "$p/name")"
    [ -n "$n" ] && [ ! -e "/dev/virtio-ports/$n" ] && ln -s "../${p##*/}" "/dev/virtio-ports/$n"
  done
  [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && break
  sleep 0.1
  i=$((i + 1))
done

if [ "$data" = yes ] && [ "$writer" != off ]; then
  # A previous run that ended mid-record (a crash-consistent copy) must not glue its partial line
  # onto this run's first record.
  if [ -s /data/log.txt ] && [ "$(tail -c 1 /data/log.txt | od -An -tx1 | tr -d ' ')" != 0a ]; then
    echo >>/data/log.txt
  fi
  setsid awk -v rate="$rate" -v dosync="$sync" -v out=/data/log.txt -f /usr/bin/bulwark-writer </dev/null >/dev/console 2>&1 &
  say "writer started at $rate KiB/s (sync=$sync)"
fi
say "data=$data; starting qemu-ga"

# PID 1 must never exit (the kernel would panic); a crashed agent is restarted so tests see a
# timeout rather than a dead guest.
while true; do
  qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -F/usr/bin/bulwark-fsfreeze-hook -t /run
  say "qemu-ga exited ($?), restarting"
  sleep 1
done
INIT

cat >"$ir/usr/bin/bulwark-fsfreeze-hook" <<'HOOK'
#!/bin/sh
# qemu-ga runs this with "freeze" before freezing and "thaw" after thawing. The line written at
# freeze is flushed by the freeze itself, so a copy taken at the freeze point holds "freeze" and
# never the "thaw" that follows. Format: <action> <epoch seconds> <uptime seconds>
read -r up _ </proc/uptime
echo "$1 $(date +%s) $up" >>/data/hooks.log
exit 0
HOOK

cat >"$ir/usr/bin/bulwark-writer" <<'WRITER'
# Appends records `<seq> <run>:<payload> <checksum>` to `out`, in batches ~10 times a second, paced
# by /proc/uptime so the rate holds whatever the loop's own cost under emulation.
# checksum = 8 hex digits of h = (h*31 + byte) mod (2^31-1) over "<seq> <run>:<payload>", kept
# below 2^31 because busybox awk prints %x through a 32-bit int. A run starts with a line
# `#run <run> <epoch>` (the guest may boot again on a restored disk and append).
function uptime(   u) { getline u < "/proc/uptime"; close("/proc/uptime"); split(u, f, " "); return f[1] + 0 }
BEGIN {
  for (i = 32; i < 127; i++) ord[sprintf("%c", i)] = i
  alpha = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  P = 2147483647
  srand()
  run = sprintf("%08x", int(rand() * 2147483647))
  bps = rate * 1024
  cmd = "date +%s"; cmd | getline now; close(cmd)
  printf "#run %s %s\n", run, now >> out
  fflush(out)
  seq = 0
  written = 0
  t0 = uptime()
  while (1) {
    want = (uptime() - t0) * bps
    # After a long pause (frozen filesystem, stopped vCPUs) catch up by at most a second's worth.
    if (want - written > bps) written = want - bps
    while (written < want) {
      seq++
      p = ""
      for (j = 0; j < 56; j++) p = p substr(alpha, int(rand() * 62) + 1, 1)
      line = seq " " run ":" p
      h = 0
      n = length(line)
      for (j = 1; j <= n; j++) h = (h * 31 + ord[substr(line, j, 1)]) % P
      printf "%s %08x\n", line, h >> out
      written += n + 10
    }
    fflush(out)
    if (dosync != "off") system("sync")
    system("sleep 0.1")
  }
}
WRITER
# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P +0 <message>`. The writer keeps /data busy, so
# instead of unmounting, /data is frozen: ext4 then flushes its journal and marks it clean, so a copy
# taken now needs no recovery, and the writer stops between records. In the background, because the
# agent waits for this command to exit.
cat >"$ir/sbin/shutdown" <<'SHUTDOWN'
#!/bin/sh
(
  sleep 0.2
  sync
  fsfreeze --freeze /data
  echo "bulwark-guest: powering off" >/dev/console
  poweroff -f
) </dev/null >/dev/null 2>&1 &
exit 0
SHUTDOWN
chmod +x "$ir/init" "$ir/usr/bin/bulwark-fsfreeze-hook" "$ir/sbin/shutdown"

mkdir -p "$work/out"
(cd "$ir" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -6 >"$work/out/initrd.gz"
cp "pkg/boot/vmlinuz-$kver" "$work/out/vmlinuz"

# A few MiB of real files (binary modules, text, nested directories, a symlink) for data disks:
# taken from the downloaded packages so every machine gets the same tree for the same kernel.
s="$work/out/sample"
mkdir -p "$s/modules" "$s/doc"
cp -r "$moddir/drivers/block" "$moddir/crypto" "$moddir/lib" "$s/modules/"
cp "pkg/boot/config-$kver" "$s/kernel-config.txt"
cp -r pkg/usr/share/doc/. "$s/doc/"
ln -s kernel-config.txt "$s/config-link"

ended=$(date +%s%N)
kdeb="$(ls ./linux-image-*.deb)"
cat >"$work/out/manifest.json" <<JSON
{
  "key": "$key",
  "kernelPackage": "$kpkg",
  "kernelVersion": "$(dpkg-deb -f "$kdeb" Version)",
  "busyboxVersion": "$(dpkg-deb -f ./busybox-static_*.deb Version)",
  "qemuGaVersion": "$(dpkg-deb -f ./qemu-guest-agent_*.deb Version)",
  "buildMs": $(((ended - started) / 1000000)),
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
JSON

rm -rf "$out"
mv "$work/out" "$out"
# Builds for older versions of this script are dead weight (the kernel alone is ~8 MiB).
for old in "$cache"/*/; do
  old="${old%/}"
  [[ "$old" == "$out" ]] || [[ ! -f "$old/manifest.json" ]] || rm -rf "$old"
done
log "built $out in $(((ended - started) / 1000000)) ms ($kpkg)"
echo "$out"
