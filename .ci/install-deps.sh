#!/usr/bin/env bash
# Debian packages the tests need: pciutils (lspci, compared against `userpci list`),
# linux-libc-dev (linux/vfio.h for the ABI check), the 6.12 kernel headers' common part (only
# for linux/ublk_cmd.h, which the 6.1 linux-libc-dev lacks: the ublk ABI check), and what the
# QEMU guest harness needs.
set -euo pipefail
packages=(pciutils linux-libc-dev build-essential python3)
if [ -f .ci/install-guest-deps.sh ]; then
  bash .ci/install-guest-deps.sh
fi
# The newest linux-headers-6.12.*-common (architecture-independent, no dependencies): named
# through the meta package's dependency, as the guest harness names the 6.12 kernel image.
hdr="$(apt-cache depends linux-headers-6.12-amd64 2>/dev/null | sed -n 's/.*Depends: linux-headers-\(6\.12\.[^ ]*\)-amd64$/\1/p' | head -1)"
if [ -z "$hdr" ]; then
  apt-get update -q
  hdr="$(apt-cache depends linux-headers-6.12-amd64 | sed -n 's/.*Depends: linux-headers-\(6\.12\.[^ ]*\)-amd64$/\1/p' | head -1)"
fi
if [ -z "$hdr" ]; then echo "install-deps: cannot name the linux-headers-6.12 package" >&2; exit 1; fi
packages+=("linux-headers-$hdr-common")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
