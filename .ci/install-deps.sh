#!/usr/bin/env bash
# Debian packages the tests need: pciutils (lspci, compared against `userpci list`),
# linux-libc-dev (linux/vfio.h for the ABI check), and what the QEMU guest harness needs.
set -euo pipefail
packages=(pciutils linux-libc-dev build-essential python3)
if [ -f .ci/install-guest-deps.sh ]; then
  bash .ci/install-guest-deps.sh
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
