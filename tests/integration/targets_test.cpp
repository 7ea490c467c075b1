// TCP targets end to end: the real keepalived in one network namespace watches
// a real listener (a socket this test opens) in another, joined by a veth pair.
// Faults are made with nft in the target's namespace. Namespaces, links and
// rules are created by each test and removed when it ends; the test is skipped
// with the reason when namespaces cannot be made (e.g. not root).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "net/unique_fd.hpp"
#include "netns_pair.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;
using std::chrono::duration;

constexpr const char* kDaemonIp = "10.231.0.1";
constexpr const char* kTargetIp = "10.231.0.2";
constexpr std::uint16_t kPort = 5432;  // inside the target's own namespace: cannot collide

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

double seconds_since(Clock::time_point t) {
    return duration<double>(Clock::now() - t).count();
}

// The service: a listener on kTargetIp:kPort in the target's namespace.
class Service {
public:
    explicit Service(NetnsPair& net)
        : listener_(net.socket_in(NetnsPair::Side::other, SOCK_STREAM)) {
        const int one = 1;
        ::setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(kPort);
        ::inet_pton(AF_INET, kTargetIp, &sin.sin_addr);
        if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0 ||
            ::listen(listener_.get(), 8) != 0)
            fail(std::string("listener: ") + std::strerror(errno));
    }
    // Accepts the daemon's connection (waits for it).
    void accept_one() {
        const int flags = ::fcntl(listener_.get(), F_GETFL);
        ::fcntl(listener_.get(), F_SETFL, flags | O_NONBLOCK);
        UniqueFd conn;
        if (!wait_until([&] {
                conn.reset(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
                return static_cast<bool>(conn);
            }))
            fail("the daemon never connected to the service");
        conns_.push_back(std::move(conn));
    }
    // The latest connection accepted.
    int conn() const { return conns_.empty() ? -1 : conns_.back().get(); }
    void send_banner() { (void)!::send(conn(), "SSH-2.0-test\r\n", 14, MSG_NOSIGNAL); }
    // An orderly close of the latest connection: FIN.
    void close_connection() { conns_.pop_back(); }
    // A crash: the latest connection vanishes with a RST (the test drops it).
    void abort_connection() {
        const linger now{1, 0};
        ::setsockopt(conn(), SOL_SOCKET, SO_LINGER, &now, sizeof now);
        conns_.pop_back();
    }
    void stop_listening() { listener_.reset(); }

private:
    UniqueFd listener_;
    std::vector<UniqueFd> conns_;
};

struct TargetSpec {
    std::string name = "db1";
    std::string address = std::string(kTargetIp) + ":" + std::to_string(kPort);
    int idle = 1;
    int interval = 1;
    int probes = 2;
};

class TargetsTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (!net_.ok()) GTEST_SKIP() << net_.why_not();
        config_.listen = {std::string(kDaemonIp) + ":7371"};
        config_.control_socket = dir_.file("control.sock");
    }

    // peers_extra: more [peers] keys.
    void write_config(const std::vector<TargetSpec>& targets, const std::string& peers_extra = "") {
        std::string text = config_.to_toml() + peers_extra;
        for (const auto& t : targets)
            text += "\n[[targets]]\nname = \"" + t.name + "\"\naddress = \"" + t.address +
                    "\"\nidle = \"" + std::to_string(t.idle) + "s\"\ninterval = \"" +
                    std::to_string(t.interval) + "s\"\nprobes = " + std::to_string(t.probes) + "\n";
        write_file(dir_.file("keepalived.toml"), text);
    }

    void start_daemon(const std::vector<TargetSpec>& targets, const std::string& peers_extra = "",
                      const std::string& log_target = "stderr") {
        write_config(targets, peers_extra);
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived.log");
        daemon_.emplace(net_.in(NetnsPair::Side::daemon,
                                Strings{keepalived_path(), "--config", dir_.file("keepalived.toml"),
                                        "--log-target", log_target}),
                        options);
        if (!wait_until([&] { return !daemon_->running() || target_rows().has_value(); }))
            fail("keepalived did not come up:\n" + log());
    }

    std::string log() const { return daemon_ ? daemon_->stderr_text() : ""; }

    std::optional<json> target_rows() {
        try {
            return control_request(config_.control_socket, "targets").at("targets");
        } catch (const std::exception&) {
            return std::nullopt;
        }
    }
    json target(const std::string& name) {
        if (const auto rows = target_rows())
            for (const auto& t : *rows)
                if (t.at("name") == name) return t;
        return nullptr;
    }
    // Waits (polling every 10 ms) until the target is in `state` with a reason
    // containing `reason`; returns when that was first seen.
    Clock::time_point wait_for(const std::string& name, const std::string& state,
                               const std::string& reason = "", Millis limit = kPatience) {
        Clock::time_point seen{};
        const bool ok = wait_until(
            [&] {
                const json t = target(name);
                if (t.is_null() || t.at("state") != state ||
                    t.at("reason").get<std::string>().find(reason) == std::string::npos)
                    return false;
                seen = Clock::now();
                return true;
            },
            limit, 10ms);
        if (!ok)
            fail("target " + name + " never became " + state + " (" + reason +
                 "): " + target(name).dump() + "\nlog:\n" + log());
        return seen;
    }
    std::size_t log_count(const std::string& text) const {
        const std::string l = log();
        std::size_t n = 0;
        for (auto p = l.find(text); p != std::string::npos; p = l.find(text, p + 1)) ++n;
        return n;
    }

    // The daemon's namespace (kDaemonIp) and the target's (kTargetIp); the
    // nft table ka is in the target's.
    NetnsPair net_{{.daemon_prefix = "kad",
                    .other_prefix = "kat",
                    .daemon_ip = kDaemonIp,
                    .other_ip = kTargetIp,
                    .filtered = NetnsPair::Side::other,
                    .table = "ka"}};
    TempDir dir_;
    DaemonConfig config_;
    std::optional<Process> daemon_;
};

