#!/usr/bin/env bash
# Socket activation, as keepalived.socket does it: the daemon is started with
# an inherited UDP socket (LISTEN_FDS/LISTEN_PID, fd 3) and must serve peers on
# it besides the [server] listen addresses of its configuration.
#
#   run 1  inherited 127.0.0.1:P, listen = ["127.0.0.1:Q"]: a peer registered
#          through P and one through Q both come up; both addresses are served.
#   run 2  inherited 127.0.0.1:P, listen = ["127.0.0.1:P", "127.0.0.1:Q"]: the
#          daemon must not try to bind P again (EADDRINUSE) but serve it through
#          the inherited socket; a peer through P comes up. Then a reload
#          (SIGHUP) with listen = ["127.0.0.1:P"] drops Q and keeps P, once.
#
# The activator is systemd-socket-activate --datagram (which, like systemd,
# starts the daemon on the first datagram: the peer's REGISTER); without it,
# or with KEEPALIVE_ACTIVATOR=python, a python3 wrapper binds the socket, puts
# it on fd 3, sets LISTEN_FDS=1 and LISTEN_PID and execs the daemon.
# Loopback only. Every process started is stopped on exit.
#
# usage: check-socket-activation.sh BUILD_DIR
# Exit status: 0 pass, 1 fail, 77 skip (no python3).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
build=$(cd "$1" && pwd)
daemon=$build/keepalived
peer=$build/keepalive-peer
ctl=$build/keepalivectl
for exe in "$daemon" "$peer" "$ctl"; do
    [ -x "$exe" ] || { echo "FAIL: $exe not built"; exit 1; }
done
command -v python3 >/dev/null || { echo "SKIP: python3 (wrapper, JSON) not found"; exit 77; }

activator=python
if [ "${KEEPALIVE_ACTIVATOR:-}" != python ]; then
    for a in systemd-socket-activate /usr/bin/systemd-socket-activate \
             /lib/systemd/systemd-socket-activate; do
        if command -v "$a" >/dev/null; then activator=$(command -v "$a"); break; fi
    done
fi
echo "# activator: $activator"

