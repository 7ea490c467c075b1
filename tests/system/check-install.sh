#!/usr/bin/env bash
# Installs the build into a scratch directory (meson install --destdir) and
# checks the result file by file: every file where a distribution expects it,
# with the right mode, nothing unexpected, no unsubstituted @VAR@ in the
# units, man pages that groff renders without warnings, and an example
# configuration that the installed daemon accepts (--check-config).
#
# Expected locations follow the build options (prefix, bindir, sbindir,
# sysconfdir, datadir, mandir, systemdsystemunitdir, catalogdir, man). With
# --prefix=/usr and the defaults they are the Debian/FHS paths, which are also
# checked literally.
#
# usage: check-install.sh BUILD_DIR [--allow GLOB]...
#   --allow GLOB  an installed path (as seen by the system, e.g.
#                 '/usr/include/*') that may exist besides the expected ones.
#   MESON=path overrides the meson command.
set -euo pipefail

usage() { echo "usage: $0 BUILD_DIR [--allow GLOB]..." >&2; exit 2; }
[ $# -ge 1 ] || usage
build_dir=$1; shift
allow=()
while [ $# -gt 0 ]; do
    case $1 in
        --allow) [ $# -ge 2 ] || usage; allow+=("$2"); shift 2 ;;
        *) usage ;;
    esac
done
meson=${MESON:-meson}
command -v "$meson" >/dev/null || { echo "FAIL: meson not found"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 (to read meson introspect) not found"; exit 77; }
[ -d "$build_dir" ] || { echo "FAIL: no build dir $build_dir"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
dest=$work/dest
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# --- the build's options ---------------------------------------------------
# One python3 run (it is slow to start): NAME=VALUE lines for the options used.
declare -A opts=()
while IFS='=' read -r k v; do opts[$k]=$v; done < <(
    "$meson" introspect --buildoptions "$build_dir" | python3 -c 'import json, sys
want = sys.argv[1:]
for o in json.load(sys.stdin):
    if o["name"] in want:
        print(o["name"] + "=" + str(o["value"]))' \
        prefix bindir sbindir libexecdir sysconfdir datadir mandir systemdsystemunitdir catalogdir \
        man benchmarks)
for k in prefix bindir sbindir libexecdir sysconfdir datadir mandir systemdsystemunitdir catalogdir \
        man benchmarks; do
    [ -n "${opts[$k]+set}" ] || { echo "FAIL: the build has no option '$k'"; exit 1; }
done
option() { printf '%s\n' "${opts[$1]}"; }
prefix=$(option prefix)
abs() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "${prefix%/}/$1" ;; esac; }
bindir=$(abs "$(option bindir)")
sbindir=$(abs "$(option sbindir)")
libexecdir=$(abs "$(option libexecdir)")
sysconfdir=$(abs "$(option sysconfdir)")
datadir=$(abs "$(option datadir)")
mandir=$(abs "$(option mandir)")
unitdir=$(option systemdsystemunitdir)
[ -n "$unitdir" ] || unitdir=${prefix%/}/lib/systemd/system
catalogdir=$(option catalogdir)
[ -n "$catalogdir" ] || catalogdir=${prefix%/}/lib/systemd/catalog
case $(option man) in
    enabled) with_man=yes ;;
    disabled) with_man=no ;;
    *) if command -v scdoc >/dev/null; then with_man=yes; else with_man=no; fi ;;
esac
echo "# prefix=$prefix unitdir=$unitdir catalogdir=$catalogdir man pages: $with_man"

# --- install -----------------------------------------------------------------
echo "# meson install --destdir $dest"
"$meson" install -C "$build_dir" --no-rebuild --destdir "$dest" --quiet >"$work/install.log" 2>&1 \
    || { cat "$work/install.log"; echo "FAIL: meson install"; exit 1; }

# path mode; paths as seen by the installed system
expected=(
    "$sbindir/keepalived 755"
    "$bindir/keepalive-peer 755"
    "$bindir/keepalivectl 755"
    "$unitdir/keepalived.service 644"
    "$unitdir/keepalived.socket 644"
    "$unitdir/keepalive-peer@.service 644"
    "$catalogdir/keepalived.catalog 644"
    "$sysconfdir/keepalived/keepalived.toml 644"
    "$datadir/doc/keepalived/examples/peer-example.conf 644"
)
if [ "$with_man" = yes ]; then
    expected+=(
        "$mandir/man8/keepalived.8 644"
        "$mandir/man5/keepalived.toml.5 644"
        "$mandir/man1/keepalivectl.1 644"
        "$mandir/man1/keepalive-peer.1 644"
    )
