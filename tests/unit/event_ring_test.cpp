// The event ring and the watch streams read from it: numbering without gaps,
// bounded memory, resuming with --since, and a reader that fell behind told
// exactly what it missed.
#include "daemon/event_ring.hpp"

#include <gtest/gtest.h>

#include <deque>

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
