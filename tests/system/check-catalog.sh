#!/usr/bin/env bash
# Checks systemd/keepalived.catalog, the journal catalog for the MESSAGE_IDs
# keepalived sends:
#  1. a strict parse (journalctl itself silently accepts malformed headers
#     and duplicate IDs): exactly the ten fixed MESSAGE_IDs, each once, each
#     with Subject, Defined-By: keepalived, Support and Documentation headers
#     and a body; @FIELD@ substitutions only of fields every such entry has;
#  2. journalctl --update-catalog in a scratch root (--root), which must
#     succeed silently, then --list-catalog and --dump-catalog must return
#     every entry exactly as written;
#  3. the substitution journalctl -x performs (systemd's replace_var rule),
#     applied to a sample entry: nothing unresolved may remain.
#
# usage: check-catalog.sh CATALOG_FILE
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 CATALOG_FILE" >&2; exit 2; }
catalog=$1
[ -f "$catalog" ] || { echo "FAIL: no catalog file $catalog"; exit 1; }
command -v journalctl >/dev/null || { echo "SKIP: journalctl not found"; exit 77; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-catalog.XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# event MESSAGE_ID; fixed, see keepalived(8)
ids=(
    "registered 7753e1932bca402b9b9dc336d0badeea"
    "up e6f068336d48433d9b5a7e3f9c47d0ba"
    "suspect 681e42ee9b684060b35bd08b8e0f256d"
    "down 16fad6aa28e14ede845df6fa5bf323ea"
    "left a4fdb73540bd491ca24bb6c0daf2aee6"
    "restarted eb433235029c452fab15d16e033d497c"
    "moved 5878ae0a247145588f6878ad8ad05d87"
    "forgotten ad0d0b1f76b649fcb1b5cd28fdcf6571"
    "degraded c86b2b0557154dac849017bc47d89ce4"
    "damped 2a93b7ac71224af19fd81514b5d73931"
)
# Fields present in every peer event. PEER_RTT_USEC is not among them (absent
# until measured): journalctl would print its name in place of a value.
fields="PEER_NAME PEER_ADDRESS PEER_STATE PEER_PREVIOUS_STATE PEER_SESSION PEER_INTERVAL_MSEC"
fields+=" PEER_PROBES PEER_MISSED PEER_REASON PEER_PROTOCOL PEER_EVENT"

# --- 1. strict parse ---------------------------------------------------------
# Splits the file into $work/entries/ID (the text journalctl stores for ID)
# and reports every syntax problem as FILE:LINE: message.
mkdir "$work/entries"
awk -v out="$work/entries" -v fields="$fields" -v file="$catalog" '
    function errl(line, msg) { printf "%s:%d: %s\n", file, line, msg; bad = 1 }
    function err(msg) { errl(NR, msg) }
    function finish() {
        if (id == "") return
        if (!("Subject" in hdr)) errl(start, "entry " id ": no Subject header")
        if (hdr["Defined-By"] != "keepalived") errl(start, "entry " id ": Defined-By is not keepalived")
        if (!("Support" in hdr)) errl(start, "entry " id ": no Support header")
        if (!("Documentation" in hdr)) errl(start, "entry " id ": no Documentation header")
        if (body_lines == 0) errl(start, "entry " id ": empty body")
        if (!uses_name) errl(start, "entry " id ": never names the peer (@PEER_NAME@)")
        close(out "/" id)
    }
    BEGIN { n = split(fields, f, " "); for (i = 1; i <= n; i++) allowed[f[i]] = 1 }
    /^#/ && id == "" { next }
    /^-- / {
        finish()
        id = substr($0, 4)
        if (id !~ /^[0-9a-f]+$/ || length(id) != 32) { err("bad entry line (need -- <32 lowercase hex>): " $0); id = "" ; skip = 1; next }
        if (id in seen) err("duplicate MESSAGE_ID " id)
        seen[id] = 1; skip = 0; start = NR
        split("", hdr); in_hdr = 1; body_lines = 0; uses_name = 0
        next
    }
    id == "" {
        if (skip) next
        if ($0 != "") err("text outside an entry")
        next
    }
    {
        print > (out "/" id)
        if (length($0) > 80) err("line longer than 80 columns")
        if ($0 ~ /[ \t]$/) err("trailing whitespace")
        if ($0 ~ /^#/) err("line starting with # inside an entry (journalctl drops it)")
        rest = $0
        while (match(rest, /@[A-Z_]+@/)) {
            v = substr(rest, RSTART + 1, RLENGTH - 2)
            if (!(v in allowed)) err("substitution @" v "@ is not a field of every peer event")
            if (v == "PEER_NAME") uses_name = 1
            rest = substr(rest, RSTART + RLENGTH - 1)
        }
        if (in_hdr) {
            if ($0 == "") { in_hdr = 0; next }
            if (match($0, /^[A-Za-z-]+: /)) {
                k = substr($0, 1, RLENGTH - 2)
                if (k != "Subject" && k != "Defined-By" && k != "Support" && k != "Documentation")
                    err("unknown header " k)
                if (k in hdr) err("header " k " given twice")
                hdr[k] = substr($0, RLENGTH + 1)
                if (k == "Documentation" || k == "Support") {
                    m = split(hdr[k], uris, " ")
                    for (i = 1; i <= m; i++)
                        if (uris[i] !~ /^(man:[^ ()]+\([0-9]\)|https?:\/\/.+|file:\/.+)$/)
                            err(k " is not a man:/http(s):/file: URI: " uris[i])
                }
            } else {
                err("bad header line (need Key: value, then a blank line): " $0)
            }
            next
        }
        if ($0 != "") body_lines++
    }
    END { finish(); exit bad }
' "$catalog" || fail "catalog syntax (see above)"

for e in "${ids[@]}"; do
    event=${e% *} id=${e#* }
    if [ -f "$work/entries/$id" ]; then
        echo "ok: entry for $event ($id): $(sed -n 's/^Subject: //p' "$work/entries/$id")"
    else
        fail "no entry for $event ($id)"
    fi
done
for f in "$work"/entries/*; do
    [ -e "$f" ] || continue
    id=$(basename "$f")
    printf '%s\n' "${ids[@]}" | grep -q " $id\$" || fail "entry $id is not one of keepalived's MESSAGE_IDs"
done

# --- 2. journalctl round trip --------------------------------------------------
# journalctl reads <root>/usr/lib/systemd/catalog/*.catalog whatever the
# install location, and writes <root>/var/lib/systemd/catalog/database.
root=$work/root
mkdir -p "$root/usr/lib/systemd/catalog"
cp "$catalog" "$root/usr/lib/systemd/catalog/keepalived.catalog"
if out=$(journalctl --root="$root" --update-catalog 2>&1) && [ -z "$out" ]; then
    echo "ok: journalctl --update-catalog: silent, exit 0"
else
    fail "journalctl --update-catalog:"; printf '    %s\n' "$out"
fi
[ -s "$root/var/lib/systemd/catalog/database" ] || fail "journalctl wrote no catalog database"

journalctl --root="$root" --list-catalog >"$work/list" 2>&1 || fail "journalctl --list-catalog failed"
for e in "${ids[@]}"; do
    event=${e% *} id=${e#* }
    grep -q "^$id keepalived: " "$work/list" || fail "--list-catalog does not list $id ($event) as keepalived's"
    journalctl --root="$root" --dump-catalog "$id" >"$work/dump" 2>&1 || { fail "--dump-catalog $id failed"; continue; }
    [ -f "$work/entries/$id" ] || continue
    # journalctl prints "-- ID" and the stored text; compare without blank edges.
    sed '1d' "$work/dump" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' >"$work/dumped"
    sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$work/entries/$id" >"$work/written"
    if diff -u "$work/written" "$work/dumped" >"$work/diff"; then
        echo "ok: journalctl returns the $event text as written"
    else
        fail "journalctl returns a different $event text:"; sed 's/^/    /' "$work/diff"
    fi
done

# --- 3. substitution as journalctl -x does it ---------------------------------
# systemd's replace_var(): "@" + [A-Z_]+ + "@" is a field, any other "@" is
# literal. A field missing from the entry would be printed by name.
declare -A sample=(
    [PEER_NAME]=db1 [PEER_ADDRESS]=192.0.2.7:40000 [PEER_STATE]=down
    [PEER_PREVIOUS_STATE]=suspect [PEER_SESSION]=0a1b2c3d [PEER_INTERVAL_MSEC]=1000
    [PEER_PROBES]=3 [PEER_MISSED]=3 [PEER_REASON]="detection time expired"
    [PEER_PROTOCOL]=kap1 [PEER_EVENT]=down
)
substitute() {
    local text=$1 res="" name
    while [[ $text == *@* ]]; do
        res+=${text%%@*}; text=${text#*@}
        if [[ $text =~ ^([A-Z_]+)@ ]]; then
            name=${BASH_REMATCH[1]}
            if [ -n "${sample[$name]+set}" ]; then
                res+=${sample[$name]}
            else
                res+=$name; unresolved+=" $name"
            fi
            text=${text#"$name"@}
        else
            res+=@
        fi
    done
    printf '%s' "$res$text"
}
for e in "${ids[@]}"; do
    event=${e% *} id=${e#* }
    [ -f "$work/entries/$id" ] || continue
    unresolved=""
    substitute "$(cat "$work/entries/$id")" >"$work/expanded"
    if [ -n "$unresolved" ]; then
        fail "$event: fields not in the entry would print as names:$unresolved"
    else
        echo "ok: $event expands to: $(sed -n 's/^Subject: //p' "$work/expanded")"
    fi
done

if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all catalog checks passed"
