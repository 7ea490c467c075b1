// System call faults against an in-process daemon: the real Daemon, its real
// loopback sockets and epoll, a fake clock, and FaultOps failing the calls a
// test names. Each fault is counted where status shows it, survived, and
// loses nothing it need not lose.
#include <fmt/format.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "daemon/config.hpp"
#include "daemon/daemon.hpp"
#include "fault_ops.hpp"
#include "test_support.hpp"

namespace keepalive::test_support {
namespace {

using std::chrono::milliseconds;

// Steps of the loop any exchange below may take: far more than needed, so
// that running out of them means a lost datagram, never a slow machine.
constexpr int kMaxSteps = 2000;

std::uint16_t unused_udp_port() {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sin), &len) != 0)
        throw std::runtime_error("no free port");
    return ntohs(sin.sin_port);
}

// One keepalived, in this process, stepped by hand.
class InProcessDaemon {
public:
    FakeClock clock{Clock::now()};
    FaultOps ops;
    SeededRandom random{test_seed()};
    Logger log{LogTarget::stderr_};
    std::unique_ptr<Daemon> daemon;
    Address address;
    std::string control_path;

    explicit InProcessDaemon(std::string extra_config = {}) : extra_(std::move(extra_config)) {
        char dir_template[] = "/tmp/keepalived-faults-XXXXXX";
        if (::mkdtemp(dir_template) == nullptr) throw std::runtime_error("mkdtemp");
        dir_ = dir_template;
        control_path = dir_ + "/control";
        // Another test may take the port between our probe and the bind: try again.
        for (int attempt = 0; attempt < 10 && !daemon; ++attempt) {
            const std::uint16_t port = unused_udp_port();
            write_config(port, extra_);
            auto config = load_config(config_path());
            if (!config) throw std::runtime_error(config.error().to_string());
            try {
                daemon = std::make_unique<Daemon>(std::move(*config), log, clock, random, ops, ops);
                address = addr(fmt::format("127.0.0.1:{}", port).c_str());
            } catch (const std::runtime_error&) {
            }
        }
        if (!daemon) throw std::runtime_error("cannot start the daemon");
        daemon->start();
    }
    ~InProcessDaemon() {
        daemon.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    std::string config_path() const { return dir_ + "/keepalived.toml"; }
    // The configuration file, as a reload reads it.
    void write_config(std::uint16_t port, const std::string& extra = {}) {
        std::ofstream(config_path())
            << fmt::format("[server]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_socket = \"{}\"\n{}",
                           port, control_path, extra);
    }

    void step(int n = 1) {
        for (int i = 0; i < n; ++i) {
            const Duration before = thread_cpu_time();
            daemon->run_once(Duration::zero());
            step_cpu += thread_cpu_time() - before;
        }
    }
    Duration step_cpu{};  // CPU time the daemon's loop iterations took
    nlohmann::json status() const { return daemon->status(); }
    std::uint64_t counter(const char* name) const {
        return status()["daemon"][name].get<std::uint64_t>();
    }

    // Sends `request` on the control socket and steps until the daemon
    // closes the connection; returns what it wrote (nullopt: never closed).
    std::optional<std::string> query(const std::string& request) {
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", control_path.c_str());
        EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
        const std::string line = request + "\n";
        EXPECT_EQ(::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL),
                  static_cast<ssize_t>(line.size()));
        std::string out;
        for (int i = 0; i < kMaxSteps; ++i) {
            step();
            char buf[4096];
            for (;;) {
                const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
                // A connection refused unanswered may end in a reset.
                if (n == 0 || (n < 0 && errno != EAGAIN)) return out;
                if (n < 0) break;
                out.append(buf, static_cast<std::size_t>(n));
            }
        }
        return std::nullopt;
    }

private:
    std::string extra_;
    std::string dir_;
};

// A KAP/1 peer on a loopback socket, played by the test.
class Peer {
public:
    explicit Peer(InProcessDaemon& d) : d_(d) {
        fd_.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    }

