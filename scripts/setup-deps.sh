#!/usr/bin/env bash
# Installs the Debian packages deskfuse needs. Idempotent: apt runs only when a package is missing.
# Needs root (or sudo). Groups: (none) = what the server and the tests use; `bench` adds the peers the
# benchmarks compare against.
set -euo pipefail
pkgs=(
  qemu-utils                                   # qemu-img: disk formats
  ipxe                                         # undionly.kpxe / snponly.efi / ipxe.efi served by TFTP
  qemu-system-x86 ipxe-qemu ovmf               # QEMU endpoints in the netboot tests and `npm run demo`
  busybox-static cpio zstd mtools syslinux syslinux-common e2fsprogs   # initramfs and the test OS image
  isc-dhcp-client atftp tftp-hpa iptables iproute2 curl           # real DHCP/TFTP clients, packet loss
  gcc libc6-dev                                # the small native addon (SO_BINDTODEVICE, SEEK_DATA)
)
[ "${1:-}" = bench ] && pkgs+=(casync faketime zstd time python3 tftpd-hpa)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deskfuse: installing Debian packages: ${missing[*]}" >&2
SUDO=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deskfuse: run as root (or install sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
# Packages such as tftpd-hpa would start a host service on install: forbid that for this run
# (policy-rc.d exit 101 = "action forbidden"), unless the site already has its own policy.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && own_policy=1
fi
trap '[ -n "$own_policy" ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
