#!/usr/bin/env bash
# Installs the Debian packages deskfuse's tests (and benchmarks, with `bench`) need. Idempotent:
# apt runs only when a package is missing. Needs root (or sudo).
set -euo pipefail
pkgs=(qemu-utils)
[ "${1:-}" = bench ] && pkgs+=(casync e2fsprogs faketime zstd time python3 curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deskfuse: installing Debian packages: ${missing[*]}" >&2
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
