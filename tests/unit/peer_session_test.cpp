// PeerSession, the peer side of KAP/1: alone against a scripted server, and
// wired to a real ServerCore over a fake loopback network, both driven by one
// fake clock.
#include "core/peer_session.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/peer.hpp"
#include "core/peer_limits.hpp"
#include "core/random.hpp"
#include "core/server.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

struct Sent {
    TimePoint at;
    Bytes bytes;
    kap::Message msg;

    kap::Type type() const { return kap::type_of(msg); }
    template <typename T>
    const T& body() const {
        return std::get<T>(msg.body);
    }
};

struct Noted {
    TimePoint at;
    SessionEventKind kind;
    kap::Diag diag;
};

class RecordingSessionSink final : public PeerSessionSink {
public:
    explicit RecordingSessionSink(const FakeClock& clock) : clock_(clock) {}

    void send(std::span<const std::uint8_t> datagram) override {
        auto decoded = kap::decode(datagram);
        if (!decoded) {
            ADD_FAILURE() << "peer sent an undecodable datagram: "
                          << kap::to_string(decoded.error());
            return;
        }
        sent.push_back({clock_.now(), Bytes(datagram.begin(), datagram.end()), *decoded});
        if (forward) forward(sent.back().bytes);
    }
    void session_event(const SessionEvent& e) override {
        events.push_back({clock_.now(), e.kind, e.diag});
    }

    std::vector<SessionEventKind> kinds() const {
        std::vector<SessionEventKind> out;
        for (const Noted& n : events) out.push_back(n.kind);
        return out;
    }

    std::vector<Sent> sent;
    std::vector<Noted> events;
    std::function<void(const Bytes&)> forward;

private:
    const FakeClock& clock_;
};

// ---- PeerSession against a scripted server -------------------------------------

class PeerSessionTest : public ::testing::Test {
protected:
    PeerSessionTest() : session(PeerSessionOptions{"web-01", 200, 3, {}}, random, sink) {}

    void feed(const kap::Message& m) { session.on_datagram(encode(m), clock.now()); }
    // Advances to `t`, firing the session's timer at each of its deadlines on the way.
    void run_until(TimePoint t) {
        for (int guard = 0; guard < 1'000'000; ++guard) {
            const auto d = session.next_deadline();
            if (!d || *d > t) break;
            clock.set(std::max(clock.now(), *d));
            session.on_timer(clock.now());
        }
        clock.set(std::max(clock.now(), t));
    }
    void run_for(Duration d) { run_until(clock.now() + d); }

    const Sent& last() const { return sink.sent.back(); }
    std::uint64_t nonce() const { return last().body<kap::Register>().nonce; }

    // start(), CHALLENGE, ACCEPT: leaves the session registered.
    void register_session(std::uint32_t session_id = 0x5E55, std::uint64_t epoch = 0xE1,
                          std::uint32_t interval_ms = 200, std::uint8_t probes = 3) {
        if (session.state() == SessionState::stopped) session.start(clock.now());
        ASSERT_EQ(last().type(), kap::Type::register_);
        feed({.session = 0, .body = kap::Challenge{nonce(), cookie}});
        ASSERT_EQ(last().type(), kap::Type::register_);
        feed({.session = session_id, .body = kap::Accept{nonce(), epoch, interval_ms, probes}});
        ASSERT_EQ(session.state(), SessionState::registered);
    }
    void probe(std::uint64_t seq, std::uint32_t session_id = 0x5E55) {
        feed({.session = session_id, .body = kap::Probe{seq, 1000 + seq}});
    }

