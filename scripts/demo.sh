#!/usr/bin/env bash
# Bulwark's main job on an embedded default, in a repository it creates (.cache/demo/repo):
#
#   npm run demo                  live backup of a running VM: builds the small test guest from Debian
#                                 packages if needed, boots it (software emulation), backs it up
#                                 while a program in it writes, twice (full, then incremental), and
#                                 restores the disk and checks it
#   npm run demo -- files [DIR]   back up a folder (default /etc), list it, restore it, verify it
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=system-node.sh
. scripts/system-node.sh
[[ -f dist/cli/main.js ]] || npm run build --silent

demo=${BULWARK_DEMO_DIR:-$PWD/.cache/demo}
export BULWARK_REPOSITORY=$demo/repo
export BULWARK_PASSWORD=${BULWARK_PASSWORD:-demo-password-change-me}
bulwark() { ./bin/bulwark.js "$@"; }  # as the installed command runs: its first line has Node's flags
# shellcheck source=../test/guest/qemu.sh
. test/guest/qemu.sh
say() { printf '\n== %s\n' "$*"; }

mkdir -p "$demo"
if [[ ! -f $BULWARK_REPOSITORY/config ]]; then
  say "bulwark init   ($BULWARK_REPOSITORY, password from BULWARK_PASSWORD)"
  bulwark init
fi

files_demo() {
  local src=${1:-/etc}
  say "bulwark backup files $src"
  # Unreadable items (exit 3) are listed in the summary; the demo goes on.
  bulwark backup files "$src" --tag demo || [[ $? -eq 3 ]]
  say "bulwark snapshots"
  bulwark snapshots
  rm -rf "$demo/restore"
  say "bulwark restore latest --target $demo/restore --verify"
  bulwark restore latest --target "$demo/restore" --verify || [[ $? -eq 3 ]]
  echo
  echo "Restored into $demo/restore$src. Try: ./bin/bulwark.js --repo $BULWARK_REPOSITORY ls latest"
}

vm_demo() {
  command -v qemu-system-x86_64 >/dev/null && command -v mkfs.ext4 >/dev/null || bash scripts/test-setup.sh
  local vm=$demo/vm guest qemu_pid=
  mkdir -p "$vm"
  say "building the demo guest (Linux kernel, busybox, qemu-guest-agent from Debian packages; cached)"
  guest=$(bash test/guest/build.sh)
  # A data disk with real files on it, mounted on /data in the guest; a program there appends
  # checksummed records to /data/log.txt all the time, and the agent's fsfreeze hook logs each freeze.
  rm -f "$vm/data.raw" "$vm/data.qcow2"
  mkfs.ext4 -q -F -L data -d "$guest/sample" "$vm/data.raw" 256M >/dev/null
  qemu-img convert -f raw -O qcow2 "$vm/data.raw" "$vm/data.qcow2" && rm -f "$vm/data.raw"
  rm -f "$vm"/*.sock
  say "booting VM demo01 (TCG) with a QMP socket and a guest agent socket"
  guest_qemu_start "$vm" "$vm/data.qcow2" "$guest/vmlinuz" "$guest/initrd.gz" 'console=ttyS0 quiet panic=-1 bulwark.writer_kib_per_s=256' demo01 256
  qemu_pid=$GUEST_QEMU_PID
  trap 'kill '"$qemu_pid"' 2>/dev/null; wait '"$qemu_pid"' 2>/dev/null || true' EXIT
  local connect="qmp:$vm/qmp.sock,qga=$vm/qga.sock,name=demo01,hooks=/usr/bin/bulwark-fsfreeze-hook"
  local i
  for ((i = 0; i < 120; i++)); do
    [[ -S $vm/qmp.sock ]] && bulwark vm list --connect "$connect" --json 2>/dev/null | grep -q '"state": *"responding"' && break
    sleep 0.5
  done
  ((i < 120)) || { echo "the demo guest did not start; see $vm/console.log" >&2; exit 1; }
  say "bulwark vm list"
  bulwark vm list --connect "$connect"
  say "bulwark doctor demo01 --scratch-dir $vm   (pre-flight checks)"
  bulwark doctor demo01 --connect "$connect" --scratch-dir "$vm" || true
  say "bulwark backup vm demo01   (live: freeze, point in time, thaw, then read while the VM runs)"
  bulwark backup vm demo01 --connect "$connect" --scratch-dir "$vm" --scratch-min 0 --tag demo
  sleep 5
  say "bulwark backup vm demo01   (again, 5 s later: incremental, reads only what the guest wrote)"
  bulwark backup vm demo01 --connect "$connect" --scratch-dir "$vm" --scratch-min 0 --tag demo
  say "bulwark snapshots --source vm:demo01"
  bulwark snapshots --source vm:demo01
  rm -rf "$vm/restore"
  say "bulwark restore vm latest --source vm:demo01 --target $vm/restore"
  bulwark restore vm latest --source vm:demo01 --target "$vm/restore"
  say "e2fsck -fn on the restored disk (a consistent point: the file system is clean)"
  e2fsck -fn "$vm/restore/vda.raw"
  echo
  echo "The VM ran on throughout. Restored disk: $vm/restore/vda.raw"
}

case ${1:-vm} in
  vm) vm_demo ;;
  files) shift; files_demo "$@" ;;
  *) files_demo "$1" ;; # a folder, as before: npm run demo -- /srv
esac