    void send(const kap::Message& m) {
        const Bytes bytes = encode(m);
        sockaddr_storage ss;
        const socklen_t len = d_.address.to_sockaddr(ss);
        ASSERT_EQ(::sendto(fd_.get(), bytes.data(), bytes.size(), 0,
                           reinterpret_cast<const sockaddr*>(&ss), len),
                  static_cast<ssize_t>(bytes.size()));
    }
    // The next datagram from the daemon, if one is queued.
    std::optional<kap::Message> receive() {
        std::uint8_t buf[2048];
        const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
        if (n <= 0) return std::nullopt;
        auto m = kap::decode(std::span<const std::uint8_t>(buf, static_cast<std::size_t>(n)));
        EXPECT_TRUE(static_cast<bool>(m));
        if (!m) return std::nullopt;
        return *m;
    }
    // Steps the daemon until a datagram comes back.
    std::optional<kap::Message> await(int max_steps = kMaxSteps) {
        for (int i = 0; i < max_steps; ++i) {
            if (auto m = receive()) return m;
            d_.step();
        }
        return receive();
    }

    // Registers through CHALLENGE and ACCEPT.
    void register_as(const std::string& name, std::uint32_t interval_ms, std::uint8_t probes) {
        kap::Register r{7, incarnation, interval_ms, probes, {}, name};
        send({.body = r});
        auto challenge = await();
        ASSERT_TRUE(challenge.has_value());
        ASSERT_EQ(kap::type_of(*challenge), kap::Type::challenge);
        r.cookie = std::get<kap::Challenge>(challenge->body).cookie;
        send({.body = r});
        auto accept = await();
        ASSERT_TRUE(accept.has_value());
        ASSERT_EQ(kap::type_of(*accept), kap::Type::accept);
        session = accept->session;
    }

    // Advances the fake clock by `span` in small steps, answering every
    // probe at once. Returns the probes received.
    int run_for(Duration span, bool answer = true) {
        int probes = 0;
        const TimePoint until = d_.clock.now() + span;
        while (d_.clock.now() < until) {
            d_.clock.advance(milliseconds(5));
            d_.step(2);
            while (auto m = receive()) {
                if (kap::type_of(*m) != kap::Type::probe) continue;
                ++probes;
                const auto& p = std::get<kap::Probe>(m->body);
                if (answer)
                    send({.session = session, .body = kap::Ack{p.seq, p.tx_time, incarnation}});
            }
        }
        d_.step(2);
        return probes;
    }

    std::uint32_t session = 0;
    std::uint64_t incarnation = 0x5eed;

private:
    InProcessDaemon& d_;
    UniqueFd fd_;
};

// The daemon's view of one peer, from the "peers" answer.
nlohmann::json peer_row(InProcessDaemon& d, const std::string& name) {
    const auto answer = d.query("peers");
    EXPECT_TRUE(answer.has_value());
    if (!answer) return {};
    const auto j = nlohmann::json::parse(*answer);
    for (const auto& p : j["peers"])
        if (p["name"] == name) return p;
    ADD_FAILURE() << "no peer " << name << " in " << *answer;
    return {};
}

TEST(DaemonFaults, EintrFromEpollWaitLosesNoDatagram) {
    InProcessDaemon d;
    Peer peer(d);
    d.ops.fail(Call::epoll_wait, EINTR, 3);
    peer.send({.body = kap::Register{1, 1, 1000, 3, {}, "p1"}});
    // Three interrupted waits: nothing is read, nothing answered yet.
    d.step(3);
    EXPECT_FALSE(peer.receive().has_value());
    EXPECT_EQ(d.ops.injected(Call::epoll_wait), 3u);
    // The datagram waited in the socket: the next wait reports it.
    d.step();
    const auto reply = peer.receive();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(kap::type_of(*reply), kap::Type::challenge);
    EXPECT_EQ(d.status()["daemon"]["loop"]["interrupted_waits"], 3u);
}

TEST(DaemonFaults, FailedReceiveLeavesTheDatagramQueued) {
    for (const int error : {EAGAIN, EINTR, ENOBUFS, ENOMEM}) {
        SCOPED_TRACE(error);
        InProcessDaemon d;
        Peer peer(d);
        d.ops.fail(Call::recvmmsg, error, 2);
        peer.send({.body = kap::Register{1, 1, 1000, 3, {}, "p1"}});
        const auto reply = peer.await();
        ASSERT_TRUE(reply.has_value());
        EXPECT_EQ(kap::type_of(*reply), kap::Type::challenge);
        EXPECT_EQ(d.ops.injected(Call::recvmmsg), 2u);
        // EAGAIN and EINTR are no errors; anything else is counted.
        const bool counted = error != EAGAIN && error != EINTR;
        EXPECT_EQ(d.counter("receive_errors"), counted ? 2u : 0u);
    }
}

