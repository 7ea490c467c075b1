#!/usr/bin/env bash
# The Wireshark dissector (contrib/wireshark/kap.lua) against real traffic.
#
# Captures on loopback (tcpdump, port filter) while keepalived and
# keepalive-peer on free ports go through a handshake, probes and a goodbye,
# plus one legacy-protocol peer and one hand-made datagram with an AUTH
# trailer; then checks tshark's decode field by field:
#   REGISTER (zero cookie) -> CHALLENGE -> REGISTER (that cookie, same nonce)
#   -> ACCEPT (same nonce, a session, the granted interval and probes)
#   -> PROBE seq 1 on that session -> ACK echoing seq and tx_time with the
#   peer's incarnation -> BYE diag 5; the AUTH trailer's key id and MAC; the
#   legacy registration, probe and reply.
# Loopback only; every process started is stopped on exit.
#
# usage: check-dissector.sh SOURCE_ROOT BUILD_DIR
# Exit status: 0 pass, 1 fail, 77 skip (tshark or tcpdump cannot run).
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 SOURCE_ROOT BUILD_DIR" >&2; exit 2; }
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
lua=$src/contrib/wireshark/kap.lua
daemon=$build/keepalived
peer=$build/keepalive-peer
ctl=$build/keepalivectl
for exe in "$daemon" "$peer" "$ctl"; do
    [ -x "$exe" ] || { echo "FAIL: $exe not built"; exit 1; }
done
command -v tshark >/dev/null || { echo "SKIP: tshark not installed (apt install tshark)"; exit 77; }
command -v tcpdump >/dev/null || { echo "SKIP: tcpdump not installed (apt install tcpdump)"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 (crafts the AUTH datagram) not found"; exit 77; }
tshark -v >/dev/null 2>&1 || { echo "SKIP: tshark does not run"; exit 77; }
# -G must come first; the script's protocols then appear in the list.
if ! tshark -G protocols -X "lua_script:$lua" 2>/dev/null | grep -q '^KAP/1'; then
    if ! tshark -G folders 2>/dev/null | grep -qi lua; then
        echo "SKIP: this tshark has no Lua support"; exit 77
    fi
    echo "FAIL: tshark does not load $lua:"
    tshark -G protocols -X "lua_script:$lua" 2>&1 | grep -v '^[^\t]*\t[^\t]*\t[^\t]*$' | head -20
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/check-dissector.XXXXXX")
chmod 755 "$work"  # tcpdump may drop privileges before writing the capture
pids=()
cleanup() {
    trap '' PIPE HUP INT TERM
    set +e
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "${KEEPALIVE_TEST_KEEP:-}" ]; then echo "# kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM PIPE

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# Polls "$@" every 0.1 s for up to 30 s.
wait_for() {
    local i
    for i in $(seq 300); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# A UDP port outside the ephemeral range that nothing on this host uses.
used_ports() { ss -Huan | awk '{print $4}' | sed 's/.*://'; }
free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12000))
        if ! used_ports | grep -qx "$p" && ! printf '%s\n' "${taken[@]:-}" | grep -qx "$p"; then
            taken+=("$p"); echo "$p"; return
        fi
    done
    echo "no free port" >&2; exit 1
}
taken=()
port=$(free_port); taken+=("$port")
lreg=$(free_port); taken+=("$lreg")
lprobe=$(free_port); taken+=("$lprobe")
peer_port=$(free_port); taken+=("$peer_port")
echo "# KAP/1 on 127.0.0.1:$port, legacy on $lreg/$lprobe"

pcap=$work/kap.pcap
tcpdump -i lo -n -U --immediate-mode -w "$pcap" \
    "udp and (port $port or port $lreg or port $lprobe)" 2>"$work/tcpdump.err" &
tcpdump_pid=$!
pids+=("$tcpdump_pid")
if ! wait_for grep -q "listening on" "$work/tcpdump.err"; then
    if grep -qiE "permission|not permitted" "$work/tcpdump.err"; then
        echo "SKIP: tcpdump cannot capture on lo: $(head -1 "$work/tcpdump.err")"; exit 77
    fi
    echo "FAIL: tcpdump did not start:"; cat "$work/tcpdump.err"; exit 1
fi

cat >"$work/keepalived.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
control_socket = "$work/control.sock"

[peers]
min_interval = "10ms"

[legacy]
enable = true
address = "127.0.0.1"
register_port = $lreg
probe_port = $lprobe
EOF
"$daemon" --config "$work/keepalived.toml" --log-target stderr 2>"$work/daemon.log" &
pids+=("$!")
wait_for test -S "$work/control.sock" || { echo "FAIL: keepalived did not start"; cat "$work/daemon.log"; exit 1; }

"$peer" --server "127.0.0.1:$port" --name dissect-kap --interval 100ms --probes 3 \
    --bind "127.0.0.1:$peer_port" --log-target stderr 2>"$work/peer.log" &
