// Degraded peers (loss window, smoothed RTT, hysteresis) and damping of
// flapping peers, through ServerCore under a fake clock.
#include "core/health.hpp"

#include <gtest/gtest.h>

#include "server_driver.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using test_support::addr;
using test_support::Behaviour;
using test_support::ServerDriver;

const Address kPeer = addr("198.51.100.7:4000");

TEST(LossWindow, CountsTheLastNOutcomes) {
    LossWindow w;
    for (int i = 0; i < 5; ++i) w.record(true, 10);
    EXPECT_EQ(w.lost(), 5u);
    EXPECT_EQ(w.size(), 5u);
    for (int i = 0; i < 10; ++i) w.record(false, 10);
    EXPECT_EQ(w.lost(), 0u);  // the losses slid out
    EXPECT_EQ(w.size(), 10u);
    w.record(true, 10);
    EXPECT_EQ(w.lost(), 1u);
    w.record(true, 4);  // a smaller window (reload) starts over
    EXPECT_EQ(w.lost(), 1u);
    EXPECT_EQ(w.size(), 1u);
}

// The smoothed RTT is held in 4 bytes of whole microseconds (a peer record
// holds it): exact in microseconds, smoothed with alpha 1/8, truncated below
// a microsecond, saturating at 2^31-1 us, never negative.
TEST(PeerHealth, SmoothedRttInWholeMicroseconds) {
    PeerHealth h;
    EXPECT_FALSE(h.smoothed_rtt());
    h.rtt_sample(1999ns);
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(1us));
    h.rtt_sample(81us);  // 1 + (81 - 1) / 8
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(11us));
    h.rtt_sample(3us);  // 11 + (3 - 11) / 8
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(10us));
    h.reset();
    EXPECT_FALSE(h.smoothed_rtt());
    h.rtt_sample(0ns);  // an RTT of zero is an RTT
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(0us));
    h.reset();
    h.rtt_sample(-5us);  // a clock step cannot make it negative
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(0us));
    h.reset();
    h.rtt_sample(std::chrono::hours(2));
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(std::chrono::microseconds(INT32_MAX)));
    h.rtt_sample(std::chrono::hours(1000));  // stays at the limit, no overflow
    EXPECT_EQ(h.smoothed_rtt(), std::optional<Duration>(std::chrono::microseconds(INT32_MAX)));
    h.rtt_sample(0ns);
    EXPECT_EQ(h.smoothed_rtt(),
              std::optional<Duration>(std::chrono::microseconds(INT32_MAX - (INT32_MAX / 8))));
}

// A peer's last RTT in 4 bytes: the same rules, and "none" apart from zero.
TEST(OptionalDuration, WholeMicrosecondsSaturatingAndNeverNegative) {
    OptionalDuration none;
    EXPECT_FALSE(none);
    EXPECT_EQ(std::optional<Duration>(none), std::nullopt);
    EXPECT_EQ(none.value_or(7ms), Duration(7ms));
    EXPECT_EQ(OptionalDuration(std::optional<Duration>()), none);
    const OptionalDuration zero(Duration(0ns));
    EXPECT_TRUE(zero);
    EXPECT_EQ(*zero, Duration(0ns));
    EXPECT_NE(zero, none);
    EXPECT_EQ(*OptionalDuration(Duration(1999ns)), Duration(1us));
    EXPECT_EQ(*OptionalDuration(Duration(1500ms)), Duration(1500ms));
    EXPECT_EQ(*OptionalDuration(Duration(-3ms)), Duration(0ns));
    EXPECT_EQ(*OptionalDuration(Duration(std::chrono::microseconds(INT32_MAX))),
              OptionalDuration::kMax);
    EXPECT_EQ(*OptionalDuration(OptionalDuration::kMax + 1ns), OptionalDuration::kMax);
    EXPECT_EQ(*OptionalDuration(Duration::max()), OptionalDuration::kMax);
    OptionalDuration r(std::optional<Duration>(42us));
    EXPECT_EQ(std::optional<Duration>(r), std::optional<Duration>(42us));
    r.reset();
    EXPECT_FALSE(r.has_value());
    static_assert(sizeof(OptionalDuration) == 4);
}

