#!/usr/bin/env bash
# A PostgreSQL 15 cluster (the metadata engine of the scale-out setup) in one folder, for tests,
# benchmarks and trials: Debian's binaries (/usr/lib/postgresql/15/bin; scripts/setup-deps.sh engines),
# no systemd, no /etc/postgresql. TCP on 127.0.0.1 only (password auth, scram-sha-256), the unix
# socket in DIR/run (peer auth, for this script), fsync=off (test data: a crash may lose it).
#
#   postgres.sh start DIR     create the cluster in DIR (empty or absent) or start it again on its data
#                             and port; a running instance of DIR is reused. Prints the settings (env lines).
#   postgres.sh stop DIR      stop the server this script recorded (by PID, fast shutdown); keeps data
#   postgres.sh destroy DIR   stop, then delete DIR (only a folder this script made)
#   postgres.sh env DIR       print the settings: PG_URL PG_HOST PG_PORT PG_USER PG_PASSWORD PG_DATABASE
#   postgres.sh pids DIR      "postgres pid" of the recorded postmaster
#   postgres.sh rss DIR       resident memory of the postmaster and its children (KiB total)
#
# The role and database are both `deskfuse`; the role may CREATE DATABASE (tests make one each).
# Run as root, the server runs as the `postgres` system user (PostgreSQL refuses root) and DIR is
# owned by it; run as another user, the server runs as that user. The port is picked free at creation
# (PG_PORT overrides) and kept in DIR/settings, so stop + start serves the same URL again.
# Progress goes to stderr; stdout carries only the settings (it includes the password: the caller
# passes it on, never logs it).
set -euo pipefail

cmd=${1:-}
DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || { echo "usage: $0 start|stop|destroy|env|pids|rss DIR" >&2; exit 2; }
DIR=$(realpath -m "$DIR")
BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DATA=$DIR/data
RUN=$DIR/run
LOG=$DIR/log
MARK=$DIR/.deskfuse-postgres
PIDFILE=$RUN/postgres.pid

T0=${EPOCHREALTIME/./}
say() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '[postgres %3d.%01ds] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$*" >&2; }
die() { say "error: $*"; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
  OWNER=postgres
  getent passwd "$OWNER" >/dev/null || die "no '$OWNER' system user (install Debian's postgresql: scripts/setup-deps.sh engines)"
  as_owner() { (cd "$DIR" && runuser -u "$OWNER" -- "$@"); }
else
  OWNER=$(id -un)
  as_owner() { (cd "$DIR" && "$@"); }
fi
SUPER=$OWNER # the cluster's superuser: peer auth maps the OS user to the role of the same name

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
pick_port() { # a free TCP port in 30000-39999
  local p
  for _ in $(seq 1 200); do
    p=$(( 30000 + RANDOM % 10000 ))
    if port_free "$p"; then echo "$p"; return; fi
  done
  die "no free port"
}

load() { [ -f "$DIR/settings" ] || die "$DIR holds no cluster (run: $0 start $DIR)"; . "$DIR/settings"; }

print_env() {
  load
  cat <<EOF
PG_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE
PG_HOST=127.0.0.1
PG_PORT=$PG_PORT
PG_USER=$PG_USER
PG_PASSWORD=$PG_PASSWORD
PG_DATABASE=$PG_DATABASE
EOF
}

# The recorded postmaster PID, if that process is still ours: its command line names DIR/data
# (a PID recorded long ago may since belong to someone else's process).
pid_of() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DATA" || return 1
  echo "$pid"
}
alive() { pid_of >/dev/null; }
ready() { alive && "$BIN/pg_isready" -q -h "$RUN" -p "$PG_PORT" -t 2; }

close_fds() { local f n; for f in /proc/$BASHPID/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; true; }

