// TCP targets without a network: the outcome mapping and backoff as pure
// functions, the [[targets]] configuration, and a TargetSet driven step by step
// (fake clock, run_once) against real listeners on loopback.
#include "daemon/tcp_target.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <string>
#include <vector>

#include "core/random.hpp"
#include "daemon/config.hpp"
#include "daemon/event_text.hpp"
#include "daemon/targets.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;

// ---- the outcome mapping ------------------------------------------------------

TEST(ClassifyFailure, TheFourOutcomesOfAProbeAndTheTwoOfAConnection) {
    const auto est = TargetPhase::established;
    const auto con = TargetPhase::connecting;
    // 2: no answer.
    EXPECT_EQ(classify_failure(est, ETIMEDOUT),
              (TargetOutcome{EventKind::down, PeerState::down, EventCause::no_answer_to_keepalives,
                             false}));
    // 3: the host restarted and answers with a reset.
    EXPECT_EQ(classify_failure(est, ECONNRESET), (TargetOutcome{EventKind::restarted, PeerState::up,
                                                                EventCause::reset_by_host, true}));
    // 4: a router says the host cannot be reached.
    for (const int e : {EHOSTUNREACH, ENETUNREACH})
        for (const auto phase : {est, con})
            EXPECT_EQ(classify_failure(phase, e), (TargetOutcome{EventKind::down, PeerState::down,
                                                                 EventCause::unreachable, false}));
    // The service closed the connection (FIN).
    EXPECT_EQ(classify_failure(est, 0), (TargetOutcome{EventKind::left, PeerState::left,
                                                       EventCause::closed_by_service, true}));
    // Nothing listens.
    EXPECT_EQ(
        classify_failure(con, ECONNREFUSED),
        (TargetOutcome{EventKind::down, PeerState::down, EventCause::connection_refused, false}));
    // The SYNs went unanswered.
    EXPECT_EQ(classify_failure(con, ETIMEDOUT).cause, EventCause::no_answer_to_connects);
    // A reset of a connection being made is no restart: nothing was established.
    EXPECT_EQ(classify_failure(con, ECONNRESET).event, EventKind::down);
    EXPECT_EQ(classify_failure(est, EIO).cause, EventCause::connection_failed);
}

TEST(ClassifyFailure, FailureTextNamesTheError) {
    EXPECT_EQ(failure_text(ECONNREFUSED), "ECONNREFUSED: Connection refused");
    EXPECT_EQ(failure_text(0), "closed by the service (FIN)");
}

TEST(Backoff, DoublesFromOneSecondToThirtyWithJitterBelow) {
    SeededRandom random(42);
    const std::vector<std::pair<Duration, Duration>> expected = {
        {750ms, 1s}, {1500ms, 2s}, {3s, 4s}, {6s, 8s}, {12s, 16s}, {22500ms, 30s}, {22500ms, 30s}};
    for (int round = 0; round < 200; ++round) {
        for (unsigned failures = 1; failures <= expected.size(); ++failures) {
            const Duration d = backoff_delay(failures, random);
            EXPECT_GE(d, expected[failures - 1].first) << failures;
            EXPECT_LE(d, expected[failures - 1].second) << failures;
        }
        EXPECT_LE(backoff_delay(1000, random), kMaxBackoff);
    }
}

// ---- configuration --------------------------------------------------------------

const std::string kServer = "[server]\nlisten = [\"127.0.0.1:7371\"]\n";  // lines 1-2

std::string error_text(const std::string& toml) {
    const auto r = parse_config(toml, "k.toml");
    return r ? std::string("(no error)") : r.error().to_string();
}

TEST(TargetConfig, ReadsEveryKeyAndDefaults) {
    const auto r = parse_config(kServer + R"(
[[targets]]
name = "db1"
address = "192.0.2.7:5432"
idle = "1m"
interval = "2s"
probes = 5

[[targets]]
name = "v6"
address = "[2001:db8::7]:22"
)",
                                "k.toml");
    ASSERT_TRUE(r) << r.error().to_string();
    ASSERT_EQ(r->targets.size(), 2U);
    EXPECT_EQ(r->targets[0].name, "db1");
    EXPECT_EQ(r->targets[0].address.to_string(), "192.0.2.7:5432");
    EXPECT_EQ(r->targets[0].idle, 60s);
    EXPECT_EQ(r->targets[0].interval, 2s);
    EXPECT_EQ(r->targets[0].probes, 5);
    EXPECT_EQ(r->targets[0].detection_time(), 70s);
    EXPECT_EQ(r->targets[1].address.to_string(), "[2001:db8::7]:22");
    EXPECT_EQ(r->targets[1].idle, 10s);
    EXPECT_EQ(r->targets[1].interval, 1s);
    EXPECT_EQ(r->targets[1].probes, 3);
    EXPECT_FALSE(r->peers.fast_down_on_icmp);
}

