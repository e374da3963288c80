#!/usr/bin/env bash
# Make a minimal busybox root filesystem from Debian's busybox-static, the same layout that
# ../shared/tools/buildkit-oracle imports as its base image, so nbbuild and BuildKit run the
# same bits.
#
#   scripts/busybox-rootfs.sh DIR            # populate DIR (created if missing; must be empty)
#   scripts/busybox-rootfs.sh DIR OUT.tar    # also write a tar of it (numeric owners)
#
# Needs /usr/bin/busybox (apt-get install busybox-static). The tar records every file as 0:0,
# whoever runs this (a rootless test user too).
set -euo pipefail
BUSYBOX=${BUSYBOX:-/usr/bin/busybox}
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 DIR [OUT.tar]" >&2; exit 2
fi
root=$1
if [ ! -x "$BUSYBOX" ]; then
  echo "$BUSYBOX not found: install Debian's busybox-static (apt-get install -y busybox-static)" >&2
  exit 1
fi
if ! applets=$("$BUSYBOX" --list) || [ -z "$applets" ]; then
  echo "$BUSYBOX does not look like busybox (no applet list)" >&2; exit 1
fi
mkdir -p "$root"
if [ -n "$(ls -A "$root")" ]; then
  echo "$root is not empty" >&2; exit 1
fi
mkdir -p "$root"/{bin,etc,tmp,root,var,usr/bin,usr/sbin,sbin}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $applets; do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
if [ $# -eq 2 ]; then
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$2" .
fi
