// Restarts without flaps: the snapshot format (round trip, corruption,
// truncation, version), and a ServerCore replaced by a new one restored from
// a snapshot, with real PeerSessions on a fake network under one fake clock.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/peer_session.hpp"
#include "core/peer_snapshot.hpp"
#include "core/random.hpp"
#include "core/server.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

ServerSnapshot sample_snapshot() {
    ServerSnapshot s;
    s.epoch = 0x0123456789abcdefULL;
    s.saved_realtime_ns = 1'700'000'000'000'000'000;
    s.saved_boottime_ns = 123'456'789;
    for (std::size_t i = 0; i < s.boot_id.size(); ++i) s.boot_id[i] = static_cast<std::uint8_t>(i);
    s.peers.push_back({.name = "db1",
                       .protocol = Protocol::kap1,
                       .state = PeerState::suspect,
                       .probes = 3,
                       .session = 0xdeadbeef,
                       .incarnation = 42,
                       .address = addr("192.0.2.7:40000"),
                       .listener = addr("0.0.0.0:7371"),
                       .route_local = addr("192.0.2.1:7371"),
                       .interval = 250ms,
                       .state_age = 1500ms,
                       .seq_sent = 1000,
                       .seq_acked = 998,
                       .probes_sent = 1000,
                       .acks_received = 990,
                       .rtt = 123us});
    s.peers.push_back({.name = "legacy-host_1@x:y",
                       .protocol = Protocol::legacy,
                       .state = PeerState::down,
                       .probes = 255,
                       .session = 7,
                       .incarnation = 0,
                       .address = addr("[fe80::1%3]:5002"),
                       .listener = addr("[::1]:5002"),
                       .route_local = addr("[::1]:5002"),
                       .interval = 1h,
                       .state_age = 0s,
                       .seq_sent = 0,
                       .seq_acked = 0,
                       .probes_sent = 0,
                       .acks_received = 0,
                       .rtt = std::nullopt});
    return s;
}

TEST(Snapshot, RoundTrip) {
    const ServerSnapshot s = sample_snapshot();
    const auto bytes = encode_snapshot(s);
    const auto back = decode_snapshot(bytes);
    ASSERT_TRUE(back) << back.error();
    EXPECT_EQ(*back, s);

    ServerSnapshot empty;
    const auto none = decode_snapshot(encode_snapshot(empty));
    ASSERT_TRUE(none) << none.error();
    EXPECT_EQ(*none, empty);
}

TEST(Snapshot, EveryTruncationIsRefused) {
    const auto bytes = encode_snapshot(sample_snapshot());
    for (std::size_t n = 0; n < bytes.size(); ++n)
        EXPECT_FALSE(decode_snapshot(std::span(bytes.data(), n))) << "length " << n;
    auto longer = bytes;
    longer.push_back(0);
    EXPECT_FALSE(decode_snapshot(longer));
}

TEST(Snapshot, EveryFlippedBitIsRefused) {
    const auto bytes = encode_snapshot(sample_snapshot());
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        for (int bit = 0; bit < 8; ++bit) {
            auto copy = bytes;
            copy[i] ^= static_cast<std::uint8_t>(1u << bit);
            EXPECT_FALSE(decode_snapshot(copy)) << "byte " << i << " bit " << bit;
        }
    }
}

TEST(Snapshot, OtherVersionAndGarbageAreRefusedWithTheReason) {
    auto bytes = encode_snapshot(sample_snapshot());
    bytes[11] = 3;  // version, big-endian after the 8-byte magic
    const auto other = decode_snapshot(bytes);
    ASSERT_FALSE(other);
    EXPECT_NE(other.error().find("version 3"), std::string::npos) << other.error();

    const Bytes garbage(200, 0x5a);
    const auto g = decode_snapshot(garbage);
    ASSERT_FALSE(g);
    EXPECT_EQ(g.error(), "not a state file");
}

// Version 2, as a save spread over many loop iterations writes it.
std::vector<std::uint8_t> encode_streamed(const ServerSnapshot& s) {
    std::vector<std::uint8_t> out;
    SnapshotEncoder encoder;
    encoder.begin(s, out);
    for (const PeerRecord& p : s.peers) encoder.add(p, out);
    encoder.finish(out);
    EXPECT_EQ(encoder.count(), s.peers.size());
    return out;
}