TEST(TargetConfig, ErrorsNameFileLineAndColumn) {
    const std::string head = kServer + "[[targets]]\nname = \"db1\"\n";  // lines 1-4
    EXPECT_EQ(error_text(head + "address = \"db.example.com:5432\"\n"),
              "k.toml:5:11: targets[1].address: must be a numeric host and port such as "
              "\"192.0.2.7:5432\" or \"[2001:db8::7]:22\" (no names, no wildcard, port 1 to "
              "65535), not the string \"db.example.com:5432\"");
    EXPECT_EQ(error_text(head + "address = \"0.0.0.0:22\"\n").substr(0, 36),
              "k.toml:5:11: targets[1].address: mus");
    EXPECT_EQ(error_text(head + "address = \"192.0.2.7:0\"\n").substr(0, 36),
              "k.toml:5:11: targets[1].address: mus");
    const std::string addr = head + "address = \"192.0.2.7:22\"\n";  // line 5
    EXPECT_EQ(error_text(addr + "idle = \"1500ms\"\n"),
              "k.toml:6:8: targets[1].idle: must be a whole number of seconds from 1s to 32767s "
              "(the kernel's limits), not \"1500ms\"");
    EXPECT_EQ(error_text(addr + "interval = \"32768s\"\n"),
              "k.toml:6:12: targets[1].interval: must be a whole number of seconds from 1s to "
              "32767s (the kernel's limits), not \"32768s\"");
    EXPECT_EQ(error_text(addr + "interval = \"0s\"\n").substr(0, 40),
              "k.toml:6:12: targets[1].interval: must b");
    EXPECT_EQ(error_text(addr + "idle = 10\n"),
              "k.toml:6:8: targets[1].idle: must be a whole number of seconds from 1s to 32767s "
              "as a string such as \"10s\", not the integer 10");
    EXPECT_EQ(error_text(addr + "probes = 128\n"),
              "k.toml:6:10: targets[1].probes: must be an integer from 1 to 127 (the kernel's "
              "limit), not the integer 128");
    EXPECT_EQ(error_text(addr + "port = 5\n"),
              "k.toml:6:1: targets[1]: unknown key \"port\"; a target has name, address, idle, "
              "interval and probes");
    EXPECT_EQ(error_text(addr + "[[targets]]\nname = \"db1\"\naddress = \"192.0.2.8:22\"\n"),
              "k.toml:7:8: targets[2].name: \"db1\" is already the name of targets[1]");
    EXPECT_EQ(error_text(addr + "[[targets]]\nname = \"a b\"\naddress = \"192.0.2.8:22\"\n"),
              "k.toml:7:8: targets[2].name: must be 1 to 64 characters of A-Z a-z 0-9 . _ - : @, "
              "not the string \"a b\"");
    EXPECT_EQ(error_text("targets = 5\n" + kServer),
              "k.toml:1:11: targets: must be an array of tables, written [[targets]], not the "
              "integer 5");
    EXPECT_EQ(error_text(kServer + "[[targets]]\naddress = \"192.0.2.8:22\"\n"),
              "k.toml:3:1: targets[1].name: required");
    EXPECT_EQ(error_text(kServer + "[peers]\nfast_down_on_icmp = 1\n"),
              "k.toml:4:21: peers.fast_down_on_icmp: must be true or false, not the integer 1");
    const auto r = parse_config(kServer + "[peers]\nfast_down_on_icmp = true\n", "k.toml");
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->peers.fast_down_on_icmp);
}

// ---- a TargetSet against loopback listeners ---------------------------------------

struct Listener {
    UniqueFd fd;
    Address address;
};

Listener listen_loopback() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof sin), 0);
    EXPECT_EQ(::listen(fd.get(), 4), 0);
    socklen_t len = sizeof sin;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sin), &len);
    return {std::move(fd), *Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), len)};
}

struct Seen {
    EventKind kind;
    PeerState state;
    std::string reason;
};

class TargetSetTest : public ::testing::Test {
protected:
    TargetSetTest()
        : loop_(clock_),
          set_(loop_, random_,
               {.event =
                    [this](const PeerEvent& e) {
                        events_.push_back({e.kind, e.peer.state, event_reason(e)});
                    },
                .done = nullptr}) {}