TEST(PeerHealth, HysteresisBands) {
    HealthPolicy policy;
    policy.loss = 0.2;
    policy.loss_window = 50;
    policy.rtt = 10ms;
    PeerHealth h;
    LossWindow w;
    for (int i = 0; i < 10; ++i) w.record(true, policy.loss_window);
    EXPECT_FALSE(h.judge(policy, false, &w).degraded());  // 10 of 50 is not more than 20%
    w.record(true, policy.loss_window);
    EXPECT_EQ(h.judge(policy, false, &w),
              (HealthFigures{.lost = 11, .window = 11, .loss_over = true}));
    // Staying degraded needs more than half the threshold: 5 of 50.
    for (int i = 0; i < 44; ++i) w.record(false, policy.loss_window);
    EXPECT_EQ(w.lost(), 6u);
    EXPECT_TRUE(h.judge(policy, true, &w).degraded());
    EXPECT_FALSE(h.judge(policy, false, &w).degraded());
    w.record(false, policy.loss_window);
    EXPECT_EQ(w.lost(), 5u);
    EXPECT_FALSE(h.judge(policy, true, &w).degraded());
    EXPECT_FALSE(h.judge(policy, false, nullptr).degraded());  // no window: nothing lost

    PeerHealth r;
    for (int i = 0; i < 50; ++i) r.rtt_sample(9ms);
    EXPECT_FALSE(r.judge({.rtt = 10ms}, false, nullptr).degraded());
    EXPECT_TRUE(r.judge({.rtt = 10ms}, true, nullptr).degraded());  // above 80% of 10 ms
    for (int i = 0; i < 50; ++i) r.rtt_sample(7ms);
    EXPECT_FALSE(r.judge({.rtt = 10ms}, true, nullptr).degraded());
}

class HealthTest : public ::testing::Test {
protected:
    static PeerLimits limits_with(HealthPolicy health) {
        PeerLimits l;
        l.min_interval = 10ms;
        l.down_probe_interval = 100ms;
        l.health = health;
        return l;
    }
    std::vector<EventKind> kinds(const ServerDriver& d) const {
        std::vector<EventKind> out;
        for (const auto& e : d.events)
            if (e.kind != EventKind::registered) out.push_back(e.kind);
        return out;
    }
};

TEST_F(HealthTest, LossOverTheWindowMakesAPeerDegradedAndItStaysSoWithinTheBand) {
    ServerDriver d(limits_with({.loss = 0.2, .loss_window = 50}));
    d.add_peer("sick", kPeer, 100, 3, {.drop_every = 3});  // 33% loss
    d.run_for(2s);
    // Before the window holds more than 10 losses: suspect and back up with each loss.
    ASSERT_EQ(d.count(EventKind::degraded, "sick"), 0u);
    d.run_for(2s);
    ASSERT_EQ(d.peer("sick").state, PeerState::degraded);
    const auto entered = std::find_if(d.events.begin(), d.events.end(),
                                      [](const auto& e) { return e.kind == EventKind::degraded; });
    ASSERT_NE(entered, d.events.end());
    EXPECT_EQ(entered->reason, "lost 11 of the last 33 probes");
    EXPECT_EQ(entered->previous, PeerState::suspect);  // decided when the ACK after a loss came

    // Inside the band (about 14% loss: more than half the threshold, less than
    // the threshold) it stays degraded, and never turns suspect on a loss.
    const std::size_t before = d.events.size();
    d.peers[kPeer].drop_every = 7;
    d.run_for(20s);
    EXPECT_EQ(d.events.size(), before) << d.events.back().reason;
    EXPECT_EQ(d.peer("sick").state, PeerState::degraded);

    // Healthy again once the losses slide out, to half the threshold: one event.
    d.peers[kPeer].drop_every = 0;
    d.run_for(10s);
    EXPECT_EQ(d.peer("sick").state, PeerState::up);
    ASSERT_EQ(d.events.size(), before + 1);
    EXPECT_EQ(d.events.back().kind, EventKind::up);
    EXPECT_EQ(d.events.back().previous, PeerState::degraded);
    EXPECT_TRUE(d.events.back().reason.starts_with("recovered: lost 5 of the last 50 probes"))
        << d.events.back().reason;
    EXPECT_EQ(d.server->peers().counts().in(PeerState::degraded), 0u);
}

TEST_F(HealthTest, AnUpPeerInsideTheBandNeverBecomesDegraded) {
    ServerDriver d(limits_with({.loss = 0.2, .loss_window = 50}));
    d.add_peer("fine", kPeer, 100, 3, {.drop_every = 7});
    d.run_for(30s);
    EXPECT_EQ(d.count(EventKind::degraded, "fine"), 0u);
    EXPECT_EQ(d.peer("fine").state, PeerState::up);
}

TEST_F(HealthTest, SlowAnswersMakeAPeerDegradedWithHysteresis) {
    ServerDriver d(limits_with({.rtt = 20ms}));
    d.add_peer("slow", kPeer, 100, 3, {.delay = 5ms});
    d.run_for(2s);
    EXPECT_EQ(d.peer("slow").state, PeerState::up);
    d.peers[kPeer].delay = 40ms;
    d.run_for(3s);
    ASSERT_EQ(d.peer("slow").state, PeerState::degraded);
    EXPECT_TRUE(d.events.back().reason.starts_with("round trip 2")) << d.events.back().reason;
    EXPECT_EQ(d.events.back().previous, PeerState::up);
    // 18 ms: under the threshold, above 80% of it: stays degraded.
    d.peers[kPeer].delay = 18ms;
    d.run_for(5s);
    EXPECT_EQ(d.peer("slow").state, PeerState::degraded);
    EXPECT_EQ(d.count(EventKind::degraded, "slow"), 1u);
    d.peers[kPeer].delay = 10ms;
    d.run_for(5s);
    EXPECT_EQ(d.peer("slow").state, PeerState::up);
    EXPECT_EQ(d.count(EventKind::up, "slow"), 1u);
}