    FakeClock clock{kStart};
    SeededRandom random{7};
    RecordingSessionSink sink{clock};
    PeerSession session;
    const kap::Cookie cookie{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
};

TEST_F(PeerSessionTest, NothingHappensBeforeStart) {
    EXPECT_EQ(session.state(), SessionState::stopped);
    EXPECT_FALSE(session.next_deadline().has_value());
    feed({.session = 0, .body = kap::Challenge{1, cookie}});
    session.on_timer(clock.now() + 1h);
    EXPECT_TRUE(sink.sent.empty());
    EXPECT_TRUE(sink.events.empty());
}

TEST_F(PeerSessionTest, StartSendsRegisterWithAZeroCookie) {
    session.start(clock.now());
    ASSERT_EQ(sink.sent.size(), 1u);
    const Sent& s = sink.sent[0];
    ASSERT_EQ(s.type(), kap::Type::register_);
    EXPECT_EQ(s.msg.session, 0u);
    EXPECT_EQ(s.msg.diag, kap::Diag::none);
    EXPECT_EQ(s.bytes.size(), 50u + 6u);
    const auto& r = s.body<kap::Register>();
    EXPECT_EQ(r.name, "web-01");
    EXPECT_EQ(r.interval_ms, 200u);
    EXPECT_EQ(r.probes, 3);
    EXPECT_EQ(r.cookie, kap::Cookie{});
    EXPECT_EQ(r.incarnation, session.incarnation());
    EXPECT_EQ(session.state(), SessionState::registering);
    ASSERT_TRUE(session.next_deadline().has_value());
    EXPECT_GE(*session.next_deadline(), clock.now() + 500ms);
    EXPECT_LE(*session.next_deadline(), clock.now() + 1s);
    EXPECT_TRUE(sink.events.empty());
}

TEST_F(PeerSessionTest, ChallengeIsAnsweredWithItsCookieAndTheSameNonce) {
    session.start(clock.now());
    const std::uint64_t n = nonce();
    const auto deadline = session.next_deadline();

    feed({.session = 0, .body = kap::Challenge{n + 1, cookie}});  // not our nonce
    EXPECT_EQ(sink.sent.size(), 1u);
    EXPECT_EQ(session.dropped(), 1u);

    clock.advance(100ms);
    feed({.session = 0, .body = kap::Challenge{n, cookie}});
    ASSERT_EQ(sink.sent.size(), 2u);
    const auto& r = last().body<kap::Register>();
    EXPECT_EQ(r.nonce, n);
    EXPECT_EQ(r.cookie, cookie);
    EXPECT_EQ(r.incarnation, session.incarnation());
    EXPECT_EQ(r.name, "web-01");
    EXPECT_EQ(last().msg.session, 0u);
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_EQ(session.next_deadline(), deadline) << "the retry timer is kept";
}

TEST_F(PeerSessionTest, AcceptRegistersAndAdoptsTheGrantedValues) {
    session.start(clock.now());
    const std::uint64_t n = nonce();
    feed({.session = 0, .body = kap::Challenge{n, cookie}});

    // Not ours, or nonsensical grants: ignored.
    feed({.session = 9, .body = kap::Accept{n + 1, 0xE1, 500, 5}});
    feed({.session = 9, .body = kap::Accept{n, 0xE1, 0, 5}});
    feed({.session = 9, .body = kap::Accept{n, 0xE1, 500, 0}});
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_EQ(session.dropped(), 3u);
    EXPECT_TRUE(sink.events.empty());

    clock.advance(3ms);
    feed({.session = 0x5E55, .body = kap::Accept{n, 0xE1, 500, 5}});
    EXPECT_EQ(session.state(), SessionState::registered);
    EXPECT_EQ(session.session(), 0x5E55u);
    EXPECT_EQ(session.epoch(), 0xE1u);
    EXPECT_EQ(session.granted_interval_ms(), 500u);
    EXPECT_EQ(session.granted_probes(), 5);
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].kind, SessionEventKind::registered);
    // Lost after (probes + 1) × the granted interval without a probe.
    EXPECT_EQ(session.next_deadline(), clock.now() + 3000ms);
    EXPECT_EQ(sink.sent.size(), 2u) << "nothing is sent in answer to ACCEPT";

    // A duplicate ACCEPT changes nothing.
    feed({.session = 0x7777, .body = kap::Accept{n, 0xE2, 100, 1}});
    EXPECT_EQ(session.session(), 0x5E55u);
    EXPECT_EQ(session.epoch(), 0xE1u);
    EXPECT_EQ(sink.events.size(), 1u);
}

TEST_F(PeerSessionTest, ProbesAreAnsweredWithAcksEchoingSeqAndTxTime) {
    register_session();
    const std::size_t base = sink.sent.size();
    clock.advance(50ms);
    feed({.session = 0x5E55, .body = kap::Probe{1, 0x0123456789ABCDEFULL}});
    ASSERT_EQ(sink.sent.size(), base + 1);
    const Sent& a = last();
    ASSERT_EQ(a.type(), kap::Type::ack);
    EXPECT_EQ(a.msg.session, 0x5E55u);
    EXPECT_EQ(a.msg.diag, kap::Diag::none);
    EXPECT_EQ(a.bytes.size(), 36u);
    EXPECT_EQ(a.body<kap::Ack>().seq, 1u);
    EXPECT_EQ(a.body<kap::Ack>().tx_time, 0x0123456789ABCDEFULL);
    EXPECT_EQ(a.body<kap::Ack>().incarnation, session.incarnation());
    EXPECT_EQ(session.probes_answered(), 1u);
    EXPECT_EQ(session.next_deadline(), clock.now() + 800ms);

    // Gaps in seq are fine (lost probes); only newer ones are answered.
    clock.advance(400ms);
    probe(3);
    EXPECT_EQ(sink.sent.size(), base + 2);
    EXPECT_EQ(last().body<kap::Ack>().seq, 3u);
    const auto deadline = session.next_deadline();

    clock.advance(10ms);
    probe(3);          // duplicate
    probe(2);          // older
    probe(4, 0x5E56);  // another session
    probe(4, 0);
    EXPECT_EQ(sink.sent.size(), base + 2);
    EXPECT_EQ(session.dropped(), 4u);
    EXPECT_EQ(session.probes_answered(), 2u);
    EXPECT_EQ(session.next_deadline(), deadline) << "ignored probes do not keep the session alive";

    probe(4);
    EXPECT_EQ(sink.sent.size(), base + 3);
}

TEST_F(PeerSessionTest, ProbeWhileRegisteringIsIgnored) {
    session.start(clock.now());
    probe(1, 0);
    probe(1, 0x5E55);
    EXPECT_EQ(sink.sent.size(), 1u);
    EXPECT_EQ(session.dropped(), 2u);
}

TEST_F(PeerSessionTest, LostAfterProbesPlusOneIntervalsWithoutAProbe) {
    register_session();
    run_for(150ms);
    probe(1);
    const TimePoint last_probe = clock.now();
    const std::size_t sent = sink.sent.size();

    run_until(last_probe + 800ms - 1ns);
    EXPECT_EQ(session.state(), SessionState::registered);
    EXPECT_EQ(sink.sent.size(), sent);
    run_until(last_probe + 800ms);
    ASSERT_EQ(sink.events.size(), 2u);
    EXPECT_EQ(sink.events[1].kind, SessionEventKind::lost);
    EXPECT_EQ(sink.events[1].at, last_probe + 800ms);
    EXPECT_EQ(session.state(), SessionState::registering);
    ASSERT_EQ(sink.sent.size(), sent + 1);
    EXPECT_EQ(last().type(), kap::Type::register_);
    EXPECT_EQ(last().at, last_probe + 800ms);
    EXPECT_EQ(last().body<kap::Register>().cookie, kap::Cookie{});
    EXPECT_EQ(last().body<kap::Register>().incarnation, session.incarnation());
    // The backoff starts over at 1 s.
    EXPECT_GE(*session.next_deadline(), clock.now() + 500ms);
    EXPECT_LE(*session.next_deadline(), clock.now() + 1s);
}

