// End-to-end tests: the real keepalived, keepalive-peer and keepalivectl on
// loopback. Every test has its own directory, ports and control socket, waits
// by polling with generous limits, and kills what it started.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "core/codec.hpp"
#include "harness.hpp"
#include "net/unique_fd.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;

constexpr Millis kInterval = 200ms;
constexpr int kProbes = 3;

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

bool all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Whether `text` holds "FILE:LINE:COLUMN: " for this file and line (at its start
// if `at_start`). Hand-written: GCC 12's <regex> trips -Wmaybe-uninitialized
// under the sanitizers.
bool has_location(std::string_view text, const std::string& file, int line, bool at_start) {
    const std::string prefix = file + ":" + std::to_string(line) + ":";
    for (auto pos = text.find(prefix); pos != std::string_view::npos;
         pos = text.find(prefix, pos + 1)) {
        if (at_start && pos != 0) return false;
        const std::string_view rest = text.substr(pos + prefix.size());
        const auto colon = rest.find(": ");
        if (colon != std::string_view::npos && all_digits(rest.substr(0, colon))) return true;
    }
    return false;
}

std::vector<std::string> fields_of(const std::string& line) {
    std::vector<std::string> out;
    std::istringstream in(line);
    for (std::string f; in >> f;) out.push_back(f);
    return out;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

// Log lines reporting a state change of `name` (everything but its registration).
std::vector<std::string> state_changes(const std::string& log, const std::string& name) {
    std::vector<std::string> out;
    const std::string who = "peer " + name + " (";
    for (const auto& line : lines_of(log))
        if (line.find(who) != std::string::npos && line.find(") registered:") == std::string::npos)
            out.push_back(line);
    return out;
}

std::size_t count_of(const std::string& text, std::string_view needle) {
    std::size_t n = 0;
    for (auto pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1))
        ++n;
    return n;
}

char process_state(pid_t pid) {
    const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    const auto paren = stat.rfind(')');
    return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
}

// One daemon and its peers, in a directory of their own.
class KeepaliveTest : public ::testing::Test {
protected:
    KeepaliveTest() {
        port_ = free_udp_port();
        config_.listen.push_back(v4_address());
        if (ipv6_available()) config_.listen.push_back(v6_address());
        config_.control_socket = dir_.file("control.sock");
    }

    std::string v4_address() const { return "127.0.0.1:" + std::to_string(port_); }
    std::string v6_address() const { return "[::1]:" + std::to_string(port_); }
    std::string config_path() const { return dir_.file("keepalived.toml"); }
    Strings ctl_args(Strings args) const {
        args.insert(args.begin(), {"--socket", config_.control_socket});
        return args;
    }

    // Writes the configuration, starts keepalived and waits until it answers on
    // its control socket.
    Process& start_daemon(SpawnOptions options = {}, Strings extra_args = {}) {
        write_file(config_path(), config_.to_toml());
        Strings argv{keepalived_path(), "--config", config_path()};
        if (extra_args.empty()) extra_args = {"--log-target", "stderr"};
        argv.insert(argv.end(), extra_args.begin(), extra_args.end());
        options.stderr_path = dir_.file("keepalived-" + std::to_string(++daemon_runs_) + ".log");
        options.stdout_path = options.stderr_path;
        daemon_.emplace(std::move(argv), std::move(options));
        const bool ready = wait_until(
            [&] { return !daemon_->running() || try_ctl_json(ctl_args({"status"})).has_value(); });
        if (!ready || !daemon_->running())
            fail("keepalived did not come up (" +
                 (daemon_->running() ? std::string("still running")
                                     : daemon_->status()->to_string()) +
                 "):\n" + daemon_log());
        return *daemon_;
    }

    std::string daemon_log() const { return daemon_ ? daemon_->stderr_text() : std::string(); }

    Process& start_peer(const std::string& name, const std::string& server,
                        Strings extra_args = {}) {
        Strings argv{peer_path(), "--server", server, "--name",       name,    "--interval",
                     "200ms",     "--probes", "3",    "--log-target", "stderr"};
        argv.insert(argv.end(), extra_args.begin(), extra_args.end());
        SpawnOptions options;
        options.stderr_path = dir_.file("peer-" + name + ".log");
        options.stdout_path = options.stderr_path;
        auto [it, inserted] = peers_.try_emplace(name, std::move(argv), std::move(options));
        if (!inserted) fail("peer " + name + " started twice");
        return it->second;
    }

    Process& peer(const std::string& name) { return peers_.at(name); }

    json peers_json() { return ctl_json(ctl_args({"peers"})).at("peers"); }
    json status_json() { return ctl_json(ctl_args({"status"})); }

    std::map<std::string, json> peers_by_name() {
        std::map<std::string, json> out;
        for (const auto& p : peers_json()) out[p.at("name").get<std::string>()] = p;
        return out;
    }

    bool all_in_state(const Strings& names, const std::string& state) {
        const auto by_name = peers_by_name();
        return std::all_of(names.begin(), names.end(), [&](const std::string& n) {
            const auto it = by_name.find(n);
            return it != by_name.end() && it->second.at("state") == state;
        });
    }

    // Waits until every peer in `names` is in `state`; fails at once if the
    // daemon, or (when waiting for "up") one of those peers, exits meanwhile.
    void wait_for_state(const Strings& names, const std::string& state) {
        std::string died;
        const auto check_alive = [&] {
            if (!daemon_->running()) died = "keepalived exited: " + daemon_->status()->to_string();
            for (const auto& n : names) {
                const auto it = peers_.find(n);
                if (state == "up" && it != peers_.end() && !it->second.running())
                    died = "keepalive-peer " + n + " exited: " + it->second.status()->to_string() +
                           "\n" + it->second.stderr_text();
            }
            return !died.empty();
        };
        if (!wait_until([&] { return check_alive() || all_in_state(names, state); }) ||
            !died.empty())
            fail("peers did not all become " + state + ": " +
                 (died.empty() ? peers_json().dump() : died) + "\ndaemon log:\n" + daemon_log());
    }

    // Expects no state-change line for any of `names` in the current daemon's log.
    void expect_no_state_changes(const Strings& names) {
        const std::string log = daemon_log();
        for (const auto& n : names) EXPECT_EQ(state_changes(log, n), Strings{}) << "peer " << n;
    }

    TempDir dir_;  // first: outlives the processes writing into it
    std::uint16_t port_ = 0;
    DaemonConfig config_;
    std::optional<Process> daemon_;
    std::map<std::string, Process> peers_;
    int daemon_runs_ = 0;
};

// ---- command lines ------------------------------------------------------------

TEST(CheckConfig, ExampleConfigIsValid) {
    const std::string path = source_root() + "/config/keepalived.toml";
    const RunResult r = run({keepalived_path(), "--check-config", path});
    EXPECT_TRUE(r.status.exited_with(0)) << r.status.to_string() << "\n" << r.err;
}

TEST(CheckConfig, ErrorsNameFileLineAndColumn) {
    TempDir dir;
    struct Case {
        const char* what;
        std::string text;
        int line;
        const char* mentions;
    };
    const std::string head = "[server]\nlisten = [\"127.0.0.1:7371\"]\n";
    const std::vector<Case> cases = {
        {"syntax", head + "control_socket = \"/run/x.sock\"\nthis is not toml\n", 4, ""},
        {"unknown key", head + "bogus_key = 1\n", 3, "bogus_key"},
        {"wrong type", head + "[peers]\nmax_probes = \"many\"\n", 4, "max_probes"},
        {"out of range", head + "[peers]\nmax_probes = 300\n", 4, "max_probes"},
        {"bad duration", head + "[peers]\n\nforget_after = \"10 parsecs\"\n", 5, "forget_after"},
        {"bad address", "[server]\nlisten = [\"127.0.0.1:7371\", \"nowhere\"]\n", 2, "listen"},
    };
    int i = 0;
    for (const auto& c : cases) {
        const std::string path = dir.file("bad-" + std::to_string(i++) + ".toml");
        write_file(path, c.text);
        const RunResult r = run({keepalived_path(), "--check-config", path});
        EXPECT_TRUE(r.status.exited_with(1)) << c.what << ": " << r.status.to_string();
        EXPECT_TRUE(has_location(r.err, path, c.line, true)) << c.what << ": " << r.err;
        EXPECT_NE(r.err.find(c.mentions), std::string::npos) << c.what << ": " << r.err;
    }
    const RunResult missing = run({keepalived_path(), "--check-config", dir.file("absent.toml")});
    EXPECT_TRUE(missing.status.exited_with(1)) << missing.status.to_string();
    EXPECT_NE(missing.err.find(dir.file("absent.toml")), std::string::npos) << missing.err;
}

TEST(CommandLine, BadArgumentsPrintUsageAndExit2) {
    const std::vector<Strings> cases = {
        {keepalived_path(), "--bogus"},
        {keepalived_path(), "--log-target", "syslog"},
        {keepalived_path(), "--config", "/dev/null", "extra"},
        {peer_path(), "--bogus"},
        {peer_path(), "--name", "x"},  // no --server
        {peer_path(), "--server", "127.0.0.1:1", "--name", "bad name"},
        {peer_path(), "--server", "127.0.0.1:1", "--name", "x", "--interval", "0ms"},
        {peer_path(), "--server", "127.0.0.1:1", "--name", "x", "--probes", "256"},
        {ctl_path(), "--bogus", "status"},
        {ctl_path(), "frobnicate"},
        {ctl_path()},
        {ctl_path(), "status", "peers"},
    };
    for (const auto& argv : cases) {
        std::string shown;
        for (const auto& a : argv) shown += a + " ";
        const RunResult r = run(argv);
        EXPECT_TRUE(r.status.exited_with(2)) << shown << ": " << r.status.to_string();
        EXPECT_NE(r.err.find("Usage:"), std::string::npos) << shown << ": " << r.err;
    }
}

// ---- detection ----------------------------------------------------------------

TEST_F(KeepaliveTest, KilledPeerIsDeclaredDownOnTime) {
    start_daemon();
    Strings names = {"alpha", "bravo", "charlie", "delta"};
    for (const auto& n : names)
        start_peer(n, n == "delta" && ipv6_available() ? v6_address() : v4_address());
    wait_for_state(names, "up");
    if (ipv6_available()) {
        EXPECT_EQ(peers_by_name().at("delta").at("address").get<std::string>().rfind("[::1]:", 0),
                  0u);
    }
    // Let the victim answer a few probes so that it is firmly up.
    ASSERT_TRUE(wait_until([&] { return peers_by_name().at("bravo").at("acks_received") >= 3; }));

    const auto killed_at = Clock::now();
    peer("bravo").kill();
    std::optional<Clock::time_point> seen_at;
    std::optional<Clock::time_point> down_lower;  // the daemon's down instant, bounds from
    std::optional<Clock::time_point> down_upper;  // before and after the request
    ASSERT_TRUE(wait_until(
        [&] {
            const auto before = Clock::now();
            const auto p = peers_by_name().at("bravo");
            const auto after = Clock::now();
            if (p.at("state") != "down") return false;
            const auto since = std::chrono::duration_cast<Clock::duration>(
                std::chrono::duration<double>(p.at("since").get<double>()));
            seen_at = after;
            down_lower = before - since;
            down_upper = after - since;
            return true;
        },
        kPatience, 10ms))
        << daemon_log();

    const Millis detection = kProbes * kInterval;
    const auto ms = [&](Clock::time_point t) {
        return std::chrono::duration_cast<Millis>(t - killed_at).count();
    };
    std::cout << "kill -9 to down: seen after " << ms(*seen_at) << " ms, declared after "
              << ms(*down_lower) << ".." << ms(*down_upper)
              << " ms (probes x interval = " << detection.count() << " ms)" << std::endl;
    EXPECT_GE(ms(*down_upper), (detection - kInterval).count());
    EXPECT_LE(ms(*seen_at), Millis(detection + 2s).count());

    const auto final_peers = peers_by_name();
    EXPECT_GE(final_peers.at("bravo").at("missed").get<int>(), kProbes)
        << final_peers.at("bravo").dump();
    const Strings others = {"alpha", "charlie", "delta"};
    for (const auto& n : others) {
        EXPECT_EQ(final_peers.at(n).at("state"), "up") << n;
        EXPECT_EQ(final_peers.at(n).at("missed"), 0) << final_peers.at(n).dump();
        EXPECT_TRUE(peer(n).running()) << n;
    }
    expect_no_state_changes(others);
    const auto bravo = state_changes(daemon_log(), "bravo");
    ASSERT_EQ(bravo.size(), 2u) << daemon_log();
    EXPECT_NE(bravo[0].find("suspect"), std::string::npos) << bravo[0];
    EXPECT_EQ(bravo[1].rfind("<4>", 0), 0u) << bravo[1];
    EXPECT_NE(bravo[1].find("down"), std::string::npos) << bravo[1];
}

TEST_F(KeepaliveTest, TerminatedPeerLeaves) {
    start_daemon();
    start_peer("stays", v4_address());
    start_peer("goes", ipv6_available() ? v6_address() : v4_address());
    wait_for_state({"stays", "goes"}, "up");

    peer("goes").signal(SIGTERM);
    const auto status = peer("goes").wait(5s);
    ASSERT_TRUE(status.has_value()) << "keepalive-peer did not exit on SIGTERM";
    EXPECT_TRUE(status->exited_with(0)) << status->to_string();
    wait_for_state({"goes"}, "left");

    const auto p = peers_by_name();
    EXPECT_EQ(p.at("stays").at("state"), "up");
    const auto goes = state_changes(daemon_log(), "goes");
    ASSERT_EQ(goes.size(), 1u) << daemon_log();
    EXPECT_NE(goes[0].find("left"), std::string::npos) << goes[0];
    expect_no_state_changes({"stays"});
    const auto s = status_json();
    EXPECT_EQ(s.at("up"), 1);
    EXPECT_EQ(s.at("left"), 1);
}

TEST_F(KeepaliveTest, PeersComeBackAfterDaemonRestart) {
    start_daemon();
    Strings names = {"one", "two", "three"};
    for (const auto& n : names)
        start_peer(n, n == "three" && ipv6_available() ? v6_address() : v4_address());
    wait_for_state(names, "up");
    std::map<std::string, pid_t> pids;
    for (const auto& n : names) pids[n] = peer(n).pid();
    const std::string first_epoch = status_json().at("epoch");

    const auto stop_sent = Clock::now();
    daemon_->signal(SIGTERM);
    const auto status = daemon_->wait(5s);
    ASSERT_TRUE(status.has_value()) << "keepalived did not stop within 5 s";
    EXPECT_TRUE(status->exited_with(0)) << status->to_string() << "\n" << daemon_log();
    std::cout << "keepalived stopped "
              << std::chrono::duration_cast<Millis>(Clock::now() - stop_sent).count()
              << " ms after SIGTERM" << std::endl;

    start_daemon();
    wait_for_state(names, "up");
    EXPECT_NE(status_json().at("epoch"), first_epoch);
    for (const auto& n : names) {
        EXPECT_TRUE(peer(n).running()) << n;
        EXPECT_EQ(peer(n).pid(), pids[n]) << n;
        const std::string log = peer(n).stderr_text();
        EXPECT_GE(count_of(log, "registered with"), 2u) << log;
        EXPECT_NE(log.find("said goodbye"), std::string::npos) << log;
    }
}

// ---- hostile input -----------------------------------------------------------

// Datagrams the daemon must drop without any change to a peer, in every shape
// the protocol lists as a drop reason.
class Garbage {
public:
    Garbage(std::uint64_t seed, std::vector<std::uint32_t> real_sessions)
        : rng_(seed), real_(std::move(real_sessions)) {}

    std::vector<std::uint8_t> unknown_session_ack() {
        return encode({kap::Diag::none, random_session(), kap::Ack{rng_(), rng_(), rng_()}});
    }

    std::vector<std::uint8_t> next() {
        switch (pick(0, 13)) {
            case 0:
                return random_bytes(pick(0, 200));
            case 1:
                // Bigger than any KAP/1 datagram.
                return random_bytes(pick(1000, 1400));
            case 2: {
                // Truncated: shorter than the header, or than its length field says.
                auto d = valid();
                d.resize(pick(0, static_cast<unsigned>(d.size() - 1)));
                return d;
            }
            case 3:
                // Wrong magic ("KA" is 0x4B 0x41).
                return with(valid(), pick(0, 1), static_cast<std::uint8_t>(pick(0, 0x40)));
            case 4:
                // Wrong version.
                return with(valid(), 2, static_cast<std::uint8_t>(pick(2, 255)));
            case 5: {
                // The length field disagrees with the size.
                auto d = valid();
                const auto wrong = static_cast<std::uint16_t>(d.size() + pick(1, 500));
                d[6] = static_cast<std::uint8_t>(wrong >> 8);
                d[7] = static_cast<std::uint8_t>(wrong);
                return d;
            }
            case 6:
                // An unknown flag.
                return with(valid(), 4, static_cast<std::uint8_t>(pick(1, 127) << 1));
            case 7: {
                // AUTH with a trailer, but the daemon holds no key.
                auto d = with(valid(), 4, kap::kFlagAuth);
                const auto trailer = random_bytes(kap::kAuthTrailerSize);
                d.insert(d.end(), trailer.begin(), trailer.end());
                set_length(d);
                return d;
            }
            case 8:
                // An unknown type.
                return with(valid(), 3, static_cast<std::uint8_t>(pick(0, 1) ? 0 : pick(8, 255)));
            case 9: {
                // A body of the wrong size for its type, the length field consistent.
                auto d = valid();
                d.resize(d.size() + pick(1, 30), 0);
                set_length(d);
                return d;
            }
            case 10:
                // A server-to-peer message sent to the server.
                return encode({kap::Diag::none, random_session(), kap::Probe{rng_(), rng_()}});
            case 11:
                // Answered with BYE (unknown session), within the rate limit.
                return unknown_session_ack();
            case 12:
                // An ACK for a real session from the wrong address.
                return encode(
                    {kap::Diag::none, real_session(), kap::Ack{pick(1, 1000), rng_(), rng_()}});
            default:
                // A goodbye for a real session from the wrong address.
                return encode({kap::Diag::shutting_down, real_session(), kap::Bye{1u << 30}});
        }
    }

private:
    unsigned pick(unsigned lo, unsigned hi) {
        return std::uniform_int_distribution<unsigned>(lo, hi)(rng_);
    }
    std::uint32_t random_session() {
        std::uint32_t s = 0;
        do s = static_cast<std::uint32_t>(rng_());
        while (s == 0 || std::find(real_.begin(), real_.end(), s) != real_.end());
        return s;
    }
    std::uint32_t real_session() { return real_[pick(0, static_cast<unsigned>(real_.size() - 1))]; }

    std::vector<std::uint8_t> random_bytes(std::size_t n) {
        std::vector<std::uint8_t> d(n);
        for (auto& b : d) b = static_cast<std::uint8_t>(rng_());
        return d;
    }
    static std::vector<std::uint8_t> encode(const kap::Message& m) {
        std::vector<std::uint8_t> d(kap::kMaxDatagramSize);
        d.resize(kap::encode(m, d));
        return d;
    }
    static void set_length(std::vector<std::uint8_t>& d) {
        d.at(6) = static_cast<std::uint8_t>(d.size() >> 8);
        d.at(7) = static_cast<std::uint8_t>(d.size());
    }
    static std::vector<std::uint8_t> with(std::vector<std::uint8_t> d, std::size_t at,
                                          std::uint8_t value) {
        d.at(at) = value;
        return d;
    }
    std::vector<std::uint8_t> valid() {
        switch (pick(0, 2)) {
            case 0:
                return encode(
                    {kap::Diag::none, real_session(), kap::Ack{pick(1, 9), rng_(), rng_()}});
            case 1:
                return encode({kap::Diag::shutting_down, real_session(), kap::Bye{pick(1, 9)}});
            default: {
                kap::Register r;
                r.nonce = rng_();
                r.incarnation = rng_();
                r.interval_ms = 200;
                r.probes = 3;
                r.name = "intruder";
                return encode({kap::Diag::none, 0, r});
            }
        }
    }

    std::mt19937_64 rng_;
    std::vector<std::uint32_t> real_;
};

class UdpClient {
public:
    explicit UdpClient(const Address& server) : server_(server) {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd_ < 0) fail("socket failed");
        sockaddr_in local{};
        local.sin_family = AF_INET;
        local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0)
            fail("bind failed");
    }
    ~UdpClient() { ::close(fd_); }
    UdpClient(const UdpClient&) = delete;
    UdpClient& operator=(const UdpClient&) = delete;

    void send(const std::vector<std::uint8_t>& d) {
        sockaddr_storage ss{};
        const socklen_t len = server_.to_sockaddr(ss);
        while (::sendto(fd_, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&ss), len) < 0) {
            if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR)
                fail(std::string("sendto: ") + std::strerror(errno));
            pollfd p{fd_, POLLOUT, 0};
            ::poll(&p, 1, 100);
        }
    }
    // The next datagram, if one arrives within `timeout`.
    std::optional<std::vector<std::uint8_t>> receive_one(Millis timeout) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
        std::vector<std::uint8_t> buf(2048);
        const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
        if (n < 0) return std::nullopt;
        buf.resize(static_cast<std::size_t>(n));
        return buf;
    }
    // Every datagram waiting now, with its arrival time.
    void receive(std::vector<std::pair<Clock::time_point, std::vector<std::uint8_t>>>& out) {
        for (;;) {
            std::vector<std::uint8_t> buf(2048);
            const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
            if (n < 0) return;
            buf.resize(static_cast<std::size_t>(n));
            out.emplace_back(Clock::now(), std::move(buf));
        }
    }