work=$(mktemp -d "${TMPDIR:-/tmp}/check-sockact.XXXXXX")
pids=()
cleanup() {
    # Finish even when stdout/stderr are gone or a command fails.
    trap '' PIPE HUP INT TERM
    set +e
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
# A signal (a meson timeout, a closed output pipe) must also run the EXIT trap.
trap 'exit 1' HUP INT TERM PIPE
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# N distinct free UDP ports on 127.0.0.1. Another process could take one
# before it is used; on loopback in a test run that is unlikely enough.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# activate ADDR PORT LOG CMD...: start CMD in the background with a UDP socket
# bound to ADDR:PORT as fd 3; sets $last_pid (the daemon's pid after exec).
activate() {
    local addr=$1 port=$2 log=$3; shift 3
    if [ "$activator" = python ]; then
        python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
    s.close()
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ.pop("LISTEN_FDNAMES", None)
os.execv(sys.argv[3], sys.argv[3:])
' "$addr" "$port" "$@" >"$log" 2>&1 &
    else
        "$activator" --datagram -l "$addr:$port" "$@" >"$log" 2>&1 &
    fi
    last_pid=$!
    pids+=("$last_pid")
}

start_peer() {  # start_peer NAME SERVER LOG
    "$peer" --server "$2" --name "$1" --interval 100ms --probes 3 --log-target stderr \
        >"$3" 2>&1 &
    pids+=("$!")
}

# JSON from keepalivectl, read with python3: prints one value per line.
peer_state() {  # peer_state SOCKET NAME
    "$ctl" --socket "$1" peers --json 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["peers"]:
    if p["name"] == sys.argv[1]:
        print(p["state"])' "$2" 2>/dev/null || true
}
listening() {  # listening SOCKET: the addresses the daemon serves
    "$ctl" --socket "$1" status --json 2>/dev/null | python3 -c '
import json, sys
print("\n".join(sorted(json.load(sys.stdin)["daemon"]["listen"])))' 2>/dev/null || true
}

# wait_until SECONDS DAEMON_PID COMMAND...: poll every 100 ms; fails early when
# the daemon has exited.
wait_until() {
    local limit=$1 pid=$2; shift 2
    local deadline=$((SECONDS + limit))
    while [ $SECONDS -lt $deadline ]; do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
peer_up() { [ "$(peer_state "$1" "$2")" = up ]; }
listen_is() { [ "$(listening "$1")" = "$2" ]; }

show_logs() {
    local f
    for f in "$@"; do echo "--- $(basename "$f")"; cat "$f" 2>/dev/null || true; done
}

write_config() {  # write_config FILE CONTROL_SOCKET LISTEN...
    local file=$1 control=$2; shift 2
    local list="" a
    for a in "$@"; do list+="${list:+, }\"$a\""; done
    printf '[server]\nlisten = [%s]\ncontrol_socket = "%s"\n' "$list" "$control" >"$file"
    "$daemon" --check-config "$file" >/dev/null || { cat "$file"; echo "FAIL: bad test config"; exit 1; }
}

read -r p1 q1 p2 q2 < <(free_ports 4)

# --- run 1: inherited P, configured Q ------------------------------------------
echo "# run 1: inherited 127.0.0.1:$p1, listen = [\"127.0.0.1:$q1\"]"
sock1=$work/run1.sock
[ ${#sock1} -lt 108 ] || { echo "FAIL: $sock1 is too long for a Unix socket (set TMPDIR)"; exit 1; }
write_config "$work/run1.toml" "$sock1" "127.0.0.1:$q1"
activate 127.0.0.1 "$p1" "$work/run1-daemon.log" \
    "$daemon" --config "$work/run1.toml" --log-target stderr
d1=$last_pid
start_peer via-socket "127.0.0.1:$p1" "$work/run1-peer-socket.log"
if wait_until 30 "$d1" peer_up "$sock1" via-socket; then
    echo "ok: peer via-socket is up through the inherited socket"
    start_peer via-config "127.0.0.1:$q1" "$work/run1-peer-config.log"
    if wait_until 30 "$d1" peer_up "$sock1" via-config; then
        echo "ok: peer via-config is up through the configured address"
    else
        fail "run 1: peer via-config (127.0.0.1:$q1) did not come up: '$(peer_state "$sock1" via-config)'"
    fi
    expected=$(printf '127.0.0.1:%s\n' "$p1" "$q1" | sort)
    listen_is "$sock1" "$expected" \
        || fail "run 1: serving [$(listening "$sock1" | tr '\n' ' ')], expected [$(tr '\n' ' ' <<<"$expected")]"
    grep -q "serving on 127.0.0.1:$p1 (from systemd)" "$work/run1-daemon.log" \
        || fail "run 1: the daemon did not log the inherited socket"
else
    fail "run 1: peer via-socket (127.0.0.1:$p1) did not come up: '$(peer_state "$sock1" via-socket)'"
fi
kill -0 "$d1" 2>/dev/null || fail "run 1: the daemon exited"
[ $failures -eq 0 ] || show_logs "$work"/run1-*.log

# --- run 2: the inherited address is also configured --------------------------
echo "# run 2: inherited 127.0.0.1:$p2, listen = [\"127.0.0.1:$p2\", \"127.0.0.1:$q2\"]"
before=$failures
sock2=$work/run2.sock
write_config "$work/run2.toml" "$sock2" "127.0.0.1:$p2" "127.0.0.1:$q2"
activate 127.0.0.1 "$p2" "$work/run2-daemon.log" \
    "$daemon" --config "$work/run2.toml" --log-target stderr
d2=$last_pid
start_peer overlap "127.0.0.1:$p2" "$work/run2-peer.log"
if wait_until 30 "$d2" peer_up "$sock2" overlap; then
    echo "ok: peer overlap is up; the configured copy of the inherited address was not bound again"
    expected=$(printf '127.0.0.1:%s\n' "$p2" "$q2" | sort)
    listen_is "$sock2" "$expected" \
        || fail "run 2: serving [$(listening "$sock2" | tr '\n' ' ')], expected [$(tr '\n' ' ' <<<"$expected")]"

    # Reload with only the inherited address configured: Q goes, P stays once.
    write_config "$work/run2.toml" "$sock2" "127.0.0.1:$p2"
    kill -HUP "$d2"
    if wait_until 30 "$d2" listen_is "$sock2" "127.0.0.1:$p2"; then
        echo "ok: after SIGHUP the daemon serves 127.0.0.1:$p2 only, from the inherited socket"
    else
        fail "run 2: after SIGHUP serving [$(listening "$sock2" | tr '\n' ' ')], expected [127.0.0.1:$p2]"
    fi
    peer_up "$sock2" overlap || fail "run 2: peer overlap is '$(peer_state "$sock2" overlap)' after the reload"
else
    fail "run 2: peer overlap (127.0.0.1:$p2) did not come up: '$(peer_state "$sock2" overlap)'"
fi
kill -0 "$d2" 2>/dev/null || fail "run 2: the daemon exited"
grep -i 'address already in use' "$work/run2-daemon.log" && fail "run 2: EADDRINUSE"
[ $failures -eq "$before" ] || show_logs "$work"/run2-*.log

if [ $failures -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "PASS: the daemon serves peers on inherited sockets, also when the address is configured"
