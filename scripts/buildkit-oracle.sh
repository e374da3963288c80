#!/usr/bin/env bash
# A real BuildKit for nbbuild's differential tests: Debian's Docker 20.10 daemon (embedded
# BuildKit 0.8, Dockerfile frontend 1.2) on a private socket and data root, plus a busybox base
# image imported from a rootfs tar that nbbuild imports too, so both sides start from the same bits.
#
#   scripts/buildkit-oracle.sh [start]   install docker.io/busybox-static if missing (root), start
#                                        the daemon unless it runs, import busybox:latest; silent
#   scripts/buildkit-oracle.sh status    exit 0 if the daemon answers, 1 if not
#   scripts/buildkit-oracle.sh env       print DOCKER_HOST=… and ORACLE_ROOTFS_TAR=… lines
#   scripts/buildkit-oracle.sh stop      stop the daemon this script started (no-op otherwise)
#
# State lives under $NBBUILD_ORACLE_STATE (default /var/tmp/nbbuild-oracle): docker.sock,
# docker/ (data root), dockerd.log, dockerd.pid, busybox-rootfs.tar, results/ (the tests' cache).
# The daemon is private (its own socket, data root and exec root), so it never touches another
# Docker on the machine and `docker builder prune` on it loses nobody else's cache.
# Use /usr/bin/docker (the Debian client matching the daemon) with DOCKER_BUILDKIT=1 and
# --network=none: there is no bridge network and no registry here.
set -euo pipefail
STATE=${NBBUILD_ORACLE_STATE:-/var/tmp/nbbuild-oracle}
DOCKER=/usr/bin/docker
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOCK="$STATE/docker.sock"
export DOCKER_HOST="unix://$SOCK"
IMAGE=busybox:latest
TAR="$STATE/busybox-rootfs.tar"

die() { echo "buildkit-oracle: $*" >&2; exit 1; }
running() { [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; }

cmd=${1:-start}
case "$cmd" in
  status) running; exit $? ;;
  env) printf 'DOCKER_HOST=%s\nORACLE_ROOTFS_TAR=%s\nORACLE_STATE=%s\n' "$DOCKER_HOST" "$TAR" "$STATE"; exit 0 ;;
  stop)
    if [ -f "$STATE/dockerd.pid" ]; then
      pid=$(cat "$STATE/dockerd.pid")
      # only the dockerd we started: the pid must still be a dockerd using our socket
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$SOCK"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 300); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
      fi
      rm -f "$STATE/dockerd.pid"
    fi
    # dockerd leaves its data root bind-mounted on itself: unmount what lies under $STATE (deepest
    # first) once no daemon uses it, so the state dir can be removed and the next start is clean
    if ! running; then
      awk -v s="$STATE/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    fi
    exit 0 ;;
  start) ;;
  *) die "usage: $0 [start|status|env|stop]" ;;
esac

[ "$(id -u)" = 0 ] || die "needs root (apt-get, dockerd)"
mkdir -p "$STATE"

need=()
command -v dockerd >/dev/null && [ -x "$DOCKER" ] || need+=(docker.io)
[ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}"; } >"$STATE/apt.log" 2>&1 ||
    die "apt-get install ${need[*]} failed; see $STATE/apt.log"
fi

if ! running; then
  # no iptables, no bridge: this machine has neither; builds use --network=none
  setsid dockerd --host "$DOCKER_HOST" --data-root "$STATE/docker" --exec-root "$STATE/exec" \
    --pidfile "$STATE/dockerd.pid" --iptables=false --bridge=none \
    >"$STATE/dockerd.log" 2>&1 </dev/null &
  child=$!
  for _ in $(seq 240); do
    running && break
    kill -0 "$child" 2>/dev/null || break
    sleep 0.25
  done
  running || die "dockerd did not start; see $STATE/dockerd.log"
fi

if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  if [ ! -s "$TAR" ]; then
    tmp=$(mktemp -d)
    bash "$HERE/busybox-rootfs.sh" "$tmp/rootfs" "$TAR.tmp" || { rm -rf "$tmp"; die "busybox rootfs failed"; }
    rm -rf "$tmp"
    mv "$TAR.tmp" "$TAR"
  fi
  "$DOCKER" import "$TAR" "$IMAGE" >/dev/null
fi