TEST(Snapshot, StreamedVersionRoundTripsAndHoldsWhatTheWholeOneHolds) {
    const ServerSnapshot s = sample_snapshot();
    const auto streamed = encode_streamed(s);
    EXPECT_EQ(streamed[11], ServerSnapshot::kStreamedVersion);
    EXPECT_EQ(streamed.size(), encode_snapshot(s).size());
    const auto back = decode_snapshot(streamed);
    ASSERT_TRUE(back) << back.error();
    EXPECT_EQ(*back, s);
    const auto none = decode_snapshot(encode_streamed(ServerSnapshot{}));
    ASSERT_TRUE(none) << none.error();
    EXPECT_TRUE(none->peers.empty());
    // An encoder begun again starts a new snapshot.
    std::vector<std::uint8_t> twice;
    SnapshotEncoder encoder;
    encoder.begin(s, twice);
    encoder.add(s.peers[0], twice);
    twice.clear();
    encoder.begin(s, twice);
    for (const PeerRecord& p : s.peers) encoder.add(p, twice);
    encoder.finish(twice);
    EXPECT_EQ(twice, streamed);
}

TEST(Snapshot, StreamedVersionRefusesEveryTruncationAndFlippedBit) {
    const auto bytes = encode_streamed(sample_snapshot());
    for (std::size_t n = 0; n < bytes.size(); ++n)
        EXPECT_FALSE(decode_snapshot(std::span(bytes.data(), n))) << "length " << n;
    for (std::size_t i = 0; i < bytes.size(); ++i)
        for (int bit = 0; bit < 8; ++bit) {
            auto copy = bytes;
            copy[i] ^= static_cast<std::uint8_t>(1u << bit);
            EXPECT_FALSE(decode_snapshot(copy)) << "byte " << i << " bit " << bit;
        }
}

TEST(Snapshot, ChecksummedButInvalidRecordsAreRefused) {
    // A file written by a buggy or hostile writer with a correct checksum.
    ServerSnapshot s = sample_snapshot();
    s.peers[0].name = "bad name";
    EXPECT_FALSE(decode_snapshot(encode_snapshot(s)));
    s = sample_snapshot();
    s.peers[0].probes = 0;
    EXPECT_FALSE(decode_snapshot(encode_snapshot(s)));
    s = sample_snapshot();
    s.peers[0].seq_acked = s.peers[0].seq_sent + 1;
    EXPECT_FALSE(decode_snapshot(encode_snapshot(s)));
    s = sample_snapshot();
    s.peers[0].session = 0;
    EXPECT_FALSE(decode_snapshot(encode_snapshot(s)));
}

// ---- a server replaced by a restored one, with real agents -------------------

struct ServerEvent {
    TimePoint at;
    EventKind kind;
    std::string name;
};

// One fake network: the server at kServer, agents at 10.0.0.x:4000. Every
// datagram takes kLatency; a dead agent or a missing server drops it.
class Network final : public ServerSink {
public:
    static constexpr Duration kLatency = 1ms;

    struct Agent final : PeerSessionSink {
        Agent(Network& net, Address a, const std::string& name, RandomSource& random)
            : network(net),
              address(a),
              session(PeerSessionOptions{name, 1000, 3, {}}, random, *this) {}
        void send(std::span<const std::uint8_t> d) override {
            const auto m = kap::decode(d);
            if (m && kap::type_of(*m) == kap::Type::register_) ++registers;
            network.post(network.now() + kLatency, address, true, Bytes(d.begin(), d.end()));
        }
        void session_event(const SessionEvent& e) override {
            events.push_back({network.now(), e.kind, e.diag});
        }
        struct Noted {
            TimePoint at;
            SessionEventKind kind;
            kap::Diag diag;
        };
        Network& network;
        Address address;
        PeerSession session;
        bool alive = true;
        std::size_t registers = 0;
        std::vector<TimePoint> probes;  // when each valid probe arrived
        std::vector<std::uint64_t> seqs;
        std::vector<Noted> events;
    };

    Network() : route{1, addr("10.0.0.254:7371")} {}

    TimePoint now() const { return clock.now(); }

    void post(TimePoint at, const Address& agent, bool to_server, Bytes bytes) {
        queue.emplace(at, Datagram{agent, to_server, std::move(bytes)});
    }

    Agent& add_agent(const std::string& name) {
        const auto a = Address::v4(0x0a000001u + static_cast<std::uint32_t>(agents.size()), 4000);
        agents.push_back(std::make_unique<Agent>(*this, a, name, random));
        return *agents.back();
    }

    void start_server() { server = std::make_unique<ServerCore>(limits, random, *this, now()); }

    void send(const Route&, const Address& to, std::span<const std::uint8_t> data) override {
        post(now() + kLatency, to, false, Bytes(data.begin(), data.end()));
    }
    void peer_event(const PeerEvent& e) override {
        server_events.push_back({now(), e.kind, std::string(e.peer.name)});
    }