private:
    Address server_;
    int fd_ = -1;
};

TEST_F(KeepaliveTest, MalformedFloodChangesNoPeer) {
    start_daemon();
    Strings names = {"steady-1", "steady-2", "steady-3"};
    for (const auto& n : names) start_peer(n, v4_address());
    wait_for_state(names, "up");
    const auto before = peers_by_name();
    std::vector<std::uint32_t> sessions;
    for (const auto& [n, p] : before)
        sessions.push_back(static_cast<std::uint32_t>(
            std::stoul(p.at("session").get<std::string>(), nullptr, 16)));
    const json status_before = status_json();

    const std::uint64_t seed = test_seed();
    SCOPED_TRACE("KEEPALIVE_TEST_SEED=" + std::to_string(seed));
    Garbage garbage(seed, sessions);
    UdpClient client(*Address::parse(v4_address()));
    std::vector<std::pair<Clock::time_point, std::vector<std::uint8_t>>> replies;

    // Paced so that the daemon's socket buffer never overflows: a datagram the
    // kernel drops for want of room could be a peer's ACK, and the test would
    // blame the daemon for a suspect peer.
    constexpr int kTotal = 20000;
    constexpr int kChunk = 64;
    std::size_t smallest_answerable = SIZE_MAX;
    const std::uint64_t received_before = status_before.at("datagrams_received");
    const auto flood_start = Clock::now();
    for (int sent = 0; sent < kTotal;) {
        for (int i = 0; i < kChunk && sent < kTotal; ++i, ++sent) {
            const auto d = garbage.next();
            if (const auto m = kap::decode(d); m.ok() && (kap::type_of(*m) == kap::Type::ack ||
                                                          kap::type_of(*m) == kap::Type::bye))
                smallest_answerable = std::min(smallest_answerable, d.size());
            client.send(d);
        }
        const bool drained = wait_until(
            [&] {
                client.receive(replies);
                return control_request(config_.control_socket, "status")
                           .at("datagrams_received")
                           .get<std::uint64_t>() >= received_before + static_cast<unsigned>(sent);
            },
            kPatience, 1ms);
        ASSERT_TRUE(drained) << "keepalived stopped reading after " << sent << " datagrams";
        ASSERT_TRUE(daemon_->running()) << daemon_log();
    }
    const double flood_seconds = std::chrono::duration<double>(Clock::now() - flood_start).count();

    // Then a trickle of ACKs for unknown sessions for two seconds, so that the
    // answers' rate limit is seen over more than one of its one-second windows.
    // The sleep paces the sender; nothing is inferred from it.
    int trickled = 0;
    for (const auto end = Clock::now() + 2s; Clock::now() < end;) {
        for (int i = 0; i < 8; ++i, ++trickled) client.send(garbage.unknown_session_ack());
        client.receive(replies);
        std::this_thread::sleep_for(20ms);
    }
    const auto expected = received_before + static_cast<unsigned>(kTotal + trickled);
    ASSERT_TRUE(wait_until([&] {
        client.receive(replies);
        return control_request(config_.control_socket, "status")
                   .at("datagrams_received")
                   .get<std::uint64_t>() >= expected;
    }));
    client.receive(replies);
    const double seconds = std::chrono::duration<double>(Clock::now() - flood_start).count();
    std::cout << kTotal << " malformed datagrams in " << flood_seconds << " s, then " << trickled
              << " in 2 s; " << replies.size() << " replies" << std::endl;

    ASSERT_TRUE(daemon_->running()) << daemon_log();
    const json status_after = status_json();
    const auto dropped = status_after.at("datagrams_dropped").get<std::uint64_t>() -
                         status_before.at("datagrams_dropped").get<std::uint64_t>();
    EXPECT_GE(dropped, static_cast<std::uint64_t>(kTotal + trickled)) << status_after.dump(2);
    for (const char* reason : {"too_short", "bad_magic", "bad_version", "bad_length", "bad_flags",
                               "bad_type", "bad_size", "unauthenticated", "wrong_direction",
                               "wrong_source", "unknown_session", "rate_limited"})
        EXPECT_GT(status_after.at("drops").at(reason).get<std::uint64_t>(), 0u)
            << reason << ": " << status_after.at("drops").dump();
    EXPECT_EQ(status_after.at("peers"), status_before.at("peers"));

    // At most a few BYE (unknown session) per second, none larger than its trigger.
    // The daemon allows 4 per one-second window; a sliding second spans two windows,
    // and arrival times are only known to the 20 ms of the receive loop.
    EXPECT_GE(replies.size(), 2u) << "no BYE for unknown sessions";
    EXPECT_LE(replies.size(), static_cast<std::size_t>(4 * (seconds + 2)));
    for (std::size_t i = 0; i < replies.size(); ++i) {
        std::size_t in_second = 0;
        for (std::size_t j = i; j < replies.size() && replies[j].first < replies[i].first + 1s; ++j)
            ++in_second;
        EXPECT_LE(in_second, 10u) << "replies in the second after reply " << i;
    }
    for (const auto& [at, d] : replies) {
        EXPECT_LE(d.size(), smallest_answerable);
        const auto m = kap::decode(d);
        ASSERT_TRUE(m.ok()) << "undecodable reply of " << d.size() << " bytes";
        EXPECT_EQ(kap::type_of(*m), kap::Type::bye);
        EXPECT_EQ(m->diag, kap::Diag::unknown_session);
    }

    const auto after = peers_by_name();
    for (const auto& n : names) {
        EXPECT_EQ(after.at(n).at("state"), "up") << after.at(n).dump();
        EXPECT_EQ(after.at(n).at("session"), before.at(n).at("session"));
        EXPECT_TRUE(peer(n).running());
        EXPECT_EQ(peer(n).stderr_text().find("lost"), std::string::npos) << peer(n).stderr_text();
    }
    EXPECT_EQ(after.count("intruder"), 0u);
    expect_no_state_changes(names);
}