TEST_F(PeerSessionTest, LostUsesTheGrantedValuesNotTheRequested) {
    register_session(0x5E55, 0xE1, 1000, 2);
    const TimePoint registered = clock.now();
    run_until(registered + 3s - 1ns);
    EXPECT_EQ(session.state(), SessionState::registered);
    run_until(registered + 3s);
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_EQ(sink.events.back().kind, SessionEventKind::lost);
}

// Attempt k waits a jittered d_k in [d_k / 2, d_k], d = 1, 2, 4, 8, 16, 30, 30, ... s.
TEST_F(PeerSessionTest, BackoffDoublesWithJitterUpTo30Seconds) {
    session.start(clock.now());
    run_for(10min);
    std::vector<TimePoint> times;
    std::vector<std::uint64_t> nonces;
    for (const Sent& s : sink.sent) {
        ASSERT_EQ(s.type(), kap::Type::register_);
        EXPECT_EQ(s.body<kap::Register>().cookie, kap::Cookie{});
        times.push_back(s.at);
        nonces.push_back(s.body<kap::Register>().nonce);
    }
    ASSERT_GE(times.size(), 20u);
    Duration d = 1s;
    for (std::size_t i = 1; i < times.size(); ++i) {
        const Duration gap = times[i] - times[i - 1];
        EXPECT_GE(gap, d / 2) << "attempt " << i;
        EXPECT_LE(gap, d) << "attempt " << i;
        d = std::min<Duration>(d * 2, 30s);
    }
    std::sort(nonces.begin(), nonces.end());
    EXPECT_EQ(std::adjacent_find(nonces.begin(), nonces.end()), nonces.end())
        << "every attempt has a fresh nonce";
    EXPECT_TRUE(sink.events.empty());
}

TEST(PeerSessionBackoff, JitterIsSpreadOverTheWholeRange) {
    const std::uint64_t seed = test_seed();
    std::cout << "KEEPALIVE_TEST_SEED=" << seed << "\n";
    SCOPED_TRACE("KEEPALIVE_TEST_SEED=" + std::to_string(seed));
    Duration lo = 1h, hi = 0s;
    for (std::uint64_t i = 0; i < 200; ++i) {
        FakeClock clock{kStart};
        SeededRandom random{seed + i};
        RecordingSessionSink sink{clock};
        PeerSession s(PeerSessionOptions{"p", 1000, 3, {}}, random, sink);
        s.start(clock.now());
        const Duration wait = *s.next_deadline() - clock.now();
        EXPECT_GE(wait, 500ms);
        EXPECT_LE(wait, 1s);
        lo = std::min(lo, wait);
        hi = std::max(hi, wait);
    }
    EXPECT_LT(lo, 600ms);
    EXPECT_GT(hi, 900ms);
}

TEST_F(PeerSessionTest, BackoffIsResetAfterASuccessfulRegistration) {
    session.start(clock.now());
    run_for(20s);  // several failed attempts: the backoff is at 16 s or more
    ASSERT_GE(sink.sent.size(), 4u);
    EXPECT_GE(*session.next_deadline() - last().at, 4s);
    register_session();
    ASSERT_EQ(sink.kinds(), std::vector<SessionEventKind>{SessionEventKind::registered});
    run_for(800ms);  // lost: no probe at all
    ASSERT_EQ(sink.events.back().kind, SessionEventKind::lost);
    const TimePoint lost_at = last().at;
    EXPECT_LE(*session.next_deadline() - lost_at, 1s);
    run_for(*session.next_deadline() - clock.now());
    EXPECT_LE(*session.next_deadline() - last().at, 2s);
    EXPECT_GE(*session.next_deadline() - last().at, 1s);
}

TEST_F(PeerSessionTest, RejectIsReportedAndRetriedOnTheBackoff) {
    session.start(clock.now());
    const std::uint64_t n = nonce();
    feed({.session = 0, .body = kap::Challenge{n, cookie}});
    const auto deadline = session.next_deadline();
    const std::size_t sent = sink.sent.size();

    feed({.diag = kap::Diag::server_full, .session = 0, .body = kap::Reject{n + 1}});  // not ours
    EXPECT_TRUE(sink.events.empty());
    feed({.diag = kap::Diag::server_full, .session = 0, .body = kap::Reject{n}});
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].kind, SessionEventKind::rejected);
    EXPECT_EQ(sink.events[0].diag, kap::Diag::server_full);
    EXPECT_EQ(sink.sent.size(), sent) << "no immediate retry";
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_EQ(session.next_deadline(), deadline);

    // Late replies to the rejected attempt are ignored.
    feed({.session = 0, .body = kap::Challenge{n, cookie}});
    feed({.session = 1, .body = kap::Accept{n, 1, 200, 3}});
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_EQ(sink.sent.size(), sent);

    run_until(*deadline);
    ASSERT_EQ(sink.sent.size(), sent + 1);
    EXPECT_EQ(last().type(), kap::Type::register_);
    EXPECT_NE(nonce(), n);
    EXPECT_EQ(last().body<kap::Register>().cookie, kap::Cookie{});
    // And it backs off further: the next attempt 1 to 2 s later.
    EXPECT_GE(*session.next_deadline() - clock.now(), 1s);
    EXPECT_LE(*session.next_deadline() - clock.now(), 2s);
}

