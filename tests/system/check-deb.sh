#!/usr/bin/env bash
# Builds the Debian package from a copy of the source tree, the way the README
# says (packaging/debian copied to ./debian, dpkg-buildpackage -us -uc -b),
# runs lintian on the result (any E: fails), unpacks the .deb into a scratch
# root with dpkg -x and checks it: the exact file list and modes, the control
# fields (Package, Conflicts, Depends), the conffiles, the systemd maintainer
# scripts (service started on install, socket opt-in), units whose Exec paths
# exist, documentation paths rewritten to /usr/share/doc/kap-keepalived, and
# binaries that run and accept the packaged configuration.
#
# Nothing is written to SRC_DIR: tests/system/build-deb.sh builds in a
# temporary copy (build directories, i.e. any directory holding meson-private,
# and .git are left out). Given BUILD_DIR, the package comes from (or goes to)
# its deb/ cache, which the pid1 suite shares: one compile per source state.
# The build takes about 1.5 minutes on 2 cores; the checks about 1 more.
#
# usage: check-deb.sh SRC_DIR [BUILD_DIR]
#   KEEP_DEB_DIR=DIR  also copy the built .deb files to DIR
# Exit status: 0 pass, 1 fail, 77 skip (dpkg-buildpackage or debhelper missing).
set -euo pipefail

