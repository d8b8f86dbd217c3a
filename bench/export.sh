#!/usr/bin/env bash
# Export (restore) vs `casync extract` of the same version, interleaved in one run (issue 16):
# both stores are filled once (casync make base + v2; deskfuse image create + publish), then REPS
# rounds each run `casync extract` and `deskfuse image export` (the order alternates per round), every
# output checked by sha256 against v2.img. casync never fsyncs its output: a third tool in every
# round is `casync extract` + `sync FILE`, as durable as the export (fsynced before it is named).
# Prints a markdown table of the medians (wall, client CPU, server CPU) and every round. Note: the
# second export of a batch makes the server build its pack file (src/chunk/pack-cache.ts), so the
# export's server CPU and disk writes differ from round to round.
#
#   bash bench/export.sh [DATA] [OUT.md]     (DATA: a folder with base.img, v2.img and SHA256SUMS,
#                                             default bench/data/$SIZE; OUT.md: where the table goes too)
# env: SIZE=2G REPS=3 PORT=18483 CLI=<repo>/dist/cli/main.js KEEP_TMP=0
#      BEFORE_CLI=<another build's dist/cli/main.js>: its `image export` runs in every round too (a
#      change's before and after in the same run), against the same server
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATH="$REPO/node_modules/.bin:$PATH"   # node = Node 24 from node_modules, as under npm run
SIZE=${SIZE:-2G}
DATA=${1:-$REPO/bench/data/$SIZE}
OUT=${2:-}
REPS=${REPS:-3}
PORT=${PORT:-18483}
CLI=${CLI:-$REPO/dist/cli/main.js}
KEEP_TMP=${KEEP_TMP:-0}