    // Runs every agent and the server (when there is one) up to `until`.
    void run_until(TimePoint until) {
        for (;;) {
            std::optional<TimePoint> next;
            const auto consider = [&](std::optional<TimePoint> t) {
                if (t && (!next || *t < *next)) next = t;
            };
            if (!queue.empty()) consider(queue.begin()->first);
            if (server) consider(server->next_deadline());
            for (auto& a : agents)
                if (a->alive) consider(a->session.next_deadline());
            if (!next || *next > until) break;
            clock.set(std::max(now(), *next));
            while (!queue.empty() && queue.begin()->first <= now()) {
                auto node = queue.extract(queue.begin());
                deliver(node.mapped());
            }
            if (server && server->next_deadline() && *server->next_deadline() <= now())
                server->on_timer(now());
            for (auto& a : agents)
                if (a->alive && a->session.next_deadline() && *a->session.next_deadline() <= now())
                    a->session.on_timer(now());
        }
        clock.set(std::max(now(), until));
    }

    FakeClock clock{kStart};
    SeededRandom random{test_seed()};
    PeerLimits limits;
    Route route;
    std::unique_ptr<ServerCore> server;
    std::vector<std::unique_ptr<Agent>> agents;
    std::vector<ServerEvent> server_events;

private:
    struct Datagram {
        Address agent;
        bool to_server;
        Bytes bytes;
    };

    void deliver(const Datagram& d) {
        Agent* agent = nullptr;
        for (auto& a : agents)
            if (a->address == d.agent) agent = a.get();
        if (!agent || !agent->alive) return;
        if (d.to_server) {
            if (server) server->on_datagram(d.bytes, d.agent, route, now());
            return;
        }
        const auto m = kap::decode(d.bytes);
        const std::uint64_t answered = agent->session.probes_answered();
        agent->session.on_datagram(d.bytes, now());
        if (m && agent->session.probes_answered() > answered) {
            agent->probes.push_back(now());
            agent->seqs.push_back(std::get<kap::Probe>(m->body).seq);
        }
    }

    std::multimap<TimePoint, Datagram> queue;
};

class RestartTest : public ::testing::Test {
protected:
    static constexpr int kAgents = 100;

    void SetUp() override {
        net.start_server();
        for (int i = 0; i < kAgents; ++i) net.add_agent("agent-" + std::to_string(i));
        for (auto& a : net.agents) a->session.start(net.now());
        net.run_until(net.now() + 5s);
        ASSERT_EQ(net.server->peers().counts().in(PeerState::up), std::size_t{kAgents});
        for (auto& a : net.agents) ASSERT_EQ(a->session.state(), SessionState::registered);
        net.server_events.clear();
        for (auto& a : net.agents) {
            a->events.clear();
            a->registers = 0;
        }
    }

    ServerSnapshot save() const {
        return net.server->snapshot(net.now(), [](std::uint32_t) { return addr("0.0.0.0:7371"); });
    }

    // A new server process takes over `snapshot`, saved `elapsed` ago.
    void restore(const ServerSnapshot& snapshot, Duration elapsed) {
        net.start_server();
        const auto r =
            net.server->restore(snapshot, elapsed, net.now(),
                                [](const Address& listener) -> std::optional<std::uint32_t> {
                                    if (listener == addr("0.0.0.0:7371")) return 1;
                                    return std::nullopt;
                                });
        ASSERT_TRUE(r) << r.error();
        EXPECT_EQ(r->peers, snapshot.peers.size());
        EXPECT_EQ(r->skipped, 0u);
        restored_at = net.now();
    }

    std::size_t total_registers() const {
        std::size_t n = 0;
        for (const auto& a : net.agents) n += a->registers;
        return n;
    }

    // The longest time any live agent went without a probe, over [from, to].
    Duration longest_gap(TimePoint from, TimePoint to) const {
        Duration worst{};
        for (const auto& a : net.agents) {
            if (!a->alive) continue;
            TimePoint last = from;
            for (const TimePoint t : a->probes) {
                if (t < from || t > to) continue;
                worst = std::max(worst, t - last);
                last = t;
            }
        }
        return worst;
    }

    Network net;
    TimePoint restored_at{};
};