TEST_F(PeerSessionTest, ByeShuttingDownReregistersAtOnce) {
    register_session();
    run_for(100ms);
    probe(1);
    probe(2);
    run_for(20ms);
    const std::size_t sent = sink.sent.size();
    feed({.diag = kap::Diag::shutting_down, .session = 0x5E55, .body = kap::Bye{2}});
    ASSERT_EQ(sink.events.size(), 2u);
    EXPECT_EQ(sink.events[1].kind, SessionEventKind::goodbye);
    EXPECT_EQ(sink.events[1].diag, kap::Diag::shutting_down);
    ASSERT_EQ(sink.sent.size(), sent + 1);
    EXPECT_EQ(last().type(), kap::Type::register_);
    EXPECT_EQ(last().at, clock.now());
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_LE(*session.next_deadline() - clock.now(), 1s);
}

TEST_F(PeerSessionTest, ByeWithAHigherSeqIsAccepted) {
    register_session();
    probe(4);
    feed({.diag = kap::Diag::shutting_down, .session = 0x5E55, .body = kap::Bye{9}});
    EXPECT_EQ(session.state(), SessionState::registering);
}

TEST_F(PeerSessionTest, ReplayedOrForeignByeIsIgnored) {
    register_session();
    probe(1);
    probe(5);
    const std::size_t sent = sink.sent.size();
    feed({.diag = kap::Diag::shutting_down, .session = 0x5E55, .body = kap::Bye{4}});  // replay
    feed({.diag = kap::Diag::shutting_down, .session = 0x5E55, .body = kap::Bye{0}});
    feed({.diag = kap::Diag::shutting_down, .session = 0x5E56, .body = kap::Bye{5}});
    feed({.diag = kap::Diag::removed, .session = 0x5E55, .body = kap::Bye{1}});
    EXPECT_EQ(session.state(), SessionState::registered);
    EXPECT_EQ(sink.sent.size(), sent);
    EXPECT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(session.dropped(), 4u);
}

TEST_F(PeerSessionTest, UnknownSessionByeWhileRegisteredReregistersAtOnce) {
    register_session();
    probe(7);
    const std::size_t sent = sink.sent.size();
    // Diag 7 carries session 0 and seq 0, below every probe seq: trusted anyway.
    feed({.diag = kap::Diag::unknown_session, .session = 0, .body = kap::Bye{0}});
    ASSERT_EQ(sink.events.size(), 2u);
    EXPECT_EQ(sink.events[1].kind, SessionEventKind::goodbye);
    EXPECT_EQ(sink.events[1].diag, kap::Diag::unknown_session);
    ASSERT_EQ(sink.sent.size(), sent + 1);
    EXPECT_EQ(last().type(), kap::Type::register_);
    EXPECT_EQ(session.state(), SessionState::registering);
}

TEST_F(PeerSessionTest, UnknownSessionByeWhileRegisteringIsIgnored) {
    session.start(clock.now());
    const auto deadline = session.next_deadline();
    feed({.diag = kap::Diag::unknown_session, .session = 0, .body = kap::Bye{0}});
    feed({.diag = kap::Diag::shutting_down, .session = 0, .body = kap::Bye{0}});
    EXPECT_EQ(sink.sent.size(), 1u);
    EXPECT_TRUE(sink.events.empty());
    EXPECT_EQ(session.next_deadline(), deadline);
}

TEST_F(PeerSessionTest, RemovedByTheOperatorWaitsTheLongestBackoff) {
    register_session();
    probe(3);
    const std::size_t sent = sink.sent.size();
    const TimePoint at = clock.now();
    feed({.diag = kap::Diag::removed, .session = 0x5E55, .body = kap::Bye{3}});
    EXPECT_EQ(sink.events.back().kind, SessionEventKind::goodbye);
    EXPECT_EQ(sink.events.back().diag, kap::Diag::removed);
    EXPECT_EQ(session.state(), SessionState::registering);
    EXPECT_EQ(sink.sent.size(), sent) << "not undone at once";
    run_until(at + 30s - 1ns);
    EXPECT_EQ(sink.sent.size(), sent);
    run_until(at + 30s);
    ASSERT_EQ(sink.sent.size(), sent + 1);
    EXPECT_EQ(last().type(), kap::Type::register_);
}

TEST_F(PeerSessionTest, AcceptWithANewEpochMeansTheServerRestarted) {
    register_session(0x5E55, 0xE1);
    probe(1);
    probe(40);
    run_for(2s);  // lost
    ASSERT_EQ(session.state(), SessionState::registering);
    feed({.session = 0, .body = kap::Challenge{nonce(), cookie}});
    feed({.session = 0x0A0A, .body = kap::Accept{nonce(), 0xE2, 200, 3}});
    EXPECT_EQ(sink.kinds(), (std::vector<SessionEventKind>{
                                SessionEventKind::registered, SessionEventKind::lost,
                                SessionEventKind::registered, SessionEventKind::server_restarted}));
    EXPECT_EQ(session.epoch(), 0xE2u);
    EXPECT_EQ(session.session(), 0x0A0Au);
    // A new server counts from 1 again.
    const std::size_t sent = sink.sent.size();
    probe(1, 0x0A0A);
    ASSERT_EQ(sink.sent.size(), sent + 1);
    EXPECT_EQ(last().body<kap::Ack>().seq, 1u);
}