// A probe this host had no room to send (EAGAIN, ENOBUFS) is counted, and its
// missing ACK is not held against the peer: it stays up, the verdict
// withheld, and the next probes go out as usual.
TEST(DaemonFaults, ProbeWithNoRoomToSendIsNoEvidenceAgainstThePeer) {
    for (const int error : {EAGAIN, ENOBUFS}) {
        SCOPED_TRACE(error);
        InProcessDaemon d;
        Peer peer(d);
        ASSERT_NO_FATAL_FAILURE(peer.register_as("p1", 100, 2));
        EXPECT_GT(peer.run_for(std::chrono::seconds(2)), 5);
        ASSERT_EQ(d.status()["up"], 1u);

        d.ops.fail(Call::sendmmsg, error, 1);
        const auto before = peer_row(d, "p1");
        peer.run_for(std::chrono::seconds(2));
        const auto after = peer_row(d, "p1");
        EXPECT_EQ(d.ops.injected(Call::sendmmsg), 1u);
        EXPECT_EQ(d.counter("send_errors"), 1u);
        EXPECT_EQ(d.counter("send_no_room"), 1u);
        EXPECT_EQ(d.counter("verdicts_withheld"), 1u);
        EXPECT_EQ(after["state"], "up");
        EXPECT_EQ(d.status()["events"]["suspect"], 0u);
        EXPECT_EQ(d.status()["events"]["down"], 0u);
        // Probes after the lost one were sent and answered.
        EXPECT_GT(after["acks_received"].get<std::uint64_t>(),
                  before["acks_received"].get<std::uint64_t>() + 5);
    }
}

// A send that fails for another reason (a firewall's EPERM) is counted too,
// but says something about the path to the peer: the probe counts as missed.
TEST(DaemonFaults, ProbeRefusedByThePathCountsAsMissed) {
    InProcessDaemon d;
    Peer peer(d);
    ASSERT_NO_FATAL_FAILURE(peer.register_as("p1", 100, 2));
    peer.run_for(std::chrono::seconds(2));
    d.ops.fail(Call::sendmmsg, EPERM, 1);
    peer.run_for(std::chrono::seconds(2));
    EXPECT_EQ(d.counter("send_errors"), 1u);
    EXPECT_EQ(d.counter("send_no_room"), 0u);
    EXPECT_EQ(d.counter("verdicts_withheld"), 0u);
    EXPECT_EQ(d.status()["events"]["suspect"], 1u);
    EXPECT_EQ(d.status()["events"]["down"], 0u);
    EXPECT_EQ(peer_row(d, "p1")["state"], "up");
}

// EINTR from sendmmsg is retried: the datagram still goes out.
TEST(DaemonFaults, InterruptedSendIsRetried) {
    InProcessDaemon d;
    Peer peer(d);
    d.ops.fail(Call::sendmmsg, EINTR, 2);
    peer.send({.body = kap::Register{1, 1, 1000, 3, {}, "p1"}});
    const auto reply = peer.await();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(kap::type_of(*reply), kap::Type::challenge);
    EXPECT_EQ(d.ops.injected(Call::sendmmsg), 2u);
    EXPECT_EQ(d.counter("send_errors"), 0u);
}

// Out of descriptors at accept: the connection is refused (closed
// unanswered) and counted; the next one is answered.
TEST(DaemonFaults, EmfileOnAcceptRefusesOneClientAndServesTheNext) {
    for (const int error : {EMFILE, ENFILE}) {
        SCOPED_TRACE(error);
        InProcessDaemon d;
        d.ops.fail(Call::accept4, error, 1);
        const auto refused = d.query("status");
        ASSERT_TRUE(refused.has_value()) << "the refused connection was never closed";
        EXPECT_EQ(*refused, "");
        const auto answer = d.query("status");
        ASSERT_TRUE(answer.has_value());
        const auto j = nlohmann::json::parse(*answer);
        EXPECT_EQ(j["daemon"]["control_refused_no_fd"], 1u);
    }
}

