// The Prometheus text: well-formed families, per-peer values, and the same
// text whether produced whole or a few peers at a time.
// GCC 12 warns of an uninitialised std::function inside <regex> when built
// with the sanitizers (a known false positive in libstdc++'s NFA code).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "daemon/metrics.hpp"

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "server_driver.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using test_support::addr;
using test_support::ServerDriver;

// Checks the text the way a scraper reads it: each sample's family has a
// HELP and TYPE before it, families are contiguous and never repeated, no
// sample (name and labels) appears twice. Returns samples by "name{labels}".
std::map<std::string, std::string> parse(const std::string& text) {
    static const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$)");
    std::map<std::string, std::string> out;
    std::set<std::string> finished;
    std::string family;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("# HELP ")) continue;
        if (line.starts_with("# TYPE ")) {
            const std::string name = line.substr(7, line.find(' ', 7) - 7);
            EXPECT_FALSE(finished.count(name)) << "family repeated: " << name;
            if (!family.empty()) finished.insert(family);
            family = name;
            continue;
        }
        std::smatch m;
        EXPECT_TRUE(std::regex_match(line, m, sample)) << line;
        if (m.empty()) continue;
        EXPECT_EQ(m[1].str(), family) << "sample outside its family: " << line;
        const std::string key = m[1].str() + m[2].str();
        EXPECT_FALSE(out.count(key)) << "duplicate sample: " << line;
        out[key] = m[3].str();
    }
    EXPECT_TRUE(text.empty() || text.back() == '\n');
    return out;
}

DaemonStats some_stats() {
    DaemonStats s;
    s.version = "1.2.3";
    s.loop_lag_s = 0.0015;
    s.log_events_dropped = 7;
    s.events[static_cast<std::size_t>(EventKind::registered)] = 3;
    return s;
}

TEST(Metrics, DaemonAndPeerValues) {
    ServerDriver d;
    d.add_peer("alpha", addr("198.51.100.1:4000"), 100, 3);
    d.add_peer("beta", addr("198.51.100.2:4000"), 100, 2);
    d.run_for(500ms);
    d.peers[addr("198.51.100.2:4000")].answering = false;  // a peer that never answered is dropped
    d.run_for(1s);
    ASSERT_EQ(d.peer("alpha").state, PeerState::up);
    ASSERT_EQ(d.peer("beta").state, PeerState::down);

    const auto m = parse(metrics_text(*d.server, some_stats()));
    EXPECT_EQ(m.at(R"(keepalived_build_info{version="1.2.3"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peers{state="up"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peers{state="down"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_registrations_total)"), "3");
    EXPECT_EQ(m.at(R"(keepalived_log_events_dropped_total)"), "7");
    EXPECT_EQ(m.at(R"(keepalived_loop_lag_seconds)"), "0.001500");
    EXPECT_EQ(m.at(R"(keepalived_drops_total{reason="bad_magic"})"), "0");

    EXPECT_EQ(m.at(R"(keepalived_peer_up{name="alpha"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peer_up{name="beta"})"), "0");
    EXPECT_EQ(m.at(R"(keepalived_peer_state{name="beta",state="down"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peer_state{name="beta",state="up"})"), "0");
    EXPECT_EQ(m.at(R"(keepalived_peer_rtt_seconds{name="alpha"})"), "0.001000");
    EXPECT_EQ(m.at(R"(keepalived_peer_probes_sent_total{name="alpha"})"),
              std::to_string(d.peer("alpha").probes_sent));
    EXPECT_EQ(m.at(R"(keepalived_peer_acks_received_total{name="alpha"})"),
              std::to_string(d.peer("alpha").acks_received));
    EXPECT_GE(d.peer("alpha").acks_received, 9u);
    // beta: up -> suspect -> down.
    EXPECT_EQ(m.at(R"(keepalived_peer_state_changes_total{name="beta"})"), "2");
    EXPECT_EQ(m.at(R"(keepalived_peer_missed_probes{name="alpha"})"), "0");
    EXPECT_EQ(m.at(R"(keepalived_peer_interval_seconds{name="alpha"})"), "0.100");
}

TEST(Metrics, PiecesMakeTheSameTextAndHoldAtMostNPeers) {
    ServerDriver d;
    for (int i = 0; i < 25; ++i)
        d.add_peer("p" + std::to_string(i),
                   addr(("198.51.100.9:" + std::to_string(5000 + i)).c_str()));
    d.run_for(300ms);
    const std::string whole = metrics_text(*d.server, some_stats());
    EXPECT_EQ(parse(whole).count(R"(keepalived_peer_up{name="p24"})"), 1u);

    MetricsText pieces(*d.server, some_stats());
    std::string joined;
    std::size_t count = 0;
    for (std::string piece; pieces.next(piece, 4); piece.clear()) {
        ++count;
        std::size_t names = 0;
        for (std::size_t at = piece.find("{name=\""); at != std::string::npos;
             at = piece.find("{name=\"", at + 1))
            ++names;
        // keepalived_peer_state has one line per state for each peer.
        EXPECT_LE(names, 4 * kPeerStateCount) << piece;
        joined += piece;
    }
    EXPECT_EQ(joined, whole);
    EXPECT_GT(count, 25u / 4);
    std::string after;
    EXPECT_FALSE(pieces.next(after));
    EXPECT_TRUE(after.empty());
}

TEST(Metrics, APeerForgottenBetweenPiecesIsSkippedAndTheTextStaysValid) {
    PeerLimits limits;
    limits.forget_after = 1s;
    limits.down_probe_interval = 100ms;
    ServerDriver d(limits);
    d.add_peer("stays", addr("198.51.100.1:4000"));
    d.add_peer("goes", addr("198.51.100.2:4000"), 100, 1);
    d.run_for(300ms);
    d.peers[addr("198.51.100.2:4000")].answering = false;
    d.run_for(500ms);
    MetricsText pieces(*d.server, some_stats());
    std::string text;
    ASSERT_TRUE(pieces.next(text, 1));  // daemon-wide
    ASSERT_TRUE(pieces.next(text, 1));  // first peer family, first slot
    d.run_for(2s);                      // "goes" is forgotten
    ASSERT_EQ(d.server->peers().find_name("goes"), PeerTable::kNone);
    while (pieces.next(text, 1)) {
    }
    const auto m = parse(text);
    EXPECT_TRUE(m.count(R"(keepalived_peer_interval_seconds{name="stays"})"));
    EXPECT_FALSE(m.count(R"(keepalived_peer_interval_seconds{name="goes"})"));
}

}  // namespace
}  // namespace keepalive