TEST_F(PeerSessionTest, SameServerSameSessionKeepsTheSeqFloor) {
    register_session(0x5E55, 0xE1);
    probe(40);
    run_for(2s);  // lost, then registered again with the same server and session
    feed({.session = 0, .body = kap::Challenge{nonce(), cookie}});
    feed({.session = 0x5E55, .body = kap::Accept{nonce(), 0xE1, 200, 3}});
    EXPECT_EQ(sink.kinds().back(), SessionEventKind::registered);
    const std::size_t sent = sink.sent.size();
    probe(40);  // a replay from before
    EXPECT_EQ(sink.sent.size(), sent);
    probe(41);
    EXPECT_EQ(sink.sent.size(), sent + 1);
}

TEST_F(PeerSessionTest, SameServerNewSessionStartsFromOne) {
    register_session(0x5E55, 0xE1);
    probe(40);
    run_for(2s);
    feed({.session = 0, .body = kap::Challenge{nonce(), cookie}});
    feed({.session = 0x6E66, .body = kap::Accept{nonce(), 0xE1, 200, 3}});
    EXPECT_EQ(sink.kinds().back(), SessionEventKind::registered) << "not a server restart";
    const std::size_t sent = sink.sent.size();
    probe(1, 0x6E66);
    EXPECT_EQ(sink.sent.size(), sent + 1);
}

TEST_F(PeerSessionTest, StopSaysGoodbyeWithTheHighestProbeSeq) {
    register_session();
    probe(1);
    probe(6);
    probe(5);
    const std::size_t sent = sink.sent.size();
    session.stop();
    ASSERT_EQ(sink.sent.size(), sent + 1);
    const Sent& b = last();
    ASSERT_EQ(b.type(), kap::Type::bye);
    EXPECT_EQ(b.msg.diag, kap::Diag::shutting_down);
    EXPECT_EQ(b.msg.session, 0x5E55u);
    EXPECT_EQ(b.body<kap::Bye>().seq, 6u);
    EXPECT_EQ(b.bytes.size(), 20u);
    EXPECT_EQ(session.state(), SessionState::stopped);
    EXPECT_FALSE(session.next_deadline().has_value());

    // Stopped means stopped.
    probe(7);
    session.on_timer(clock.now() + 1h);
    session.stop();
    EXPECT_EQ(sink.sent.size(), sent + 1);
}

TEST_F(PeerSessionTest, StopBeforeAnyProbeSaysGoodbyeWithSeqZero) {
    register_session();
    session.stop();
    ASSERT_EQ(last().type(), kap::Type::bye);
    EXPECT_EQ(last().body<kap::Bye>().seq, 0u);
}

TEST_F(PeerSessionTest, StopWhileRegisteringSendsNothing) {
    session.start(clock.now());
    session.stop();
    EXPECT_EQ(sink.sent.size(), 1u);
    EXPECT_EQ(session.state(), SessionState::stopped);
}

TEST_F(PeerSessionTest, GarbageAndPeerBoundTypesAreDropped) {
    register_session();
    probe(2);
    const std::size_t sent = sink.sent.size();
    const auto deadline = session.next_deadline();
    const std::uint64_t dropped = session.dropped();

    Bytes ack = encode({.session = 0x5E55, .body = kap::Ack{3, 3, 3}});
    session.on_datagram(ack, clock.now());
    session.on_datagram(encode({.session = 0, .body = kap::Register{1, 2, 3, 4, {}, "x"}}),
                        clock.now());
    Bytes p = encode({.session = 0x5E55, .body = kap::Probe{3, 3}});
    for (std::size_t n = 0; n < p.size(); ++n)
        session.on_datagram(std::span(p.data(), n), clock.now());
    p[2] = 2;  // version
    session.on_datagram(p, clock.now());

    const std::uint64_t seed = test_seed();
    SCOPED_TRACE("KEEPALIVE_TEST_SEED=" + std::to_string(seed));
    std::mt19937_64 rng(seed);
    std::uint64_t garbage = 0;
    for (int i = 0; i < 5000; ++i) {
        Bytes b(rng() % 200);
        for (auto& x : b) x = static_cast<std::uint8_t>(rng());
        if (b.size() >= 2 && rng() % 2) {
            b[0] = kap::kMagic0;
            b[1] = kap::kMagic1;
        }
        if (kap::decode(b).ok()) continue;
        ++garbage;
        session.on_datagram(b, clock.now());
    }
    EXPECT_EQ(session.dropped(), dropped + 2 + 28 + 1 + garbage);
    EXPECT_EQ(sink.sent.size(), sent);
    EXPECT_EQ(session.next_deadline(), deadline);
    EXPECT_EQ(session.state(), SessionState::registered);
    EXPECT_EQ(sink.events.size(), 1u);
}

// ---- PeerSession and ServerCore over a fake loopback ----------------------------

class ServerEnd final : public ServerSink {
public:
    explicit ServerEnd(const FakeClock& clock) : clock_(clock) {}
    void send(const Route&, const Address& to, std::span<const std::uint8_t> data) override {
        auto decoded = kap::decode(data);
        if (!decoded) {
            ADD_FAILURE() << "server sent an undecodable datagram";
            return;
        }
        sent.push_back({clock_.now(), Bytes(data.begin(), data.end()), *decoded});
        if (forward) forward(to, sent.back().bytes);
    }
    void peer_event(const PeerEvent& e) override {
        events.push_back({clock_.now(), e.kind, e.peer.state, e.peer.session, e.peer.since});
    }

    struct Ev {
        TimePoint at;
        EventKind kind;
        PeerState state;
        std::uint32_t session;
        TimePoint since;
    };
    std::vector<Ev> kinds_since(std::size_t from) const {
        return {events.begin() + static_cast<std::ptrdiff_t>(from), events.end()};
    }
    std::vector<Sent> sent;
    std::vector<Ev> events;
    std::function<void(const Address&, const Bytes&)> forward;

private:
    const FakeClock& clock_;
};