// epoll refusing to watch one more fd (ENOSPC: max_user_watches, shared by
// every process of the user): that client is refused and counted, accepting
// pauses a moment (on the loop's clock), then the next client is served.
TEST(DaemonFaults, EpollFullAtAcceptRefusesOneClient) {
    InProcessDaemon d;
    d.ops.fail(Call::epoll_ctl, ENOSPC, 1);
    const auto refused = d.query("status");
    ASSERT_TRUE(refused.has_value()) << "the refused connection was never closed";
    EXPECT_EQ(*refused, "");
    EXPECT_EQ(d.ops.injected(Call::epoll_ctl), 1u);
    d.clock.advance(ControlServer::kRetryAfter);
    d.step();
    const auto answer = d.query("status");
    ASSERT_TRUE(answer.has_value());
    EXPECT_EQ(nlohmann::json::parse(*answer)["daemon"]["control_refused_no_fd"], 1u);
}

// Every write of the answer is short, or fails now and then with EAGAIN or
// EINTR: the client still reads the whole answer, byte for byte.
TEST(DaemonFaults, ShortAndFailedWritesStillDeliverTheWholeAnswer) {
    InProcessDaemon d;
    Peer peer(d);
    ASSERT_NO_FATAL_FAILURE(peer.register_as("p1", 1000, 3));
    const auto expected = d.query("peers");
    ASSERT_TRUE(expected.has_value());
    ASSERT_GT(expected->size(), 100u);

    d.ops.short_writes(7, 1000);
    d.ops.fail(Call::send, EAGAIN, 3, 2);
    d.ops.fail(Call::send, EINTR, 3, 2);
    const auto answer = d.query("peers");
    ASSERT_TRUE(answer.has_value());
    EXPECT_EQ(*answer, *expected);
    EXPECT_GT(d.ops.short_writes_done(), expected->size() / 14);
    EXPECT_EQ(d.ops.injected(Call::send), 6u);
    // A client whose request read fails transiently is served all the same.
    d.ops.fail(Call::recv, EAGAIN, 1);
    d.ops.fail(Call::recv, EINTR, 1);
    const auto again = d.query("status");
    ASSERT_TRUE(again.has_value());
    EXPECT_TRUE(nlohmann::json::accept(*again)) << *again;
}

// The service manager refusing a notification is counted, nothing more.
TEST(DaemonFaults, FailedNotifyIsCounted) {
    InProcessDaemon d;
    Peer peer(d);
    d.ops.notify_result = -ECONNREFUSED;
    ASSERT_NO_FATAL_FAILURE(peer.register_as("p1", 1000, 3));
    d.step();
    EXPECT_GE(d.counter("notify_failures"), 1u);
    d.ops.notify_result = 1;
    EXPECT_EQ(d.status()["up"], 1u);
    bool ready = false;
    for (const auto& n : d.ops.notifications) ready = ready || n == "READY=1";
    EXPECT_TRUE(ready);
}

// A full table, end to end: the next REGISTER (with a valid cookie) gets
// REJECT diag 4 "server full", and nothing else moves.
TEST(DaemonFull, FullTableAnswersServerFull) {
    InProcessDaemon d("[peers]\nmax_peers = 1\n");
    Peer first(d);
    ASSERT_NO_FATAL_FAILURE(first.register_as("p1", 1000, 3));
    Peer second(d);
    kap::Register r{9, 1, 1000, 3, {}, "p2"};
    second.send({.body = r});
    const auto challenge = second.await();
    ASSERT_TRUE(challenge.has_value());
    ASSERT_EQ(kap::type_of(*challenge), kap::Type::challenge);
    r.cookie = std::get<kap::Challenge>(challenge->body).cookie;
    second.send({.body = r});
    const auto reject = second.await();
    ASSERT_TRUE(reject.has_value());
    EXPECT_EQ(kap::type_of(*reject), kap::Type::reject);
    EXPECT_EQ(reject->diag, kap::Diag::server_full);
    EXPECT_EQ(d.status()["peers"], 1u);
    EXPECT_EQ(d.status()["events"]["registered"], 1u);
    EXPECT_EQ(d.counter("send_errors"), 0u);
}

