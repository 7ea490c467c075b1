// Attacks on the daemon around the protocol: an operator's query, one host,
// a reload and the daemon's own limits must never break a verdict or stop it
// serving. Each test reproduces a defect found on the daemon as it was, against
// the real binaries on loopback.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "bench_process.hpp"
#include "core/codec.hpp"
#include "fleet.hpp"
#include "harness.hpp"

namespace keepalive::test {
namespace {

using json = nlohmann::json;
using Strings = std::vector<std::string>;

std::size_t count_lines(const std::string& text, std::string_view needle) {
    std::size_t n = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
    return n;
}

// The lowest descriptor number a process has free: as its RLIMIT_NOFILE, no
// new descriptor fits (the limit bounds the numbers new descriptors get).
rlim_t lowest_free_fd(pid_t pid) {
    std::set<rlim_t> used;
    for (const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
        used.insert(std::stoul(e.path().filename().string()));
    rlim_t fd = 0;
    while (used.count(fd) != 0) ++fd;
    return fd;
}

// A UDP socket bound to a loopback address of the test's choice, speaking
// KAP/1 or raw bytes to the daemon.
class RawPeer {
public:
    RawPeer(const Address& server, const Address& local = Address::v4(0x7f000001, 0))
        : server_(server) {
        fd_ = ::socket(local.family() == Address::Family::v4 ? AF_INET : AF_INET6,
                       SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_storage ss{};
        const socklen_t len = local.to_sockaddr(ss);
        if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0)
            throw std::runtime_error(std::string("bind: ") + std::strerror(errno));
    }
    ~RawPeer() { ::close(fd_); }
    RawPeer(const RawPeer&) = delete;
    RawPeer& operator=(const RawPeer&) = delete;

    Address local() const {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
        return *Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
    }
    void send_bytes(std::span<const std::uint8_t> bytes, const Address& to) const {
        sockaddr_storage ss{};
        const socklen_t len = to.to_sockaddr(ss);
        ::sendto(fd_, bytes.data(), bytes.size(), 0, reinterpret_cast<sockaddr*>(&ss), len);
    }
    void send(const kap::Message& m) const {
        std::array<std::uint8_t, kap::kMaxDatagramSize> buf{};
        send_bytes(std::span(buf.data(), kap::encode(m, buf)), server_);
    }
    // The next KAP/1 datagram that is not a PROBE, within the patience.
    std::optional<kap::Message> receive(Millis timeout = kPatience) const {
        const auto deadline = Clock::now() + timeout;
        while (Clock::now() < deadline) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            std::array<std::uint8_t, 2048> buf{};
            const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
            if (n <= 0) continue;
            auto m = kap::decode(std::span(buf.data(), static_cast<std::size_t>(n)));
            if (m && kap::type_of(*m) != kap::Type::probe) return *m;
        }
        return std::nullopt;
    }
    // A full handshake; returns the final answer (ACCEPT or REJECT) and the cookie used.
    std::pair<std::optional<kap::Message>, kap::Cookie> register_as(const std::string& name,
                                                                    std::uint64_t incarnation,
                                                                    std::uint64_t nonce) const {
        kap::Register r{nonce, incarnation, 1000, 3, {}, name};
        send({.session = 0, .body = r});
        auto reply = receive();
        if (reply && kap::type_of(*reply) == kap::Type::challenge) {
            r.cookie = std::get<kap::Challenge>(reply->body).cookie;
            send({.session = 0, .body = r});
            reply = receive();
        }
        return {reply, r.cookie};
    }
    int fd() const { return fd_; }

private:
    Address server_;
    int fd_ = -1;
};

// One daemon in a directory of its own, logging to a file.
class DefectsTest : public ::testing::Test {
protected:
    DefectsTest() {
        port_ = free_udp_port();
        config_.listen.push_back("127.0.0.1:" + std::to_string(port_));
        config_.control_socket = dir_.file("control.sock");
    }

    Address server() const { return Address::v4(0x7f000001, port_); }
    std::string config_path() const { return dir_.file("keepalived.toml"); }