// ---- reload -------------------------------------------------------------------

TEST_F(KeepaliveTest, ReloadKeepsRunningConfigOnErrorAndAppliesAValidOne) {
    start_daemon();
    Strings names = {"old-1", "old-2"};
    start_peer("old-1", v4_address());
    start_peer("old-2", ipv6_available() ? v6_address() : v4_address());
    wait_for_state(names, "up");
    const auto sessions_before = peers_by_name();
    const json listen_before = status_json().at("daemon").at("listen");

    write_file(config_path(),
               "[server]\nlisten = [\"127.0.0.1:1\"]\n[peers]\nmax_probes = 3\n"
               "this line is not TOML\n");
    daemon_->signal(SIGHUP);
    const auto reported = [&] {
        for (const auto& line : lines_of(daemon_log()))
            if (line.find("reload failed") != std::string::npos &&
                has_location(line, config_path(), 5, false))
                return true;
        return false;
    };
    ASSERT_TRUE(wait_until(reported)) << daemon_log();
    ASSERT_TRUE(daemon_->running());
    EXPECT_EQ(status_json().at("daemon").at("listen"), listen_before);
    // Peers keep being probed on the old configuration.
    const auto acks = sessions_before.at("old-1").at("acks_received").get<std::uint64_t>();
    ASSERT_TRUE(
        wait_until([&] { return peers_by_name().at("old-1").at("acks_received") > acks + 3; }));
    EXPECT_TRUE(all_in_state(names, "up")) << peers_json().dump();

    const std::uint16_t new_port = free_udp_port();
    const std::string new_address = "127.0.0.1:" + std::to_string(new_port);
    config_.listen.push_back(new_address);
    write_file(config_path(), config_.to_toml());
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_until([&] {
        const auto l = status_json().at("daemon").at("listen");
        return std::find(l.begin(), l.end(), new_address) != l.end();
    })) << daemon_log();

    start_peer("new", new_address);
    wait_for_state({"new"}, "up");
    const auto after = peers_by_name();
    for (const auto& n : names) {
        EXPECT_EQ(after.at(n).at("state"), "up");
        EXPECT_EQ(after.at(n).at("session"), sessions_before.at(n).at("session")) << n;
    }
    expect_no_state_changes(names);
    EXPECT_NE(daemon_log().find("configuration reloaded"), std::string::npos) << daemon_log();
}