// A reload, driven in-process: SIGHUP (read through the loop's signalfd)
// moves the listener to a new port; the old one is closed, the new one
// answers, and the service manager hears RELOADING=1 then READY=1.
TEST(DaemonReload, SighupMovesTheListener) {
    InProcessDaemon d;
    const std::uint16_t port = unused_udp_port();
    d.write_config(port, "[peers]\nmax_peers = 200000\n");
    d.ops.notifications.clear();
    ASSERT_EQ(::kill(::getpid(), SIGHUP), 0);
    for (int i = 0; i < kMaxSteps && d.ops.notifications.size() < 2; ++i) d.step();
    ASSERT_GE(d.ops.notifications.size(), 2u);
    EXPECT_TRUE(d.ops.notifications[0].starts_with("RELOADING=1\n"));
    EXPECT_EQ(d.ops.notifications[1], "READY=1");
    const std::string now_on = fmt::format("127.0.0.1:{}", port);
    EXPECT_EQ(d.status()["daemon"]["listen"], nlohmann::json::array({now_on}));
    d.address = addr(now_on.c_str());
    Peer peer(d);
    peer.send({.body = kap::Register{1, 1, 1000, 3, {}, "p1"}});
    const auto reply = peer.await();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(kap::type_of(*reply), kap::Type::challenge);
}

// A timerfd that cannot be armed is counted and retried; the wheel keeps
// running (probes go out on time) meanwhile.
TEST(DaemonFaults, TimerfdFailureIsCountedAndRetried) {
    InProcessDaemon d;
    Peer peer(d);
    ASSERT_NO_FATAL_FAILURE(peer.register_as("p1", 100, 2));
    d.ops.fail(Call::timerfd_settime, ENOMEM, 5);
    EXPECT_GT(peer.run_for(std::chrono::seconds(2)), 10);
    EXPECT_EQ(d.status()["daemon"]["loop"]["timerfd_failures"], 5u);
    EXPECT_EQ(d.status()["events"]["suspect"], 0u);
    EXPECT_FALSE(d.ops.faults_pending());
}

