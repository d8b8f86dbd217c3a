# Sourced by bench/run.sh (ONLY=all or ONLY=sync): the sync engine (issue 3) against its peers, in
# one run of the shared harness, then one table per issue-3 target. Uses run.sh's $DATA $T $CLI
# $SHARED $BENCH $RESULTS $SIZE $ONLY $SYNC_REPS $SYNC_PEERS $PEERS_PORT $RSYNC_PORT, log, die, FAIL.
#
# peers.sh runs with PEER_HOOKS=bench/peers.d/deskfuse.sh and RUN=deskfuse, so its rows and medians
# land in $DATA/.peers-deskfuse/ (results.tsv, results.md, bound-*.json); bench/targets.py reads
# them. The harness removes its scratch files (servers' data, disks) itself.

PEERS_SH=$SHARED/bench/peers.sh
[ -f "$PEERS_SH" ] || die "peer harness not found at $PEERS_SH (set DESKFUSE_SHARED)"
PDIR=$DATA/.peers-deskfuse
log "sync engine vs peers: REPS=$SYNC_REPS ONLY='$SYNC_PEERS' + deskfuse ($PEERS_SH, hook bench/peers.d/deskfuse.sh)"
t_sync0=$(date +%s)
if ! PEER_HOOKS="$BENCH/peers.d/deskfuse.sh" DESKFUSE_CLI="$CLI" REPS="$SYNC_REPS" ONLY="$SYNC_PEERS" RUN=deskfuse \
  PORT="$PEERS_PORT" RPORT="$RSYNC_PORT" bash "$PEERS_SH" "$DATA" > "$T/peers.md" 2> >(tee "$T/peers.log" >&2); then
  die "peers.sh failed (log above)"
fi
log "peers + deskfuse: $(( $(date +%s) - t_sync0 )) s"

{
  echo
  echo "## Sync engine (issue 3) vs peers, SIZE=$SIZE, $(date -Iseconds), peers.sh REPS=$SYNC_REPS ONLY='$SYNC_PEERS'"
  echo
  echo "Harness tables (../shared/bench/peers.sh, deskfuse added by bench/peers.d/deskfuse.sh; raw rows in"
  echo "bench/data/$SIZE/.peers-deskfuse/results.tsv):"
  echo
  sed 's/^### /#### /' "$PDIR/results.md"
  echo
  python3 "$BENCH/targets.py" "$PDIR/results.tsv" "$PDIR"
} > "$T/sync.md"
if [ "$ONLY" = sync ]; then cp "$T/sync.md" "$RESULTS"; else cat "$T/sync.md" >> "$RESULTS"; fi
cat "$T/sync.md"
if grep -q 'FAILED\|BAD(' "$PDIR/results.md"; then FAIL=1; fi