// Outcome 1, then 2: up through several idle periods (the kernel's probes are
// answered), then silence (every segment to the service dropped).
TEST_F(TargetsTest, StaysUpThroughIdlePeriodsThenSilenceIsDownInTime) {
    Service service(net_);
    const TargetSpec spec;  // idle 1 s, interval 1 s, 2 probes
    start_daemon({spec});
    service.accept_one();
    service.send_banner();
    wait_for("db1", "up");

    // Several idle periods: each is answered, nothing changes.
    const auto start = Clock::now();
    while (seconds_since(start) < 4 * spec.idle) {
        const json t = target("db1");
        ASSERT_EQ(t.at("state"), "up") << t.dump() << log();
        ASSERT_EQ(t.at("connects"), 1) << t.dump();
        std::this_thread::sleep_for(50ms);  // the poll period, not a wait for an outcome
    }
    EXPECT_EQ(log_count("is down"), 0U) << log();

    // The rule takes effect somewhere between these two instants.
    const auto before_drop = Clock::now();
    net_.nft("add rule ip ka in tcp dport " + std::to_string(kPort) + " drop");
    const auto after_drop = Clock::now();
    const auto down = wait_for("db1", "down", "no answer to keepalive probes");
    // The last answer came less than one idle period before the drop, so the
    // kernel gives up between idle + (probes - 1) x interval and
    // idle + probes x interval after it; one second of slack for a loaded machine.
    const int bound = spec.idle + spec.probes * spec.interval;
    const int floor = spec.idle + (spec.probes - 1) * spec.interval;
    const double at_most = duration<double>(down - before_drop).count();
    const double at_least = duration<double>(down - after_drop).count();
    std::cout << "silent drop: down after " << at_least << " .. " << at_most << " s (bound "
              << bound << " s, floor " << floor << " s)\n";
    EXPECT_GE(at_most, floor) << log();
    EXPECT_LE(at_least, bound + 1.0) << log();
    EXPECT_NE(target("db1").at("last_error").get<std::string>().find("ETIMEDOUT"),
              std::string::npos);
    EXPECT_NE(log().find("target db1 (10.231.0.2:5432) is down: no answer to keepalive probes"),
              std::string::npos)
        << log();

    // And up again once the silence ends.
    net_.clear_rules();
    service.accept_one();
    wait_for("db1", "up", "", 40s);
}