class LoopbackTest : public ::testing::Test {
protected:
    LoopbackTest() {
        server_end.forward = [this](const Address& to, const Bytes& b) {
            if (to != peer_addr) return;  // nobody else on this network
            if (drop_to_peer) return;
            net.emplace(clock.now() + one_way, Packet{false, b});
        };
        peer_sink.forward = [this](const Bytes& b) {
            if (drop_to_server) {
                const auto m = kap::decode(b);
                if (m && kap::type_of(*m) == kap::Type::ack)
                    dropped_acks.push_back(std::get<kap::Ack>(m->body).seq);
                return;
            }
            net.emplace(clock.now() + one_way, Packet{true, b});
        };
        limits.forget_after = 60s;
        limits.down_probe_interval = 1s;
        start_server(1);
        peer = std::make_unique<PeerSession>(PeerSessionOptions{"db-7", 200, 3, {}}, peer_random,
                                             peer_sink);
    }

    void start_server(std::uint64_t seed) {
        server_random = std::make_unique<SeededRandom>(seed);
        server = std::make_unique<ServerCore>(limits, *server_random, server_end, clock.now());
    }

    // Steps both sides and the network in time order up to `until`: deliveries
    // first on a tie, then the server's timers, then the peer's.
    void run_until(TimePoint until) {
        for (int guard = 0; guard < 10'000'000; ++guard) {
            std::optional<TimePoint> delivery;
            if (!net.empty()) delivery = net.begin()->first;
            const auto sd = server->next_deadline();
            const auto pd = peer->next_deadline();
            TimePoint next = until + 1ns;
            if (delivery) next = std::min(next, *delivery);
            if (sd) next = std::min(next, *sd);
            if (pd) next = std::min(next, *pd);
            if (next > until) break;
            if (next > clock.now()) clock.set(next);
            if (delivery && *delivery <= clock.now()) {
                const Packet packet = std::move(net.begin()->second);
                net.erase(net.begin());
                if (packet.to_server)
                    server->on_datagram(packet.bytes, peer_addr, route, clock.now());
                else
                    peer->on_datagram(packet.bytes, clock.now());
            } else if (sd && *sd <= clock.now()) {
                server->on_timer(clock.now());
            } else {
                peer->on_timer(clock.now());
            }
        }
        if (until > clock.now()) clock.set(until);
    }
    void run_for(Duration d) { run_until(clock.now() + d); }

    const Peer* server_peer() const {
        const auto slot = server->peers().find_name("db-7");
        return slot == PeerTable::kNone ? nullptr : &server->peers().at(slot);
    }
    const Peer& sp() const {
        static const Peer none;
        const Peer* p = server_peer();
        if (p == nullptr) {
            ADD_FAILURE() << "the server does not know db-7";
            return none;
        }
        return *p;
    }
    std::vector<Sent> probes_sent(std::size_t from = 0) const {
        std::vector<Sent> out;
        for (std::size_t i = from; i < server_end.sent.size(); ++i)
            if (server_end.sent[i].type() == kap::Type::probe) out.push_back(server_end.sent[i]);
        return out;
    }
    std::size_t registers_sent() const {
        std::size_t n = 0;
        for (const Sent& s : peer_sink.sent) n += s.type() == kap::Type::register_;
        return n;
    }

    struct Packet {
        bool to_server;
        Bytes bytes;
    };

    FakeClock clock{kStart};
    PeerLimits limits;
    std::unique_ptr<SeededRandom> server_random;
    SeededRandom peer_random{99};
    ServerEnd server_end{clock};
    RecordingSessionSink peer_sink{clock};
    std::unique_ptr<ServerCore> server;
    std::unique_ptr<PeerSession> peer;
    const Address peer_addr = *Address::parse("[::1]:45000");
    const Route route{3, *Address::parse("[::1]:7371")};
    Duration one_way = 1ms;
    bool drop_to_server = false;
    bool drop_to_peer = false;
    std::multimap<TimePoint, Packet> net;
    std::vector<std::uint64_t> dropped_acks;
};

TEST_F(LoopbackTest, RegistersAndStaysUpForAMinute) {
    peer->start(clock.now());
    run_for(10ms);
    ASSERT_EQ(peer->state(), SessionState::registered);
    ASSERT_NE(server_peer(), nullptr);
    EXPECT_EQ(peer->session(), sp().session);
    EXPECT_EQ(peer->epoch(), server->epoch());
    EXPECT_EQ(peer->granted_interval_ms(), 200u);
    EXPECT_EQ(peer->granted_probes(), 3);
    EXPECT_EQ(registers_sent(), 2u);  // the first, then with the cookie

    run_for(60s);
    EXPECT_EQ(peer_sink.kinds(), std::vector<SessionEventKind>{SessionEventKind::registered});
    ASSERT_EQ(server_end.events.size(), 1u);
    EXPECT_EQ(server_end.events[0].kind, EventKind::registered);
    EXPECT_EQ(registers_sent(), 2u);
    const Peer& p = sp();
    EXPECT_EQ(p.state, PeerState::up);
    EXPECT_GE(p.probes_sent, 299u);
    EXPECT_LE(p.probes_sent, 301u);
    // All answered, but for one probe that may still be in flight.
    EXPECT_GE(peer->probes_answered() + 1, p.probes_sent);
    EXPECT_LE(peer->probes_answered(), p.probes_sent);
    EXPECT_EQ(p.acks_received, p.seq_acked);
    EXPECT_GE(p.acks_received + 1, p.probes_sent);
    EXPECT_EQ(p.rtt, std::optional<Duration>(2ms));
    EXPECT_EQ(peer->dropped(), 0u);
    std::uint64_t drops = 0;
    for (auto c : server->drops()) drops += c;
    EXPECT_EQ(drops, 0u);
    const auto probes = probes_sent();
    for (std::size_t i = 1; i < probes.size(); ++i)
        EXPECT_EQ(probes[i].at - probes[i - 1].at, 200ms);
}