// ---- systemd integration ---------------------------------------------------------

TEST_F(KeepaliveTest, NotifiesReadyStatusReloadingAndStopping) {
    NotifySocket notify(dir_.file("notify.sock"));
    SpawnOptions options;
    options.env["NOTIFY_SOCKET"] = notify.path();
    start_daemon(options);
    ASSERT_TRUE(wait_until([&] { return notify.count("READY=1") == 1; })) << daemon_log();
    const auto ready = notify.messages().at(*notify.find("READY=1"));
    EXPECT_EQ(ready.pid, daemon_->pid());

    start_peer("n1", v4_address());
    start_peer("n2", v4_address());
    wait_for_state({"n1", "n2"}, "up");
    const std::string expected = "2 peers: 2 up, 0 suspect, 0 down, 0 left";
    // The counts, then how late the loop ran at worst.
    const auto status_is = [&](const std::string& counts) {
        return notify.latest("STATUS").value_or("").starts_with(counts + "; loop lag max ");
    };
    ASSERT_TRUE(wait_until([&] { return status_is(expected); }))
        << notify.latest("STATUS").value_or("(no STATUS)");
    EXPECT_EQ(status_json().at("summary"), expected);

    peer("n2").kill();
    wait_for_state({"n2"}, "down");
    const std::string after_kill = "2 peers: 1 up, 0 suspect, 1 down, 0 left";
    EXPECT_TRUE(wait_until([&] { return status_is(after_kill); }))
        << notify.latest("STATUS").value_or("(no STATUS)");

    const std::size_t mark = notify.messages().size();
    daemon_->signal(SIGHUP);
    std::optional<std::size_t> reloading;
    std::optional<std::size_t> ready_again;
    ASSERT_TRUE(wait_until([&] {
        reloading = notify.find("RELOADING=1", mark);
        ready_again = reloading ? notify.find("READY=1", *reloading + 1) : std::nullopt;
        return ready_again.has_value();
    })) << daemon_log();
    const auto reload_message = notify.messages().at(*reloading);
    const auto usec = reload_message.value("MONOTONIC_USEC");
    ASSERT_TRUE(usec.has_value()) << reload_message.text;
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    const std::uint64_t now_usec = static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000 +
                                   static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
    const std::uint64_t sent_usec = std::stoull(*usec);
    EXPECT_LE(sent_usec, now_usec);
    EXPECT_LT(now_usec - sent_usec, 30'000'000u);

    EXPECT_EQ(notify.count("STOPPING=1"), 0u);
    daemon_->signal(SIGTERM);
    const auto status = daemon_->wait(5s);
    ASSERT_TRUE(status.has_value());
    EXPECT_TRUE(status->exited_with(0)) << status->to_string();
    EXPECT_TRUE(wait_until([&] { return notify.count("STOPPING=1") == 1; }));
    EXPECT_EQ(notify.count("READY=1"), 2u);
}

