#!/usr/bin/env bash
# Installs what the offline image build (images/build.py) and the image tests need, from
# Debian's packages, when missing: debootstrap (the base file systems), umoci (OCI image
# assembly), runc (the tests run the images' programs) and binutils (strip).
set -euo pipefail

missing=()
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v umoci >/dev/null 2>&1 || missing+=(umoci)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v strip >/dev/null 2>&1 || missing+=(binutils)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "images/install-tools.sh: ${missing[*]} missing; run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "images/install-tools.sh: installing ${missing[*]}" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
