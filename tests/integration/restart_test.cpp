// Restarts without flaps, on the real daemon: 1,000 peers (real PeerSessions,
// the agents' own core, played by one fleet thread over 50 loopback source
// addresses) stay up with their sessions across a SIGKILL and across a planned
// stop (BYE 8), both restored from the state file; a shutdown for good says
// BYE 5 and deletes it. Prints the figures the issue asks for.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "core/address.hpp"
#include "core/codec.hpp"
#include "core/peer_session.hpp"
#include "core/peer_snapshot.hpp"
#include "core/random.hpp"
#include "harness.hpp"
#include "net/udp_socket.hpp"

namespace keepalive::test {
namespace {

using Strings = std::vector<std::string>;
using TimePoint = Clock::time_point;

constexpr int kPeers = 1000;
constexpr int kSockets = 50;  // 20 peers per source address (127.0.0.2 .. 127.0.0.51)
constexpr std::uint32_t kIntervalMs = 1000;
constexpr std::uint8_t kProbes = 3;

// Many agents in one thread. Each has its own PeerSession; datagrams are told
// apart by session id where the header has one, and offered to every agent on
// the socket otherwise (CHALLENGE, ACCEPT, REJECT: the nonce picks the right one).
class Fleet {
public:
    struct Agent final : PeerSessionSink {
        Agent(Fleet& f, std::size_t sock, std::string n)
            : fleet(f),
              socket(sock),
              name(n),
              session(PeerSessionOptions{std::move(n), kIntervalMs, kProbes, {}}, fleet.random_,
                      *this) {}
        void send(std::span<const std::uint8_t> d) override {
            if (d.size() > 3 && d[3] == static_cast<std::uint8_t>(kap::Type::register_))
                ++registers;
            fleet.sockets_[socket].send_to(fleet.server_, d);
        }
        void session_event(const SessionEvent& e) override { events.push_back(e); }

        Fleet& fleet;
        std::size_t socket;
        std::string name;
        PeerSession session;
        std::size_t registers = 0;
        std::vector<SessionEvent> events;
        std::vector<TimePoint> probes;
    };

    Fleet(const Address& server, int peers, const std::string& prefix)
        : server_(server), random_(test_seed()) {
        for (int i = 0; i < kSockets; ++i) {
            auto s = UdpSocket::bind(Address::v4(0x7f000002u + static_cast<std::uint32_t>(i), 0));
            if (!s) throw std::runtime_error(s.error());
            sockets_.push_back(std::move(*s));
        }
        for (int i = 0; i < peers; ++i)
            agents_.push_back(std::make_unique<Agent>(*this, static_cast<std::size_t>(i % kSockets),
                                                      prefix + std::to_string(i)));
        by_socket_.resize(sockets_.size());
        for (auto& a : agents_) by_socket_[a->socket].push_back(a.get());
    }
    ~Fleet() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }

    void start() {
        {
            std::lock_guard lock(mutex_);
            for (auto& a : agents_) a->session.start(Clock::now());
        }
        thread_ = std::thread([this] { loop(); });
    }

    // Runs fn with the agents while the fleet thread waits.
    template <typename Fn>
    auto with_agents(Fn&& fn) {
        std::lock_guard lock(mutex_);
        return fn(agents_);
    }

private:
    void loop() {
        std::vector<pollfd> fds;
        for (auto& s : sockets_) fds.push_back({s.fd(), POLLIN, 0});
        while (!stop_) {
            ::poll(fds.data(), fds.size(), 5);
            std::lock_guard lock(mutex_);
            const TimePoint now = Clock::now();
            for (std::size_t i = 0; i < sockets_.size(); ++i) {
                if ((fds[i].revents & POLLIN) == 0) continue;
                for (;;) {
                    const std::size_t n = sockets_[i].receive_batch(
                        [&](const UdpSocket::Received& r) { deliver(i, r.data, now); });
                    if (n < UdpSocket::kBatchSize) break;
                }
            }
            for (auto& a : agents_)
                if (const auto d = a->session.next_deadline(); d && *d <= now)
                    a->session.on_timer(now);
        }
    }

    void deliver(std::size_t socket, std::span<const std::uint8_t> data, TimePoint now) {
        if (data.size() < kap::kHeaderSize) return;
        const std::uint32_t session = (std::uint32_t{data[8]} << 24) |
                                      (std::uint32_t{data[9]} << 16) |
                                      (std::uint32_t{data[10]} << 8) | data[11];
        const auto type = static_cast<kap::Type>(data[3]);
        const auto offer = [&](Agent* a) {
            const std::uint64_t answered = a->session.probes_answered();
            a->session.on_datagram(data, now);
            if (a->session.probes_answered() > answered) a->probes.push_back(now);
        };
        if (session != 0 && type != kap::Type::accept) {
            for (Agent* a : by_socket_[socket])
                if (a->session.session() == session) offer(a);
            return;
        }
        for (Agent* a : by_socket_[socket]) offer(a);
    }

