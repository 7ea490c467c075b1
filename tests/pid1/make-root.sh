#!/usr/bin/env bash
# Builds (once) the Debian 12 root the pid1 suite boots with systemd-nspawn:
# debootstrap --variant=minbase bookworm plus systemd, systemd-sysv, dbus,
# procps and the libraries kap-keepalived links, so that the package installs
# with dpkg -i and no network. Cached as a tarball; later runs only unpack it.
#
# usage: make-root.sh TARBALL
# The mirror is the first URIs: of /etc/apt/sources.list.d/*.sources (or the
# first deb line of /etc/apt/sources.list), else deb.debian.org.
# Exit status: 0 ready, 77 cannot build here (reason printed), 1 failure.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 TARBALL" >&2; exit 2; }
tarball=$1
[ -s "$tarball" ] && exit 0
command -v debootstrap >/dev/null || { echo "SKIP: debootstrap not found (apt-get install debootstrap)"; exit 77; }

mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

exec 9>"$tarball.lock"
flock 9
[ -s "$tarball" ] && exit 0  # built by a concurrent run while we waited
work=$(mktemp -d /var/tmp/kap-pid1-root.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "# debootstrap --variant=minbase bookworm from $mirror (first run only, a few minutes)"
if ! debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,procps,libfmt9,libtomlplusplus3 \
        bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log"
    echo "SKIP: debootstrap from $mirror failed (no mirror reachable?)"
    exit 77
fi
# A container without a console login or network waits for nothing.
chroot "$work/root" systemctl mask console-getty.service getty@tty1.service \
    systemd-networkd-wait-online.service >/dev/null 2>&1 || true
rm -rf "$work/root/var/cache/apt/archives/"*.deb
tar -C "$work/root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "# cached $tarball"