    TargetConfig target(const std::string& name, const Address& a) {
        return {.name = name, .address = a, .idle = 1s, .interval = 1s, .probes = 2};
    }
    // Runs the loop (real waits for io, at most ~10 s) until `n` events have been seen.
    bool pump_until(std::size_t n) {
        for (int i = 0; i < 500 && events_.size() < n; ++i) loop_.run_once(20ms);
        return events_.size() >= n;
    }
    // Lets the backoff pass on the fake clock.
    void pass(Duration d) {
        clock_.advance(d);
        loop_.run_once(0ms);
    }
    std::string row_of(const std::string& name) {
        const auto all = set_.targets_json(loop_.now());
        for (const auto& t : all.at("targets"))
            if (t.at("name") == name) return t.dump();
        return "";
    }

    FakeClock clock_;
    SeededRandom random_{7};
    EventLoop loop_;
    std::vector<Seen> events_;
    TargetSet set_;
};

TEST_F(TargetSetTest, UpThenLeftThenRestartedThenRefused) {
    Listener l = listen_loopback();
    set_.apply({target("svc", l.address)});
    ASSERT_TRUE(pump_until(2));
    EXPECT_EQ(events_[0].kind, EventKind::registered);
    EXPECT_EQ(events_[0].state, PeerState::suspect);
    EXPECT_EQ(events_[1].kind, EventKind::up);
    EXPECT_EQ(set_.counts().in(PeerState::up), 1U);

    // The service says something and closes: the banner is dropped, the FIN is `left`.
    UniqueFd conn(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn);
    ASSERT_EQ(::send(conn.get(), "hello\n", 6, 0), 6);
    conn.reset();
    ASSERT_TRUE(pump_until(3));
    EXPECT_EQ(events_[2].kind, EventKind::left);
    EXPECT_EQ(events_[2].reason, "closed by the service");
    EXPECT_NE(row_of("svc").find("\"connection\":\"waiting\""), std::string::npos) << row_of("svc");

    // Reconnects after the backoff, and is up again.
    pass(1s);
    ASSERT_TRUE(pump_until(4));
    EXPECT_EQ(events_[3].kind, EventKind::up);

    // A reset (the listener's side aborts): restarted, still up.
    conn.reset(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn);
    const linger abort_now{1, 0};
    ::setsockopt(conn.get(), SOL_SOCKET, SO_LINGER, &abort_now, sizeof abort_now);
    conn.reset();
    ASSERT_TRUE(pump_until(5));
    EXPECT_EQ(events_[4].kind, EventKind::restarted);
    EXPECT_EQ(events_[4].state, PeerState::up);

    // Nothing listens any more: down, "connection refused", once.
    l.fd.reset();
    pass(2s);
    ASSERT_TRUE(pump_until(6));
    EXPECT_EQ(events_[5].kind, EventKind::down);
    EXPECT_EQ(events_[5].reason, "connection refused");
    EXPECT_NE(row_of("svc").find("ECONNREFUSED"), std::string::npos) << row_of("svc");
    pass(4s);
    pass(8s);
    for (int i = 0; i < 5; ++i) loop_.run_once(20ms);
    EXPECT_EQ(events_.size(), 6U) << "a retry failing the same way is not reported again";
}

TEST_F(TargetSetTest, ApplyAddsRemovesAndChangesOnlyWhatChanged) {
    Listener a = listen_loopback();
    Listener b = listen_loopback();
    set_.apply({target("a", a.address), target("b", b.address)});
    ASSERT_TRUE(pump_until(4));  // two registered, two up
    events_.clear();

    // b changes (probes), c is new, a is untouched.
    auto b2 = target("b", b.address);
    b2.probes = 5;
    Listener c = listen_loopback();
    set_.apply({target("a", a.address), b2, target("c", c.address)});
    ASSERT_TRUE(pump_until(3));
    for (int i = 0; i < 5; ++i) loop_.run_once(20ms);
    ASSERT_EQ(events_.size(), 3U);
    EXPECT_EQ(events_[0].kind, EventKind::registered);  // b, configuration changed
    EXPECT_NE(events_[0].reason.find("configuration changed"), std::string::npos);
    EXPECT_EQ(events_[1].kind, EventKind::registered);  // c
    EXPECT_EQ(events_[2].kind, EventKind::up);          // c
    EXPECT_EQ(set_.counts().in(PeerState::up), 3U);

    events_.clear();
    set_.apply({target("c", c.address)});
    ASSERT_EQ(events_.size(), 2U);
    EXPECT_EQ(events_[0].kind, EventKind::forgotten);
    EXPECT_EQ(events_[1].kind, EventKind::forgotten);
    EXPECT_FALSE(set_.contains("a"));
    EXPECT_TRUE(set_.contains("c"));
    EXPECT_EQ(set_.counts().total, 1U);
}

}  // namespace
}  // namespace keepalive
