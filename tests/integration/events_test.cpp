// Peer events as other programs get them: `keepalivectl watch` (ordered,
// gap-free, resumable, a slow reader told what it missed) and [[hooks]]
// (environment, per-peer order, timeouts, never blocking the loop). Real
// binaries on loopback; many peers are played by one UDP socket (Swarm).
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/address.hpp"
#include "core/codec.hpp"
#include "harness.hpp"
#include "net/udp_socket.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

// N peers behind one UDP socket: each registers through the real handshake
// and answers probes while `answering` is set.
class Swarm {
public:
    Swarm(std::uint16_t server_port, int count, std::string prefix, std::uint32_t interval_ms,
          std::uint8_t probes)
        : count_(count), prefix_(std::move(prefix)), interval_ms_(interval_ms), probes_(probes) {
        auto local = Address::parse("127.0.0.1:0");
        auto socket = UdpSocket::bind(*local);
        if (!socket) fail("swarm socket: " + socket.error());
        socket_.emplace(std::move(*socket));
        // Room for a burst of probes to a thousand peers (FORCE works as root).
        const int big = 8 << 20;
        if (::setsockopt(socket_->fd(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) != 0)
            ::setsockopt(socket_->fd(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
        server_ = *Address::parse("127.0.0.1:" + std::to_string(server_port));
        accepted_flags_.assign(static_cast<std::size_t>(count_), false);
        thread_ = std::thread([this] { serve(); });
    }
    ~Swarm() {
        stop_ = true;
        thread_.join();
    }
    Swarm(const Swarm&) = delete;
    Swarm& operator=(const Swarm&) = delete;

    std::string name(int i) const { return prefix_ + std::to_string(i); }
    int accepted() const { return accepted_; }
    void set_answering(bool on) { answering_ = on; }

private:
    void send(const kap::Message& m) {
        std::array<std::uint8_t, kap::kMaxDatagramSize> buf;
        const std::size_t n = kap::encode(m, buf);
        socket_->send_to(server_, std::span(buf.data(), n));
    }
    // REGISTERs for every peer not accepted yet, a few at a time so that no
    // receive queue overflows; repeated until all are in.
    void register_some() {
        int sent = 0;
        for (int i = 0; i < count_ && sent < 100; ++i)
            if (!accepted_flags_[static_cast<std::size_t>(i)]) {
                send_register(i, kap::Cookie{});
                ++sent;
            }
    }
    void send_register(int i, const kap::Cookie& cookie) {
        send({.session = 0,
              .body = kap::Register{kNonceBase + static_cast<std::uint64_t>(i), kIncarnation,
                                    interval_ms_, probes_, cookie, name(i)}});
    }
    void serve() {
        auto next_round = Clock::now();
        while (!stop_) {
            if (accepted_ < count_ && Clock::now() >= next_round) {
                register_some();
                next_round = Clock::now() + 100ms;
            }
            pollfd p{socket_->fd(), POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            socket_->receive_batch([&](const UdpSocket::Received& r) {
                auto m = kap::decode(r.data);
                if (!m) return;
                if (const auto* c = std::get_if<kap::Challenge>(&m->body)) {
                    send_register(static_cast<int>(c->nonce - kNonceBase), c->cookie);
                } else if (const auto* a = std::get_if<kap::Accept>(&m->body)) {
                    const auto i = static_cast<std::size_t>(a->nonce - kNonceBase);
                    if (i < accepted_flags_.size() && !accepted_flags_[i]) {
                        accepted_flags_[i] = true;
                        ++accepted_;
                    }
                } else if (const auto* probe = std::get_if<kap::Probe>(&m->body)) {
                    if (answering_)
                        send({.session = m->session,
                              .body = kap::Ack{probe->seq, probe->tx_time, kIncarnation}});
                }
            });
        }
    }

    static constexpr std::uint64_t kNonceBase = 0x7000'0000;
    static constexpr std::uint64_t kIncarnation = 0x5157'4152'4d00;
    int count_;
    std::string prefix_;
    std::uint32_t interval_ms_;
    std::uint8_t probes_;
    std::optional<UdpSocket> socket_;
    Address server_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> answering_{true};
    std::atomic<int> accepted_{0};
    std::vector<bool> accepted_flags_;  // the serving thread's only
};

// A raw `watch` connection reading JSON lines.
class WatchConnection {
public:
    WatchConnection(const std::string& socket_path, const std::string& request) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", socket_path.c_str());
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
            fail("cannot connect to " + socket_path);
        // A small receive buffer so that a reader that stops reading falls
        // behind the daemon's ring quickly.
        const int small = 4096;
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        const std::string line = request + "\n";
        if (::send(fd_, line.data(), line.size(), MSG_NOSIGNAL) < 0) fail("send");
    }
    ~WatchConnection() { ::close(fd_); }
    WatchConnection(const WatchConnection&) = delete;
    WatchConnection& operator=(const WatchConnection&) = delete;

    // Reads whatever has arrived (waiting up to `wait` for the first bytes).
    std::vector<json> read(Millis wait = 200ms) {
        std::vector<json> out;
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(wait.count())) > 0) {
            char buf[65536];
            for (;;) {
                const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
                if (n <= 0) break;
                buffer_.append(buf, static_cast<std::size_t>(n));
            }
        }
        std::size_t start = 0;
        for (auto nl = buffer_.find('\n'); nl != std::string::npos;
             nl = buffer_.find('\n', start)) {
            out.push_back(json::parse(buffer_.substr(start, nl - start)));
            start = nl + 1;
        }
        buffer_.erase(0, start);
        return out;
    }

private:
    int fd_ = -1;
    std::string buffer_;
};

class EventsTest : public ::testing::Test {
protected:
    EventsTest() {
        port_ = free_udp_port();
        config_.listen.push_back("127.0.0.1:" + std::to_string(port_));
        config_.control_socket = dir_.file("control.sock");
        config_.max_peers = 5000;
        config_.max_per_host = 5000;
        config_.forget_after = "1h";
        config_.down_probe_interval = "100ms";
    }

