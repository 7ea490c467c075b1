#!/usr/bin/env bash
# The pid1 suite: the Debian package under a real systemd. Boots a Debian 12
# root (tests/pid1/make-root.sh, cached under /var/tmp) with
#   systemd-nspawn --register=no --keep-unit --private-network -D ROOT -b
# installs the .deb (built once per source state into BUILD_DIR/deb, shared
# with the package-deb test) and
# drives the container from outside with nsenter -t <its systemd> -a. Checks,
# in order: the package installs, enables and starts keepalived (READY,
# STATUS=); keepalive-peer@NAME comes up and is down after kill -9, with the
# journal entry and its catalog text; reload, restart, stop + start, a
# watchdog kill (SIGSTOP) and a reinstall of the .deb each give zero peer
# events and zero re-registrations for 50 healthy agents, every agent logging
# the BYE 8 of those that send one; the sandbox lets the daemon write only its
# StateDirectory/RuntimeDirectory; a stop longer than the agents' grace: each
# keeps its session through the grace and then registers again, which starts
# the daemon through keepalived.socket and renews the same sessions silently.
#
# usage: pid1.sh SRC_DIR BUILD_DIR
# Exit status: 0 pass, 1 fail, 77 cannot run here (reason printed).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SRC_DIR BUILD_DIR" >&2; exit 2; }
src=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
agents=${PID1_AGENTS:-50}

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn)"
for tool in systemd-nspawn nsenter dpkg-buildpackage; do
    command -v "$tool" >/dev/null || skip "$tool not found (apt-get install systemd-container dpkg-dev)"
done

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
start=$SECONDS
work=$(mktemp -d /var/tmp/kap-pid1.XXXXXX)
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM PIPE

# --- the root and the package ---------------------------------------------------
# The package is built once per source state into BUILD_DIR/deb, shared with
# the package-deb test (tests/system/build-deb.sh).
debdir=$("$src/tests/system/build-deb.sh" "$src" "$build/deb") || { fail "the package build"; exit 1; }
deb=$(ls "$debdir"/kap-keepalived_*.deb | head -n 1)
echo "# package $(basename "$deb") ($((SECONDS - start)) s)"

tarball=/var/tmp/keepalived-pid1-bookworm-v1.tar
rc=0; "$here/make-root.sh" "$tarball" || rc=$?
[ $rc = 0 ] || exit $rc

root=$work/root
mkdir "$root"
tar -C "$root" -xf "$tarball"
cp "$deb" "$root/srv/kap-keepalived.deb"
# The package's libraries that a minimal root lacks, from the host's apt (the
# container has no network): libsodium.
mkdir -p "$root/srv/deps"
(cd "$root/srv/deps" && apt-get download libsodium23 >"$work/download.log" 2>&1) \
    || { cat "$work/download.log"; fail "apt-get download libsodium23"; exit 1; }

# --- boot ------------------------------------------------------------------------
systemd-nspawn --register=no --keep-unit --private-network --quiet -D "$root" -b \
    >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
ct_pid=
for _ in $(seq 300); do
    ct_pid=$(pgrep -P "$nspawn_pid" | head -n 1 || true)
    [ -n "$ct_pid" ] && [ "$(cat "/proc/$ct_pid/comm" 2>/dev/null)" = systemd ] && break
    ct_pid=; sleep 0.1
done
[ -n "$ct_pid" ] || { tail -n 20 "$work/console.log"; skip "systemd-nspawn did not boot a container here"; }
ct() { nsenter -t "$ct_pid" -a "$@"; }
# Until its manager answers (the bus may not be up yet), then until boot is done.
state=
for _ in $(seq 600); do
    state=$(nsenter -t "$ct_pid" -a systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 0.2
done
case $state in running|degraded) ;; *) tail -n 20 "$work/console.log"; fail "container boot: '$state'"; exit 1 ;; esac
echo "# container booted, systemd pid $ct_pid ($((SECONDS - start)) s)"

# Polls a command until it succeeds, up to $2 seconds (default 60).
wait_for() {
    local what=$1 limit=${2:-60}; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { fail "$what (waited ${limit} s)"; return 1; }
        sleep 0.2
    done
}
status_text() { ct systemctl show -p StatusText --value keepalived.service; }
peers_up() { status_text | grep -q "^$1 peers\?: $1 up"; }

# --- 1. the package installs, enables and starts keepalived ------------------------
# A test drop-in: the watchdog fires sooner, so the kill check stays short.
mkdir -p "$root/etc/systemd/system/keepalived.service.d"
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=1s\n' \
    >"$root/etc/systemd/system/keepalived.service.d/pid1-test.conf"
