#!/usr/bin/env bash
# Installs the Debian packages deskfuse needs. Idempotent: apt runs only when a package is missing.
# Needs root (or sudo). Groups:
#   runtime    what `npm start` uses (qemu-img; Debian's iPXE binaries for the TFTP root; openssl). Never fails the
#              start: without root it prints the command to run instead.
#   initramfs  what `npm run build:initramfs` uses (busybox, cpio, zstd, binutils)
#   test       (default) everything the tests use: the above, QEMU endpoints, real DHCP/TFTP clients
#   bench      test + the peers the benchmarks compare against (and fio for bench/nbd.sh)
#   engines    the scale-out engines the tests start themselves: single-node Ceph RADOS Gateway (S3),
#              scripts/engines/ceph-rgw.sh (ceph-mgr is not needed for S3); PostgreSQL 15 (metadata),
#              scripts/engines/postgres.sh (Debian's package; its default cluster is not used)
set -euo pipefail
group=${1:-test}
runtime=(qemu-utils ipxe openssl)   # openssl: the private CA of --tls on and NBD over TLS (src/tls/pki.ts)
initramfs=(busybox-static cpio zstd binutils)
engines=(ceph-mon ceph-osd radosgw ceph-common uuid-runtime postgresql)
test=(
  "${runtime[@]}" "${initramfs[@]}" "${engines[@]}"
  qemu-system-x86 ipxe-qemu ovmf                # QEMU endpoints in the netboot tests and `npm run demo`
  swtpm                                         # vdi start --tpm: a TPM 2.0 for the VM (test/e2e/vdi-vm.test.ts boots with one)
  libvirt-clients libxml2-utils                 # virt-xml-validate (xmllint) of every libvirt domain vdi start prints (src/vdi/launch.test.ts)
  mtools syslinux syslinux-common e2fsprogs     # the test OS image
  mmdebstrap                                    # the real-OS fixture: Debian 12 with systemd (test/fixtures/realos)
  sbsigntool                                    # sbverify: the Secure Boot e2e checks who signed shim, GRUB and the kernels
  isc-dhcp-client atftp tftp-hpa iptables iproute2 curl   # real DHCP/TFTP clients, packet loss
  gcc libc6-dev                                 # the small native addon (SO_BINDTODEVICE, raw ICMPv6, SEEK_DATA)
  libnbd-bin nbdkit                             # real NBD clients (nbdinfo, nbdcopy) and the peer server
  gdisk fdisk                                   # GPT repair tools (sgdisk -e, sfdisk --relocate) against the disk layout
  thin-provisioning-tools                       # era_restore/era_dump: real dm-era metadata for the era reader (src/agent/era/metadata.test.ts)
  systemd                                       # systemd-analyze verify of deploy/systemd/deskfuse.service
  varnish nginx-light                           # the site caches (deploy/varnish, deploy/nginx): test/integration/{varnish,nginx-cache}.test.ts
  openssl                                       # an independent Ed25519 verifier of signed versions (src/sign/sign.test.ts)
  chromium fonts-dejavu-core                    # the web console's browser tests (playwright-core drives Debian's chromium): test/integration/console-browser.test.ts
  libnss3-tools                                 # certutil: the private CA into a test browser's NSS store (test/integration/tls-console-browser.test.ts)
)
case $group in
  runtime) pkgs=("${runtime[@]}") ;;
  initramfs) pkgs=("${initramfs[@]}") ;;
  engines) pkgs=("${engines[@]}") ;;
  test) pkgs=("${test[@]}") ;;
  bench) pkgs=("${test[@]}" casync faketime time python3 tftpd-hpa fio) ;;   # fio: its nbd engine (bench/nbd.sh)
  *) echo "usage: $0 [runtime|initramfs|engines|test|bench]" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
    echo "deskfuse: missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
    [ "$group" = runtime ] && exit 0
    exit 1
  fi
  SUDO=sudo
fi
echo "deskfuse: installing Debian packages: ${missing[*]}" >&2
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
