#!/usr/bin/env bash
# Debian's signed Secure Boot network chain, for `netboot.secureBoot` (README "Secure Boot"):
#   shim-signed            /usr/lib/shim/shimx64.efi.signed                        (signed by Microsoft's UEFI CA 2011)
#   grub-efi-amd64-signed  /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed   (signed by Debian's Secure Boot CA)
# Downloaded with `apt-get download` and unpacked into the cache, never installed (their postinst
# scripts run grub-install on this host). Prints a JSON object for netboot.secureBoot: {"shim": PATH, "grub": PATH}.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../initramfs/buildlib.sh"   # deb_trees, memo
mapfile -t T < <(memo secureboot deb_trees shim-signed grub-efi-amd64-signed)
SHIM=${T[0]}/usr/lib/shim/shimx64.efi.signed
GRUB=${T[1]}/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed
[ -s "$SHIM" ] || die "no shimx64.efi.signed in ${T[0]}"
[ -s "$GRUB" ] || die "no grubnetx64.efi.signed in ${T[1]}"
printf '{"shim":"%s","grub":"%s"}\n' "$SHIM" "$GRUB"