ct sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /srv/deps/*.deb /srv/kap-keepalived.deb' \
    >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i"; exit 1; }
ct systemctl is-enabled keepalived.service | grep -qx enabled || fail "keepalived.service not enabled"
active() { ct systemctl is-active keepalived.service; }
ready() { active && status_text | grep -q peers; }
wait_for "keepalived active with STATUS=" 30 ready
ct systemctl status keepalived.service --no-pager | grep -q "Status: \"0 peers" \
    || fail "systemctl status does not show STATUS="
echo "# installed and started ($((SECONDS - start)) s)"

# --- 2. keepalive-peer@NAME: up, then down after kill -9 ----------------------------
printf 'KEEPALIVE_SERVER=127.0.0.1:7371\n' >"$root/etc/keepalived/peer-db1.conf"
ct systemctl start keepalive-peer@db1.service
wait_for "keepalive-peer@db1 up" 30 peers_up 1
ct systemctl kill -s KILL keepalive-peer@db1.service
db1_down() { ct journalctl -u keepalived PEER_NAME=db1 PEER_STATE=down -o json | grep -q MESSAGE_ID; }
wait_for "db1 down in the journal" 30 db1_down
entry=$(ct journalctl -u keepalived PEER_NAME=db1 PEER_STATE=down -o json -n 1 || true)
for field in MESSAGE_ID PEER_NAME PEER_ADDRESS PEER_STATE PEER_SESSION PEER_INTERVAL_MSEC PEER_PROBES; do
    grep -q "\"$field\"" <<<"$entry" || fail "down entry lacks $field: $entry"
done
ct journalctl -x -u keepalived PEER_NAME=db1 PEER_STATE=down --no-pager -n 1 \
    | grep -q "Subject: Peer db1 is down" \
    || fail "journalctl -x shows no catalog text for the down entry"
ct systemctl stop keepalive-peer@db1.service
echo "# keepalive-peer@db1 up and down ($((SECONDS - start)) s)"

# --- 3. 50 healthy agents across reload, restart, stop + start, watchdog, reinstall -
for i in $(seq "$agents"); do
    printf 'KEEPALIVE_SERVER=127.0.0.1:7371\nKEEPALIVE_INTERVAL=3s\n' \
        >"$root/etc/keepalived/peer-agent$i.conf"
done
ct sh -c "for i in \$(seq $agents); do systemctl start --no-block keepalive-peer@agent\$i.service; done"
# db1 is down, not forgotten: "51 peers: 50 up, 0 suspect, 1 down, 0 left".
agents_up() { status_text | grep -q " $agents up, 0 suspect"; }
wait_for "$agents agents up" 120 agents_up

received() { ct keepalivectl status --json | sed -n 's/.*"datagrams_received": *\([0-9]*\).*/\1/p'; }
# Probing has resumed for everyone: every agent answered at least 3 probes.
probed_enough() { local r; r=$(received); [ -n "$r" ] && [ "$r" -ge $((agents * 3)) ]; }

