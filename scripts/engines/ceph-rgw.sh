#!/usr/bin/env bash
# A single-node Ceph RADOS Gateway (the S3 engine of the scale-out setup) in one folder, for tests,
# benchmarks and trials: 1 mon, 1 BlueStore OSD on a sparse file, 1 radosgw; no mgr (S3 needs none),
# no systemd, no /etc/ceph, every socket on 127.0.0.1. Debian's packages: scripts/setup-deps.sh engines.
# Facts and pitfalls behind each step: ../../README.md "S3 chunk store (preview)".
#
#   ceph-rgw.sh start DIR     create the cluster in DIR (empty or absent) or start it again on its data;
#                             a running instance of DIR is reused. Prints the S3 settings (env lines).
#   ceph-rgw.sh stop DIR      stop the daemons this script recorded (by PID, radosgw → OSD → mon); keeps data
#   ceph-rgw.sh destroy DIR   stop, then delete DIR (only a folder this script made)
#   ceph-rgw.sh env DIR       print the S3 settings: S3_ENDPOINT S3_REGION S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
#   ceph-rgw.sh pids DIR      "name pid" of every recorded daemon
#   ceph-rgw.sh rss DIR       resident memory of the daemons (KiB total)
#
# Ports: free ones are picked at creation (RGW_PORT, MON_PORT, MON_V1_PORT override) and kept in DIR.
# Progress and timings go to stderr; stdout carries only the settings (it includes the secret key:
# the caller passes it on, never logs it).
set -euo pipefail

cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop|destroy|env|pids|rss DIR" >&2; exit 2; }
DIR=$(realpath -m "$DIR")
CONF=$DIR/ceph.conf
RUN=$DIR/run
LOG=$DIR/log
MARK=$DIR/.deskfuse-ceph-rgw
DAEMONS=(rgw.local osd.0 mon.a) # stop order: radosgw hangs on SIGTERM once the OSD is gone

T0=${EPOCHREALTIME/./}
say() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '[ceph-rgw %3d.%01ds] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$*" >&2; }
die() { say "error: $*"; exit 1; }

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
picked=
pick_port() { # VAR: unless set, a free TCP port in 20000-29999 not already chosen
  local -n var=$1
  [ -n "${var:-}" ] && return
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 10000 ))
    if port_free "$p" && [[ " $picked " != *" $p "* ]]; then picked="$picked $p"; var=$p; return; fi
  done
  die "no free port"
}

# The settings live in DIR/settings (ports, bucket, keys; mode 600): sourced by every command.
load() { [ -f "$DIR/settings" ] || die "$DIR holds no cluster (run: $0 start $DIR)"; . "$DIR/settings"; }

print_env() {
  load
  cat <<EOF
S3_ENDPOINT=http://127.0.0.1:$RGW_PORT
S3_REGION=$S3_REGION
S3_BUCKET=$S3_BUCKET
AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
EOF
}

write_conf() {
  cat >"$CONF" <<EOF
[global]
fsid = $1
mon host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.1/32
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $RUN
admin socket = $RUN/\$name.asok
pid file = $RUN/\$name.pid
log file = $LOG/\$name.log
mon cluster log file = $LOG/cluster.log
crash dir = $DIR/crash
exec dir = $RUN
# one OSD: one replica, a small PG budget (else pool creation fails at the first object)
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon data = $DIR/mon.\$id
keyring = $DIR/mon.\$id/keyring

[osd]
osd data = $DIR/osd.\$id
keyring = $DIR/osd.\$id/keyring
osd objectstore = bluestore
# block path unset on purpose: BlueStore creates osd.0/block as a sparse file of this size
# (pointing "bluestore block path" at a file inside the OSD folder fails with ELOOP)
bluestore block create = true
bluestore block size = $((10 * 1024 * 1024 * 1024))
bluestore fsck on mount = false
osd memory target = 1073741824
osd class update on start = false

[client]
keyring = $DIR/keyring

[client.rgw.local]
keyring = $DIR/rgw/keyring
rgw data = $DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw dns name = localhost
rgw enable usage log = false
EOF
}

ceph_() { ceph -c "$CONF" --connect-timeout 5 "$@"; }

