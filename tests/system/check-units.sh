#!/usr/bin/env bash
# Checks the installed systemd units the way a distribution would see them:
# installs the build into a scratch root (meson install --destdir), adds the
# host's own units (for the targets ours refer to) and kill(1), then runs
#   systemd-analyze verify --man=no --root=ROOT   (must print nothing, exit 0)
#   systemd-analyze security --offline=true       (exposure <= the threshold)
# on the installed files. verify also proves that every Exec*= binary exists
# and is executable at its path inside the install tree.
#
# usage: check-units.sh BUILD_DIR [--max-exposure N.N]
#   MESON=path overrides the meson command.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--max-exposure N.N]" >&2; exit 2; }
[ $# -ge 1 ] || usage
build_dir=$1; shift
max_exposure=1.5
while [ $# -gt 0 ]; do
    case $1 in
        --max-exposure) [ $# -ge 2 ] || usage; max_exposure=$2; shift 2 ;;
        *) usage ;;
    esac
done
meson=${MESON:-meson}

if ! command -v systemd-analyze >/dev/null; then
    echo "SKIP: systemd-analyze not found"; exit 77
fi
command -v "$meson" >/dev/null || { echo "FAIL: meson not found"; exit 1; }
[ -d "$build_dir" ] || { echo "FAIL: no build dir $build_dir"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-units.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

echo "# meson install --destdir $root"
"$meson" install -C "$build_dir" --no-rebuild --destdir "$root" --quiet >"$work/install.log" 2>&1 \
    || { cat "$work/install.log"; echo "FAIL: meson install"; exit 1; }

service=$(find "$root" -name keepalived.service -type f)
[ "$(printf '%s\n' "$service" | grep -c .)" -eq 1 ] \
    || { echo "FAIL: expected exactly one installed keepalived.service, found: ${service:-none}"; exit 1; }
unit_dir=$(dirname "$service")
echo "# units installed in ${unit_dir#"$root"}"
for u in keepalived.service keepalived.socket keepalive-peer@.service; do
    [ -f "$unit_dir/$u" ] || fail "$u not installed next to keepalived.service"
done
[ "$failures" -eq 0 ] || exit 1

# A usr-merged root like Debian's, with the host's units so that
# network.target, sockets.target & co. resolve. Ours are never overwritten.
for d in bin sbin lib; do
    [ -e "$root/$d" ] || ln -s "usr/$d" "$root/$d"
done
mkdir -p "$root/usr/lib/systemd/system" "$root/usr/bin" "$root/etc"
host_unit_dir=
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$d/sysinit.target" ]; then host_unit_dir=$d; break; fi
done
[ -n "$host_unit_dir" ] || { echo "SKIP: no systemd unit directory on this host"; exit 77; }
find "$host_unit_dir" -mindepth 1 -maxdepth 1 ! -name 'keepalive*' -print0 \
    | xargs -0 cp -an -t "$root/usr/lib/systemd/system/"
# ExecReload= calls kill(1) by name; systemd looks it up in its fixed PATH.
kill_bin=$(type -P kill) || { echo "SKIP: kill(1) not found"; exit 77; }
[ -e "$root/usr/bin/kill" ] || cp "$kill_bin" "$root/usr/bin/kill"

verify() {
    local path=$1 out rc=0
    out=$(systemd-analyze verify --man=no --root="$root" "$path" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        fail "systemd-analyze verify $(basename "$path") (exit $rc):"
        printf '    %s\n' "$out"
    else
        echo "ok: systemd-analyze verify $(basename "$path"): no output"
    fi
}

# The template is checked as itself and as an instance, whose %i expands.
verify "$unit_dir/keepalived.service"
verify "$unit_dir/keepalived.socket"
verify "$unit_dir/keepalive-peer@.service"
verify "$unit_dir/keepalive-peer@check.service"

security() {
    local path=$1 out rc=0 level
    out=$(systemd-analyze security --offline=true --root="$root" --no-pager "$path" 2>&1) || rc=$?
    level=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ "$rc" -ne 0 ] || [ -z "$level" ]; then
        fail "systemd-analyze security $(basename "$path") (exit $rc):"
        printf '    %s\n' "$out"
    elif awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l > m) }'; then
        fail "$(basename "$path"): exposure $level > $max_exposure; settings not met:"
        printf '%s\n' "$out" | grep '✗' | sed 's/^/    /'
    else
        echo "ok: systemd-analyze security $(basename "$path"): exposure $level <= $max_exposure"
    fi
}

security "$unit_dir/keepalived.service"
security "$unit_dir/keepalive-peer@check.service"

# The privileged-port drop-in keepalived(8) tells operators to use (section
# SYSTEMD; keep the two in step) must stay valid and within the threshold.
dropin_dir=$root/etc/systemd/system/keepalived.service.d
mkdir -p "$dropin_dir"
cat >"$dropin_dir/privileged-port.conf" <<'EOF'
[Service]
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
PrivateUsers=no
EOF
echo "# with the privileged-port drop-in of keepalived(8):"
verify "$unit_dir/keepalived.service"
security "$unit_dir/keepalived.service"
rm -r "$dropin_dir"

# Documentation=man:NAME(N) must name a page this build installs, when it
# installs man pages at all.
man_dir=$(find "$root" -type d -name man8 -path '*/man/man8' | head -n 1)
if [ -n "$man_dir" ] && [ -f "$man_dir/keepalived.8" ]; then
    man_root=$(dirname "$man_dir")
    for u in keepalived.service keepalived.socket keepalive-peer@.service; do
        # shellcheck disable=SC2013 # one Documentation= line holds several words
        for ref in $(sed -n 's/^Documentation=//p' "$unit_dir/$u"); do
            case $ref in
                man:*\(*\))
                    page=${ref#man:}; name=${page%%(*}; sect=${page#*(}; sect=${sect%)}
                    if [ -f "$man_root/man$sect/$name.$sect" ]; then
                        echo "ok: $u: $ref is installed"
                    else
                        fail "$u: Documentation=$ref names no installed man page"
                    fi ;;
                *) fail "$u: Documentation=$ref is not a man: reference" ;;
            esac
        done
    done
else
    echo "note: this build installs no man pages; Documentation= references not checked"
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all unit checks passed"
