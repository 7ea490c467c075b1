#!/usr/bin/env bash
# Builds the Debian package once per source state and prints the directory
# holding the result (the .deb, its -dbgsym, the .changes and .buildinfo).
# The package-deb test and the pid1 suite both take it from here, so CI
# compiles the package once, not twice.
#
# The build is the README's: a copy of the source tree (without .git, ./debian
# and any build directory, i.e. one holding meson-private) with
# packaging/debian copied to ./debian, then dpkg-buildpackage -us -uc -b.
# Nothing is written to SRC_DIR. The cache key hashes every file the package
# is built from (tests/ and .ci/ are not part of it); OUT_DIR keeps only the
# newest key.
# A lock makes concurrent callers wait for one build and share it.
#
# usage: build-deb.sh SRC_DIR OUT_DIR
# Exit status: 0 built (the directory on stdout; progress on stderr), 1 failure.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SRC_DIR OUT_DIR" >&2; exit 2; }
src=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)

key=$(cd "$src" && tar --exclude=./.git --exclude=./.ci --exclude=./debian --exclude=./tests \
        --exclude-tag-all=meson-private --sort=name --mtime=@0 --owner=0 --group=0 -cf - . |
      sha256sum | cut -c1-16)
dir=$out/$key
built() { ls "$dir"/kap-keepalived_*.changes >/dev/null 2>&1; }

exec 9>"$out/.lock"
flock 9
if built; then
    echo "# package cached in $dir" >&2
    echo "$dir"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/build-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 1' HUP INT TERM PIPE
start=$SECONDS
# dpkg-buildpackage writes its results next to the tree, hence the subdirectory.
tree=$work/src
mkdir "$tree"
tar -C "$src" --exclude=./.git --exclude=./debian --exclude-tag-all=meson-private -cf - . |
    tar -C "$tree" -xf -
cp -r "$tree/packaging/debian" "$tree/debian"
echo "# dpkg-buildpackage -us -uc -b in $tree" >&2
if ! (cd "$tree" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    echo "FAIL: dpkg-buildpackage (last 60 lines of its log above)" >&2
    exit 1
fi
# Only the newest source state is kept; the copy is renamed into place whole.
find "$out" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[0-9a-f]{16}' \
    -exec rm -rf {} +
mkdir "$work/result"
cp "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$work/result"/
mv "$work/result" "$dir"
echo "# built in $((SECONDS - start)) s" >&2
echo "$dir"