TEST_F(RestartTest, PlannedRestartSaysByeEightAndNobodyNotices) {
    const std::uint64_t epoch = net.server->epoch();
    const ServerSnapshot saved = save();
    net.server->shutdown(kap::Diag::restarting);
    net.server.reset();  // the process ends right after its goodbye
    net.run_until(net.now() + 10ms);
    for (auto& a : net.agents) {
        ASSERT_EQ(a->events.size(), 1u);
        EXPECT_EQ(a->events[0].kind, SessionEventKind::goodbye);
        EXPECT_EQ(a->events[0].diag, kap::Diag::restarting);
        EXPECT_EQ(a->session.state(), SessionState::registered);
    }
    const TimePoint stopped = net.now();
    // Down for longer than the agents' normal patience (4 s), within the grace.
    net.run_until(net.now() + 10s);
    EXPECT_EQ(total_registers(), 0u);

    restore(saved, net.now() - stopped);
    EXPECT_EQ(net.server->epoch(), epoch);
    net.run_until(net.now() + 30s);

    EXPECT_TRUE(net.server_events.empty()) << to_string(net.server_events[0].kind);
    EXPECT_EQ(total_registers(), 0u);
    for (auto& a : net.agents) {
        EXPECT_EQ(a->events.size(), 1u) << "only the goodbye";
        // Probing resumed within one interval (1 s) of the restore, seqs rising.
        const auto first = std::find_if(a->probes.begin(), a->probes.end(),
                                        [&](TimePoint t) { return t >= restored_at; });
        ASSERT_NE(first, a->probes.end());
        EXPECT_LE(*first - restored_at, 1s + 2 * Network::kLatency);
        EXPECT_TRUE(std::is_sorted(a->seqs.begin(), a->seqs.end()));
    }
    EXPECT_EQ(net.server->peers().counts().in(PeerState::up), std::size_t{kAgents});
    EXPECT_LE(longest_gap(stopped, net.now()), 11s + 2 * Network::kLatency);
}

TEST_F(RestartTest, CrashWithAStaleSnapshotStillProbesAboveEverySeqSent) {
    // Saved 3 s before the crash: about 3 probes per peer went out after it.
    const ServerSnapshot saved = save();
    const TimePoint saved_at = net.now();
    net.run_until(net.now() + 3s);
    net.server.reset();  // SIGKILL: no goodbye
    net.run_until(net.now() + 1500ms);
    restore(saved, net.now() - saved_at);
    net.run_until(net.now() + 20s);

    EXPECT_TRUE(net.server_events.empty());
    EXPECT_EQ(total_registers(), 0u);
    for (auto& a : net.agents) {
        EXPECT_TRUE(a->events.empty());
        EXPECT_TRUE(std::adjacent_find(a->seqs.begin(), a->seqs.end(), std::greater_equal<>()) ==
                    a->seqs.end())
            << "a probe seq went backwards or repeated";
        EXPECT_GT(a->probes.back(), net.now() - 2s);
    }
}

TEST_F(RestartTest, PeerThatDiedMeanwhileIsDownOneDetectionTimeAfterProbingResumes) {
    const ServerSnapshot saved = save();
    net.server->shutdown(kap::Diag::restarting);
    net.server.reset();  // the process ends right after its goodbye
    net.run_until(net.now() + 10ms);
    const TimePoint stopped = net.now();
    net.agents[3]->alive = false;  // dies while the daemon is away
    net.run_until(net.now() + 2s);
    restore(saved, net.now() - stopped);
    const std::size_t first_probe_index = net.server_events.size();
    (void)first_probe_index;

    // Find when the dead peer's first probe after the restore leaves: its
    // timer is the one due; step until its seq moves.
    const auto& dead = peer_named(*net.server, "agent-3");
    const std::uint64_t seq0 = dead.seq_sent;
    while (peer_named(*net.server, "agent-3").seq_sent == seq0)
        net.run_until(*net.server->next_deadline());
    const TimePoint first_probe = net.now();
    EXPECT_LE(first_probe - restored_at, 1s);

    net.run_until(net.now() + 10s);
    std::vector<ServerEvent> down;
    for (const auto& e : net.server_events)
        if (e.kind == EventKind::down) down.push_back(e);
    ASSERT_EQ(down.size(), 1u);
    EXPECT_EQ(down[0].name, "agent-3");
    EXPECT_EQ(down[0].at, first_probe + 3 * 1s);  // probes × interval, not before, not never
    for (const auto& e : net.server_events)
        EXPECT_EQ(e.name, "agent-3") << to_string(e.kind) << " for a healthy peer";
}