// Outcome 3: the host "crashes" (its connection vanishes, the RST lost), and
// answers the next keepalive probe with a reset.
TEST_F(TargetsTest, ResetAnsweringAProbeIsRestarted) {
    Service service(net_);
    start_daemon({TargetSpec{}});
    service.accept_one();
    wait_for("db1", "up");

    net_.nft("add rule ip ka out tcp sport " + std::to_string(kPort) +
             " tcp flags & (fin | rst) != 0 drop");
    service.abort_connection();
    net_.clear_rules();
    const auto crashed = Clock::now();
    // restarted leaves the target up; the log says it.
    ASSERT_TRUE(wait_until([&] { return log_count("restarted: connection reset by the host") > 0; },
                           kPatience, 10ms))
        << log();
    std::cout << "reset: restarted after " << seconds_since(crashed) << " s (next probe within "
              << TargetSpec{}.idle << " s)\n";
    EXPECT_NE(target("db1").at("last_error").get<std::string>().find("ECONNRESET"),
              std::string::npos);
    EXPECT_EQ(log_count("is down"), 0U) << log();
    // It reconnects and stays up.
    service.accept_one();
    EXPECT_EQ(target("db1").at("state"), "up");
}

// An orderly close (FIN) is `left`; with nobody listening any more the
// reconnect is refused: down "connection refused".
TEST_F(TargetsTest, OrderlyCloseIsLeftThenRefusedIsDown) {
    Service service(net_);
    start_daemon({TargetSpec{}});
    service.accept_one();
    wait_for("db1", "up");

    service.stop_listening();
    const auto closed = Clock::now();
    service.close_connection();
    wait_for("db1", "left", "closed by the service");
    std::cout << "orderly close: left after " << seconds_since(closed) << " s\n";
    const auto refused = wait_for("db1", "down", "connection refused");
    std::cout << "refused: down " << duration<double>(refused - closed).count()
              << " s after the close (first retry after 0.75-1 s)\n";
    EXPECT_NE(log().find("target db1 (10.231.0.2:5432) has left: closed by the service"),
              std::string::npos)
        << log();
    EXPECT_NE(target("db1").at("last_error").get<std::string>().find("ECONNREFUSED"),
              std::string::npos);
}

// Outcome 4: a router (here the host's own filter) answers with ICMP host
// unreachable.
TEST_F(TargetsTest, IcmpHostUnreachableIsDownUnreachable) {
    Service service(net_);
    net_.nft("add rule ip ka in tcp dport " + std::to_string(kPort) +
             " reject with icmp type host-unreachable");
    const auto started = Clock::now();
    start_daemon({TargetSpec{}});
    wait_for("db1", "down", "unreachable");
    std::cout << "unreachable: down " << seconds_since(started) << " s after start\n";
    EXPECT_NE(target("db1").at("last_error").get<std::string>().find("EHOSTUNREACH"),
              std::string::npos);
    net_.clear_rules();
    service.accept_one();
    wait_for("db1", "up", "", 40s);

    // Once connected, Linux ignores ICMP errors that quote a keepalive probe
    // (its sequence number is below the window): the probes go unanswered,
    // and the reconnect that follows tells "unreachable".
    net_.nft("add rule ip ka in tcp dport " + std::to_string(kPort) +
             " reject with icmp type host-unreachable");
    wait_for("db1", "down", "no answer to keepalive probes");
    wait_for("db1", "down", "unreachable", 40s);
}

// A target's events are the same structured journal entries as a peer's.
TEST_F(TargetsTest, TargetEventsAreJournalEntriesLikePeers) {
    Journald journald;
    if (!journald.available())
        GTEST_SKIP() << "journald unavailable: " << journald.why_unavailable();
    const std::string name = "jt-" + unique_token();
    start_daemon({TargetSpec{.name = name}}, "", "journal");  // nothing listens: refused
    wait_for(name, "down", "connection refused");

    const auto find_one = [&](const std::string& message_id) {
        std::vector<json> found;
        if (!wait_until(
                [&] {
                    found = journald.entries({"MESSAGE_ID=" + message_id, "PEER_NAME=" + name});
                    return !found.empty();
                },
                kPatience, 100ms))
            fail("no journal entry " + message_id + " for " + name);
        EXPECT_EQ(found.size(), 1u);
        return found.front();
    };
    const json down = find_one("16fad6aa28e14ede845df6fa5bf323ea");
    EXPECT_EQ(down.value("PRIORITY", ""), "4");
    EXPECT_EQ(down.value("MESSAGE", ""),
              "target " + name + " (10.231.0.2:5432) is down: connection refused");
    EXPECT_EQ(down.value("PEER_ADDRESS", ""), "10.231.0.2:5432");
    EXPECT_EQ(down.value("PEER_STATE", ""), "down");
    EXPECT_EQ(down.value("PEER_PREVIOUS_STATE", ""), "suspect");
    EXPECT_EQ(down.value("PEER_SESSION", ""), "00000000");
    EXPECT_EQ(down.value("PEER_INTERVAL_MSEC", ""), "1000");
    EXPECT_EQ(down.value("PEER_PROBES", ""), "2");
    EXPECT_EQ(down.value("PEER_REASON", ""), "connection refused");
    EXPECT_EQ(down.value("PEER_PROTOCOL", ""), "tcp");
    EXPECT_EQ(down.value("PEER_EVENT", ""), "down");
    const json registered = find_one("7753e1932bca402b9b9dc336d0badeea");
    EXPECT_EQ(registered.value("PEER_REASON", ""), "configured");
    EXPECT_EQ(registered.value("PEER_STATE", ""), "suspect");
}