TEST_F(LoopbackTest, ServerDeclaresASilentPeerDownAtTheContractInstant) {
    // Slow probes more often than the peer's loss budget, so that it keeps hearing the server.
    limits.down_probe_interval = 500ms;
    start_server(1);
    peer->start(clock.now());
    run_for(60s);
    ASSERT_EQ(sp().state, PeerState::up);
    const std::size_t events = server_end.events.size();

    drop_to_server = true;  // the peer still hears probes, but its answers are lost
    run_for(2s);
    ASSERT_FALSE(dropped_acks.empty());
    const std::uint64_t first_lost = dropped_acks.front();
    TimePoint first_unanswered{};
    for (const Sent& s : probes_sent())
        if (s.body<kap::Probe>().seq == first_lost) first_unanswered = s.at;
    ASSERT_NE(first_unanswered, TimePoint{});

    const auto ev = server_end.kinds_since(events);
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[0].kind, EventKind::suspect);
    EXPECT_EQ(ev[0].at, first_unanswered + 200ms);
    EXPECT_EQ(ev[1].kind, EventKind::down);
    EXPECT_EQ(ev[1].at, first_unanswered + 600ms);
    EXPECT_EQ(ev[1].since, first_unanswered + 600ms);
    EXPECT_EQ(sp().since, first_unanswered + 600ms);
    // The peer, still probed (slowly now), never thought the server lost.
    EXPECT_EQ(peer_sink.kinds(), std::vector<SessionEventKind>{SessionEventKind::registered});

    // Its answers get through again: up at the next slow probe's ACK.
    drop_to_server = false;
    run_for(2s);
    EXPECT_EQ(sp().state, PeerState::up);
    EXPECT_EQ(server_end.events.back().kind, EventKind::up);
    EXPECT_EQ(peer_sink.kinds(), std::vector<SessionEventKind>{SessionEventKind::registered});
}

TEST_F(LoopbackTest, PeerNoticesARestartedServerAndRegistersAgain) {
    peer->start(clock.now());
    run_for(30s);
    // Restart with nothing in flight: the next probe has been answered.
    run_until(probes_sent().back().at + 200ms + 3ms);
    ASSERT_TRUE(net.empty());
    const std::uint64_t old_epoch = server->epoch();
    const TimePoint last_probe = probes_sent().back().at;

    start_server(2);  // a new process: no state, a new epoch
    ASSERT_NE(server->epoch(), old_epoch);
    const std::size_t server_events = server_end.events.size();
    run_for(3s);

    // Lost (probes + 1) × interval after the last probe it received.
    const auto& ev = peer_sink.events;
    ASSERT_GE(ev.size(), 4u);
    EXPECT_EQ(ev[1].kind, SessionEventKind::lost);
    EXPECT_EQ(ev[1].at, last_probe + one_way + 800ms);
    EXPECT_EQ(ev[2].kind, SessionEventKind::registered);
    EXPECT_EQ(ev[3].kind, SessionEventKind::server_restarted);
    EXPECT_EQ(ev[3].at, ev[1].at + 4 * one_way) << "REGISTER, CHALLENGE, REGISTER, ACCEPT";
    EXPECT_EQ(ev.size(), 4u);
    EXPECT_EQ(peer->epoch(), server->epoch());
    ASSERT_NE(server_peer(), nullptr);
    EXPECT_EQ(peer->session(), sp().session);
    ASSERT_EQ(server_end.events.size(), server_events + 1);
    EXPECT_EQ(server_end.events.back().kind, EventKind::registered);

    // And it carries on with the new server.
    run_for(30s);
    EXPECT_EQ(sp().state, PeerState::up);
    EXPECT_GT(sp().acks_received, 140u);
    EXPECT_EQ(peer_sink.events.size(), 4u);
}

// The restarted server gets an ACK for a probe of its predecessor: it answers
// BYE diag 7 and the peer registers again at once.
TEST_F(LoopbackTest, AckToARestartedServerGetsBye7AndTheLoopCloses) {
    peer->start(clock.now());
    run_for(10s);
    const TimePoint probe_at = *server->next_deadline();
    run_until(probe_at);
    ASSERT_EQ(probes_sent().back().at, probe_at);
    start_server(6);
    run_for(1s);
    EXPECT_EQ(peer_sink.kinds(),
              (std::vector<SessionEventKind>{
                  SessionEventKind::registered, SessionEventKind::goodbye,
                  SessionEventKind::registered, SessionEventKind::server_restarted}));
    EXPECT_EQ(peer_sink.events[1].diag, kap::Diag::unknown_session);
    EXPECT_EQ(peer_sink.events[1].at, probe_at + 3 * one_way);
    EXPECT_EQ(peer_sink.events[3].at, probe_at + 7 * one_way);
    EXPECT_EQ(server->drops()[static_cast<std::size_t>(Drop::unknown_session)], 1u);
    ASSERT_NE(server_peer(), nullptr);
    EXPECT_EQ(sp().state, PeerState::up);
}