    Process& start_daemon(const std::string& path = "") {
        const std::string file = path.empty() ? config_path() : path;
        write_file(file, config_.to_toml());
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived.log");
        options.stdout_path = options.stderr_path;
        daemon_.emplace(Strings{keepalived_path(), "--config", file, "--log-target", "stderr"},
                        options);
        if (!wait_until([&] { return !daemon_->running() || try_status().has_value(); }) ||
            !daemon_->running())
            throw std::runtime_error("keepalived did not come up:\n" + log());
        return *daemon_;
    }
    std::string log() const { return daemon_ ? daemon_->stderr_text() : std::string(); }
    std::optional<json> try_status() const {
        try {
            return control_request(config_.control_socket, "status");
        } catch (const std::exception&) {
            return std::nullopt;
        }
    }
    json status() const { return control_request(config_.control_socket, "status"); }
    std::uint64_t events(const json& s, const char* kind) const {
        return s.at("events").at(kind).get<std::uint64_t>();
    }
    // Waits for `needle` to appear in the daemon's log `times` times.
    bool wait_for_log(std::string_view needle, std::size_t times = 1) const {
        return wait_until([&] { return count_lines(log(), needle) >= times; });
    }

    TempDir dir_;
    std::uint16_t port_ = 0;
    DaemonConfig config_;
    std::optional<Process> daemon_;
};

// The HIGH defect: a `peers` answer built whole in one loop iteration kept
// the loop from reading ACKs for hundreds of milliseconds; with 20,000 peers
// at 1 s x 1 every query made false downs.
TEST_F(DefectsTest, QueriesUnderLoadNeverChangeAVerdict) {
    constexpr std::size_t kPeers = 20'000;
    config_.max_peers = 30'000;
    config_.max_per_host = 30'000;
    start_daemon();
    sim::Fleet fleet(server(), test_seed());
    fleet.add("q", kPeers, 1000, 1);
    ASSERT_TRUE(fleet.register_all(60s)) << fleet.accepted() << " accepted\n" << log();
    fleet.pump_for(3s);  // every peer answered at least once
    const json before = status();
    ASSERT_EQ(before.at("up"), kPeers) << before.dump();

    std::atomic<bool> answering{true};
    std::thread peers([&] { fleet.pump_while(answering); });
    std::size_t queries = 0;
    std::size_t peers_seen_min = SIZE_MAX;
    const auto end = Clock::now() + 30s;
    while (Clock::now() < end) {
        const auto p = try_ctl_json({"--socket", config_.control_socket, "peers"});
        const auto s = try_ctl_json({"--socket", config_.control_socket, "status"});
        if (p) peers_seen_min = std::min(peers_seen_min, p->at("peers").size());
        queries += (p ? 1 : 0) + (s ? 1 : 0);
    }
    answering = false;
    peers.join();
    const json after = status();
    const json& loop = after.at("daemon").at("loop");
    std::cout << queries << " queries in 30 s; loop: " << loop.dump()
              << "; receive overflows: " << after.at("daemon").at("receive_overflows")
              << "; verdicts withheld: " << after.at("daemon").at("verdicts_withheld") << "\n";

    EXPECT_GE(queries, 10u);
    EXPECT_EQ(peers_seen_min, kPeers);
    EXPECT_EQ(events(after, "suspect") - events(before, "suspect"), 0u);
    EXPECT_EQ(events(after, "down") - events(before, "down"), 0u);
    EXPECT_EQ(after.at("up"), kPeers);
    // Streaming keeps iterations short (the figures are the loop's CPU time,
    // so a busy machine counts less against the daemon).
    const auto delta = [&](const char* key) {
        return loop.at(key).get<std::uint64_t>() -
               before.at("daemon").at("loop").at(key).get<std::uint64_t>();
    };
    // Built whole, every `peers` answer here took one iteration of about
    // 200 ms; streamed, the odd iteration past 20 ms (a few in a whole run,
    // whatever the queries) is the machine's, not the answer's.
    std::cout << delta("iterations_over_5ms") << " iterations over 5 ms of CPU, "
              << delta("iterations_over_20ms") << " over 20 ms\n";
    EXPECT_LE(delta("iterations_over_20ms"), 3u);
}

TEST_F(DefectsTest, OneHostIsCappedWhileOtherHostsStillRegister) {
    config_.max_per_host = 50;
    start_daemon();
    sim::Fleet greedy(server(), test_seed(), Address::v4(0x7f000001, 0));
    greedy.add("g", 300, 1000, 3);
    greedy.register_all(30s);
    EXPECT_EQ(greedy.accepted(), 50u);
    EXPECT_EQ(greedy.rejected(), 250u);
    for (const auto& p : greedy.peers()) {
        if (p.phase == sim::Fleet::Phase::rejected) {
            EXPECT_EQ(p.reject_diag, static_cast<std::uint8_t>(kap::Diag::server_full));
        }
    }
    sim::Fleet other(server(), test_seed() + 1, Address::v4(0x7f000002, 0));
    other.add("o", 20, 1000, 3);
    EXPECT_TRUE(other.register_all(30s)) << log();
    EXPECT_EQ(status().at("peers"), 70u);
}

// One host re-registering with a new incarnation in every datagram made one
// `restarted` line per datagram: 27,000 lines/s.
TEST_F(DefectsTest, AnIncarnationFloodLogsABoundedNumberOfLinesAndOneSummary) {
    start_daemon();
    RawPeer flooder(server());
    auto [accepted, cookie] = flooder.register_as("flappy", 1, 77);
    ASSERT_TRUE(accepted && kap::type_of(*accepted) == kap::Type::accept);
    constexpr int kFlood = 5000;
    const auto t0 = Clock::now();
    for (int i = 0; i < kFlood; ++i)
        flooder.send({.session = 0,
                      .body = kap::Register{77, 100u + static_cast<unsigned>(i), 1000, 3, cookie,
                                            "flappy"}});
    // The kernel may drop part of a burst this fast: count what the daemon saw,
    // once the count stops moving.
    std::uint64_t seen = 0;
    ASSERT_TRUE(wait_until(
        [&] {
            const std::uint64_t now_seen = events(status(), "restarted");
            const bool settled = now_seen == seen && seen > 0;
            seen = now_seen;
            return settled;
        },
        kPatience, 200ms));
    ASSERT_GE(seen, 500u) << "too few of the flood's datagrams arrived to test anything";
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    // The summary comes when the period closes (10 s after the first line held back).
    ASSERT_TRUE(wait_for_log("peer events not logged")) << log();
    const std::string text = log();
    const std::size_t lines = count_lines(text, "restarted and registered again");
    std::cout << events(status(), "restarted") << " restarts in " << seconds << " s made " << lines
              << " lines\n";
    EXPECT_LE(lines, 10 + static_cast<std::size_t>(seconds) + 2);
    EXPECT_EQ(count_lines(text, "peer events not logged"), 1u);
    EXPECT_NE(text.find("most from flappy"), std::string::npos) << text;
    EXPECT_GE(status().at("daemon").at("events_not_logged").get<std::uint64_t>(),
              seen - lines - 1);
}

TEST_F(DefectsTest, ATakeoverFromAnotherHostIsLoggedAsAMoveWithBothAddresses) {
    start_daemon();
    RawPeer first(server(), Address::v4(0x7f000001, 0));
    RawPeer second(server(), Address::v4(0x7f000002, 0));
    ASSERT_EQ(kap::type_of(*first.register_as("db1", 1, 1).first), kap::Type::accept);
    ASSERT_EQ(kap::type_of(*second.register_as("db1", 2, 2).first), kap::Type::accept);
    ASSERT_TRUE(wait_for_log("taken over")) << log();
    EXPECT_NE(log().find("peer db1 (" + second.local().to_string() + ") taken over from " +
                         first.local().to_string()),
              std::string::npos)
        << log();
    EXPECT_EQ(count_lines(log(), "restarted"), 0u);
    EXPECT_EQ(events(status(), "moved"), 1u);
}

// A new control_socket that cannot be bound passed --check-config; on SIGHUP
// the old socket was deleted, and the log said "configuration reloaded".
TEST_F(DefectsTest, AReloadToAnUnbindableControlSocketKeepsAllOfTheOldConfig) {
    start_daemon();
    const json before = status();
    write_file(dir_.file("not-a-dir"), "a regular file");
    DaemonConfig next = config_;
    next.control_socket = dir_.file("not-a-dir") + "/control.sock";
    const std::uint16_t new_port = free_udp_port();
    next.listen.push_back("127.0.0.1:" + std::to_string(new_port));  // must not be applied
    write_file(config_path(), next.to_toml());
    ASSERT_EQ(run({keepalived_path(), "--check-config", config_path()}).status.code, 0);
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_for_log("reload failed, keeping the running configuration")) << log();
    EXPECT_EQ(count_lines(log(), "configuration reloaded"), 0u) << log();
    const json after = status();  // the old socket still answers
    EXPECT_EQ(after.at("daemon").at("listen"), before.at("daemon").at("listen"));
    EXPECT_TRUE(std::filesystem::exists(config_.control_socket));
    const auto ctl = run({ctl_path(), "--socket", config_.control_socket, "status"});
    EXPECT_TRUE(ctl.status.exited_with(0)) << ctl.err;
}

TEST_F(DefectsTest, AFifoAsTheConfigIsRefusedByCheckConfigAndByReloadWithoutHanging) {
    const std::string fifo = dir_.file("fifo.toml");
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const auto check = run({keepalived_path(), "--check-config", fifo}, 10s);
    EXPECT_TRUE(check.status.exited_with(1)) << check.status.to_string();
    EXPECT_NE(check.err.find("not a regular file"), std::string::npos) << check.err;

    start_daemon();
    std::filesystem::remove(config_path());
    ASSERT_EQ(::mkfifo(config_path().c_str(), 0600), 0);
    daemon_->signal(SIGHUP);
    ASSERT_TRUE(wait_for_log("reload failed")) << log();
    EXPECT_TRUE(try_status().has_value());
}

// accept() failing with EMFILE left the connection in the backlog: the loop
// spun at 100% CPU and keepalivectl was locked out for good.
TEST_F(DefectsTest, AtTheDescriptorLimitTheLoopDoesNotSpinAndServesAgainLater) {
    Process& daemon = start_daemon();
    rlimit old{};
    ASSERT_EQ(::prlimit(daemon.pid(), RLIMIT_NOFILE, nullptr, &old), 0);
    const rlimit tight{lowest_free_fd(daemon.pid()), old.rlim_max};
    ASSERT_EQ(::prlimit(daemon.pid(), RLIMIT_NOFILE, &tight, nullptr), 0);

    // Connections that cannot be served: each is refused (closed), none spins.
    std::vector<int> clients;
    for (int i = 0; i < 5; ++i) {
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strcpy(sa.sun_path, config_.control_socket.c_str());
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
        clients.push_back(fd);
    }
    const double cpu0 = bench::read_cpu_seconds(daemon.pid());
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(1s);  // a measuring window, not a synchronisation
    const double busy = (bench::read_cpu_seconds(daemon.pid()) - cpu0) /
                        std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_LT(busy, 0.5) << "the loop spins at the descriptor limit";
    for (int fd : clients) ::close(fd);

    ASSERT_EQ(::prlimit(daemon.pid(), RLIMIT_NOFILE, &old, nullptr), 0);
    std::optional<json> s;
    ASSERT_TRUE(wait_until([&] { return (s = try_status()).has_value(); }));
    EXPECT_GE(s->at("daemon").at("control_refused_no_fd").get<std::uint64_t>(), 1u);
    EXPECT_TRUE(daemon.running());
}

TEST_F(DefectsTest, ANonUtf8ConfigPathKeepsStatusWorking) {
    const std::string path = dir_.file("conf-\xff\xfe.toml");
    start_daemon(path);
    const auto ctl = run({ctl_path(), "--socket", config_.control_socket, "status"});
    EXPECT_TRUE(ctl.status.exited_with(0)) << ctl.err;
    const auto j = try_ctl_json({"--socket", config_.control_socket, "status"});
    ASSERT_TRUE(j.has_value());
    EXPECT_NE(j->at("daemon").at("config").get<std::string>().find("conf-"), std::string::npos);
}

TEST_F(DefectsTest, OversizedDatagramsAreCountedAsReceivedAndDropped) {
    start_daemon();
    const json before = status();
    RawPeer peer(server());
    const std::vector<std::uint8_t> big(3000, 0x4B);
    peer.send_bytes(big, server());
    ASSERT_TRUE(wait_until([&] {
        return status().at("datagrams_received") == before.at("datagrams_received").get<int>() + 1;
    })) << status().dump();
    EXPECT_EQ(status().at("drops").at("bad_length"),
              before.at("drops").at("bad_length").get<int>() + 1);
}

// Under connect churn, keepalivectl failed with "connection reset" 2 times in 50.
TEST_F(DefectsTest, ConnectChurnNeverResetsAnAnswer) {
    start_daemon();
    std::atomic<bool> churning{true};
    std::vector<std::thread> churn;
    for (int t = 0; t < 2; ++t)
        churn.emplace_back([&] {
            while (churning) {
                sockaddr_un sa{};
                sa.sun_family = AF_UNIX;
                std::strcpy(sa.sun_path, config_.control_socket.c_str());
                const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
                ::close(fd);
            }
        });
    std::atomic<int> failures{0};
    std::string first_failure;
    std::mutex m;
    std::vector<std::thread> askers;
    for (int t = 0; t < 4; ++t)
        askers.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                try {
                    control_request(config_.control_socket, i % 2 ? "status" : "peers");
                } catch (const std::exception& e) {
                    if (failures++ == 0) {
                        std::lock_guard lock(m);
                        first_failure = e.what();
                    }
                }
            }
        });
    for (auto& t : askers) t.join();
    churning = false;
    for (auto& t : churn) t.join();
    EXPECT_EQ(failures.load(), 0) << first_failure;
}