// SIGHUP adds, removes and changes targets, leaving the others alone.
TEST_F(TargetsTest, ReloadAddsRemovesAndChangesTargets) {
    Service service(net_);
    const TargetSpec kept{.name = "kept"};
    const TargetSpec gone{.name = "gone"};
    TargetSpec changed{.name = "changed"};
    start_daemon({kept, gone, changed});
    for (int i = 0; i < 3; ++i) service.accept_one();
    for (const auto* n : {"kept", "gone", "changed"}) wait_for(n, "up");

    changed.idle = 2;
    const TargetSpec added{.name = "added"};
    write_config({kept, changed, added});
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_until([&] {
        const auto rows = target_rows();
        return rows && rows->size() == 3 && target("added").is_object() &&
               target("changed").at("idle_s") == 2;
    })) << log();
    service.accept_one();
    service.accept_one();
    wait_for("added", "up");
    wait_for("changed", "up");
    EXPECT_TRUE(target("gone").is_null());
    EXPECT_EQ(target("kept").at("connects"), 1) << "an unchanged target keeps its connection";
    EXPECT_EQ(target("changed").at("connects"), 2) << "a changed target reconnects";
    EXPECT_NE(log().find("target gone (10.231.0.2:5432) removed from the configuration"),
              std::string::npos)
        << log();

    // A bad file changes nothing.
    write_file(dir_.file("keepalived.toml"),
               config_.to_toml() + "\n[[targets]]\nname = \"x\"\naddress = \"nowhere:1\"\n");
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_until([&] { return log().find("reload failed") != std::string::npos; }));
    EXPECT_EQ(target_rows()->size(), 3U);

    // Targets are counted with the peers and listed beside them.
    const json peers = control_request(config_.control_socket, "peers").at("peers");
    ASSERT_EQ(peers.size(), 3U);
    EXPECT_EQ(peers[0].at("protocol"), "tcp");
    const json status = control_request(config_.control_socket, "status");
    EXPECT_EQ(status.at("summary"), "3 peers: 3 up, 0 suspect, 0 down, 0 left");
    // keepalivectl: the targets table, its JSON, and usage errors.
    const RunResult table = run({ctl_path(), "--socket", config_.control_socket, "targets"});
    ASSERT_TRUE(table.status.exited_with(0)) << table.err;
    EXPECT_NE(table.out.find("LAST ERROR"), std::string::npos) << table.out;
    EXPECT_NE(table.out.find("established"), std::string::npos) << table.out;
    EXPECT_NE(table.out.find("1s+2x1s"), std::string::npos) << table.out;
    const json listed = ctl_json({"--socket", config_.control_socket, "targets"});
    EXPECT_EQ(listed.at("targets").size(), 3U);
    EXPECT_EQ(listed.at("targets")[0].at("detection_s"), 3);
    const RunResult peers_table = run({ctl_path(), "--socket", config_.control_socket, "peers"});
    EXPECT_NE(peers_table.out.find("tcp"), std::string::npos) << peers_table.out;
    const RunResult bad = run({ctl_path(), "--socket", config_.control_socket, "targets", "x"});
    EXPECT_TRUE(bad.status.exited_with(2)) << bad.status.to_string();
    EXPECT_NE(bad.err.find("Usage"), std::string::npos) << bad.err;
}

// ---- KAP/1 peers and ICMP --------------------------------------------------------