    void start_daemon(const std::string& extra_peers = {}, const std::string& extra = {}) {
        write_file(dir_.file("keepalived.toml"), config_.to_toml() + extra_peers + "\n" + extra);
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived.log");
        daemon_.emplace(Strings{keepalived_path(), "--config", dir_.file("keepalived.toml"),
                                "--log-target", "stderr"},
                        options);
        if (!wait_until([&] {
                return !daemon_->running() ||
                       try_ctl_json({"--socket", config_.control_socket, "status"}).has_value();
            }) ||
            !daemon_->running())
            fail("keepalived did not come up:\n" + daemon_->stderr_text());
    }
    json status() { return ctl_json({"--socket", config_.control_socket, "status"}); }
    std::string log() const { return daemon_ ? daemon_->stderr_text() : ""; }
    // Peers in `state` per the status counts.
    std::uint64_t in_state(const std::string& state) {
        return status().at(state).get<std::uint64_t>();
    }
    // Peers that answered at least one probe (one that never did is forgotten
    // when it goes down, not kept as down).
    std::size_t answered() {
        const auto j = try_ctl_json({"--socket", config_.control_socket, "peers"});
        if (!j) return 0;
        std::size_t n = 0;
        for (const auto& p : j->at("peers")) n += p.at("acks_received").get<std::uint64_t>() > 0;
        return n;
    }
    std::uint64_t metric(const std::string& sample) {
        const RunResult r = run({ctl_path(), "--socket", config_.control_socket, "metrics"});
        std::istringstream in(r.out);
        for (std::string line; std::getline(in, line);)
            if (line.starts_with(sample + " ")) return std::stoull(line.substr(sample.size() + 1));
        fail("no sample " + sample + " in:\n" + r.out);
    }