TEST_F(KeepaliveTest, WatchdogPingsFromTheLoopAtHalfThePeriod) {
    NotifySocket notify(dir_.file("notify.sock"));
    SpawnOptions options;
    options.env["NOTIFY_SOCKET"] = notify.path();
    options.env["WATCHDOG_USEC"] = "400000";
    start_daemon(options);

    ASSERT_TRUE(wait_until([&] { return notify.count("WATCHDOG=1") >= 1; })) << daemon_log();
    const std::size_t first = notify.count("WATCHDOG=1");
    EXPECT_TRUE(wait_until([&] { return notify.count("WATCHDOG=1") >= first + 3; }, 2s))
        << notify.count("WATCHDOG=1") - first << " WATCHDOG=1 in 2 s";
    ASSERT_TRUE(wait_until([&] { return notify.count("WATCHDOG=1") >= first + 5; }));
    const auto pings = [&] {
        std::vector<Clock::time_point> at;
        for (const auto& m : notify.messages())
            if (m.has("WATCHDOG=1")) at.push_back(m.at);
        return at;
    }();
    const auto span = pings[first + 4] - pings[first - 1];
    EXPECT_GE(span, 5 * 150ms) << "WATCHDOG=1 more often than every half period";
    std::cout << "5 watchdog intervals took " << std::chrono::duration_cast<Millis>(span).count()
              << " ms" << std::endl;

    daemon_->signal(SIGSTOP);
    ASSERT_TRUE(wait_until([&] { return process_state(daemon_->pid()) == 'T'; }));
    notify.flush();
    const std::size_t frozen = notify.count("WATCHDOG=1");
    std::this_thread::sleep_for(1s);  // an observation window, not a synchronisation
    notify.flush();
    EXPECT_EQ(notify.count("WATCHDOG=1"), frozen) << "WATCHDOG=1 from a stopped daemon";

    daemon_->signal(SIGCONT);
    EXPECT_TRUE(wait_until([&] { return notify.count("WATCHDOG=1") >= frozen + 2; }));
    EXPECT_TRUE(daemon_->running());
}