start_server() {
  port_free "$PG_PORT" || die "port $PG_PORT (this cluster's) is taken by another process"
  # pg_ctl forks the postmaster and waits until it accepts connections; its PID is in postmaster.pid.
  # The server keeps no descriptor of ours (the start lock, a caller's pipes): closed before pg_ctl.
  (close_fds; as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG/postgres.log" -w -t 60 -s start </dev/null >/dev/null 2>&1) ||
    { tail -n 20 "$LOG/postgres.log" >&2; die "pg_ctl start failed"; }
  head -n 1 "$DATA/postmaster.pid" >"$PIDFILE"
  alive || die "the postmaster recorded in $DATA/postmaster.pid is not running"
  say "started postgres on 127.0.0.1:$PG_PORT (pid $(cat "$PIDFILE"))"
}

create() {
  mkdir -p "$DIR"
  touch "$MARK"
  mkdir -p "$RUN" "$LOG"
  chown "$OWNER:" "$DIR" "$RUN" "$LOG"
  chmod 700 "$DIR"
  as_owner test -w "$DIR" || die "$DIR is not reachable by the user '$OWNER' (a parent folder is not searchable?)"
  local port=${PG_PORT:-$(pick_port)} pw
  pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077; cat >"$DIR/settings.tmp" <<EOF
PG_PORT=$port
PG_USER=deskfuse
PG_PASSWORD=$pw
PG_DATABASE=deskfuse
EOF
  )
  . "$DIR/settings.tmp"
  as_owner "$BIN/initdb" -D "$DATA" -U "$SUPER" -E UTF8 --no-locale --no-sync \
    --auth-local=peer --auth-host=scram-sha-256 >"$LOG/initdb.log" 2>&1 ||
    { tail -n 20 "$LOG/initdb.log" >&2; die "initdb failed"; }
  cat >>"$DATA/postgresql.conf" <<EOF

# deskfuse (scripts/engines/postgres.sh): loopback only, socket in the cluster folder, test durability
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$RUN'
max_connections = 300
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_connections = off
EOF
  start_server
  # the password goes through stdin, never a command line
  as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$RUN" -p "$PG_PORT" -U "$SUPER" -d postgres >/dev/null <<EOF
CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
CREATE DATABASE $PG_DATABASE OWNER $PG_USER;
EOF
  say "role and database $PG_DATABASE ready"
  mv "$DIR/settings.tmp" "$DIR/settings" # the cluster is complete only now
}

stop_server() {
  local pid
  if pid=$(pid_of); then
    kill -INT "$pid" # fast shutdown: roll back open transactions, close connections, checkpoint
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; say "SIGKILL postgres (pid $pid)"; fi
    say "stopped postgres (pid $pid)"
  fi
  rm -f "$PIDFILE"
}

rss_kib() {
  local pid total=0 p kib
  pid=$(pid_of) || { echo 0; return; }
  for p in "$pid" $(ps -o pid= --ppid "$pid"); do
    kib=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$(( total + ${kib:-0} ))
  done
  echo "$total"
}

ours() { [ -f "$MARK" ]; }

case $cmd in
  start)
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"; flock 9 # one start at a time per DIR: a second caller reuses the first's server
    if [ -f "$DIR/settings" ]; then
      . "$DIR/settings"
      if ready; then say "reusing the running server in $DIR"
      else
        alive && stop_server # recorded but not answering: start it cleanly
        say "starting the cluster in $DIR on its data"; start_server
      fi
    else
      if ours; then say "removing an unfinished cluster in $DIR"; stop_server; find "$DIR" -mindepth 1 -not -name .lock -delete
      elif [ -n "$(ls -A "$DIR" | grep -v '^\.lock$' || true)" ]; then die "$DIR is neither empty nor a cluster of this script"; fi
      trap 'say "start failed: stopping what it started"; stop_server' EXIT # no server outlives a failed start
      create
      trap - EXIT
    fi
    print_env
    ;;
  stop) ours || die "$DIR holds no cluster"; stop_server ;;
  destroy) if ours; then stop_server; rm -rf "$DIR"; say "removed $DIR"; fi ;;
  env) print_env ;;
  pids) if pid=$(pid_of); then echo "postgres $pid"; fi; true ;;
  rss) rss_kib ;;
  *) echo "usage: $0 start|stop|destroy|env|pids|rss DIR" >&2; exit 2 ;;
esac