// 2,000 spoofed 8-byte legacy registrations made the daemon send 2,052
// probes/s to the victim. Now a host gets max_per_host sessions, a session
// that never answered gets 3 probes a second apart and no slow probes.
TEST_F(DefectsTest, LegacyReflectionIsBoundedBelowTheAttackersOwnBytes) {
    const std::uint16_t register_port = free_udp_port();
    const std::uint16_t probe_port = free_udp_port();
    config_.max_per_host = 256;
    config_.max_peers = 10'000;
    config_.min_interval = "1s";
    config_.extra = "\n[legacy]\nenable = true\naddress = \"127.0.0.1\"\nregister_port = " +
                    std::to_string(register_port) + "\nprobe_port = " + std::to_string(probe_port) +
                    "\n";
    start_daemon();
    // The victim: a host (127.0.0.9) that never registered, listening where probes go.
    RawPeer victim(server(), Address::v4(0x7f000009, probe_port));
    RawPeer attacker(server(), Address::v4(0x7f000009, 0));  // a forged source, on loopback
    std::size_t sent_bytes = 0;
    for (int i = 0; i < 2000; ++i) {
        const std::string reg = "a" + std::to_string(i) + ":1:255";
        attacker.send_bytes(
            std::span(reinterpret_cast<const std::uint8_t*>(reg.data()), reg.size()),
            Address::v4(0x7f000001, register_port));
        sent_bytes += reg.size();
    }
    // Every session the flood made is down (after its three probes) or gone.
    std::size_t received_bytes = 0;
    std::size_t probes = 0;
    const auto until = Clock::now() + 8s;
    while (Clock::now() < until) {
        pollfd p{victim.fd(), POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        std::array<char, 2048> buf{};
        const ssize_t n = ::recv(victim.fd(), buf.data(), buf.size(), MSG_DONTWAIT);
        if (n > 0) {
            received_bytes += static_cast<std::size_t>(n);
            ++probes;
        }
    }
    const json s = status();
    std::cout << sent_bytes << " bytes of spoofed registrations made " << probes << " probes ("
              << received_bytes << " bytes) to the victim: ratio "
              << static_cast<double>(received_bytes) / static_cast<double>(sent_bytes) << "\n";
    EXPECT_LE(s.at("peers").get<int>(), 256);
    // Three probes each; one more where the daemon doubted its own reception
    // (a loaded machine) and withheld a verdict.
    EXPECT_LE(probes, 256u * 4u);
    EXPECT_LE(received_bytes, sent_bytes);
}

}  // namespace
}  // namespace keepalive::test
