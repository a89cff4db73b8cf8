# Boots the test guest from shell scripts (scripts/demo.sh, bench/vm.sh) with the command line
# test/guest/guest.ts startGuest uses: TCG, q35, a QMP socket, the agent's socket, one qcow2 data disk
# as blockdev disk0 (mounted on /data in the guest). Sourced, not run.
#
#   guest_qemu_start DIR DISK.qcow2 KERNEL INITRD CMDLINE NAME MEM_MIB
#
# Sockets: DIR/qmp.sock, DIR/qga.sock; logs: DIR/console.log, DIR/qemu.log. Sets GUEST_QEMU_PID.
# QEMU dies with the calling shell (pdeathsig).
guest_qemu_start() {
  local dir=$1 disk=$2 kernel=$3 initrd=$4 cmdline=$5 name=$6 mem=$7
  rm -f "$dir/qmp.sock" "$dir/qga.sock"
  setpriv --pdeathsig KILL qemu-system-x86_64 \
    -name "guest=$name" -accel tcg -cpu max -machine q35 -m "$mem" -smp 1 \
    -display none -nodefaults -no-user-config -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" \
    -chardev "file,id=console,path=$dir/console.log" -serial chardev:console \
    -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
    -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=qga0,path=$dir/qga.sock,server=on,wait=off" \
    -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0 \
    -blockdev "{\"driver\":\"file\",\"filename\":\"$disk\",\"node-name\":\"file0\"}" \
    -blockdev '{"driver":"qcow2","file":"file0","node-name":"disk0"}' \
    -device '{"driver":"virtio-blk-pci","drive":"disk0","id":"vd0","serial":"disk0"}' \
    </dev/null >"$dir/qemu.log" 2>&1 &
  GUEST_QEMU_PID=$!
}