class IcmpTest : public TargetsTest {
protected:
    // A keepalive-peer in the target's namespace, registered with the daemon.
    Process& start_agent(const std::string& name, const std::string& interval, int probes) {
        SpawnOptions options;
        options.stderr_path = dir_.file("peer-" + name + ".log");
        agent_.emplace(net_.in(NetnsPair::Side::other,
                               Strings{peer_path(), "--server", std::string(kDaemonIp) + ":7371",
                                       "--name", name, "--interval", interval, "--probes",
                                       std::to_string(probes), "--log-target", "stderr"}),
                       options);
        wait_for_peer(name, "up");
        // Past probation: a session that never answered is forgotten when it goes down.
        if (!wait_until([&] {
                const json p = peer(name);
                return p.is_object() && p.at("acks_received").get<int>() > 0;
            }))
            fail("peer " + name + " never answered a probe:\n" + log());
        return *agent_;
    }
    json peer(const std::string& name) {
        const json all = control_request(config_.control_socket, "peers");
        for (const auto& p : all.at("peers"))
            if (p.at("name") == name) return p;
        return nullptr;
    }
    Clock::time_point wait_for_peer(const std::string& name, const std::string& state) {
        Clock::time_point seen{};
        if (!wait_until(
                [&] {
                    const json p = peer(name);
                    if (p.is_null() || p.at("state") != state) return false;
                    seen = Clock::now();
                    return true;
                },
                kPatience, 10ms))
            fail("peer " + name + " never became " + state + ": " + peer(name).dump() + "\nlog:\n" +
                 log());
        return seen;
    }
    std::optional<Process> agent_;
};

// The agent is killed, its host stays: the next PROBE meets ICMP port
// unreachable, recorded on the peer and given as the reason it goes down.
TEST_F(IcmpTest, PortUnreachableSaysHostUpNoAgent) {
    start_daemon({});
    start_agent("agent1", "200ms", 3);
    agent_->kill();
    wait_for_peer("agent1", "down");
    const json p = peer("agent1");
    EXPECT_EQ(p.at("last_error"), "host up, no agent (ICMP port unreachable from 10.231.0.2)")
        << p.dump();
    EXPECT_NE(log().find("is down: detection time expired: host up, no agent (ICMP port "
                         "unreachable from 10.231.0.2)"),
              std::string::npos)
        << log();
}

// With fast_down_on_icmp the first port unreachable is enough: down long
// before the detection time (5 x 1 s) could expire.
TEST_F(IcmpTest, FastDownOnIcmpDeclaresDownAtOnce) {
    start_daemon({}, "fast_down_on_icmp = true\n");
    start_agent("agent2", "1s", 5);
    const auto killed = Clock::now();
    agent_->kill();
    const auto down = wait_for_peer("agent2", "down");
    const double took = duration<double>(down - killed).count();
    std::cout << "fast down on ICMP port unreachable: " << took
              << " s (next probe within 1 s; detection time 5 s)\n";
    EXPECT_LT(took, 4.0) << log();
    EXPECT_NE(log().find("agent2 (10.231.0.2:"), std::string::npos);
    EXPECT_NE(log().find("is down: host up, no agent (ICMP port unreachable"), std::string::npos)
        << log();
}

// A host that cannot be reached (ICMP host unreachable for the probes).
TEST_F(IcmpTest, HostUnreachableIsTheReason) {
    start_daemon({});
    start_agent("agent3", "200ms", 3);
    net_.nft("add rule ip ka in udp sport 7371 reject with icmp type host-unreachable");
    wait_for_peer("agent3", "down");
    EXPECT_EQ(peer("agent3").at("last_error"),
              "unreachable (ICMP host unreachable from 10.231.0.2)");
}

// A KAP/1 peer cannot take a target's name: its REGISTER is rejected.
TEST_F(IcmpTest, RegisterForATargetsNameIsRejected) {
    Service service(net_);
    start_daemon({TargetSpec{.name = "db1"}});
    service.accept_one();
    wait_for("db1", "up");
    SpawnOptions options;
    options.stderr_path = dir_.file("peer-db1.log");
    Process impostor(net_.in(NetnsPair::Side::other,
                             Strings{peer_path(), "--server", std::string(kDaemonIp) + ":7371",
                                     "--name", "db1", "--log-target", "stderr"}),
                     options);
    ASSERT_TRUE(wait_until([&] {
        return impostor.stderr_text().find("rejected the registration: not permitted") !=
               std::string::npos;
    })) << impostor.stderr_text();
    EXPECT_EQ(control_request(config_.control_socket, "peers").at("peers").size(), 1U);
    EXPECT_EQ(peer("db1").at("protocol"), "tcp");
}

}  // namespace
}  // namespace keepalive::test