kap_peer=$!
pids+=("$kap_peer")
# The old protocol probes the peer's IP on the server's probe port: the peer
# needs an address of its own (any 127/8 address is loopback).
legacy_ip=127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))
"$peer" --legacy --server 127.0.0.1 --name dissect-legacy --interval 1s --probes 3 \
    --bind "$legacy_ip" --legacy-ports "$lreg:$lprobe" --log-target stderr 2>"$work/legacy.log" &
pids+=("$!")

# Both up, and the KAP/1 peer answered a few probes.
peer_field() {  # NAME FIELD
    "$ctl" --socket "$work/control.sock" peers --json |
        python3 -c "import json,sys; [print(p['$2']) for p in json.load(sys.stdin)['peers'] if p['name']=='$1']"
}
acked() { [ "$(peer_field dissect-kap state)" = up ] && [ "$(peer_field dissect-legacy state)" = up ]; }
wait_for acked || { fail "peers did not come up"; cat "$work/daemon.log"; }
sleep_until_probes() {
    local n
    n=$("$ctl" --socket "$work/control.sock" status --json |
        python3 -c "import json,sys; print(json.load(sys.stdin)['datagrams_received'])")
    [ "$n" -ge 12 ]
}
wait_for sleep_until_probes || fail "too few datagrams received"

# A REGISTER with an AUTH trailer, key id 42, HMAC-SHA256 under a made-up key:
# the daemon (no keys configured) drops it; the dissector must show the trailer.
python3 - "$port" <<'EOF'
import hashlib, hmac, socket, struct, sys
name = b"dissect-auth"
body = struct.pack(">QQIBB", 0x1122334455667788, 0x99, 1000, 3, len(name)) + bytes(16) + name
length = 12 + len(body) + 36
head = b"KA" + struct.pack(">BBBBHI", 1, 1, 0x01, 0, length, 0)
key_id = struct.pack(">I", 42)
mac = hmac.new(b"test key", head + body + key_id, hashlib.sha256).digest()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(head + body + key_id + mac, ("127.0.0.1", int(sys.argv[1])))
print("# AUTH MAC " + mac.hex())
EOF
auth_mac=$(python3 - <<'EOF'
import hashlib, hmac, struct
name = b"dissect-auth"
body = struct.pack(">QQIBB", 0x1122334455667788, 0x99, 1000, 3, len(name)) + bytes(16) + name
head = b"KA" + struct.pack(">BBBBHI", 1, 1, 0x01, 0, 12 + len(body) + 36, 0)
print(hmac.new(b"test key", head + body + struct.pack(">I", 42), hashlib.sha256).hexdigest())
EOF
)
wait_for test "$("$ctl" --socket "$work/control.sock" status --json |
    python3 -c "import json,sys; print(json.load(sys.stdin)['drops']['unauthenticated'])")" -ge 1 ||
    fail "the AUTH datagram did not arrive"

# The goodbye: SIGTERM makes keepalive-peer send BYE diag 5.
kill -TERM "$kap_peer"
wait "$kap_peer" 2>/dev/null || true
wait_for test "$(peer_field dissect-kap state)" = left || fail "peer did not leave"
decode() {  # FILTER FIELD...
    local filter=$1; shift
    local args=()
    for field in "$@"; do args+=(-e "$field"); done
    tshark -X "lua_script:$lua" -n -r "$pcap" -d "udp.port==$port,kap" \
        -d "udp.port==$lreg,kaplegacy" -d "udp.port==$lprobe,kaplegacy" \
        -Y "$filter" -T fields -E separator='|' "${args[@]}" 2>"$work/tshark.err"
}
# The first row of a decode.
first() { decode "$@" | head -1; }
expect() {  # WHAT ACTUAL EXPECTED
    if [ "$2" = "$3" ]; then echo "ok: $1 = $3"; else fail "$1: got '$2', expected '$3'"; fi
}

# tcpdump writes each packet as it comes (-U): stop once the BYE is in the file.
bye_captured() { [ -n "$(decode 'kap.type == 7 && kap.diag == 5' frame.number)" ]; }
wait_for bye_captured || fail "no BYE in the capture"
kill -INT "$tcpdump_pid"
wait "$tcpdump_pid" 2>/dev/null || true

echo "# capture: $(tshark -r "$pcap" 2>/dev/null | wc -l) packets"

reg1=$(first 'kap.type == 1 && kap.name == "dissect-kap" && kap.cookie_zero == 1' \
    kap.magic kap.version kap.flags kap.diag kap.length kap.session kap.nonce kap.incarnation \
    kap.interval_ms kap.probes kap.name_len kap.name)
IFS='|' read -r magic version flags diag length session nonce incarnation interval probes \
    name_len name <<<"$reg1"