TEST_F(KeepaliveTest, PeerEventsAreStructuredJournalEntries) {
    Journald journald;
    if (!journald.available())
        GTEST_SKIP() << "journald unavailable: " << journald.why_unavailable();

    start_daemon({}, {"--log-target", "journal"});
    const std::string token = unique_token();
    const std::string victim = "jdown-" + token;
    const std::string leaver = "jleft-" + token;
    start_peer(victim, v4_address());
    start_peer(leaver, v4_address());
    wait_for_state({victim, leaver}, "up");
    ASSERT_TRUE(wait_until([&] { return peers_by_name().at(victim).at("rtt_us").is_number(); }));
    const json before_kill = peers_by_name().at(victim);

    peer(victim).kill();
    wait_for_state({victim}, "down");
    peer(leaver).signal(SIGTERM);
    wait_for_state({leaver}, "left");

    const auto find_one = [&](const std::string& message_id, const std::string& name) {
        std::vector<json> found;
        const bool ok = wait_until(
            [&] {
                found = journald.entries({"MESSAGE_ID=" + message_id, "PEER_NAME=" + name});
                return !found.empty();
            },
            kPatience, 100ms);
        if (!ok) fail("no journal entry " + message_id + " for " + name);
        EXPECT_EQ(found.size(), 1u);
        return found.front();
    };

    const json down = find_one("16fad6aa28e14ede845df6fa5bf323ea", victim);
    const std::string daemon_pid = std::to_string(daemon_->pid());
    EXPECT_EQ(down.value("_PID", ""), daemon_pid);
    EXPECT_EQ(down.value("PRIORITY", ""), "4");
    EXPECT_NE(down.value("MESSAGE", "").find(victim), std::string::npos) << down.dump();
    EXPECT_NE(down.value("MESSAGE", "").find("down"), std::string::npos) << down.dump();
    EXPECT_EQ(down.value("PEER_NAME", ""), victim);
    EXPECT_EQ(down.value("PEER_ADDRESS", ""), before_kill.at("address").get<std::string>());
    EXPECT_EQ(down.value("PEER_STATE", ""), "down");
    EXPECT_EQ(down.value("PEER_PREVIOUS_STATE", ""), "suspect");
    EXPECT_EQ(down.value("PEER_SESSION", ""), before_kill.at("session").get<std::string>());
    EXPECT_EQ(down.value("PEER_INTERVAL_MSEC", ""), "200");
    EXPECT_EQ(down.value("PEER_PROBES", ""), "3");
    EXPECT_EQ(down.value("PEER_MISSED", ""), "3");
    const std::string rtt = down.value("PEER_RTT_USEC", "");
    EXPECT_TRUE(all_digits(rtt)) << down.dump();
    EXPECT_LT(std::stoull(rtt.empty() ? "0" : rtt), 1'000'000u);
    // The agent was killed on a host that is still up: the reason also says
    // what the ICMP errors for the probes told.
    EXPECT_EQ(down.value("PEER_REASON", "").rfind("detection time expired", 0), 0u)
        << down.dump();
    EXPECT_EQ(down.value("PEER_PROTOCOL", ""), "kap1");
    EXPECT_EQ(down.value("PEER_EVENT", ""), "down");

    const json suspect = find_one("681e42ee9b684060b35bd08b8e0f256d", victim);
    EXPECT_EQ(suspect.value("PRIORITY", ""), "5");
    EXPECT_EQ(suspect.value("PEER_STATE", ""), "suspect");
    EXPECT_EQ(suspect.value("PEER_PREVIOUS_STATE", ""), "up");

    const json registered = find_one("7753e1932bca402b9b9dc336d0badeea", victim);
    EXPECT_EQ(registered.value("PRIORITY", ""), "6");
    EXPECT_EQ(registered.value("PEER_STATE", ""), "up");
    EXPECT_EQ(registered.value("PEER_INTERVAL_MSEC", ""), "200");

    const json left = find_one("a4fdb73540bd491ca24bb6c0daf2aee6", leaver);
    EXPECT_EQ(left.value("PRIORITY", ""), "6");
    EXPECT_EQ(left.value("PEER_STATE", ""), "left");
    EXPECT_EQ(left.value("PEER_PREVIOUS_STATE", ""), "up");
    EXPECT_EQ(left.value("PEER_EVENT", ""), "left");
}