// A daemon that cannot bind (the port is taken) throws from its
// constructor, and what it had built by then is undone cleanly (the
// in-process tests retry so on a port another test took meanwhile).
TEST(DaemonStart, APortInUseFailsTheStartAndLeavesNothingBehind) {
    UniqueFd taken(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    ASSERT_EQ(::bind(taken.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    ASSERT_EQ(::getsockname(taken.get(), reinterpret_cast<sockaddr*>(&sin), &len), 0);
    InProcessDaemon first;  // a working one, for its config's shape
    first.write_config(ntohs(sin.sin_port));
    auto config = load_config(first.config_path());
    ASSERT_TRUE(static_cast<bool>(config));
    for (int i = 0; i < 3; ++i)
        EXPECT_THROW(Daemon(*config, first.log, first.clock, first.random, first.ops, first.ops),
                     std::runtime_error);
}

// The daemon's stderr, kept in a file while the test runs.
class CapturedStderr {
public:
    CapturedStderr() : saved_(::dup(2)) {
        char path[] = "/tmp/keepalived-stderr-XXXXXX";
        file_.reset(::mkstemp(path));
        path_ = path;
        ::dup2(file_.get(), 2);
    }
    ~CapturedStderr() {
        ::dup2(saved_.get(), 2);
        ::unlink(path_.c_str());
    }
    std::string text() const {
        std::ifstream in(path_);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }

private:
    UniqueFd saved_;
    UniqueFd file_;
    std::string path_;
};

// A receive queue overflow makes the daemon shed newcomers for a while.
// Its log says so at most once per 10 s: the end of an episode that came
// sooner is told when the 10 s are up (it was never told at all before).
TEST(DaemonLog, TheEndOfASheddingEpisodeIsToldWhenThePeriodAllows) {
    CapturedStderr captured;
    InProcessDaemon d;
    // More datagrams than the receive buffer holds, while the loop is not
    // reading: the daemon asks 1 MiB, counted twice, and a small datagram
    // takes some 768 bytes of it (50 000 leave room for a larger buffer).
    UniqueFd flood(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_storage ss;
    const socklen_t len = d.address.to_sockaddr(ss);
    const std::uint8_t junk[8] = {};
    for (int i = 0; i < 50'000; ++i)
        ::sendto(flood.get(), junk, sizeof junk, 0, reinterpret_cast<const sockaddr*>(&ss), len);
    const auto load = [&] { return d.status()["daemon"]["load"]; };
    const auto steps_for = [&](Duration span) {
        for (const TimePoint until = d.clock.now() + span; d.clock.now() < until;) {
            d.clock.advance(milliseconds(100));
            d.step(2);
        }
        d.log.flush();
    };
    d.step(50);
    // The drop count comes with the next datagram queued after the drops.
    ::sendto(flood.get(), junk, sizeof junk, 0, reinterpret_cast<const sockaddr*>(&ss), len);
    d.step(2);
    ASSERT_GT(d.counter("receive_overflows"), 0u) << "the flood fitted in the buffer";
    steps_for(std::chrono::milliseconds(1100));
    ASSERT_TRUE(load()["shedding"]);
    EXPECT_NE(captured.text().find("over capacity"), std::string::npos) << captured.text();

    // Three calm seconds end the episode, 4 s after its first line.
    steps_for(std::chrono::seconds(4));
    ASSERT_FALSE(load()["shedding"]);
    EXPECT_EQ(captured.text().find("back under capacity"), std::string::npos)
        << "within 10 s of the last line";
    steps_for(std::chrono::seconds(7));
    EXPECT_NE(captured.text().find("back under capacity"), std::string::npos) << captured.text();
}

// A PROBE to a closed port comes back as ICMP port unreachable on the
// daemon's error queue; each peer's last_error says so.
TEST(DaemonIcmp, PortUnreachableReachesEveryPeer) {
    InProcessDaemon d;
    std::vector<std::unique_ptr<Peer>> peers;
    for (int i = 0; i < 16; ++i) {
        peers.push_back(std::make_unique<Peer>(d));
        peers.back()->register_as(fmt::format("gone-{}", i), 100, 3);
    }
    peers.clear();  // closed: each next PROBE meets a closed port
    for (int i = 0; i < 100; ++i) {
        d.clock.advance(milliseconds(5));
        d.step(2);
    }
    for (int i = 0; i < 16; ++i) {
        const auto row = peer_row(d, fmt::format("gone-{}", i));
        EXPECT_TRUE(row["last_error"].is_string() && row["last_error"].get<std::string>().find(
                                                         "port unreachable") != std::string::npos)
            << row.dump();
    }
}

// Shedding judges the load the peers put on the loop. An operator's queries
// are not part of it: however heavy, they never get a newcomer told busy (a
// `peers --json` of 110 000 peers used to start an episode on its own).
TEST(DaemonLoad, QueriesAreNotLoadThatTurnsNewcomersAway) {
    InProcessDaemon d("[peers]\nshed_busy_percent = 2\n");
    Peer held(d);
    held.register_as("held", 1000, 3);
    held.run_for(std::chrono::seconds(3));  // past the window that saw the handshake
    ASSERT_FALSE(d.status()["daemon"]["load"]["shedding"]);

    // Within one window of the fake clock, queries until the loop has spent
    // twice the threshold's share of a second (20 ms) on them: counted, they
    // would shed; the loop's own part of those steps stays well under it.
    const Duration before = d.step_cpu;
    int queries = 0;
    for (; queries < 100'000 && d.step_cpu - before < milliseconds(40); ++queries)
        ASSERT_TRUE(d.query("status").has_value());
    ASSERT_GE(d.step_cpu - before, milliseconds(40)) << "the queries were too cheap to tell";
    held.run_for(milliseconds(1100));
    EXPECT_FALSE(d.status()["daemon"]["load"]["shedding"]) << queries << " queries";
    EXPECT_LT(d.status()["daemon"]["load"]["busy_percent"], 2) << queries << " queries";

    Peer newcomer(d);
    newcomer.send({.body = kap::Register{9, 1, 1000, 3, {}, "newcomer"}});
    const auto reply = newcomer.await();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(kap::type_of(*reply), kap::Type::challenge)
        << "told busy: diag " << static_cast<int>(reply->diag);
}

// With the real clock: a loop whose timerfd could not be armed does not
// sleep past its timer (it would wait forever: nothing else is registered).
TEST(EventLoopFaults, UnarmedTimerfdCapsTheWait) {
    SystemClock clock;
    FaultOps ops;
    EventLoop loop(clock, ops);
    bool fired = false;
    const auto id = loop.add_timer([&] { fired = true; });
    // For good: the timer must fire without the timerfd ever being armed.
    ops.fail(Call::timerfd_settime, ENOMEM, 1'000'000);
    loop.arm_timer(id, clock.now() + milliseconds(30));
    EXPECT_EQ(loop.timerfd_failures(), 1u);
    const TimePoint give_up = clock.now() + std::chrono::seconds(20);
    while (!fired && clock.now() < give_up) loop.run_once(std::nullopt);
    EXPECT_TRUE(fired);
}

}  // namespace
}  // namespace keepalive::test_support
