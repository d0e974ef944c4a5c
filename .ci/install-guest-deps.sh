#!/usr/bin/env bash
# Debian 12 packages the QEMU guest harness (scripts/guest) needs on the host:
#   qemu-system-x86  the emulator (its Depends bring seabios and ipxe-qemu option ROMs)
#   busybox-static   the guest's userland, and depmod for the guest's module tree
#   e2fsprogs        mkfs.ext4/e2fsck copied into the guest for filesystem tests
#   cpio             handy for inspecting the initramfs (the harness writes it itself)
#   nbd-client       copied into the guest: the NBD test attaches our export to /dev/nbd0
#   iproute2         its ip is copied into the guest: the TAP test needs network namespaces
# The kernel is not installed: the harness `apt-get download`s it, so the apt lists must be
# present; they are refreshed when missing. Idempotent, and quick when all is in place.
set -euo pipefail
packages=(qemu-system-x86 busybox-static e2fsprogs cpio nbd-client iproute2)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Without lists, neither apt-get install nor the kernel lookup (apt-cache depends) works.
if [ ${#missing[@]} -gt 0 ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  $sudo apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