start_bg() { # name cmd… ; the PID is recorded the moment the daemon starts, so stop works after a failed start
  local name=$1; shift
  "$@" </dev/null >>"$LOG/$name.stdout" 2>&1 9>&- & # 9: the start lock, not the daemon's to hold
  echo $! >"$RUN/$name.fgpid"
  say "started $name (pid $!)"
}

# The recorded PID of a daemon, if that process is still ours: its command line names this DIR's
# ceph.conf (a PID recorded long ago may since belong to someone else's process).
pid_of() {
  local f=$RUN/$1.fgpid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF" || return 1
  echo "$pid"
}
alive() { pid_of "$1" >/dev/null; }

wait_for() { # desc timeout_s cmd…
  local desc=$1 t=$2; shift 2
  local end=$(( $(date +%s) + t ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then
      for f in "$LOG"/*.stdout; do echo "== $f"; tail -n 5 "$f"; done >&2
      die "timeout waiting for $desc"
    fi
    sleep 0.3
  done
  say "ready: $desc"
}

# After a SIGKILL a lone OSD stays "up" in the osdmap (no peer reports it down): ask the daemon too.
osd_up() {
  alive osd.0 && ceph --admin-daemon "$RUN/osd.0.asok" status 2>/dev/null | grep -q '"state": "active"' &&
    ceph_ osd dump -f json 2>/dev/null | grep -q '"up":1'
}
rgw_up() { alive rgw.local && curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/"; }

# curl signs SigV4 itself; RGW wants x-amz-content-sha256 with it.
s3_curl() { # method path [curl args…]
  local m=$1 p=$2; shift 2
  curl -sS -f -X "$m" --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    "$@" "http://127.0.0.1:$RGW_PORT$p"
}
EMPTY_SHA=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

start_daemons() {
  mkdir -p "$RUN" "$LOG"
  alive mon.a || start_bg mon.a ceph-mon -c "$CONF" -i a -f
  wait_for "mon quorum" 60 ceph_ mon stat
  alive osd.0 || start_bg osd.0 ceph-osd -c "$CONF" -i 0 -f
  wait_for "osd.0 active" 120 osd_up
  alive rgw.local || start_bg rgw.local radosgw -c "$CONF" -n client.rgw.local -f
  wait_for "radosgw on 127.0.0.1:$RGW_PORT" 180 rgw_up
}

create() {
  mkdir -p "$DIR"/{osd.0,rgw,crash} "$RUN" "$LOG"
  touch "$MARK"
  local fsid; fsid=$(uuidgen)
  pick_port MON_PORT; pick_port MON_V1_PORT; pick_port RGW_PORT
  # the S3 user's keys: random per cluster (AWS-style lengths: 20 and 40 characters)
  local ak sk
  ak=$(od -An -N10 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F); sk=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077; cat >"$DIR/settings.tmp" <<EOF
MON_PORT=$MON_PORT
MON_V1_PORT=$MON_V1_PORT
RGW_PORT=$RGW_PORT
S3_REGION=us-east-1
S3_BUCKET=deskfuse
S3_ACCESS_KEY=$ak
S3_SECRET_KEY=$sk
EOF
  )
  . "$DIR/settings.tmp"
  write_conf "$fsid"

  # mon: ceph-mon --mkfs silently does nothing when mon.a/ is not empty, so its keyring is made elsewhere
  ceph-authtool --create-keyring "$DIR/mon-mkfs.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$DIR/mon-mkfs.keyring" --import-keyring "$DIR/keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon-mkfs.keyring"
  rm -f "$DIR/mon-mkfs.keyring"
  [ -s "$DIR/mon.a/store.db/CURRENT" ] || die "ceph-mon --mkfs wrote no store"
  start_bg mon.a ceph-mon -c "$CONF" -i a -f
  wait_for "mon quorum" 60 ceph_ mon stat

  # OSD: BlueStore on a sparse file; mkfs --key writes no keyring file, so it is written here
  local osd_uuid osd_key id
  osd_uuid=$(uuidgen); osd_key=$(ceph-authtool --gen-print-key)
  (umask 077; echo "{\"cephx_secret\": \"$osd_key\"}" >"$DIR/osd.0/new.json")
  id=$(ceph_ osd new "$osd_uuid" -i "$DIR/osd.0/new.json")
  rm -f "$DIR/osd.0/new.json"
  [ "$id" = 0 ] || die "unexpected OSD id $id"
  ceph-osd -c "$CONF" -i 0 --mkfs --key "$osd_key" --osd-uuid "$osd_uuid" >>"$LOG/osd.0.mkfs" 2>&1 ||
    { tail -5 "$LOG/osd.0.mkfs" >&2; die "ceph-osd --mkfs failed"; }
  (umask 077; printf '[osd.0]\n\tkey = %s\n' "$osd_key" >"$DIR/osd.0/keyring")
  start_bg osd.0 ceph-osd -c "$CONF" -i 0 -f
  wait_for "osd.0 active" 120 osd_up

  ceph_ auth get-or-create client.rgw.local mon 'allow rw' osd 'allow rwx' -o "$DIR/rgw/keyring"
  start_bg rgw.local radosgw -c "$CONF" -n client.rgw.local -f
  wait_for "radosgw on 127.0.0.1:$RGW_PORT" 180 rgw_up

  radosgw-admin -c "$CONF" -n client.admin user create --uid=deskfuse --display-name=deskfuse \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >/dev/null
  s3_curl PUT "/$S3_BUCKET" -H "x-amz-content-sha256: $EMPTY_SHA" -o /dev/null
  say "bucket $S3_BUCKET ready"
  # warm-up: the data pools are created at the first object (seconds), not in a caller's first test
  local body_sha; body_sha=$(printf warm | sha256sum | cut -d' ' -f1)
  s3_curl PUT "/$S3_BUCKET/.warm-up" -H "x-amz-content-sha256: $body_sha" --data-binary warm -o /dev/null
  s3_curl DELETE "/$S3_BUCKET/.warm-up" -H "x-amz-content-sha256: $EMPTY_SHA" -o /dev/null
  say "first PUT done"
  mv "$DIR/settings.tmp" "$DIR/settings" # the cluster is complete only now
}

stop_daemons() {
  local name f pid
  for name in "${DAEMONS[@]}"; do # one at a time, in order, each waited for
    f=$RUN/$name.fgpid
    [ -f "$f" ] || continue
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; say "SIGKILL $name (pid $pid)"; fi
      say "stopped $name (pid $pid)"
    fi
    rm -f "$f"
  done
}

rss_kib() {
  local total=0 name pid kib
  for name in "${DAEMONS[@]}"; do
    pid=$(pid_of "$name") || continue
    kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    echo "$name ${kib:-0} KiB" >&2
    total=$(( total + ${kib:-0} ))
  done
  echo "$total"
}

ours() { [ -f "$MARK" ]; }

case $cmd in
  start)
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"; flock 9 # one start at a time per DIR: a second caller reuses the first's cluster
    if [ -f "$DIR/settings" ]; then
      . "$DIR/settings"
      if alive mon.a && alive osd.0 && rgw_up; then say "reusing the running cluster in $DIR"
      else say "starting the cluster in $DIR on its data"; start_daemons; fi
    else
      if ours; then say "removing an unfinished cluster in $DIR"; stop_daemons; find "$DIR" -mindepth 1 -not -name .lock -delete
      elif [ -n "$(ls -A "$DIR" | grep -v '^\.lock$' || true)" ]; then die "$DIR is neither empty nor a cluster of this script"; fi
      trap 'say "start failed: stopping what it started"; stop_daemons' EXIT # no daemon outlives a failed start
      create
      trap - EXIT
    fi
    print_env
    ;;
  stop) ours || die "$DIR holds no cluster"; stop_daemons ;;
  destroy) if ours; then stop_daemons; rm -rf "$DIR"; say "removed $DIR"; fi ;;
  env) print_env ;;
  pids) for name in "${DAEMONS[@]}"; do pid=$(pid_of "$name") && echo "$name $pid"; done; true ;;
  rss) rss_kib ;;
  *) echo "usage: $0 start|stop|destroy|env|pids|rss DIR" >&2; exit 2 ;;
esac