die() { echo "bench/export: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
[ -f "$CLI" ] || die "$CLI is missing: npm run build first"
[ -f "$DATA/base.img" ] && [ -f "$DATA/v2.img" ] && [ -s "$DATA/SHA256SUMS" ] || die "no workload in $DATA (npm run bench makes it)"
for c in casync /usr/bin/time sha256sum curl python3; do command -v "$c" >/dev/null || die "$c is missing (bash scripts/setup-deps.sh bench)"; done
SHA_V2=$(awk '$2 == "v2.img" || $2 == "*v2.img" {print $1}' "$DATA/SHA256SUMS")

mkdir -p "$REPO/bench/data"
T=$(mktemp -d "$REPO/bench/data/tmp-export-XXXXXX")
SPID=
cleanup() {
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
    kill "$SPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ "$KEEP_TMP" = 1 ]; then echo "bench/export: kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cp -a "$(dirname "$(dirname "$CLI")")" "$T/dist" # a rebuild during the run changes nothing
ln -s "$REPO/ipxe" "$T/ipxe"
ln -s "$REPO/server" "$T/server" # the console's assets, beside dist/ too
CLI=$T/dist/cli/main.js
if [ -n "${BEFORE_CLI:-}" ]; then
  cp -a "$(dirname "$(dirname "$BEFORE_CLI")")" "$T/dist-before"
  BEFORE_CLI=$T/dist-before/cli/main.js
fi

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'; }
# timed NAME CMD... -> W (wall) C (client user+sys) SC (server CPU) in seconds
timed() {
  local name=$1; shift
  local t0=0
  [ -z "$SPID" ] || t0=$(cpu_ticks "$SPID")
  /usr/bin/time -f '%e %U %S' -o "$T/$name.time" "$@" > "$T/$name.out" 2> "$T/$name.err" ||
    { tail -n 20 "$T/$name.err" >&2; die "step $name failed: $*"; }
  local u s
  read -r W u s < <(tail -n 1 "$T/$name.time")
  C=$(awk -v a="$u" -v b="$s" 'BEGIN {printf "%.2f", a + b}')
  SC=$(awk -v a="$t0" -v b="$(cpu_ticks "$SPID")" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
}
check() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA_V2" ] || die "$1 does not match v2.img"; }

log "deskfuse server on 127.0.0.1:$PORT"
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && die "something already answers on 127.0.0.1:$PORT (set PORT)"
mkdir -p "$T/df-data"
node "$CLI" server --data "$T/df-data" --listen "127.0.0.1:$PORT" --nbd-listen off > "$T/server.log" 2>&1 &
SPID=$!
for _ in $(seq 300); do
  kill -0 "$SPID" 2>/dev/null || { tail -n 30 "$T/server.log" >&2; SPID=; die "server exited during start"; }
  [ -s "$T/df-data/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  sleep 0.1
done
export DESKFUSE_SERVER="http://127.0.0.1:$PORT" DESKFUSE_TOKEN
DESKFUSE_TOKEN=$(cat "$T/df-data/admin.token")

log "stores: casync make base + v2, deskfuse image create + publish"
timed cs-base casync make --store="$T/cs-store" "$T/base.caibx" "$DATA/base.img"
timed cs-v2 casync make --store="$T/cs-store" "$T/v2.caibx" "$DATA/v2.img"
timed df-base node "$CLI" image create bench --from "$DATA/base.img" --json
timed df-v2 node "$CLI" image publish bench --from "$DATA/v2.img" --json

ROUNDS=$T/rounds.tsv
: > "$ROUNDS"
run_casync() {
  timed "cs-extract-$1" casync extract --store="$T/cs-store" "$T/v2.caibx" "$T/cs-out.img"
  SC=- # no server
  check "$T/cs-out.img"; rm -f "$T/cs-out.img"
  printf 'casync\t%s\t%s\t%s\t%s\n' "$1" "$W" "$C" "$SC" >> "$ROUNDS"
  log "round $1 casync extract: wall ${W}s CPU ${C}s"
}
# casync never syncs its output (it calls no fsync): this is its extract plus `sync FILE` (fsync), the
# durability deskfuse's export gives before it names the file.
run_casync_sync() {
  timed "cs-extract-sync-$1" sh -c 'casync extract --store="$1" "$2" "$3" && sync "$3"' sh "$T/cs-store" "$T/v2.caibx" "$T/cs-out.img"
  SC=-
  check "$T/cs-out.img"; rm -f "$T/cs-out.img"
  printf 'casync+sync\t%s\t%s\t%s\t%s\n' "$1" "$W" "$C" "$SC" >> "$ROUNDS"
  log "round $1 casync extract + sync: wall ${W}s CPU ${C}s"
}
run_deskfuse() {
  timed "df-export-$1" node "$CLI" image export bench@main --to "$T/df-out.img"
  check "$T/df-out.img"; rm -f "$T/df-out.img"
  printf 'deskfuse\t%s\t%s\t%s\t%s\n' "$1" "$W" "$C" "$SC" >> "$ROUNDS"
  log "round $1 deskfuse export: wall ${W}s client CPU ${C}s server CPU ${SC}s"
}
run_before() {
  timed "df-before-$1" node "$BEFORE_CLI" image export bench@main --to "$T/df-out.img"
  check "$T/df-out.img"; rm -f "$T/df-out.img"
  printf 'before\t%s\t%s\t%s\t%s\n' "$1" "$W" "$C" "$SC" >> "$ROUNDS"
  log "round $1 deskfuse export (BEFORE_CLI): wall ${W}s client CPU ${C}s server CPU ${SC}s"
}
tools=(run_casync run_deskfuse run_casync_sync)
[ -z "${BEFORE_CLI:-}" ] || tools+=(run_before)
for r in $(seq "$REPS"); do
  n=${#tools[@]}
  for k in $(seq 0 $((n - 1))); do "${tools[$(( (k + r - 1) % n ))]}" "$r"; done # the order rotates per round
done

python3 - "$ROUNDS" "$SIZE" "$REPS" <<'PY' | { if [ -n "$OUT" ]; then tee "$OUT"; else cat; fi; }
import sys, statistics, datetime
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
size, reps = sys.argv[2], sys.argv[3]
def med(tool, k):
    v = [float(r[k]) for r in rows if r[0] == tool and r[k] != "-"]
    return statistics.median(v) if v else None
cw, cc = med("casync", 2), med("casync", 3)
dw, dc, ds = med("deskfuse", 2), med("deskfuse", 3), med("deskfuse", 4)
print(f"Export v2 (restore) vs casync extract, SIZE={size}, median of {reps} interleaved rounds, "
      f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} (`bash bench/export.sh`)")
print()
print("| tool | wall s | client CPU s | server CPU s | CPU total s |")
print("|---|---|---|---|---|")
print(f"| casync extract | {cw:.2f} | {cc:.2f} | | {cc:.2f} |")
print(f"| deskfuse image export | {dw:.2f} | {dc:.2f} | {ds:.2f} | {dc + ds:.2f} |")
print(f"| ratio deskfuse / casync | {dw / cw:.2f} | | | {(dc + ds) / cc:.2f} |")
sw, scc = med("casync+sync", 2), med("casync+sync", 3)
if sw is not None:
    print(f"| casync extract + sync FILE (durable, as the export) | {sw:.2f} | {scc:.2f} | | {scc:.2f} |")
    print(f"| ratio deskfuse / (casync extract + sync) | {dw / sw:.2f} | | | {(dc + ds) / scc:.2f} |")
bw = med("before", 2)
if bw is not None:
    bc, bs = med("before", 3), med("before", 4)
    print(f"| deskfuse image export, BEFORE_CLI | {bw:.2f} | {bc:.2f} | {bs:.2f} | {bc + bs:.2f} |")
    print(f"| ratio BEFORE_CLI / casync | {bw / cw:.2f} | | | {(bc + bs) / cc:.2f} |")
print()
print("rounds: " + "; ".join(f"{r[0]} #{r[1]} {r[2]} s wall, {r[3]} s CPU" + ("" if r[4] == "-" else f" + {r[4]} s server") for r in rows))
PY