// ---- keepalivectl -----------------------------------------------------------------

TEST_F(KeepaliveTest, CtlShowsEveryAllowedNameCharacter) {
    start_daemon();
    const Strings names = {"dotted.name", "under_score", "dash-name",
                           "colon:name",  "at@name",     "All.of_them-0:9@Z"};
    for (const auto& n : names) start_peer(n, v4_address());
    wait_for_state(names, "up");

    const RunResult json_run =
        run({ctl_path(), "--socket", config_.control_socket, "peers", "--json"});
    ASSERT_TRUE(json_run.status.exited_with(0)) << json_run.err;
    const json parsed = json::parse(json_run.out);  // throws, failing the test, if invalid
    std::set<std::string> listed;
    for (const auto& p : parsed.at("peers")) {
        listed.insert(p.at("name").get<std::string>());
        for (const char* key :
             {"name", "address", "protocol", "state", "session", "interval_ms", "probes", "missed",
              "rtt_us", "since", "probes_sent", "acks_received"})
            EXPECT_TRUE(p.contains(key)) << key << " missing in " << p.dump();
        EXPECT_EQ(p.at("interval_ms"), 200);
        EXPECT_EQ(p.at("probes"), 3);
    }
    EXPECT_EQ(listed, std::set<std::string>(names.begin(), names.end()));

    const RunResult table = run({ctl_path(), "--socket", config_.control_socket, "peers"});
    ASSERT_TRUE(table.status.exited_with(0)) << table.err;
    EXPECT_NE(table.out.find("NAME"), std::string::npos) << table.out;
    for (const auto& n : names) {
        const auto lines = lines_of(table.out);
        const bool listed_up = std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
            const auto f = fields_of(l);
            return f.size() >= 3 && f[0] == n && f[1].rfind("127.0.0.1:", 0) == 0 && f[2] == "up";
        });
        EXPECT_TRUE(listed_up) << n << " not in\n" << table.out;
    }

    const RunResult status = run({ctl_path(), "--socket", config_.control_socket, "status"});
    ASSERT_TRUE(status.status.exited_with(0)) << status.err;
    EXPECT_NE(status.out.find("6 peers: 6 up, 0 suspect, 0 down, 0 left"), std::string::npos)
        << status.out;
    const json status_json_out = ctl_json(ctl_args({"status"}));
    for (const char* key : {"summary", "peers", "up", "suspect", "down", "left",
                            "datagrams_received", "datagrams_dropped", "drops", "epoch", "daemon"})
        EXPECT_TRUE(status_json_out.contains(key)) << key;
    EXPECT_EQ(status_json_out.at("up"), 6);
}