expect "REGISTER magic" "$magic" "KA"
expect "REGISTER version" "$version" "1"
expect "REGISTER flags" "$flags" "0x00"
expect "REGISTER diag" "$diag" "0"
expect "REGISTER length" "$length" "$((50 + 11))"
expect "REGISTER session" "$session" "0x00000000"
expect "REGISTER interval" "$interval" "100"
expect "REGISTER probes" "$probes" "3"
expect "REGISTER name_len" "$name_len" "11"
expect "REGISTER name" "$name" "dissect-kap"
[ -n "$nonce" ] && [ "$nonce" != 0x0000000000000000 ] || fail "REGISTER nonce missing: '$nonce'"

challenge=$(first "kap.type == 2 && kap.nonce == $nonce" kap.session kap.length kap.cookie)
IFS='|' read -r c_session c_length cookie <<<"$challenge"
expect "CHALLENGE session" "$c_session" "0x00000000"
expect "CHALLENGE length" "$c_length" "36"
[ ${#cookie} -eq 32 ] || fail "CHALLENGE cookie: '$cookie'"

reg2=$(first "kap.type == 1 && kap.nonce == $nonce && kap.cookie_zero == 0" kap.cookie kap.name)
expect "REGISTER with cookie" "$reg2" "$cookie|dissect-kap"

accept=$(first "kap.type == 3 && kap.nonce == $nonce" kap.session kap.length kap.epoch \
    kap.interval_ms kap.probes kap.padding)
IFS='|' read -r a_session a_length epoch a_interval a_probes padding <<<"$accept"
expect "ACCEPT length" "$a_length" "36"
expect "ACCEPT interval" "$a_interval" "100"
expect "ACCEPT probes" "$a_probes" "3"
expect "ACCEPT padding" "$padding" "000000"
[ -n "$a_session" ] && [ "$a_session" != 0x00000000 ] || fail "ACCEPT session: '$a_session'"
[ -n "$epoch" ] || fail "ACCEPT epoch missing"

probe=$(first "kap.type == 5 && kap.session == $a_session && kap.seq == 1" kap.length kap.tx_time \
    kap.diag)
IFS='|' read -r p_length tx_time p_diag <<<"$probe"
expect "PROBE length" "$p_length" "28"
expect "PROBE diag" "$p_diag" "0"
[ -n "$tx_time" ] || fail "PROBE seq 1 on session $a_session not found"

ack=$(first "kap.type == 6 && kap.session == $a_session && kap.seq == 1" kap.length kap.tx_time \
    kap.incarnation)
expect "ACK" "$ack" "36|$tx_time|$incarnation"

bye=$(first "kap.type == 7 && kap.session == $a_session" kap.length kap.diag kap.seq)
IFS='|' read -r b_length b_diag b_seq <<<"$bye"
expect "BYE length" "$b_length" "20"
expect "BYE diag" "$b_diag" "5"
[ -n "$b_seq" ] && [ "$b_seq" -ge 1 ] || fail "BYE seq: '$b_seq'"

# The handshake reads as one conversation in the Info column.
info=$(tshark -X "lua_script:$lua" -n -r "$pcap" -d "udp.port==$port,kap" \
    -Y "kap.nonce == $nonce || (kap.session == $a_session && kap.seq <= 1)" -T fields -e _ws.col.Info 2>/dev/null)
echo "$info" | sed 's/^/#   /'
for word in "REGISTER name=dissect-kap interval=100ms probes=3" CHALLENGE \
    "REGISTER name=dissect-kap interval=100ms probes=3 (with cookie)" \
    "ACCEPT session=$a_session interval=100ms probes=3" "PROBE session=$a_session seq=1" \
    "ACK session=$a_session seq=1"; do
    grep -qxF "$word" <<<"$info" || fail "Info column lacks '$word'"
done

auth=$(first 'kap.flags.auth == 1' kap.type kap.flags kap.name kap.auth.key_id kap.auth.mac kap.length)
expect "AUTH REGISTER" "$auth" "1|0x01|dissect-auth|42|$auth_mac|$((50 + 12 + 36))"

# Legacy protocol on the ports set above.
lreg_row=$(first 'kaplegacy.kind == "registration"' kaplegacy.name kaplegacy.interval_s \
    kaplegacy.probes)
expect "legacy registration" "$lreg_row" "dissect-legacy|1|3"
lprobe_row=$(first 'kaplegacy.kind == "probe"' kaplegacy.token)
[ -n "$lprobe_row" ] || fail "no legacy probe decoded"
lreply_row=$(first "kaplegacy.kind == \"reply\" && kaplegacy.token == \"$lprobe_row\"" kaplegacy.name)
expect "legacy reply to probe $lprobe_row" "$lreply_row" "dissect-legacy"

# Nothing in the capture is flagged malformed.
malformed=$(decode '_ws.malformed || _ws.expert.severity == error' frame.number | wc -l)
expect "malformed frames" "$malformed" "0"
# (tshark warns when run as root; anything else is a complaint about the script.)
if grep -v 'Running as user' "$work/tshark.err"; then fail "tshark complained (above)"; fi

if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)"
    export KEEPALIVE_TEST_KEEP=1
    exit 1
fi
echo "PASS"