TEST_F(RestartTest, AgentsThatGaveUpAreRenewedWithoutAnEvent) {
    const ServerSnapshot saved = save();
    net.server->shutdown(kap::Diag::restarting);
    net.server.reset();  // the process ends right after its goodbye
    net.run_until(net.now() + 10ms);
    const TimePoint stopped = net.now();
    std::vector<std::uint32_t> sessions;
    for (auto& a : net.agents) sessions.push_back(a->session.session());

    // The grace is 3 × 1 s + 1 s + 30 s after the last probe, which came at
    // most 1 s before the stop: at 32 s nobody has given up yet.
    net.run_until(stopped + 32s);
    EXPECT_EQ(total_registers(), 0u);
    for (auto& a : net.agents) EXPECT_EQ(a->session.state(), SessionState::registered);
    net.run_until(stopped + 40s);
    for (auto& a : net.agents) EXPECT_EQ(a->session.state(), SessionState::registering);
    ASSERT_GT(total_registers(), 0u);

    restore(saved, net.now() - stopped);
    net.run_until(net.now() + 60s);
    EXPECT_TRUE(net.server_events.empty()) << to_string(net.server_events[0].kind);
    for (std::size_t i = 0; i < net.agents.size(); ++i) {
        EXPECT_EQ(net.agents[i]->session.state(), SessionState::registered);
        EXPECT_EQ(net.agents[i]->session.session(), sessions[i]) << "the same session";
    }
}

TEST_F(RestartTest, AProbeReorderedBehindByeEightDoesNotEndTheGrace) {
    net.server.reset();
    auto& agent = *net.agents[0];
    const std::uint32_t session = agent.session.session();
    const std::uint64_t seq = agent.seqs.back() + 1;  // sent, not yet received
    const TimePoint t = net.now();
    net.post(t + 1ms, agent.address, false,
             encode({.diag = kap::Diag::restarting, .session = session, .body = kap::Bye{seq}}));
    net.post(t + 2ms, agent.address, false,
             encode({.session = session, .body = kap::Probe{seq, 0}}));
    net.run_until(t + 3ms);
    ASSERT_EQ(agent.seqs.back(), seq) << "the late probe was answered";
    // The last probe came at most 1 s before t: not lost at 4 s (no grace),
    // nor before 3 + 30 s.
    net.run_until(t + 32s);
    EXPECT_EQ(agent.registers, 0u);
    net.run_until(t + 35s);
    EXPECT_GT(agent.registers, 0u);
}

TEST_F(RestartTest, ShutdownForGoodSaysByeFiveAndAgentsRegisterAgain) {
    net.server->shutdown(kap::Diag::shutting_down);
    net.run_until(net.now() + Network::kLatency);  // the BYE arrived; the server is gone
    net.server.reset();
    for (auto& a : net.agents) {
        ASSERT_FALSE(a->events.empty());
        EXPECT_EQ(a->events[0].diag, kap::Diag::shutting_down);
        EXPECT_EQ(a->session.state(), SessionState::registering);
        EXPECT_GT(a->registers, 0u) << "at once";
    }
}

TEST_F(RestartTest, SnapshotOlderThanForgetAfterIsRefused) {
    const ServerSnapshot saved = save();
    net.server.reset();
    net.start_server();
    const auto r = net.server->restore(saved, net.limits.forget_after + 1s, net.now(),
                                       [](const Address&) { return std::uint32_t{1}; });
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("forget_after"), std::string::npos) << r.error();
    EXPECT_EQ(net.server->peers().size(), 0u);
}

TEST_F(RestartTest, DownAndLeftPeersStaySoAndAreForgottenOnTime) {
    net.agents[0]->alive = false;
    net.agents[1]->session.stop();  // BYE 5: left
    net.run_until(net.now() + 6s);
    ASSERT_EQ(peer_named(*net.server, "agent-0").state, PeerState::down);
    ASSERT_EQ(peer_named(*net.server, "agent-1").state, PeerState::left);
    const TimePoint down_since = peer_named(*net.server, "agent-0").since;
    const TimePoint left_since = peer_named(*net.server, "agent-1").since;
    const ServerSnapshot saved = save();
    net.server.reset();
    net.server_events.clear();
    net.run_until(net.now() + 2s);
    restore(saved, 2s);
    EXPECT_EQ(peer_named(*net.server, "agent-0").since, down_since);
    EXPECT_EQ(peer_named(*net.server, "agent-1").since, left_since);
    net.run_until(std::max(left_since, down_since) + net.limits.forget_after + 1s);
    ASSERT_FALSE(net.server_events.empty());
    for (const auto& e : net.server_events) {
        EXPECT_EQ(e.kind, EventKind::forgotten);
        EXPECT_TRUE(e.name == "agent-0" || e.name == "agent-1") << e.name;
        EXPECT_LE(e.at, (e.name == "agent-0" ? down_since : left_since) + net.limits.forget_after +
                            net.limits.down_probe_interval);
    }
    EXPECT_EQ(net.server_events.size(), 2u);
}

}  // namespace
}  // namespace keepalive