fi

# keepalive-bench and the floor it compares with, installed with the tests.
if [ "$(option benchmarks)" = True ]; then
    expected+=(
        "$libexecdir/keepalive/keepalive-bench 755"
        "$libexecdir/keepalive/keepalive-floor 755"
    )
fi

if [ "$prefix" = /usr ] && [ -z "$(option systemdsystemunitdir)" ] && [ -z "$(option catalogdir)" ]; then
    distro=(
        /usr/sbin/keepalived /usr/bin/keepalive-peer /usr/bin/keepalivectl
        /usr/lib/systemd/system/keepalived.service /usr/lib/systemd/system/keepalived.socket
        /usr/lib/systemd/system/keepalive-peer@.service
        /usr/lib/systemd/catalog/keepalived.catalog /etc/keepalived/keepalived.toml
        /usr/share/doc/keepalived/examples/peer-example.conf
    )
    [ "$with_man" = yes ] && distro+=(
        /usr/share/man/man8/keepalived.8 /usr/share/man/man5/keepalived.toml.5
        /usr/share/man/man1/keepalivectl.1 /usr/share/man/man1/keepalive-peer.1
    )
    for p in "${distro[@]}"; do
        [ -f "$dest$p" ] || fail "$p: not installed at the FHS/Debian location"
    done
fi

declare -A wanted=()
for e in "${expected[@]}"; do
    path=${e% *} mode=${e##* }
    wanted[$path]=1
    if [ ! -f "$dest$path" ] || [ -L "$dest$path" ]; then
        fail "$path: missing (or not a regular file)"
        continue
    fi
    actual=$(stat -c %a "$dest$path")
    if [ "$actual" != "$mode" ]; then
        fail "$path: mode $actual, expected $mode"
    elif [ ! -s "$dest$path" ]; then
        fail "$path: empty"
    else
        echo "ok: $path ($mode)"
    fi
done

while IFS= read -r -d '' f; do
    path=${f#"$dest"}
    [ -n "${wanted[$path]:-}" ] && continue
    ok=no
    for g in "${allow[@]+"${allow[@]}"}"; do
        # shellcheck disable=SC2053 # glob match intended
        if [[ $path == $g ]]; then ok=yes; break; fi
    done
    if [ "$ok" = yes ]; then echo "ok: $path (allowed extra)"; else fail "$path: unexpected file"; fi
done < <(find "$dest" \( -type f -o -type l \) -print0 | sort -z)

# --- contents ----------------------------------------------------------------
for u in keepalived.service keepalived.socket keepalive-peer@.service; do
    f=$dest$unitdir/$u
    [ -f "$f" ] || continue
    if grep -nE '@[A-Za-z_]+@' "$f" >"$work/subst"; then
        fail "$u: unsubstituted variables:"; sed 's/^/    /' "$work/subst"
    fi
    # shellcheck disable=SC2013 # one path per line, no spaces
    for cmd in $(sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*(\/[^ ]*).*/\1/p' "$f" | sort -u); do
        if [ -x "$dest$cmd" ]; then
            echo "ok: $u runs $cmd, which this build installs"
        else
            fail "$u: runs $cmd, which this build does not install"
        fi
    done
done

if [ "$with_man" = yes ]; then
    if command -v groff >/dev/null; then
        for e in "${expected[@]}"; do
            path=${e% *}
            case $path in "$mandir"/*) ;; *) continue ;; esac
            [ -f "$dest$path" ] || continue
            page=$(basename "$path")
            if ! grep -q "^\.TH \"${page%.*}\" \"${page##*.}\"" "$dest$path"; then
                fail "$path: no .TH header naming ${page%.*}(${page##*.})"
            fi
            if out=$(groff -man -ww -z "$dest$path" 2>&1) && [ -z "$out" ]; then
                echo "ok: groff renders $page without warnings"
            else
                fail "$path: groff warnings:"; printf '    %s\n' "$out"
            fi
        done
    else
        echo "note: groff not found; man page rendering not checked"
    fi
fi

conf=$dest$sysconfdir/keepalived/keepalived.toml
daemon=$dest$sbindir/keepalived
if [ -f "$conf" ] && [ -x "$daemon" ]; then
    if out=$("$daemon" --check-config "$conf" 2>&1); then
        echo "ok: installed keepalived --check-config accepts the installed keepalived.toml"
    else
        fail "installed keepalived --check-config rejects the installed keepalived.toml:"
        printf '    %s\n' "$out"
    fi
fi

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all install checks passed"
