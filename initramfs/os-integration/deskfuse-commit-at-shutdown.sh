#!/bin/sh
# deskfuse: commit at shutdown. Run by the desktop OS while it powers off: asks the deskfuse server whether
# this endpoint's disk should be committed now. If so, the power-off becomes a reboot into the network boot
# stage, where the agent commits the disk (nothing is mounted there), seals it clean and powers off.
# Otherwise (or when the server cannot be asked within ~5 s) it returns 0 and the power-off goes on.
#
#   deskfuse-commit-at-shutdown [--if-poweroff | --keepalive] [SERVER_URL]
#     SERVER_URL    default: DESKFUSE_SERVER= from /etc/deskfuse.conf; several comma-separated are asked
#                   in turn until one answers (each within ~5 s)
#     --if-poweroff do nothing unless systemd is powering off or halting (not rebooting)
#     --keepalive   instead: tell the server this endpoint is alive, which renews the desktop lease its
#                   boot took (POST /boot/keepalive; deskfuse-lease-keepalive.timer runs it every minute).
#                   Without it the lease runs out a few minutes after the endpoint dies, and the desktop
#                   is free for a VDI session. DESKFUSE_LEASE_SECONDS= (env or the conf file) sets how long
#                   each renewal lasts (default: the server's, 300 s).
# Env (tests): DESKFUSE_MAC (skip the NIC lookup), DESKFUSE_REBOOT_CMD (instead of rebooting).
# Exit: 0 = go on powering off; 2 = a reboot was asked for but the reboot command returned.
# POSIX sh; uses curl or, failing that, busybox wget.

conf=${DESKFUSE_CONF:-/etc/deskfuse.conf}
server= only_poweroff=0 route=/boot/commit-request
for a in "$@"; do
  case $a in
    --if-poweroff) only_poweroff=1 ;;
    --keepalive) route=/boot/keepalive ;;
    *) server=$a ;;
  esac
done
[ -z "$server" ] && [ -r "$conf" ] && server=$(sed -n 's/^DESKFUSE_SERVER=//p' "$conf" | tr -d "\"' " | tail -n1)
[ -z "${DESKFUSE_LEASE_SECONDS:-}" ] && [ -r "$conf" ] && DESKFUSE_LEASE_SECONDS=$(sed -n 's/^DESKFUSE_LEASE_SECONDS=//p' "$conf" | tr -d "\"' " | tail -n1)
say() { echo "deskfuse: $*"; }
[ -n "$server" ] || { say "no server configured ($conf); powering off"; exit 0; }

if [ $only_poweroff = 1 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl list-jobs --no-legend 2>/dev/null | grep -Eq '(poweroff|halt)\.target +start' || exit 0
fi

# The boot NIC: the one the default route uses, else the first Ethernet one.
mac=${DESKFUSE_MAC:-}
if [ -z "$mac" ]; then
  nic=$(ip -4 route show default 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n1)
  if [ -z "$nic" ]; then
    for n in /sys/class/net/*; do
      [ "$(cat "$n/type" 2>/dev/null)" = 1 ] && { nic=${n##*/}; break; }
    done
  fi
  [ -n "$nic" ] && mac=$(cat "/sys/class/net/$nic/address" 2>/dev/null)
fi
[ -n "$mac" ] || { say "no network interface; powering off"; exit 0; }

form() { if [ $route = /boot/keepalive ] && [ -n "${DESKFUSE_LEASE_SECONDS:-}" ]; then echo "mac=$mac&ttlSeconds=$DESKFUSE_LEASE_SECONDS"; else echo "mac=$mac"; fi; }
limit() { if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi; }
ask() {
  url=${1%/}$route
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --connect-timeout 3 --max-time 5 -d "$(form)" "$url" 2>&1
  else
    limit 5 wget -q -O - --post-data "$(form)" "$url" 2>&1
  fi
}
answer= rc=1
for s in $(echo "$server" | tr ',' ' '); do
  answer=$(ask "$s")
  rc=$?
  case $answer in *'"action"'*|*'"renewed"'*) break ;; esac
done

if [ $route = /boot/keepalive ]; then
  case $answer in
    *'"renewed":true'*) say "lease renewed ($mac): $answer" ;;
    *'"renewed"'*) say "no lease renewed ($mac): $answer" ;;
    *) say "server $server not reachable or no answer (exit $rc)" ;;
  esac
  exit 0
fi

case $answer in
  *'"action"'*'"commit-poweroff"'*)
    say "the server asks to commit this disk ($mac) before powering off: rebooting into the deskfuse boot stage, which commits it and then powers off"
    if [ -n "${DESKFUSE_REBOOT_CMD:-}" ]; then
      $DESKFUSE_REBOOT_CMD
    elif [ -d /run/systemd/system ]; then
      # already inside the shutdown transaction: only a forced reboot (processes killed, file systems
      # unmounted, no further unit stops) can replace the power-off
      systemctl --force reboot
    else
      reboot -f
    fi
    exit 2
    ;;
  *'"action"'*) say "no commit needed; powering off" ;;
  *) say "server $server not reachable or no answer (exit $rc); powering off" ;;
esac
exit 0
