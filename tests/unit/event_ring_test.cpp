// The event ring and the watch streams read from it: numbering without gaps,
// bounded memory, resuming with --since, and a reader that fell behind told
// exactly what it missed.
#include "daemon/event_ring.hpp"

#include <gtest/gtest.h>

#include <cerrno>
#include <deque>
#include <functional>

#include "daemon/event_text.hpp"
#include "daemon/watch.hpp"

namespace keepalive {
namespace {

// Peer::name points into storage that must outlive the peer: kept here for
// the test's life.
Peer peer_named(std::string_view name) {
    static std::deque<PeerNameBuffer> names;
    Peer p;
    p.name = names.emplace_back(name).name();
    p.session = 0xabcd;
    return p;
}

void push(EventRing& ring, const Peer& p, int n) {
    for (int i = 0; i < n; ++i)
        ring.push(PeerEvent{.kind = EventKind::up,
                            .previous = PeerState::down,
                            .peer = p,
                            .cause = EventCause::ack_received},
                  1.5);
}

std::vector<nlohmann::json> lines(const std::string& text) {
    std::vector<nlohmann::json> out;
    std::size_t start = 0;
    for (auto nl = text.find('\n'); nl != std::string::npos; nl = text.find('\n', start)) {
        out.push_back(nlohmann::json::parse(text.substr(start, nl - start)));
        start = nl + 1;
    }
    return out;
}

TEST(EventRing, NumbersFromOneAndKeepsTheNewest) {
    EventRing ring(5);
    const Peer p = peer_named("db1");
    EXPECT_EQ(ring.next_seq(), 1u);
    EXPECT_EQ(ring.oldest_seq(), 1u);
    push(ring, p, 7);
    EXPECT_EQ(ring.next_seq(), 8u);
    EXPECT_EQ(ring.oldest_seq(), 3u);
    EXPECT_EQ(ring.find(2), nullptr);
    ASSERT_NE(ring.find(7), nullptr);
    const auto j = ring.find(7)->to_json();
    EXPECT_EQ(j.at("seq"), 7);
    EXPECT_EQ(j.at("name"), "db1");
    EXPECT_EQ(j.at("state"), "up");
    EXPECT_EQ(j.at("previous_state"), "down");
    EXPECT_EQ(j.at("session"), "0000abcd");
    EXPECT_EQ(j.at("reason"), "ack received");
    EXPECT_EQ(j.at("time"), 1.5);
    EXPECT_EQ(ring.find(8), nullptr);
}

// A record's JSON, byte for byte as watchers and keepalivectl read it.
std::string dump(const EventRecord& r) {
    return r.to_json().dump();
}

TEST(EventRing, ALineByteForByte) {
    EventRing ring(2);
    Peer p = peer_named(std::string(64, 'n'));  // the longest name there is
    p.address = *Address::parse("[2001:db8::7]:4000");
    p.session = 0xdeadbeef;
    p.state = PeerState::down;
    ring.push(PeerEvent{.kind = EventKind::down,
                        .previous = PeerState::suspect,
                        .peer = p,
                        .cause = EventCause::unanswered,
                        .count = 3},
              1764668400.25);
    EXPECT_EQ(dump(*ring.find(1)),
              R"({"address":"[2001:db8::7]:4000","event":"down","name":")" + std::string(64, 'n') +
                  R"(","previous_state":"suspect","reason":"3 probes unanswered","seq":1,)"
                  R"("session":"deadbeef","state":"down","time":1764668400.25})");

    p.state = PeerState::up;
    ring.push(PeerEvent{.kind = EventKind::registered, .peer = p, .cause = EventCause::registered},
              1.0);
    EXPECT_EQ(dump(*ring.find(2)),
              R"({"address":"[2001:db8::7]:4000","event":"registered","name":")" +
                  std::string(64, 'n') +
                  R"(","previous_state":"","reason":"registered","seq":2,)"
                  R"("session":"deadbeef","state":"up","time":1.0})");
}

