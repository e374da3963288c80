#!/usr/bin/env bash
# Run tests again as an unprivileged user (run this as root; `make test` does, after the root
# run). Usage: scripts/rootless-tests.sh range|single [pytest args...]
#
#   range   user nbbuild-rl with a subordinate ID range (/etc/subuid, /etc/subgid) and
#           newuidmap/newgidmap: builds map container root to the user and 1..65536 to the range
#   single  user nbbuild-single without a range: only its own ID is mapped
#
# The user gets its own copy of the checkout (the CI checkout may sit under a directory it
# cannot read, and pytest writes its cache beside the tests) and its own venv from Debian's
# python3 (root's venv points into root's pyenv, mode 0700). The environment variable
# NBBUILD_TEST_MAPPING (range|single) tells the tests which case they are in.
set -euo pipefail
mode=${1:?usage: rootless-tests.sh range|single [pytest args...]}
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
case $mode in
  range) user=nbbuild-rl ;;
  single) user=nbbuild-single ;;
  *) echo "unknown mode $mode (range|single)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "run as root: it creates the test users" >&2; exit 1; }
command -v newuidmap >/dev/null || { echo "newuidmap missing: apt-get install uidmap" >&2; exit 1; }
# One run per user at a time (a second one would recopy the checkout and clear the temp dirs
# under the first).
exec 9>"/run/lock/nbbuild-rootless-$user.lock"
flock 9

if ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
# Exactly one range for nbbuild-rl, none for nbbuild-single (useradd may have added one).
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  sed -i "/^$user:/d" "$f"
done
if [ "$mode" = range ]; then
  # A range no other line of the files uses.
  start=$(cat /etc/subuid /etc/subgid | awk -F: '{e=$2+$3; if (e>m) m=e} END {print (m<100000?100000:m)}')
  echo "$user:$start:65536" >>/etc/subuid
  echo "$user:$start:65536" >>/etc/subgid
fi

# The checkout, copied (no .venv, no caches) into the user's home.
dest=$home/nbbuild
runuser -u "$user" -- mkdir -p "$dest"
tar -C "$repo" --exclude=./.venv --exclude=./.git --exclude=./.pytest_cache \
    --exclude=./.mypy_cache --exclude=./.ruff_cache -cf - . |
  runuser -u "$user" -- tar -C "$dest" --no-same-owner -xf -
# The oracle's cached BuildKit results (the root run filled them) must be readable.
if [ -d /var/tmp/nbbuild-oracle ]; then
  chmod a+rx /var/tmp/nbbuild-oracle
  [ -d /var/tmp/nbbuild-oracle/results ] && chmod -R a+rX /var/tmp/nbbuild-oracle/results
  [ -f /var/tmp/nbbuild-oracle/busybox-rootfs.tar ] && chmod a+r /var/tmp/nbbuild-oracle/busybox-rootfs.tar
fi

venv=$home/venv
if [ ! -x "$venv/bin/python" ]; then
  runuser -u "$user" -- /usr/bin/python3 -m venv "$venv"
fi
runuser -u "$user" -- env HOME="$home" "$venv/bin/pip" install -q -e "$dest[test]"

# pytest's temporary directories, on a path of our own: stores and outputs of rootless builds
# hold files of the user's subordinate IDs, which only root (or the build's namespace) can
# remove, so root clears them before the run, and after it when it passed (kept to look at when
# it failed; the next run clears them).
basetemp=$home/pytest-tmp
rm -rf "$basetemp"

cd "$dest"
rc=0
runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
  PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  NBBUILD_TEST_MAPPING="$mode" \
  "$venv/bin/pytest" -q -p no:cacheprovider --basetemp="$basetemp" "$@" || rc=$?
if [ "$rc" = 0 ]; then
  rm -rf "$basetemp"
else
  echo "rootless-tests.sh $mode: pytest failed ($rc) as $user; its files: $basetemp" >&2
fi
exit "$rc"