    Address server_;
    SeededRandom random_;
    std::vector<UdpSocket> sockets_;
    std::vector<std::unique_ptr<Agent>> agents_;
    std::vector<std::vector<Agent*>> by_socket_;
    std::mutex mutex_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

class RestartTest : public ::testing::Test {
protected:
    RestartTest() : notify_(dir_.file("notify.sock")) {
        port_ = free_udp_port();
        config_.listen.push_back("127.0.0.1:" + std::to_string(port_));
        config_.control_socket = dir_.file("control.sock");
        config_.state_file = dir_.file("state");
        config_.max_peers = 2 * kPeers;
        write_file(dir_.file("keepalived.toml"), config_.to_toml());
    }

    // Starts keepalived and returns when it has said READY=1.
    void start_daemon() {
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived-" + std::to_string(++runs_) + ".log");
        options.stdout_path = options.stderr_path;
        options.env["NOTIFY_SOCKET"] = notify_.path();
        const std::size_t readies = notify_.count("READY=1");
        daemon_.emplace(Strings{keepalived_path(), "--config", dir_.file("keepalived.toml"),
                                "--log-target", "stderr"},
                        options);
        ASSERT_TRUE(wait_until([&] {
            return !daemon_->running() || notify_.count("READY=1") > readies;
        })) << daemon_->stderr_text();
        ASSERT_TRUE(daemon_->running()) << daemon_->stderr_text();
        for (const auto& m : notify_.messages())
            if (m.has("READY=1")) ready_at_ = m.at;
    }

    nlohmann::json status() { return control_request(config_.control_socket, "status"); }