TEST_F(LoopbackTest, ServerShutdownMakesThePeerRegisterAgainAtOnce) {
    peer->start(clock.now());
    run_for(10s);
    server->shutdown();
    start_server(3);
    const TimePoint restart = clock.now();
    run_for(1s);
    EXPECT_EQ(peer_sink.kinds(),
              (std::vector<SessionEventKind>{
                  SessionEventKind::registered, SessionEventKind::goodbye,
                  SessionEventKind::registered, SessionEventKind::server_restarted}));
    EXPECT_EQ(peer_sink.events[1].diag, kap::Diag::shutting_down);
    EXPECT_EQ(peer_sink.events[3].at, restart + 5 * one_way);
    ASSERT_NE(server_peer(), nullptr);
    EXPECT_EQ(sp().state, PeerState::up);
    EXPECT_EQ(peer->epoch(), server->epoch());
}

TEST_F(LoopbackTest, PeerStopIsAGoodbyeThatTheServerForgets) {
    peer->start(clock.now());
    run_for(5s);
    peer->stop();
    const TimePoint stopped = clock.now();
    run_for(1s);
    ASSERT_EQ(sp().state, PeerState::left);
    EXPECT_EQ(server_end.events.back().kind, EventKind::left);
    EXPECT_EQ(server_end.events.back().at, stopped + one_way);
    // The probe in flight when it stopped went unanswered, nothing else was sent.
    EXPECT_LE(probes_sent().back().at, stopped);
    run_until(stopped + one_way + limits.forget_after);
    EXPECT_EQ(server_peer(), nullptr);
    EXPECT_EQ(server_end.events.back().kind, EventKind::forgotten);
}

TEST_F(LoopbackTest, PeerRestartIsReportedWithANewSession) {
    peer->start(clock.now());
    run_for(5s);
    const std::uint32_t old_session = sp().session;
    // The process dies without a goodbye and a new one starts.
    peer =
        std::make_unique<PeerSession>(PeerSessionOptions{"db-7", 200, 3, {}}, peer_random, peer_sink);
    peer->start(clock.now());
    run_for(5s);
    const Peer& p = sp();
    EXPECT_NE(p.session, old_session);
    EXPECT_EQ(p.session, peer->session());
    EXPECT_EQ(p.incarnation, peer->incarnation());
    EXPECT_EQ(p.state, PeerState::up);
    bool restarted = false;
    for (const auto& e : server_end.events) {
        restarted |= e.kind == EventKind::restarted;
        EXPECT_NE(e.kind, EventKind::down);
    }
    EXPECT_TRUE(restarted);
    EXPECT_GT(peer->probes_answered(), 20u);
}

TEST_F(LoopbackTest, PartitionDownThenLostThenBothRecover) {
    peer->start(clock.now());
    run_for(10s);
    const std::uint32_t session = peer->session();
    drop_to_server = drop_to_peer = true;
    const TimePoint cut = clock.now();
    run_for(20s);
    EXPECT_EQ(sp().state, PeerState::down);
    EXPECT_EQ(peer->state(), SessionState::registering);
    EXPECT_EQ(peer_sink.events.back().kind, SessionEventKind::lost);
    EXPECT_LE(peer_sink.events.back().at, cut + 1s);
    const std::size_t attempts = registers_sent();
    EXPECT_GE(attempts, 2u + 5u) << "backing off: 1, 2, 4, 8 s ... ";
    EXPECT_LE(attempts, 2u + 7u);

    drop_to_server = drop_to_peer = false;
    run_for(30s);  // the next attempt, at most 30 s away, gets through
    EXPECT_EQ(peer->state(), SessionState::registered);
    EXPECT_EQ(peer->session(), session) << "same incarnation: same session";
    EXPECT_EQ(sp().state, PeerState::up);
    EXPECT_EQ(peer_sink.kinds().back(), SessionEventKind::registered);
    for (const Noted& n : peer_sink.events) EXPECT_NE(n.kind, SessionEventKind::server_restarted);
    const std::uint64_t answered = peer->probes_answered();
    run_for(10s);
    EXPECT_GE(peer->probes_answered(), answered + 49);
}

TEST_F(LoopbackTest, LongPartitionServerForgetsPeerRegistersAfresh) {
    limits.forget_after = 10s;
    start_server(4);
    peer->start(clock.now());
    run_for(5s);
    const std::uint32_t session = peer->session();
    drop_to_server = drop_to_peer = true;
    run_for(40s);
    EXPECT_EQ(server_peer(), nullptr);
    drop_to_server = drop_to_peer = false;
    run_for(35s);
    ASSERT_NE(server_peer(), nullptr);
    EXPECT_EQ(peer->state(), SessionState::registered);
    EXPECT_NE(peer->session(), session);
    EXPECT_EQ(peer->session(), sp().session);
    const std::uint64_t answered = peer->probes_answered();
    run_for(2s);
    EXPECT_GE(peer->probes_answered(), answered + 9) << "probes of the new session from seq 1";
}

TEST_F(LoopbackTest, ServerClampsAndThePeerUsesTheGrant) {
    limits.min_interval = 500ms;
    limits.max_probes = 2;
    start_server(5);
    peer->start(clock.now());
    run_for(10ms);
    ASSERT_EQ(peer->state(), SessionState::registered);
    EXPECT_EQ(peer->granted_interval_ms(), 500u);
    EXPECT_EQ(peer->granted_probes(), 2);
    // With no probes at all, lost after (2 + 1) × 500 ms.
    drop_to_peer = true;
    const TimePoint registered = peer_sink.events.back().at;
    run_for(2s);
    ASSERT_GE(peer_sink.events.size(), 2u);
    EXPECT_EQ(peer_sink.events[1].kind, SessionEventKind::lost);
    EXPECT_GE(peer_sink.events[1].at, registered + 1500ms);
    EXPECT_LE(peer_sink.events[1].at, registered + 10ms + 1500ms);
}

}  // namespace
}  // namespace keepalive