TEST_F(HealthTest, DegradedPeerStillGoesDownAndComesBackAfresh) {
    ServerDriver d(limits_with({.loss = 0.2, .loss_window = 50}));
    d.add_peer("sick", kPeer, 100, 3, {.drop_every = 2});
    d.run_for(5s);
    ASSERT_EQ(d.peer("sick").state, PeerState::degraded);
    d.peers[kPeer].answering = false;
    d.run_for(1s);
    EXPECT_EQ(d.peer("sick").state, PeerState::down);
    EXPECT_EQ(d.events.back().previous, PeerState::degraded);
    d.peers[kPeer] = Behaviour{};
    d.run_for(1s);
    EXPECT_EQ(d.peer("sick").state, PeerState::up);  // the old losses are forgotten
}

TEST_F(HealthTest, WithoutAPolicyNothingChanges) {
    ServerDriver d(limits_with({}));
    d.add_peer("sick", kPeer, 100, 3, {.delay = 50ms, .drop_every = 2});
    d.run_for(10s);
    EXPECT_EQ(d.count(EventKind::degraded, "sick"), 0u);
}

// Answers for `on`, then not at all for `off` (long enough to go down).
void flap(ServerDriver& d, Duration on, Duration off) {
    d.peers[kPeer].answering = true;
    d.run_for(on);
    d.peers[kPeer].answering = false;
    d.run_for(off);
}

TEST_F(HealthTest, AFlappingPeerIsDampedWithOneEntryUntilItHasAnsweredForHoldDown) {
    ServerDriver d(limits_with({.hold_down = 10s, .flap_threshold = 2}));
    d.add_peer("flappy", kPeer, 100, 2);
    d.run_for(1s);
    for (int i = 0; i < 6; ++i) flap(d, 500ms, 500ms);
    // Two recoveries are allowed; the third within 10 s is damped: no more up/down.
    const std::vector<EventKind> expected{EventKind::suspect, EventKind::down, EventKind::up,
                                          EventKind::suspect, EventKind::down, EventKind::up,
                                          EventKind::suspect, EventKind::down, EventKind::damped};
    ASSERT_EQ(kinds(d), expected);
    EXPECT_EQ(d.peer("flappy").state, PeerState::down);
    const auto damped = d.events.back();
    EXPECT_EQ(damped.reason,
              "damped: back 3 times within 10s; held down until it has answered for 10s");
    EXPECT_EQ(damped.previous, PeerState::down);

    // Answering steadily: still held until 10 s of it, then up, once.
    const TimePoint steady = d.clock.now();
    d.peers[kPeer].answering = true;
    d.run_for(9500ms);
    EXPECT_EQ(d.peer("flappy").state, PeerState::down);
    EXPECT_EQ(kinds(d).size(), expected.size());
    d.run_for(1s);
    EXPECT_EQ(d.peer("flappy").state, PeerState::up);
    ASSERT_EQ(kinds(d).size(), expected.size() + 1);
    EXPECT_EQ(d.events.back().kind, EventKind::up);
    EXPECT_EQ(d.events.back().reason, "ack received; damping ended after answering for 10s");
    EXPECT_GE(d.events.back().at - steady, 10s);
    EXPECT_LE(d.events.back().at - steady, 10s + 200ms);
}

TEST_F(HealthTest, RecoveriesSpreadBeyondHoldDownAreNotDamped) {
    ServerDriver d(limits_with({.hold_down = 2s, .flap_threshold = 2}));
    d.add_peer("slowflap", kPeer, 100, 2);
    d.run_for(1s);
    for (int i = 0; i < 5; ++i) flap(d, 1500ms, 500ms);
    EXPECT_EQ(d.count(EventKind::damped, "slowflap"), 0u);
    EXPECT_EQ(d.count(EventKind::up, "slowflap"), 4u);
}

TEST_F(HealthTest, ADampedPeerThatStopsAnsweringIsForgotten) {
    PeerLimits l = limits_with({.hold_down = 10s, .flap_threshold = 1});
    l.forget_after = 3s;
    ServerDriver d(l);
    d.add_peer("gone", kPeer, 100, 2);
    d.run_for(1s);
    for (int i = 0; i < 3; ++i) flap(d, 300ms, 500ms);
    ASSERT_EQ(d.count(EventKind::damped, "gone"), 1u);
    d.peers[kPeer].answering = false;
    d.run_for(5s);
    EXPECT_EQ(d.server->peers().find_name("gone"), PeerTable::kNone);
}

}  // namespace
}  // namespace keepalive