[ $# -eq 1 ] || [ $# -eq 2 ] || { echo "usage: $0 SRC_DIR [BUILD_DIR]" >&2; exit 2; }
src=$(cd "$1" && pwd)
build=
[ $# -eq 1 ] || build=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$src/packaging/debian/control" ] || { echo "FAIL: no packaging/debian in $src"; exit 1; }

for tool in dpkg-buildpackage dh dpkg-deb; do
    command -v "$tool" >/dev/null || {
        echo "SKIP: $tool not found (apt-get install dpkg-dev debhelper)"
        exit 77
    }
done
command -v lintian >/dev/null || { echo "FAIL: lintian not found (apt-get install lintian)"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A signal (a meson timeout, a closed output pipe) must also run the EXIT trap.
trap 'exit 1' HUP INT TERM PIPE
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
start=$SECONDS

# --- build (or take the build of this source state from BUILD_DIR) -------------
debdir=$("$here/build-deb.sh" "$src" "${build:-$work}/deb") || { echo "FAIL: the package build"; exit 1; }
echo "# package ready ($((SECONDS - start)) s)"

shopt -s nullglob
changes=("$debdir"/kap-keepalived_*.changes)
debs=()
for f in "$debdir"/kap-keepalived_*.deb; do
    case $f in *-dbgsym_*) ;; *) debs+=("$f") ;; esac
done
[ ${#changes[@]} -eq 1 ] || { echo "FAIL: expected one .changes, got: ${changes[*]-none}"; exit 1; }
[ ${#debs[@]} -eq 1 ] || { echo "FAIL: expected one kap-keepalived .deb, got: ${debs[*]-none}"; exit 1; }
deb=${debs[0]}
echo "# $(basename "$deb")"
if [ -n "${KEEP_DEB_DIR:-}" ]; then
    mkdir -p "$KEEP_DEB_DIR" && cp "$debdir"/*.deb "$KEEP_DEB_DIR"/
fi

# --- lintian -----------------------------------------------------------------
# On the .changes: the package, its -dbgsym and the .buildinfo. Warnings and
# info tags are printed for the record; only errors fail.
echo "# lintian"
lintian_rc=0
lintian --fail-on error --display-info --pedantic "${changes[0]}" >"$work/lintian.log" 2>&1 \
    || lintian_rc=$?
grep -v '^running with root privileges' "$work/lintian.log" || true
if [ $lintian_rc -ne 0 ] || grep -q '^E: ' "$work/lintian.log"; then
    fail "lintian reports errors (exit $lintian_rc)"
fi

# --- control fields ------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = kap-keepalived ] || fail "Package is '$(field Package)'"
[ "$(field Architecture)" = "$(dpkg --print-architecture)" ] \
    || fail "Architecture is '$(field Architecture)'"
# Debian's unrelated keepalived (VRRP) installs the same paths.
grep -Eq '(^|, *)keepalived( |,|$)' <<<"$(field Conflicts)" \
    || fail "Conflicts '$(field Conflicts)' does not name keepalived"
# Provides/Replaces keepalived would claim to be, or take over, the VRRP package.
grep -Eq '(^|, *)keepalived( |,|$)' <<<"$(field Provides)$(field Replaces)" \
    && fail "Provides/Replaces keepalived: this is not a VRRP keepalived"
grep -Eq '(^|, *)procps( |,|$)' <<<"$(field Depends)" \
    || fail "Depends '$(field Depends)' lacks procps (kill for ExecReload=)"
grep -q 'keepalive-client' <<<"$(field Depends)" \
    && fail "Depends on the client library: keepalive-peer must link it statically"
grep -q 'VRRP' <<<"$(field Description)" || fail "the Description does not name the VRRP keepalived"

# --- control archive: conffiles and maintainer scripts -------------------------
ctl=$work/control
dpkg-deb -e "$deb" "$ctl"
if [ -f "$ctl/conffiles" ]; then
    grep -qx '/etc/keepalived/keepalived.toml' "$ctl/conffiles" \
        || fail "/etc/keepalived/keepalived.toml is not a conffile: $(tr '\n' ' ' <"$ctl/conffiles")"
else
    fail "the package has no conffiles"
fi
# As a Debian admin expects: the service is enabled and started on install;
# the socket is opt-in, never started by the package, but stopped on removal.
grep -q "deb-systemd-helper enable 'keepalived.service'" "$ctl/postinst" 2>/dev/null \
    || fail "postinst does not enable keepalived.service"
grep -Eq "deb-systemd-invoke .*'keepalived.service'" "$ctl/postinst" 2>/dev/null \
    || fail "postinst does not start keepalived.service"
grep -Eq "deb-systemd-invoke [^|]*keepalived\.socket" "$ctl/postinst" 2>/dev/null \
    && fail "postinst starts keepalived.socket (it is opt-in)"
grep -Eq "deb-systemd-invoke stop [^|]*keepalived\.socket" "$ctl/prerm" 2>/dev/null \
    || fail "prerm does not stop keepalived.socket on removal"
grep -Eq "deb-systemd-invoke stop [^|]*keepalived\.socket" "$ctl/preinst" 2>/dev/null \
    && fail "preinst stops keepalived.socket on upgrade (nothing would start it again)"
grep -q 'keepalive-peer@' "$ctl"/post* "$ctl"/pre* 2>/dev/null \
    && fail "maintainer scripts touch the keepalive-peer@ template"

# --- files -------------------------------------------------------------------
root=$work/root
dpkg -x "$deb" "$root"
# pattern mode: every file and symlink must match exactly one line, and every
# line exactly one file. dh_compress gzips docs above 4 KiB, hence ?(.gz).
shopt -s extglob
expected=(
    "etc/keepalived/keepalived.toml 644"
    "lib/systemd/system/keepalived.service 644"
    "lib/systemd/system/keepalived.socket 644"
    "lib/systemd/system/keepalive-peer@.service 644"
    "usr/bin/keepalive-peer 755"
    "usr/bin/keepalivectl 755"
    "usr/lib/systemd/catalog/keepalived.catalog 644"
    "usr/sbin/keepalived 755"
    "usr/share/doc/kap-keepalived/README.md?(.gz) 644"
    "usr/share/doc/kap-keepalived/changelog.gz 644"
    "usr/share/doc/kap-keepalived/copyright 644"
    "usr/share/doc/kap-keepalived/examples/peer-example.conf?(.gz) 644"
    "usr/share/doc/kap-keepalived/protocol.md?(.gz) 644"
    "usr/share/doc/kap-keepalived/kap.lua?(.gz) 644"
    "usr/share/man/man1/keepalive-peer.1.gz 644"
    "usr/share/man/man1/keepalivectl.1.gz 644"
    "usr/share/man/man5/keepalived.toml.5.gz 644"
    "usr/share/man/man8/keepalived.8.gz 644"
)
declare -A matched=()
while IFS=' ' read -r mode path; do
    hit=
    for e in "${expected[@]}"; do
        pattern=${e% *}
        # shellcheck disable=SC2053 # the pattern is a glob on purpose
        if [[ $path == $pattern ]]; then
            [ -z "$hit" ] || fail "$path matches both '$hit' and '$pattern'"
            hit=$pattern
            [ -z "${matched[$pattern]+set}" ] || fail "'$pattern' matches more than one file"
            matched[$pattern]=$path
            [ "$mode" = "${e##* }" ] || fail "$path has mode $mode, expected ${e##* }"
        fi
    done
    [ -n "$hit" ] || fail "unexpected file in the package: /$path"
done < <(cd "$root" && find . \( -type f -o -type l \) -printf '%m %P\n' | sort -k2)
for e in "${expected[@]}"; do
    [ -n "${matched[${e% *}]+set}" ] || fail "missing from the package: /${e% *}"
done
echo "# files:"
(cd "$root" && find . \( -type f -o -type l \) -printf '  /%P\n' | sort)

# --- contents ------------------------------------------------------------------
units=("$root"/lib/systemd/system/*)
for unit in "${units[@]}"; do
    grep -En '@[a-z_]+@' "$unit" && fail "$(basename "$unit") has unsubstituted @VAR@"
    # Exec*= lines: the first absolute path (after any of the prefixes -@:+!)
    # must be an executable in the package or on the host (kill is procps').
    while IFS= read -r exe; do
        [ -x "$root$exe" ] || [ -x "$exe" ] || fail "$(basename "$unit"): $exe is not installed"
    done < <(sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*(\/[^ ]+).*/\1/p' "$unit")
done
grep -l '/usr/share/doc/keepalived/' "${units[@]}" \
    && fail "a unit names /usr/share/doc/keepalived (the package's docs are in kap-keepalived)"
grep -q '/usr/share/doc/kap-keepalived/examples/peer-example.conf' \
    "$root/lib/systemd/system/keepalive-peer@.service" \
    || fail "keepalive-peer@.service does not point at the packaged peer example"
for page in "$root"/usr/share/man/man*/*.gz; do
    zgrep -q '/usr/share/doc/keepalived/' "$page" \
        && fail "$(basename "$page") names /usr/share/doc/keepalived"
done
# scdoc writes "peer-example\&.conf" (\& after a period), hence no ".conf".
zgrep -q '/usr/share/doc/kap-keepalived/examples/peer-example' \
    "$root/usr/share/man/man1/keepalive-peer.1.gz" \
    || fail "keepalive-peer(1) does not point at the packaged peer example"

# The binaries run on this host with the libraries the package depends on
# (keepalive-peer has the client library linked in), and the daemon accepts
# the configuration the package installs.
for bin in usr/sbin/keepalived usr/bin/keepalive-peer usr/bin/keepalivectl; do
    [ -x "$root/$bin" ] || continue
    ldd "$root/$bin" | grep 'not found' && fail "/$bin: missing shared libraries"
    "$root/$bin" --help >/dev/null 2>&1 || fail "/$bin --help fails"
done
if [ -x "$root/usr/sbin/keepalived" ] && [ -f "$root/etc/keepalived/keepalived.toml" ]; then
    "$root/usr/sbin/keepalived" --check-config "$root/etc/keepalived/keepalived.toml" \
        || fail "the packaged keepalived rejects the packaged keepalived.toml"
fi

echo "# $((SECONDS - start)) s in all"
if [ $failures -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "PASS: $(basename "$deb") builds, is lintian-clean (no errors) and has the expected contents"