    std::size_t saved_peers() {
        const std::string bytes = read_file(*config_.state_file);
        const auto s = decode_snapshot(
            std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
        return s ? s->peers.size() : 0;
    }

    void bring_up_fleet() {
        fleet_.emplace(*Address::parse("127.0.0.1:" + std::to_string(port_)), kPeers, "node-");
        fleet_->start();
        ASSERT_TRUE(wait_until([&] {
            try {
                return status().at("up") == kPeers;
            } catch (const std::exception&) {
                return false;
            }
        })) << status().dump();
        // The debounced save has everyone.
        ASSERT_TRUE(wait_until([&] {
            try {
                return saved_peers() == std::size_t{kPeers};
            } catch (const std::exception&) {
                return false;
            }
        }));
        fleet_->with_agents([](auto& agents) {
            for (auto& a : agents) {
                a->registers = 0;
                a->events.clear();
            }
            return 0;
        });
    }

    // Waits until every agent has had `n` probes after ready_at_, then checks
    // and prints what the restart looked like to the agents and the daemon.
    void expect_no_flap(const std::string& kind, TimePoint stopped_at, bool expect_bye8) {
        const TimePoint ready = ready_at_;
        ASSERT_TRUE(wait_until(
            [&] {
                return fleet_->with_agents([&](auto& agents) {
                    return std::all_of(agents.begin(), agents.end(), [&](auto& a) {
                        return std::count_if(a->probes.begin(), a->probes.end(),
                                             [&](TimePoint t) { return t > ready; }) >= 6;
                    });
                });
            },
            60s))
            << daemon_->stderr_text();
        const std::string log = daemon_->stderr_text();
        for (const char* flap :
             {") registered:", ") is down", ") has left", ") is suspect", ") restarted", ") moved"})
            EXPECT_EQ(log.find(flap), std::string::npos) << flap << " in\n" << log;
        EXPECT_NE(log.find("restored " + std::to_string(kPeers) + " peers"), std::string::npos)
            << log;
        const auto s = status();
        EXPECT_EQ(s.at("up"), kPeers) << s.dump();
        EXPECT_EQ(s.at("datagrams_dropped"), 0) << s.dump();

        Duration first_probe{};
        Duration longest_gap{};
        std::size_t registers = 0;
        std::size_t goodbyes = 0;
        std::size_t other_events = 0;
        fleet_->with_agents([&](auto& agents) {
            for (auto& a : agents) {
                registers += a->registers;
                for (const auto& e : a->events) {
                    if (e.kind == SessionEventKind::goodbye && e.diag == kap::Diag::restarting)
                        ++goodbyes;
                    else
                        ++other_events;
                }
                const auto after = std::find_if(a->probes.begin(), a->probes.end(),
                                                [&](TimePoint t) { return t > ready; });
                if (after == a->probes.end()) continue;
                first_probe = std::max(first_probe, Duration(*after - ready));
                if (after != a->probes.begin()) {
                    longest_gap = std::max(longest_gap, Duration(*after - *(after - 1)));
                }
            }
            return 0;
        });
        EXPECT_EQ(registers, 0u) << "re-registrations";
        EXPECT_EQ(other_events, 0u);
        EXPECT_EQ(goodbyes, expect_bye8 ? std::size_t{kPeers} : 0u);
        EXPECT_LE(first_probe, std::chrono::milliseconds(kIntervalMs) + 500ms);
        const auto ms = [](Duration d) {
            return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
        };
        std::cout << kind << ", " << kPeers << " peers: events 0 expected, re-registrations "
                  << registers << ", daemon down " << ms(ready - stopped_at)
                  << " ms (stop to READY), READY to the last peer's "
                  << "first probe " << ms(first_probe) << " ms, longest gap between two probes "
                  << ms(longest_gap) << " ms" << std::endl;
    }

    TempDir dir_;
    NotifySocket notify_;
    std::uint16_t port_ = 0;
    DaemonConfig config_;
    std::optional<Process> daemon_;
    std::optional<Fleet> fleet_;
    TimePoint ready_at_{};
    int runs_ = 0;
};

TEST_F(RestartTest, SigkillAndStartAgainOnTheStateFileIsInvisible) {
    start_daemon();
    bring_up_fleet();
    const std::string epoch = status().at("epoch");
    const TimePoint killed = Clock::now();
    daemon_->kill();
    start_daemon();
    EXPECT_EQ(status().at("epoch"), epoch) << "the agents would see a new server";
    expect_no_flap("SIGKILL + start", killed, false);
}

TEST_F(RestartTest, PlannedStopSaysByeEightAndStartAgainIsInvisible) {
    start_daemon();
    bring_up_fleet();
    const TimePoint stopped = Clock::now();
    daemon_->signal(SIGTERM);
    const auto exit = daemon_->wait();
    ASSERT_TRUE(exit && exit->exited_with(0)) << daemon_->stderr_text();
    EXPECT_NE(daemon_->stderr_text().find("(BYE 8)"), std::string::npos);
    start_daemon();
    expect_no_flap("SIGTERM + start", stopped, true);
}

TEST_F(RestartTest, ShutdownForGoodSaysByeFiveAndForgetsTheState) {
    start_daemon();
    fleet_.emplace(*Address::parse("127.0.0.1:" + std::to_string(port_)), 20, "small-");
    fleet_->start();
    ASSERT_TRUE(wait_until([&] { return status().at("up") == 20; }));
    ASSERT_TRUE(wait_until([&] {
        try {
            return saved_peers() == 20u;
        } catch (const std::exception&) {
            return false;
        }
    }));
    const auto r = run({ctl_path(), "--socket", config_.control_socket, "shutdown", "--for-good"});
    EXPECT_TRUE(r.status.exited_with(0)) << r.err;
    const auto exit = daemon_->wait();
    ASSERT_TRUE(exit && exit->exited_with(0)) << daemon_->stderr_text();
    EXPECT_NE(::access(config_.state_file->c_str(), F_OK), 0) << "the state file is still there";
    ASSERT_TRUE(wait_until([&] {
        return fleet_->with_agents([](auto& agents) {
            return std::all_of(agents.begin(), agents.end(), [](auto& a) {
                return !a->events.empty() && a->events.back().kind == SessionEventKind::goodbye &&
                       a->events.back().diag == kap::Diag::shutting_down;
            });
        });
    }));
}

TEST_F(RestartTest, CorruptOrTruncatedStateFileIsLoggedAndIgnored) {
    start_daemon();
    fleet_.emplace(*Address::parse("127.0.0.1:" + std::to_string(port_)), 5, "tiny-");
    fleet_->start();
    ASSERT_TRUE(wait_until([&] { return status().at("up") == 5; }));
    ASSERT_TRUE(wait_until([&] {
        try {
            return saved_peers() == 5u;
        } catch (const std::exception&) {
            return false;
        }
    }));
    daemon_->kill();
    std::string bytes = read_file(*config_.state_file);
    bytes.resize(bytes.size() / 2);
    write_file(*config_.state_file, bytes);
    start_daemon();
    EXPECT_NE(daemon_->stderr_text().find("ignoring saved state in " + *config_.state_file +
                                          ": checksum mismatch"),
              std::string::npos)
        << daemon_->stderr_text();
    EXPECT_EQ(status().at("peers"), 0);
    // Not probed by the new daemon, the agents find the server lost and register again.
    EXPECT_TRUE(wait_until([&] { return status().at("up") == 5; }, 60s)) << status().dump();

    daemon_->kill();
    write_file(*config_.state_file, "not a state file at all");
    start_daemon();
    EXPECT_NE(daemon_->stderr_text().find("not a state file"), std::string::npos)
        << daemon_->stderr_text();
}

}  // namespace
}  // namespace keepalive::test
