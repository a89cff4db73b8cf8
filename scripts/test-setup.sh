#!/usr/bin/env bash
# Installs the system packages the test suite needs, so `npm test` works on a fresh Debian 12 machine.
# Idempotent and quiet when everything is already there.
set -euo pipefail

# qemu: real guests (TCG) and images made by qemu-img; cpio/busybox/xz: the test guest's initramfs;
# e2fsprogs/dosfstools: mkfs.* and e2fsck; attr: getfattr/setfattr; libnbd-bin: an independent NBD peer;
# time: GNU time, the outside witness of peak memory (index scale test); libvirt-daemon-system (and
# virsh, an outside witness): libvirt domains, started by the tests themselves (test/helpers/libvirtd.ts);
# xfsprogs/mtools/ntfs-3g/lvm2/gdisk/fdisk: file systems, volumes and partition tables made by their own
# tools for the file system readers (filesystems/), populated without mounting (protofile, mcopy, ntfscp).
# openssh-server, vsftpd, openssl, swift-* + memcached (+ keystonemiddleware, which Swift's S3 API imports):
# the real servers the off-site backends are tested against (test/helpers/sshd.ts, ftpd.ts, s3server.ts);
# rclone and curl: real WebDAV and FTP(S) clients for serve-files; chromium: the real browser the web UI's
# tests drive (through playwright-core, never a downloaded browser). g++/make/python3: node-gyp builds the
# native helper (native/), which the tests require (npm ci builds it; npm run build retries it).
packages=(
  qemu-system-x86 qemu-utils
  cpio busybox-static xz-utils
  e2fsprogs dosfstools
  attr
  libnbd-bin
  time
  libvirt-daemon-system libvirt-clients
  xfsprogs mtools ntfs-3g lvm2 gdisk fdisk
  openssh-server vsftpd openssl rclone curl
  chromium
  g++ make python3
  swift swift-proxy swift-account swift-container swift-object memcached python3-keystonemiddleware
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "test-setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# apt-get download (used by the test guest builder) needs package lists.
if [[ ! -d /var/lib/apt/lists ]] || [[ -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -v lock | head -1)" ]]; then
  apt-get update -qq
fi
