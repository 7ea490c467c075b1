// The daemon's words for events: every cause the core or a target reports,
// exactly as operators read it in the journal and on stderr (integration
// tests and the pid1 suite grep for some of these), the log sentence around
// it, a peer's network error and the status summary.
#include "daemon/event_text.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <set>

namespace keepalive {
namespace {

using namespace std::chrono_literals;

Peer peer(Protocol protocol = Protocol::kap1) {
    static const PeerNameBuffer name("db1");  // Peer::name points in here
    Peer p;
    p.name = name.name();
    p.protocol = protocol;
    p.address = *Address::parse("10.0.0.5:4000");
    p.interval = 1s;
    p.probes = 3;
    return p;
}

PeerEvent event(const Peer& p, EventKind kind, EventCause cause) {
    return {.kind = kind, .previous = PeerState::up, .peer = p, .cause = cause};
}

const Address kWas = *Address::parse("10.0.0.9:4001");
const Address kRouter = *Address::parse("192.0.2.254:0");

TEST(EventReason, EveryCauseOfThePeerStateMachine) {
    const Peer p = peer();
    const auto reason = [&](EventCause cause, auto&& fill) {
        PeerEvent e = event(p, EventKind::up, cause);
        fill(e);
        return event_reason(e);
    };
    const auto plain = [](PeerEvent&) {};
    EXPECT_EQ(reason(EventCause::registered, plain), "registered");
    EXPECT_EQ(reason(EventCause::registered_legacy, plain), "registered (legacy protocol)");
    EXPECT_EQ(reason(EventCause::grant_changed,
                     [](PeerEvent& e) {
                         e.duration = 200ms;
                         e.probes_before = 3;
                     }),
              "registered again (was 200 ms x 3)");
    EXPECT_EQ(reason(EventCause::registered_again, plain), "registered again");
    EXPECT_EQ(reason(EventCause::restarted, plain), "restarted (new incarnation)");
    EXPECT_EQ(reason(EventCause::taken_over, [](PeerEvent& e) { e.previous_address = kWas; }),
              "taken over from 10.0.0.9:4001 by a new incarnation");
    EXPECT_EQ(reason(EventCause::moved, [](PeerEvent& e) { e.previous_address = kWas; }),
              "moved from 10.0.0.9:4001");
    EXPECT_EQ(reason(EventCause::ack_received, plain), "ack received");
    EXPECT_EQ(reason(EventCause::damping_ended, [](PeerEvent& e) { e.duration = 10s; }),
              "ack received; damping ended after answering for 10s");
    EXPECT_EQ(reason(EventCause::recovered,
                     [](PeerEvent& e) { e.health = {.lost = 5, .window = 50, .rtt = 2100us}; }),
              "recovered: lost 5 of the last 50 probes, round trip 2.1 ms");
    EXPECT_EQ(
        reason(EventCause::recovered, [](PeerEvent& e) { e.health = {.lost = 0, .window = 0}; }),
        "recovered: lost 0 of the last 0 probes");
    EXPECT_EQ(reason(EventCause::degraded,
                     [](PeerEvent& e) {
                         e.health = {.lost = 11, .window = 33, .rtt = 1ms, .loss_over = true};
                     }),
              "lost 11 of the last 33 probes");
    EXPECT_EQ(reason(EventCause::degraded,
                     [](PeerEvent& e) {
                         e.health = {.lost = 1, .window = 50, .rtt = 25ms, .rtt_over = true};
                     }),
              "round trip 25.0 ms");
    EXPECT_EQ(reason(EventCause::degraded,
                     [](PeerEvent& e) {
                         e.health = {.lost = 12,
                                     .window = 50,
                                     .rtt = 30'040us,
                                     .loss_over = true,
                                     .rtt_over = true};
                     }),
              "lost 12 of the last 50 probes, round trip 30.0 ms");
    EXPECT_EQ(reason(EventCause::damped,
                     [](PeerEvent& e) {
                         e.count = 3;
                         e.duration = 10s;
                     }),
              "damped: back 3 times within 10s; held down until it has answered for 10s");
    EXPECT_EQ(reason(EventCause::unanswered, [](PeerEvent& e) { e.count = 1; }),
              "1 probe unanswered");
    EXPECT_EQ(reason(EventCause::unanswered, [](PeerEvent& e) { e.count = 2; }),
              "2 probes unanswered");
    EXPECT_EQ(reason(EventCause::detection_expired, plain), "detection time expired");
    EXPECT_EQ(reason(EventCause::detection_expired,
                     [](PeerEvent& e) {
                         e.error = NetworkError{.error = ECONNREFUSED, .reporter = kRouter};
                     }),
              "detection time expired: host up, no agent (ICMP port unreachable from "
              "192.0.2.254)");
    EXPECT_EQ(reason(EventCause::icmp_refused,
                     [](PeerEvent& e) { e.error = NetworkError{.error = ECONNREFUSED}; }),
              "host up, no agent (ICMP port unreachable)");
    EXPECT_EQ(reason(EventCause::goodbye, plain), "peer said goodbye");
    EXPECT_EQ(reason(EventCause::forgotten,
                     [](PeerEvent& e) {
                         e.previous = PeerState::down;
                         e.duration = 1h;
                     }),
              "forgotten after 1h down");
}

TEST(EventReason, EveryCauseOfATarget) {
    const Peer t = peer(Protocol::tcp);
    const auto reason = [&](EventCause cause) {
        return event_reason(event(t, EventKind::down, cause));
    };
    EXPECT_EQ(reason(EventCause::configured), "configured");
    PeerEvent changed = event(t, EventKind::registered, EventCause::configuration_changed);
    changed.detail = "10.0.0.5:5432, idle 1s, interval 1s x 2";
    EXPECT_EQ(event_reason(changed),
              "configuration changed, was 10.0.0.5:5432, idle 1s, interval 1s x 2");
    EXPECT_EQ(reason(EventCause::unconfigured), "removed from the configuration");
    EXPECT_EQ(reason(EventCause::connected), "connected");
    EXPECT_EQ(reason(EventCause::closed_by_service), "closed by the service");
    EXPECT_EQ(reason(EventCause::reset_by_host), "connection reset by the host");
    EXPECT_EQ(reason(EventCause::connection_reset), "connection reset");
    EXPECT_EQ(reason(EventCause::no_answer_to_keepalives), "no answer to keepalive probes");
    EXPECT_EQ(reason(EventCause::no_answer_to_connects), "no answer to connection attempts");
    EXPECT_EQ(reason(EventCause::unreachable), "unreachable");
    EXPECT_EQ(reason(EventCause::connection_refused), "connection refused");
    EXPECT_EQ(reason(EventCause::connection_failed), "connection failed");
}

// No cause is left without words, and no two causes without figures share them.
TEST(EventReason, EveryCauseHasItsOwnWords) {
    const Peer p = peer();
    std::set<std::string> seen;
    for (std::size_t i = 0; i < kEventCauseCount; ++i) {
        const auto cause = static_cast<EventCause>(i);
        const std::string text = event_reason(event(p, EventKind::up, cause));
        if (cause == EventCause::degraded) continue;  // nothing over its limit: no words
        EXPECT_FALSE(text.empty()) << "cause " << i;
        if (!fixed_reason(cause).empty()) {
            EXPECT_TRUE(seen.insert(text).second) << text;
        }
    }
}

TEST(NetworkErrorText, IcmpAndSocketErrors) {
    EXPECT_EQ(network_error_text({.error = ECONNREFUSED, .reporter = kRouter}),
              "host up, no agent (ICMP port unreachable from 192.0.2.254)");
    EXPECT_EQ(network_error_text({.error = EHOSTUNREACH, .reporter = kRouter}),
              "unreachable (ICMP host unreachable from 192.0.2.254)");
    EXPECT_EQ(network_error_text({.error = ENETUNREACH}), "unreachable (ICMP network unreachable)");
    EXPECT_EQ(network_error_text({.error = EMSGSIZE}), "ICMP error: Message too long");
    EXPECT_EQ(network_error_text({.source = NetworkError::Source::socket, .error = ECONNREFUSED}),
              "ECONNREFUSED: Connection refused");
    EXPECT_EQ(network_error_text({.source = NetworkError::Source::socket, .error = 0}),
              "closed by the service (FIN)");
}

TEST(Describe, TheLogSentenceAroundTheReason) {
    const Peer p = peer();
    Peer downed = p;
    downed.state = PeerState::down;
    EXPECT_EQ(describe({.kind = EventKind::down,
                        .previous = PeerState::suspect,
                        .peer = downed,
                        .cause = EventCause::detection_expired}),
              "peer db1 (10.0.0.5:4000) is down: detection time expired");
    EXPECT_EQ(describe({.kind = EventKind::registered, .peer = p, .cause = EventCause::registered}),
              "peer db1 (10.0.0.5:4000) registered: interval 1000 ms, 3 probes");
    PeerEvent again = event(p, EventKind::registered, EventCause::grant_changed);
    again.duration = 200ms;
    again.probes_before = 3;
    EXPECT_EQ(describe(again),
              "peer db1 (10.0.0.5:4000) registered: interval 1000 ms, 3 probes (registered "
              "again (was 200 ms x 3))");
    EXPECT_EQ(describe(event(p, EventKind::restarted, EventCause::restarted)),
              "peer db1 (10.0.0.5:4000) restarted and registered again");
    PeerEvent taken = event(p, EventKind::moved, EventCause::taken_over);
    taken.previous_address = kWas;
    EXPECT_EQ(describe(taken),
              "peer db1 (10.0.0.5:4000) taken over from 10.0.0.9:4001 by a new incarnation");
    Peer left = p;
    left.state = PeerState::left;
    EXPECT_EQ(describe({.kind = EventKind::left, .peer = left, .cause = EventCause::goodbye}),
              "peer db1 (10.0.0.5:4000) has left: peer said goodbye");
    PeerEvent damped = event(p, EventKind::damped, EventCause::damped);
    damped.count = 4;
    damped.duration = 30s;
    EXPECT_EQ(describe(damped),
              "peer db1 (10.0.0.5:4000) is flapping and held down: damped: back 4 times within "
              "30s; held down until it has answered for 30s");

    const Peer t = peer(Protocol::tcp);
    EXPECT_EQ(describe({.kind = EventKind::registered, .peer = t, .cause = EventCause::configured}),
              "target db1 (10.0.0.5:4000) configured: keepalive interval 1 s, 3 probes");
    EXPECT_EQ(describe(event(t, EventKind::restarted, EventCause::reset_by_host)),
              "target db1 (10.0.0.5:4000) restarted: connection reset by the host");
    EXPECT_EQ(describe(event(t, EventKind::forgotten, EventCause::unconfigured)),
              "target db1 (10.0.0.5:4000) removed from the configuration");
}

TEST(SummaryLine, CountsByState) {
    PeerCounts c;
    c.total = 1;
    c.by_state[static_cast<std::size_t>(PeerState::left)] = 1;
    EXPECT_EQ(summary_line(c), "1 peer: 0 up, 0 suspect, 0 down, 1 left");
    c.total = 5;
    c.by_state[static_cast<std::size_t>(PeerState::up)] = 2;
    c.by_state[static_cast<std::size_t>(PeerState::degraded)] = 2;
    EXPECT_EQ(summary_line(c), "5 peers: 2 up, 2 degraded, 0 suspect, 0 down, 1 left");
}

}  // namespace
}  // namespace keepalive