check_no_flap() {
    local kind=$1 cursor=$2 expect_bye=$3
    wait_for "$kind: keepalived active again" 60 active
    wait_for "$kind: probing resumed for every agent" 60 probed_enough
    local events regs byes
    events=$(after "$cursor" -u keepalived | grep -c '"PEER_NAME":"agent' || true)
    regs=$(regs_since "$cursor")
    byes=$(byes_since "$cursor")
    echo "# $kind: $events events, $regs re-registrations, $byes BYE 8 ($((SECONDS - start)) s)"
    [ "$events" = 0 ] || { fail "$kind: $events peer events"; after "$cursor" -u keepalived | grep '"PEER_NAME":"agent' | messages | head -n 5; }
    [ "$regs" = 0 ] || fail "$kind: $regs re-registrations"
    if [ "$expect_bye" = yes ]; then
        after "$cursor" -u keepalived | grep -qF "(BYE 8)" \
            || fail "$kind: the daemon did not say BYE 8"
        # Every one (the journal may take a moment to show the last lines).
        [ "$byes" = "$agents" ] || wait_for "$kind: every agent logged BYE 8" 30 all_byes "$cursor" \
            || bye_report "$cursor"
    fi
    agents_up || fail "$kind: not every agent up: $(status_text)"
}
cursor() {
    local c
    c=$(ct journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p')
    [ -n "$c" ] || { echo "FAIL: no journal cursor" >&2; kill -TERM $$; exit 1; }
    echo "$c"
}
# The journal after cursor $1, one JSON object a line; the other arguments are
# journalctl filters. Not --after-cursor: systemd 252 then skips the first
# entry that matches the filters when the cursor's own entry does not (that
# hid one agent's BYE 8 line of 50). --cursor includes the cursor's entry,
# which is dropped here.
# A journalctl that fails ends the suite: an empty answer must not pass for
# "zero events".
after() {
    local c=$1 out
    shift
    out=$(ct journalctl --cursor="$c" -o json "$@") \
        || { echo "FAIL: journalctl --cursor='$c' $*" >&2; kill -TERM $$; exit 1; }
    grep -vF "\"__CURSOR\":\"$c\"" <<<"$out" || true
}
messages() { python3 -c 'import json, sys; [print(json.loads(l).get("MESSAGE")) for l in sys.stdin]'; }
agent_lines() { after "$1" -u 'keepalive-peer@agent*' | grep -c "$2" || true; }
byes_since() { agent_lines "$1" "goodbye: restarting"; }
regs_since() { agent_lines "$1" "registered with"; }
all_byes() { [ "$(byes_since "$1")" = "$agents" ]; }
# Which agents did not log the BYE 8, and what the daemon logged.
bye_report() {
    after "$1" -u 'keepalive-peer@agent*' | python3 -c '
import json, sys
said = {json.loads(l).get("_SYSTEMD_UNIT") for l in sys.stdin if "goodbye: restarting" in l}
print("# no BYE 8 line from:", " ".join(f"agent{i}" for i in range(1, int(sys.argv[1]) + 1)
                                         if f"keepalive-peer@agent{i}.service" not in said))' "$agents"
    echo "# the daemon since:"
    after "$1" -u keepalived | grep -v PEER_NAME | messages | tail -n 15
    ct keepalivectl status --json | grep -E '"(send_errors|unroutable)"' || true
}

c=$(cursor); ct systemctl reload keepalived.service; check_no_flap "systemctl reload" "$c" no
c=$(cursor); ct systemctl restart keepalived.service; check_no_flap "systemctl restart" "$c" yes
c=$(cursor); ct systemctl stop keepalived.service; ct systemctl start keepalived.service
check_no_flap "systemctl stop + start" "$c" yes
c=$(cursor); pid=$(ct systemctl show -p MainPID --value keepalived.service)
ct kill -STOP "$pid"
new_main_pid() { local now; now=$(ct systemctl show -p MainPID --value keepalived.service); [ "$now" != 0 ] && [ "$now" != "$pid" ]; }
wait_for "watchdog restarted keepalived" 60 new_main_pid
check_no_flap "watchdog kill (SIGSTOP)" "$c" no
c=$(cursor); ct env DEBIAN_FRONTEND=noninteractive dpkg -i /srv/kap-keepalived.deb >"$work/dpkg2.log" 2>&1 \
    || { cat "$work/dpkg2.log"; fail "dpkg -i (reinstall)"; }
check_no_flap "reinstall of the .deb" "$c" yes

# --- 4. the sandbox -----------------------------------------------------------------
pid=$(ct systemctl show -p MainPID --value keepalived.service)
# As the daemon: its namespaces and its (dynamic) user and group.
uid=$(ct awk '/^Uid:/ {print $2}' "/proc/$pid/status")
gid=$(ct awk '/^Gid:/ {print $2}' "/proc/$pid/status")
as_daemon() { ct nsenter -t "$pid" -a -S "$uid" -G "$gid" "$@"; }
as_daemon sh -c 'echo x > /var/lib/keepalived/pid1-probe && rm /var/lib/keepalived/pid1-probe' \
    || fail "the daemon cannot write its StateDirectory"
as_daemon sh -c 'echo x > /run/keepalived/pid1-probe && rm /run/keepalived/pid1-probe' \
    || fail "the daemon cannot write its RuntimeDirectory"
# (/tmp and /var/tmp are private to the service: PrivateTmp=yes.)
for dir in /etc/keepalived /var/lib /root /usr/sbin /run; do
    if as_daemon sh -c "echo x > $dir/pid1-probe" 2>/dev/null; then
        fail "the daemon could write $dir"; rm -f "$root$dir/pid1-probe"
    fi
done
echo "# sandbox holds ($((SECONDS - start)) s)"

# --- 5. stopped for longer than the grace, then socket activation ------------------
# systemctl stop: the daemon says BYE 8 and every agent logs it and keeps its
# session, silent, for its grace (probes × interval + interval + 30 s after the
# last probe), then gives up and registers again, unanswered. Then
# keepalived.socket, as shipped (127.0.0.1:7371, [::1]:7371), takes the
# addresses: the next REGISTER makes systemd start keepalived.service with the
# socket's file descriptors, and the daemon, with its saved table, takes every
# re-registration as a renewal of the same session, with no event.
c=$(cursor)
ct systemctl stop keepalived.service
after "$c" -u keepalived | grep -qF "(BYE 8)" \
    || fail "systemctl stop: the daemon did not say BYE 8"
wait_for "systemctl stop: every agent logged BYE 8" 30 all_byes "$c" || bye_report "$c"
# Stopped until every agent has given up (the socket not yet listening either,
# or the first REGISTER would start the daemon, which would then probe the
# agents still in their grace before they give up).
all_lost() { [ "$(agent_lines "$1" "lost: no probe")" = "$agents" ]; }
wait_for "every agent gave up after its grace" 150 all_lost "$c"
echo "# stopped: every agent kept its session through its grace, then gave up ($((SECONDS - start)) s)"
ct systemctl start keepalived.socket || fail "keepalived.socket did not start"
all_regs() { [ "$(regs_since "$1")" = "$agents" ]; }
if wait_for "every agent registered again through keepalived.socket" 120 all_regs "$c"; then
    after "$c" -u keepalived | grep -qF "serving on 127.0.0.1:7371 (from systemd)" \
        || fail "socket activation: the daemon did not serve keepalived.socket's 127.0.0.1:7371"
    # The socket is systemd's: the container's PID 1 holds it too.
    nsenter -t "$ct_pid" -n ss -Hulpn 'sport = :7371' | grep -q "pid=$ct_pid," \
        || fail "socket activation: 127.0.0.1:7371 is not held by systemd: $(nsenter -t "$ct_pid" -n ss -Hulpn 'sport = :7371')"
    after "$c" -u 'keepalive-peer@agent*' -u keepalived.service >"$work/grace.json"
    python3 - "$work/grace.json" "$agents" <<'PY' || fail "the grace and the renewals, per agent (above)"
import json, re, sys
agents, rows, daemon_start = int(sys.argv[2]), {}, None
for line in open(sys.argv[1]):
    e = json.loads(line)
    msg, unit = e.get("MESSAGE"), e.get("_SYSTEMD_UNIT", "")
    if not isinstance(msg, str):
        continue
    t = int(e["__REALTIME_TIMESTAMP"]) / 1e6
    if unit == "keepalived.service":
        if "from systemd" in msg and daemon_start is None:
            daemon_start = t
        continue
    r = rows.setdefault(unit, {})
    m = re.search(r"goodbye: restarting; keeping session ([0-9a-f]{8})", msg)
    if m and "bye" not in r:
        r["bye"], r["kept"] = t, m.group(1)
    if "lost: no probe" in msg and "lost" not in r:
        r["lost"] = t
    m = re.search(r"registered with .* session ([0-9a-f]{8})", msg)
    if m and "reg" not in r:
        r["reg"], r["session"] = t, m.group(1)
bad, waited = [], []
for i in range(1, agents + 1):
    unit = f"keepalive-peer@agent{i}.service"
    r = rows.get(unit, {})
    if not all(k in r for k in ("bye", "lost", "reg")):
        bad.append(f"{unit}: lines missing: {r}")
        continue
    waited.append(r["lost"] - r["bye"])
    # The grace alone is 30 s; probes x interval comes on top.
    if r["lost"] - r["bye"] < 30:
        bad.append(f"{unit}: gave up {r['lost'] - r['bye']:.1f} s after BYE 8")
    if r["reg"] < r["lost"]:
        bad.append(f"{unit}: registered before giving up")
    if r["session"] != r["kept"]:
        bad.append(f"{unit}: kept session {r['kept']}, registered as {r['session']}")
if daemon_start is None or (waited and daemon_start < max(r["lost"] for r in rows.values() if "lost" in r)):
    bad.append("keepalived.service was not started, through the socket, after every agent gave up")
for b in bad:
    print("FAIL:", b)
if waited:
    print(f"# every agent logged BYE 8, kept its session {min(waited):.1f} to {max(waited):.1f} s, "
          f"then registered again, renewing the same session")
sys.exit(1 if bad else 0)
PY
    n=$(after "$c" -u keepalived | grep -c '"PEER_NAME":"agent' || true)
    [ "$n" = 0 ] || { fail "after the grace: $n peer events"; after "$c" -u keepalived | grep '"PEER_NAME":"agent' | messages | head -n 5; }
    wait_for "after the grace: every agent up" 60 agents_up
fi
echo "# stop past the grace, socket activation ($((SECONDS - start)) s)"

if [ $failures -gt 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "PASS ($((SECONDS - start)) s)"