// Every cause, with the figures its words need, read back from the ring in
// the words the log uses (event_text_test holds those to the letter), also
// from a copy made before the ring reused its slot (as a queued hook holds it).
TEST(EventRing, EveryCauseReadsBackInTheSameWords) {
    using namespace std::chrono_literals;
    const Address was = *Address::parse("10.0.0.9:4001");
    const Address router = *Address::parse("192.0.2.254:0");
    struct Case {
        EventCause cause;
        std::function<void(PeerEvent&)> fill;
        std::string words;
    };
    const std::vector<Case> cases = {
        {EventCause::grant_changed,
         [](PeerEvent& e) {
             e.duration = 200ms;
             e.probes_before = 3;
         },
         "registered again (was 200 ms x 3)"},
        {EventCause::taken_over, [&](PeerEvent& e) { e.previous_address = was; },
         "taken over from 10.0.0.9:4001 by a new incarnation"},
        {EventCause::moved, [&](PeerEvent& e) { e.previous_address = was; },
         "moved from 10.0.0.9:4001"},
        {EventCause::damping_ended, [](PeerEvent& e) { e.duration = 10s; },
         "ack received; damping ended after answering for 10s"},
        {EventCause::recovered,
         [](PeerEvent& e) { e.health = {.lost = 5, .window = 50, .rtt = 2100us}; },
         "recovered: lost 5 of the last 50 probes, round trip 2.1 ms"},
        {EventCause::recovered, [](PeerEvent& e) { e.health = {.lost = 0, .window = 50}; },
         "recovered: lost 0 of the last 50 probes"},
        {EventCause::degraded,
         [](PeerEvent& e) {
             e.health = {
                 .lost = 12, .window = 50, .rtt = 30'040us, .loss_over = true, .rtt_over = true};
         },
         "lost 12 of the last 50 probes, round trip 30.0 ms"},
        {EventCause::degraded,
         [](PeerEvent& e) { e.health = {.lost = 1, .window = 50, .rtt = 25ms, .rtt_over = true}; },
         "round trip 25.0 ms"},
        {EventCause::damped,
         [](PeerEvent& e) {
             e.count = 3;
             e.duration = 10s;
         },
         "damped: back 3 times within 10s; held down until it has answered for 10s"},
        {EventCause::unanswered, [](PeerEvent& e) { e.count = 1; }, "1 probe unanswered"},
        {EventCause::detection_expired, [](PeerEvent&) {}, "detection time expired"},
        {EventCause::detection_expired,
         [&](PeerEvent& e) { e.error = NetworkError{.error = ECONNREFUSED, .reporter = router}; },
         "detection time expired: host up, no agent (ICMP port unreachable from 192.0.2.254)"},
        {EventCause::detection_expired,
         [](PeerEvent& e) {
             e.error = NetworkError{.source = NetworkError::Source::socket, .error = ECONNREFUSED};
         },
         "detection time expired: ECONNREFUSED: Connection refused"},
        {EventCause::icmp_refused, [](PeerEvent&) {}, "host up, no agent (ICMP port unreachable)"},
        {EventCause::icmp_refused,
         [](PeerEvent& e) { e.error = NetworkError{.error = EHOSTUNREACH}; },
         "unreachable (ICMP host unreachable)"},
        {EventCause::forgotten,
         [](PeerEvent& e) {
             e.previous = PeerState::down;
             e.duration = 1h;
         },
         "forgotten after 1h down"},
        {EventCause::forgotten,
         [](PeerEvent& e) {
             e.previous = std::nullopt;  // the peer's own state then
             e.duration = 90s;
         },
         "forgotten after 90s left"},
        {EventCause::configuration_changed,
         [](PeerEvent& e) { e.detail = "10.0.0.5:5432, idle 1s, interval 1s x 2"; },
         "configuration changed, was 10.0.0.5:5432, idle 1s, interval 1s x 2"},
    };

    EventRing ring(3);  // slots reused, rare parts replaced
    Peer p = peer_named("db1");
    p.state = PeerState::left;
    std::vector<EventRecord> copies;
    for (const Case& c : cases) {
        PeerEvent e{.kind = EventKind::up, .previous = PeerState::up, .peer = p, .cause = c.cause};
        c.fill(e);
        EXPECT_EQ(event_reason(e), c.words);
        const EventRecord& r = ring.push(e, 2.0);
        EXPECT_EQ(r.to_json().at("reason"), c.words);
        copies.push_back(r);
    }
    // Every cause without figures too: the ring gives what event_reason gives.
    for (std::size_t i = 0; i < kEventCauseCount; ++i) {
        const PeerEvent e{.kind = EventKind::down, .peer = p, .cause = static_cast<EventCause>(i)};
        EXPECT_EQ(ring.push(e, 3.0).to_json().at("reason"), event_reason(e)) << "cause " << i;
    }
    for (std::size_t i = 0; i < cases.size(); ++i)
        EXPECT_EQ(copies[i].to_json().at("reason"), cases[i].words);
}

TEST(EventRing, StateWordsOfAForgottenPeerAndANewOne) {
    EventRing ring;
    Peer p = peer_named("gone");
    p.state = PeerState::down;
    ring.push({.kind = EventKind::forgotten,
               .previous = PeerState::down,
               .peer = p,
               .cause = EventCause::forgotten},
              1.0);
    EXPECT_EQ(ring.find(1)->to_json().at("state"), "forgotten");
    EXPECT_EQ(ring.find(1)->to_json().at("previous_state"), "down");
    p.state = PeerState::up;
    ring.push({.kind = EventKind::registered, .peer = p, .cause = EventCause::registered}, 1.0);
    EXPECT_EQ(ring.find(2)->to_json().at("state"), "up");
    EXPECT_EQ(ring.find(2)->to_json().at("previous_state"), "");
}

TEST(Watchers, StreamLiveResumeAndReportMissed) {
    EventRing ring(10);
    Watchers watchers(ring);
    const Peer p = peer_named("web1");
    push(ring, p, 3);

    auto live = *watchers.open(std::nullopt);  // from the next event on
    std::string out;
    EXPECT_TRUE(live(out));
    EXPECT_TRUE(out.empty());  // nothing yet: the server parks it
    push(ring, p, 2);
    EXPECT_TRUE(live(out));
    auto got = lines(out);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[0].at("seq"), 4);
    EXPECT_EQ(got[1].at("seq"), 5);

    auto resumed = *watchers.open(1);  // after seq 1
    out.clear();
    resumed(out);
    got = lines(out);
    ASSERT_EQ(got.size(), 4u);
    EXPECT_EQ(got.front().at("seq"), 2);

    // A reader that stops while 20 more events pass a ring of 10.
    auto slow = *watchers.open(5);
    push(ring, p, 20);  // seqs 6..25; the ring keeps 16..25
    out.clear();
    slow(out);
    got = lines(out);
    ASSERT_EQ(got.size(), 11u);
    EXPECT_EQ(got[0].at("missed"), 10);
    EXPECT_EQ(got[0].at("first_missed_seq"), 6);
    EXPECT_EQ(got[0].at("last_missed_seq"), 15);
    EXPECT_EQ(got[1].at("seq"), 16);
    EXPECT_EQ(got.back().at("seq"), 25);
}

TEST(Watchers, AtMostKMaxWatchersAndSlotsComeBack) {
    EventRing ring;
    Watchers watchers(ring);
    std::vector<ControlServer::Producer> open;
    for (std::size_t i = 0; i < Watchers::kMaxWatchers; ++i) {
        auto w = watchers.open(std::nullopt);
        ASSERT_TRUE(w);
        open.push_back(std::move(*w));
    }
    EXPECT_EQ(watchers.count(), Watchers::kMaxWatchers);
    EXPECT_FALSE(watchers.open(std::nullopt));
    open.pop_back();  // a reader hung up: the server dropped its producer
    EXPECT_EQ(watchers.count(), Watchers::kMaxWatchers - 1);
    EXPECT_TRUE(watchers.open(std::nullopt));
}

}  // namespace
}  // namespace keepalive