// Names are data: one the protocol forbids never reaches the table, even after
// a complete cookie handshake.
TEST_F(KeepaliveTest, ForbiddenNameIsRejectedAfterTheHandshake) {
    start_daemon();
    start_peer("legit", v4_address());
    wait_for_state({"legit"}, "up");

    UdpClient client(*Address::parse(v4_address()));
    kap::Register reg;
    reg.nonce = 0x0123456789abcdefULL;
    reg.incarnation = 42;
    reg.interval_ms = 200;
    reg.probes = 3;
    reg.name = std::string("q\"uote\\ \n\x01\xff}{", 13);
    const auto exchange = [&](const kap::Register& r) -> std::optional<kap::Message> {
        std::vector<std::uint8_t> d(kap::kMaxDatagramSize);
        d.resize(kap::encode({kap::Diag::none, 0, r}, d));
        // UDP on loopback does not lose datagrams, but a retry costs nothing.
        for (int attempt = 0; attempt < 5; ++attempt) {
            client.send(d);
            if (const auto reply = client.receive_one(2s)) {
                EXPECT_LE(reply->size(), d.size());
                auto m = kap::decode(*reply);
                if (m.ok()) return *m;
            }
        }
        return std::nullopt;
    };
    const auto challenge = exchange(reg);
    ASSERT_TRUE(challenge.has_value());
    ASSERT_EQ(kap::type_of(*challenge), kap::Type::challenge);
    const auto& c = std::get<kap::Challenge>(challenge->body);
    EXPECT_EQ(c.nonce, reg.nonce);
    reg.cookie = c.cookie;
    const auto answer = exchange(reg);
    ASSERT_TRUE(answer.has_value());
    ASSERT_EQ(kap::type_of(*answer), kap::Type::reject);
    EXPECT_EQ(answer->diag, kap::Diag::invalid_parameters);
    EXPECT_EQ(std::get<kap::Reject>(answer->body).nonce, reg.nonce);

    const RunResult r = run({ctl_path(), "--socket", config_.control_socket, "peers", "--json"});
    ASSERT_TRUE(r.status.exited_with(0)) << r.err;
    const json parsed = json::parse(r.out);
    ASSERT_EQ(parsed.at("peers").size(), 1u) << r.out;
    EXPECT_EQ(parsed.at("peers").at(0).at("name"), "legit");
}

// Control clients that connect and never send a request must not lock the
// operator out: past the daemon's client limit the oldest ones are dropped.
TEST_F(KeepaliveTest, IdleControlClientsDoNotLockOutKeepalivectl) {
    start_daemon();
    std::vector<UniqueFd> idle;
    for (int i = 0; i < 100; ++i) {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        ASSERT_TRUE(fd);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", config_.control_socket.c_str());
        ASSERT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0)
            << std::strerror(errno);
        idle.push_back(std::move(fd));
    }
    const json status = status_json();
    EXPECT_EQ(status.at("peers"), 0);
    EXPECT_TRUE(daemon_->running());
}

TEST(Ctl, UnreachableDaemonExits1WithAMessage) {
    TempDir dir;
    const std::string missing = dir.file("no-daemon.sock");
    for (const Strings& args : {Strings{"status"}, Strings{"peers"}, Strings{"status", "--json"},
                                Strings{"peers", "--json"}}) {
        Strings argv{ctl_path(), "--socket", missing};
        argv.insert(argv.end(), args.begin(), args.end());
        const RunResult r = run(argv);
        EXPECT_TRUE(r.status.exited_with(1)) << args[0] << ": " << r.status.to_string();
        EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
        EXPECT_TRUE(r.out.empty()) << r.out;
    }
}

}  // namespace
}  // namespace keepalive::test