    TempDir dir_;
    std::uint16_t port_ = 0;
    DaemonConfig config_;
    std::optional<Process> daemon_;
};

// ---- watch --------------------------------------------------------------------

// Checks a run of event lines: seqs consecutive from `first`, and each
// peer's states chain (previous_state of one = state of the one before).
void expect_ordered(const std::vector<json>& events, std::uint64_t first) {
    std::uint64_t expect = first;
    std::map<std::string, std::string> last_state;
    for (const auto& e : events) {
        ASSERT_FALSE(e.contains("missed")) << e.dump();
        ASSERT_EQ(e.at("seq").get<std::uint64_t>(), expect) << e.dump();
        ++expect;
        const std::string name = e.at("name");
        if (auto it = last_state.find(name); it != last_state.end() && e.at("event") != "moved") {
            EXPECT_EQ(e.at("previous_state"), it->second) << e.dump();
        }
        last_state[name] = e.at("state");
        for (const char* key : {"name", "address", "state", "previous_state", "session", "reason",
                                "seq", "time", "event"})
            EXPECT_TRUE(e.contains(key)) << key << " missing: " << e.dump();
    }
}

TEST_F(EventsTest, WatchIsOrderedAndGapFreeUnder1000FlappingPeers) {
    start_daemon();
    WatchConnection watch(config_.control_socket, "watch");
    std::vector<json> seen;
    ASSERT_TRUE(watch.read(100ms).empty());

    Swarm swarm(port_, 1000, "flap", 200, 2);
    const auto collect = [&](std::size_t at_least) {
        return wait_until([&] {
            for (auto& e : watch.read(50ms)) seen.push_back(std::move(e));
            return seen.size() >= at_least;
        });
    };
    ASSERT_TRUE(collect(1000)) << seen.size() << " events\n" << log();  // 1000 registered
    ASSERT_TRUE(wait_until([&] { return answered() == 1000; })) << answered();
    // Two rounds of flapping: every peer suspect, down, then up again.
    for (int round = 0; round < 2; ++round) {
        swarm.set_answering(false);
        ASSERT_TRUE(wait_until([&] { return in_state("down") == 1000; })) << status().dump();
        swarm.set_answering(true);
        ASSERT_TRUE(wait_until([&] { return in_state("up") == 1000; })) << status().dump();
    }
    const std::uint64_t total = metric("keepalived_registrations_total") +
                                metric(R"(keepalived_peer_events_total{kind="suspect"})") +
                                metric(R"(keepalived_peer_events_total{kind="down"})") +
                                metric(R"(keepalived_peer_events_total{kind="up"})");
    EXPECT_GE(total, 1000u + 2 * 3 * 1000u);
    ASSERT_TRUE(collect(total)) << seen.size() << " of " << total;
    expect_ordered(seen, 1);
    EXPECT_EQ(seen.size(), total);
}

TEST_F(EventsTest, WatchResumesWithSinceAndASlowReaderIsToldWhatItMissed) {
    start_daemon();
    Swarm swarm(port_, 300, "slow", 100, 2);
    ASSERT_TRUE(wait_until([&] { return swarm.accepted() == 300 && answered() == 300; }));

    // --since: everything after seq 100, from the ring, then live.
    WatchConnection resumed(config_.control_socket, "watch 100");
    std::vector<json> got;
    ASSERT_TRUE(wait_until([&] {
        for (auto& e : resumed.read(50ms)) got.push_back(std::move(e));
        return got.size() >= 200;
    })) << got.size();
    expect_ordered(got, 101);

    // A reader that stops reading while the ring (10000 events) wraps.
    WatchConnection slow(config_.control_socket, "watch 0");
    for (int round = 0; round < 12; ++round) {
        swarm.set_answering(false);
        ASSERT_TRUE(wait_until([&] { return in_state("down") == 300; }));
        swarm.set_answering(true);
        ASSERT_TRUE(wait_until([&] { return in_state("up") == 300; }));
    }
    std::vector<json> late;
    ASSERT_TRUE(wait_until([&] {
        for (auto& e : slow.read(50ms)) late.push_back(std::move(e));
        return std::any_of(late.begin(), late.end(),
                           [](const json& e) { return e.contains("missed"); });
    })) << late.size()
        << " lines, none saying what was missed";
    // Every event is either delivered or counted as missed, in order.
    std::uint64_t next = 1;
    for (const auto& e : late) {
        if (e.contains("missed")) {
            EXPECT_EQ(e.at("first_missed_seq").get<std::uint64_t>(), next) << e.dump();
            next = e.at("last_missed_seq").get<std::uint64_t>() + 1;
            EXPECT_EQ(e.at("missed").get<std::uint64_t>(),
                      next - e.at("first_missed_seq").get<std::uint64_t>());
        } else {
            EXPECT_EQ(e.at("seq").get<std::uint64_t>(), next) << e.dump();
            ++next;
        }
    }
    // keepalivectl shows it too.
    const RunResult text =
        run({ctl_path(), "--socket", config_.control_socket, "watch", "--since", "0"}, 2s);
    EXPECT_NE(text.out.find("-- missed "), std::string::npos) << text.out.substr(0, 500);
    EXPECT_TRUE(run({ctl_path(), "--socket", config_.control_socket, "watch", "--since", "x"})
                    .status.exited_with(2));
}

// ---- hooks --------------------------------------------------------------------

std::string hook_script(const TempDir& dir, const std::string& name, const std::string& body) {
    const std::string path = dir.file(name);
    write_file(path, "#!/bin/sh\n" + body);
    ::chmod(path.c_str(), 0755);
    return path;
}

TEST_F(EventsTest, HooksGetTheEventInTheirEnvironmentInOrderPerPeer) {
    // Sleeps a little, differently per peer, so that peers' hooks overlap.
    const std::string all =
        hook_script(dir_, "all.sh",
                    "sleep 0.0$(( ${KEEPALIVE_PEER_NAME#env} % 5 ))\n"
                    "echo \"$KEEPALIVE_EVENT_SEQ|$KEEPALIVE_PEER_NAME|$KEEPALIVE_PEER_STATE|"
                    "$KEEPALIVE_PEER_PREVIOUS_STATE|$KEEPALIVE_PEER_ADDRESS|$KEEPALIVE_REASON|"
                    "$KEEPALIVE_EVENT\" >> " +
                        dir_.file("all.out") + "\n");
    const std::string downs = hook_script(dir_, "down.sh",
                                          "echo \"$KEEPALIVE_EVENT_SEQ $KEEPALIVE_PEER_NAME\" >> " +
                                              dir_.file("down.out") + "\necho oops >&2\nexit 4\n");
    start_daemon("", "[[hooks]]\nexec = [\"" + all +
                         "\"]\ntimeout = \"5s\"\n\n[[hooks]]\nexec = [\"" + downs +
                         "\"]\nstates = [\"down\"]\n");
    Swarm swarm(port_, 20, "env", 100, 2);
    ASSERT_TRUE(wait_until([&] { return answered() == 20; }));
    swarm.set_answering(false);
    ASSERT_TRUE(wait_until([&] { return in_state("down") == 20; }));
    swarm.set_answering(true);
    ASSERT_TRUE(wait_until([&] { return in_state("up") == 20; }));
    // 20 x (registered, suspect, down, up) runs of all.sh.
    const auto lines = [&](const std::string& file) {
        std::vector<std::string> out;
        std::istringstream in(::access(file.c_str(), R_OK) == 0 ? read_file(file) : "");
        for (std::string l; std::getline(in, l);) out.push_back(l);
        return out;
    };
    ASSERT_TRUE(wait_until([&] { return lines(dir_.file("all.out")).size() >= 80; }))
        << lines(dir_.file("all.out")).size() << "\n"
        << log();

    std::map<std::string, std::vector<Strings>> by_peer;
    for (const auto& l : lines(dir_.file("all.out"))) {
        Strings f;
        std::istringstream in(l);
        for (std::string x; std::getline(in, x, '|');) f.push_back(x);
        ASSERT_EQ(f.size(), 7u) << l;
        by_peer[f[1]].push_back(f);
    }
    ASSERT_EQ(by_peer.size(), 20u);
    for (const auto& [name, runs] : by_peer) {
        ASSERT_EQ(runs.size(), 4u) << name;
        const std::vector<std::string> states{"up", "suspect", "down", "up"};
        const std::vector<std::string> previous{"", "up", "suspect", "down"};
        const std::vector<std::string> events{"registered", "suspect", "down", "up"};
        for (std::size_t i = 0; i < runs.size(); ++i) {
            EXPECT_EQ(runs[i][2], states[i]) << name;
            EXPECT_EQ(runs[i][3], previous[i]) << name;
            EXPECT_EQ(runs[i][6], events[i]) << name;
            EXPECT_TRUE(runs[i][4].starts_with("127.0.0.1:")) << runs[i][4];
            if (i > 0) {
                EXPECT_LT(std::stoull(runs[i - 1][0]), std::stoull(runs[i][0])) << name;
            }
        }
        EXPECT_EQ(runs[2][5], "detection time expired");
    }
    // The filtered hook ran only for the downs; its failure and stderr are logged.
    ASSERT_TRUE(wait_until([&] { return lines(dir_.file("down.out")).size() >= 20; }));
    EXPECT_EQ(lines(dir_.file("down.out")).size(), 20u);
    ASSERT_TRUE(wait_until([&] {
        return log().find("down.sh for peer env") != std::string::npos &&
               log().find("exited with status 4: oops") != std::string::npos;
    })) << log();
}

TEST_F(EventsTest, AHangingHookIsKilledAtItsTimeoutWithWhatItStarted) {
    const std::string hang = hook_script(
        dir_, "hang.sh", "sleep 300 &\necho $! > " + dir_.file("child.pid") + "\nwait\n");
    start_daemon("", "[[hooks]]\nexec = [\"" + hang + "\"]\ntimeout = \"500ms\"\n");
    Swarm swarm(port_, 1, "hang", 100, 2);
    const auto started = Clock::now();
    ASSERT_TRUE(wait_until([&] {
        return log().find("was killed after its timeout of 500ms") != std::string::npos;
    })) << log();
    EXPECT_GE(Clock::now() - started, 400ms);
    const pid_t child = std::stoi(read_file(dir_.file("child.pid")));
    // Its own child went with it (the hook's process group was killed).
    EXPECT_TRUE(wait_until([&] { return ::kill(child, 0) != 0; })) << "pid " << child;
    EXPECT_TRUE(daemon_->running());
}

TEST_F(EventsTest, AThousandEventsWithSleepingHooksBlockNothing) {
    const std::string sleepy = hook_script(dir_, "sleepy.sh", "sleep 0.2\n");
    start_daemon("", "[[hooks]]\nexec = [\"" + sleepy + "\"]\ntimeout = \"10s\"\n");
    // Probed every second: a loop that waited for the hooks (1000 x 0.2 s)
    // would miss probes by the hundred.
    Swarm swarm(port_, 1000, "busy", 1000, 3);
    ASSERT_TRUE(wait_until([&] { return swarm.accepted() == 1000; }));
    // 1000 hook runs of 0.2 s, 16 at a time: over 12 s of hooks, while every
    // peer is probed every 100 ms and must never be missed.
    ASSERT_TRUE(wait_until([&] { return metric("keepalived_registrations_total") == 1000; }));
    EXPECT_GT(metric("keepalived_hooks_pending"), 0u);  // they really queue up
    ASSERT_TRUE(wait_until(
        [&] {
            return metric("keepalived_hooks_started_total") == 1000 &&
                   metric("keepalived_hooks_running") == 0;
        },
        60s, 200ms))
        << log().substr(0, 2000);
    EXPECT_EQ(metric(R"(keepalived_peer_events_total{kind="suspect"})"), 0u) << log();
    EXPECT_EQ(metric(R"(keepalived_peers{state="up"})"), 1000u);
}

}  // namespace
}  // namespace keepalive::test
