// ServerCore, PeerTable and the KAP/1 server rules (docs/protocol.md),
// driven with a fake clock: datagrams go in, the recording sink captures what
// the server sends (decoded with kap::decode) and the events it reports.
#include "core/server.hpp"

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
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/peer.hpp"
#include "core/peer_limits.hpp"
#include "core/peer_table.hpp"
#include "core/random.hpp"
#include "daemon/event_text.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

std::uint64_t wire_time(TimePoint t) {
    return static_cast<std::uint64_t>(t.time_since_epoch().count());
}

struct Sent {
    TimePoint at;
    Route route;
    Address to;
    Bytes bytes;
    kap::Message msg;

    kap::Type type() const { return kap::type_of(msg); }
    template <typename T>
    const T& body() const {
        return std::get<T>(msg.body);
    }
};

struct Event {
    TimePoint at;
    EventKind kind;
    std::optional<PeerState> previous;
    std::string name;
    PeerState state;
    std::uint32_t session;
    std::uint32_t missed;
    std::uint64_t seq_sent;
    TimePoint since;
    Address address;
    EventCause cause;
    std::string reason;  // in the daemon's words
    std::optional<Address> previous_address;
};

class RecordingSink final : public ServerSink {
public:
    explicit RecordingSink(const FakeClock& clock) : clock_(clock) {}

    void send(const Route& route, const Address& to, std::span<const std::uint8_t> data) override {
        auto decoded = kap::decode(data);
        if (!decoded) {
            ADD_FAILURE() << "server sent an undecodable datagram: "
                          << kap::to_string(decoded.error());
            return;
        }
        sent.push_back({clock_.now(), route, to, Bytes(data.begin(), data.end()), *decoded});
    }

    void peer_event(const PeerEvent& e) override {
        const Peer& p = e.peer;
        events.push_back({clock_.now(), e.kind, e.previous, std::string(p.name), p.state, p.session,
                          p.missed, p.seq_sent, p.since, p.address, e.cause, event_reason(e),
                          e.previous_address});
    }

    std::vector<Sent> sent;
    std::vector<Event> events;

private:
    const FakeClock& clock_;
};

// What a test can observe of a peer; compared whole to prove "no state change".
struct PeerSnap {
    std::string name;
    std::uint32_t session;
    std::uint64_t incarnation;
    Address address;
    Route route;
    Duration interval;
    std::uint8_t probes;
    PeerState state;
    TimePoint since;
    std::uint64_t seq_sent;
    std::uint64_t seq_acked;
    std::uint32_t missed;
    std::optional<Duration> rtt;
    std::uint64_t probes_sent;
    std::uint64_t acks_received;
    friend bool operator==(const PeerSnap&, const PeerSnap&) = default;
};

std::vector<PeerSnap> snapshot(const PeerTable& table) {
    std::vector<PeerSnap> out;
    table.for_each([&](PeerTable::Slot, const Peer& p) {
        out.push_back({std::string(p.name), p.session, p.incarnation, p.address, *p.route,
                       p.interval, p.probes, p.state, p.since, p.seq_sent, p.seq_acked, p.missed,
                       p.rtt, p.probes_sent, p.acks_received});
    });
    return out;
}

// How a simulated peer answers the server's probes.
struct Responder {
    std::uint64_t incarnation = 0;
    Duration delay = 5ms;
    bool answering = true;
};

class ServerTest : public ::testing::Test {
protected:
    ServerTest() { limits = PeerLimits{}; }

    void SetUp() override { make_server(); }

    void make_server() { server = std::make_unique<ServerCore>(limits, random, sink, clock.now()); }

    const Peer& peer(std::string_view name) const { return peer_named(*server, name); }
    bool known(std::string_view name) const {
        return server->peers().find_name(name) != PeerTable::kNone;
    }

    std::uint64_t drops(Drop d) const { return drop_count(*server, d); }
    std::uint64_t total_drops() const { return test_support::total_drops(*server); }

    // Delivers one datagram now. Whatever the server answers goes back to the
    // sender through the socket it came in on, and is never larger than it.
    void deliver_bytes(std::span<const std::uint8_t> bytes, const Address& from, const Route& r) {
        const std::size_t before = sink.sent.size();
        server->on_datagram(bytes, from, r, clock.now());
        for (std::size_t i = before; i < sink.sent.size(); ++i) {
            const Sent& s = sink.sent[i];
            EXPECT_LE(s.bytes.size(), bytes.size()) << "amplification: " << kap::to_string(s.type())
                                                    << " answering " << bytes.size() << " bytes";
            EXPECT_EQ(s.to, from);
            EXPECT_EQ(s.route, r);
        }
        dispatch(before);
    }
    void deliver_bytes(std::span<const std::uint8_t> bytes, const Address& from) {
        deliver_bytes(bytes, from, route);
    }
    void deliver(const kap::Message& m, const Address& from) { deliver_bytes(encode(m), from); }

    // Replies sent since index `from`.
    std::vector<Sent> sent_since(std::size_t from) const {
        return {sink.sent.begin() + static_cast<std::ptrdiff_t>(from), sink.sent.end()};
    }

    // Sends make(zero cookie); answers a CHALLENGE with make(its cookie).
    // Returns every reply.
    std::vector<Sent> handshake(const std::function<Bytes(const kap::Cookie&)>& make,
                                const Address& from) {
        const std::size_t before = sink.sent.size();
        deliver_bytes(make(kap::Cookie{}), from);
        const auto first = sent_since(before);
        if (first.size() == 1 && first[0].type() == kap::Type::challenge)
            deliver_bytes(make(first[0].body<kap::Challenge>().cookie), from);
        return sent_since(before);
    }

    kap::Register reg(std::string name, std::uint32_t interval_ms = 200, std::uint8_t probes = 3,
                      std::uint64_t incarnation = 0x1111) {
        return kap::Register{next_nonce_++, incarnation, interval_ms, probes, {}, std::move(name)};
    }

    // Full handshake; returns the final reply (ACCEPT or REJECT).
    Sent register_with(kap::Register r, const Address& from) {
        const auto replies = handshake(
            [&](const kap::Cookie& c) {
                r.cookie = c;
                return encode({.session = 0, .body = r});
            },
            from);
        EXPECT_FALSE(replies.empty());
        return replies.empty() ? Sent{} : replies.back();
    }

    // Registers a peer that the test's responders answer; returns its session.
    std::uint32_t add_peer(const std::string& name, const Address& from,
                           std::uint32_t interval_ms = 200, std::uint8_t probes = 3,
                           std::uint64_t incarnation = 0x1111, Duration delay = 5ms) {
        responders[from] = Responder{incarnation, delay, true};
        const Sent s = register_with(reg(name, interval_ms, probes, incarnation), from);
        EXPECT_EQ(s.type(), kap::Type::accept);
        return s.msg.session;
    }

    void ack(const Address& from, std::uint32_t session, std::uint64_t seq, std::uint64_t tx,
             std::uint64_t incarnation) {
        deliver({.session = session, .body = kap::Ack{seq, tx, incarnation}}, from);
    }
    void bye(const Address& from, std::uint32_t session, std::uint64_t seq,
             kap::Diag diag = kap::Diag::shutting_down) {
        deliver({.diag = diag, .session = session, .body = kap::Bye{seq}}, from);
    }

    // PROBEs the server sent to `to`.
    std::vector<Sent> probes_to(const Address& to, std::size_t from_index = 0) const {
        std::vector<Sent> out;
        for (std::size_t i = from_index; i < sink.sent.size(); ++i)
            if (sink.sent[i].to == to && sink.sent[i].type() == kap::Type::probe)
                out.push_back(sink.sent[i]);
        return out;
    }

    // `to` stops answering; runs until the server sends it the next probe, and
    // returns when that was.
    TimePoint silence_until_next_probe(const Address& to) {
        responders[to].answering = false;
        const std::size_t sent = probes_to(to).size();
        while (probes_to(to).size() == sent) run_for(1ms);
        return probes_to(to).back().at;
    }

    std::vector<Event> events_since(std::size_t from) const {
        return {sink.events.begin() + static_cast<std::ptrdiff_t>(from), sink.events.end()};
    }

    // Runs the server like the daemon's loop would, jumping the clock to each
    // deadline and to each scheduled delivery up to `until` (deliveries first
    // on a tie: they arrived by then).
    void run_until(TimePoint until) {
        for (int guard = 0; guard < 50'000'000; ++guard) {
            const auto deadline = server->next_deadline();
            std::optional<TimePoint> delivery;
            if (!in_flight.empty()) delivery = in_flight.begin()->first;
            if (delivery && *delivery <= until && (!deadline || *delivery <= *deadline)) {
                auto node = in_flight.extract(in_flight.begin());
                if (*delivery > clock.now()) clock.set(*delivery);
                deliver_bytes(node.mapped().bytes, node.mapped().from, node.mapped().route);
                continue;
            }
            if (deadline && *deadline <= until) {
                clock.set(std::max(clock.now(), *deadline));
                const std::size_t before = sink.sent.size();
                server->on_timer(clock.now());
                ++timer_calls;
                const auto after = server->next_deadline();
                EXPECT_TRUE(!after || *after > clock.now() || sink.sent.size() > before)
                    << "on_timer made no progress";
                dispatch(before);
                continue;
            }
            clock.set(std::max(clock.now(), until));
            return;
        }
        FAIL() << "run_until did not finish";
    }
    void run_for(Duration d) { run_until(clock.now() + d); }

    // Schedules ACKs from responders for new PROBEs.
    void dispatch(std::size_t from) {
        for (std::size_t i = from; i < sink.sent.size(); ++i) {
            const Sent& s = sink.sent[i];
            if (s.type() != kap::Type::probe) continue;
            const auto it = responders.find(s.to);
            if (it == responders.end() || !it->second.answering) continue;
            const auto& p = s.body<kap::Probe>();
            in_flight.emplace(
                s.at + it->second.delay,
                Flight{encode({.session = s.msg.session,
                               .body = kap::Ack{p.seq, p.tx_time, it->second.incarnation}}),
                       s.to, s.route});
        }
    }

    struct Flight {
        Bytes bytes;
        Address from;
        Route route;
    };

    FakeClock clock{kStart};
    SeededRandom random{42};
    RecordingSink sink{clock};
    PeerLimits limits;
    std::unique_ptr<ServerCore> server;
    Route route{1, addr("192.0.2.1:7371")};
    std::unordered_map<Address, Responder, AddressHash> responders;
    std::multimap<TimePoint, Flight> in_flight;
    std::uint64_t timer_calls = 0;
    std::uint64_t next_nonce_ = 0xABCD0000;
};

const Address kAlpha = addr("198.51.100.7:40000");
const Address kBeta = addr("198.51.100.8:40000");
const Address kGamma = addr("[2001:db8::9]:40001");

// ---- PeerTable -------------------------------------------------------------

TEST(PeerTable, IndexesAndCountsFollowChanges) {
    PeerTable t;
    const PeerNameBuffer na("a"), nb("b"), nc("c");  // the peers' names point in here
    Peer a;
    a.name = na.name();
    a.session = 10;
    Peer b;
    b.name = nb.name();
    b.session = 20;
    const auto sa = t.insert(a);
    const auto sb = t.insert(b);
    EXPECT_EQ(t.size(), 2u);
    EXPECT_EQ(t.counts().in(PeerState::up), 2u);
    EXPECT_EQ(t.find_name("a"), sa);
    EXPECT_EQ(t.find_session(20), sb);
    EXPECT_EQ(t.find_session(30), PeerTable::kNone);
    EXPECT_EQ(t.find_name("c"), PeerTable::kNone);

    t.set_state(sa, PeerState::down, kStart + 5s);
    EXPECT_EQ(t.at(sa).state, PeerState::down);
    EXPECT_EQ(t.at(sa).since, kStart + 5s);
    EXPECT_EQ(t.counts().in(PeerState::up), 1u);
    EXPECT_EQ(t.counts().in(PeerState::down), 1u);
    // Same state again: nothing changes, not even `since`.
    t.set_state(sa, PeerState::down, kStart + 9s);
    EXPECT_EQ(t.at(sa).since, kStart + 5s);
    EXPECT_EQ(summary_line(t.counts()), "2 peers: 1 up, 0 suspect, 1 down, 0 left");

    t.set_session(sb, 21);
    EXPECT_EQ(t.find_session(20), PeerTable::kNone);
    EXPECT_EQ(t.find_session(21), sb);

    t.erase(sa);
    EXPECT_EQ(t.size(), 1u);
    EXPECT_EQ(t.counts().in(PeerState::down), 0u);
    EXPECT_EQ(t.find_name("a"), PeerTable::kNone);
    EXPECT_EQ(t.find_session(10), PeerTable::kNone);
    // The freed slot is reused.
    Peer c;
    c.name = nc.name();
    c.session = 30;
    EXPECT_EQ(t.insert(c), sa);
    EXPECT_EQ(summary_line(t.counts()), "2 peers: 2 up, 0 suspect, 0 down, 0 left");

    std::size_t seen = 0;
    t.for_each([&](PeerTable::Slot, const Peer&) { ++seen; });
    EXPECT_EQ(seen, 2u);
}

TEST(PeerTable, SummaryLineSingular) {
    PeerCounts c;
    c.total = 1;
    c.by_state[static_cast<std::size_t>(PeerState::left)] = 1;
    EXPECT_EQ(summary_line(c), "1 peer: 0 up, 0 suspect, 0 down, 1 left");
}

TEST(PeerName, Rule) {
    EXPECT_TRUE(valid_peer_name("a"));
    EXPECT_TRUE(valid_peer_name("web-01.example.com:8080@rack_3"));
    EXPECT_TRUE(valid_peer_name(std::string(64, 'x')));
    EXPECT_FALSE(valid_peer_name(""));
    EXPECT_FALSE(valid_peer_name(std::string(65, 'x')));
    for (const char* bad : {"a b", "a/b", "a\nb", "\xc3\xa9", "a#", "a,b", "a+b", "a\x7f"})
        EXPECT_FALSE(valid_peer_name(bad)) << bad;
    EXPECT_FALSE(valid_peer_name(std::string_view("a\0b", 3)));
}

TEST(DropNames, EveryDropAndDecodeErrorHasAName) {
    for (std::size_t i = 0; i < kDropCount; ++i)
        EXPECT_NE(to_string(static_cast<Drop>(i)), "?") << i;
    for (std::size_t i = 0; i < kap::kDecodeErrorCount; ++i) {
        const auto e = static_cast<kap::DecodeError>(i);
        EXPECT_EQ(to_string(drop_for(e)), kap::to_string(e));
    }
}

// ---- Registration ------------------------------------------------------------

TEST_F(ServerTest, RegisterWithoutCookieIsChallengedAndCreatesNoState) {
    const kap::Register r = reg("alpha");
    const Bytes request = encode({.session = 0, .body = r});
    deliver_bytes(request, kAlpha);

    ASSERT_EQ(sink.sent.size(), 1u);
    const Sent& c = sink.sent[0];
    EXPECT_EQ(c.type(), kap::Type::challenge);
    EXPECT_EQ(c.bytes.size(), 36u);
    EXPECT_LT(c.bytes.size(), request.size());
    EXPECT_EQ(c.msg.session, 0u);
    EXPECT_EQ(c.msg.diag, kap::Diag::none);
    EXPECT_EQ(c.body<kap::Challenge>().nonce, r.nonce);
    EXPECT_NE(c.body<kap::Challenge>().cookie, kap::Cookie{});
    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_TRUE(sink.events.empty());
    EXPECT_FALSE(server->next_deadline().has_value());
    EXPECT_EQ(server->datagrams_received(), 1u);
}

TEST_F(ServerTest, RegisterWithCookieIsAccepted) {
    kap::Register r = reg("alpha", 500, 4);
    deliver({.session = 0, .body = r}, kAlpha);
    r.cookie = sink.sent.at(0).body<kap::Challenge>().cookie;
    const Bytes request = encode({.session = 0, .body = r});
    deliver_bytes(request, kAlpha);

    ASSERT_EQ(sink.sent.size(), 2u);
    const Sent& a = sink.sent[1];
    ASSERT_EQ(a.type(), kap::Type::accept);
    EXPECT_EQ(a.bytes.size(), 36u);
    EXPECT_LT(a.bytes.size(), request.size());
    EXPECT_NE(a.msg.session, 0u);
    const auto& acc = a.body<kap::Accept>();
    EXPECT_EQ(acc.nonce, r.nonce);
    EXPECT_EQ(acc.epoch, server->epoch());
    EXPECT_EQ(acc.interval_ms, 500u);
    EXPECT_EQ(acc.probes, 4u);

    ASSERT_EQ(sink.events.size(), 1u);
    const Event& e = sink.events[0];
    EXPECT_EQ(e.kind, EventKind::registered);
    EXPECT_FALSE(e.previous.has_value());
    EXPECT_EQ(e.name, "alpha");
    EXPECT_EQ(e.state, PeerState::up);
    EXPECT_EQ(e.session, a.msg.session);

    ASSERT_EQ(server->peers().size(), 1u);
    const Peer& p = peer("alpha");
    EXPECT_EQ(p.session, a.msg.session);
    EXPECT_EQ(p.incarnation, r.incarnation);
    EXPECT_EQ(p.address, kAlpha);
    EXPECT_EQ(*p.route, route);
    EXPECT_EQ(p.interval, 500ms);
    EXPECT_EQ(p.probes, 4);
    EXPECT_EQ(p.state, PeerState::up);
    EXPECT_EQ(p.since, clock.now());
    EXPECT_EQ(p.seq_sent, 0u);
    EXPECT_EQ(server->peers().find_session(p.session), server->peers().find_name("alpha"));

    // The first probe comes within one interval, not before now.
    ASSERT_TRUE(server->next_deadline().has_value());
    EXPECT_GT(*server->next_deadline(), clock.now());
    EXPECT_LE(*server->next_deadline(), clock.now() + 500ms);
}

TEST_F(ServerTest, RetransmittedRegisterGetsTheSameSessionAndNoEvent) {
    kap::Register r = reg("alpha");
    const Sent first = register_with(r, kAlpha);
    ASSERT_EQ(first.type(), kap::Type::accept);
    const std::size_t events = sink.events.size();
    const Sent again = register_with(r, kAlpha);
    ASSERT_EQ(again.type(), kap::Type::accept);
    EXPECT_EQ(again.msg.session, first.msg.session);
    EXPECT_EQ(again.body<kap::Accept>().epoch, first.body<kap::Accept>().epoch);
    EXPECT_EQ(sink.events.size(), events);
    EXPECT_EQ(server->peers().size(), 1u);
}

TEST_F(ServerTest, ReRegisteringWithANewGrantIsReported) {
    const Sent first = register_with(reg("alpha", 200, 3), kAlpha);
    ASSERT_EQ(first.type(), kap::Type::accept);
    const std::size_t events = sink.events.size();
    const Sent again = register_with(reg("alpha", 400, 5), kAlpha);
    ASSERT_EQ(again.type(), kap::Type::accept);
    EXPECT_EQ(again.msg.session, first.msg.session);
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::registered);
    EXPECT_NE(sink.events.back().reason.find("200 ms x 3"), std::string::npos)
        << sink.events.back().reason;
    EXPECT_EQ(peer("alpha").interval, 400ms);
    EXPECT_EQ(peer("alpha").probes, 5);
}

TEST_F(ServerTest, GrantedValuesAreClampedIntoTheLimits) {
    limits.min_interval = 100ms;
    limits.max_interval = 10s;
    limits.max_probes = 10;
    make_server();

    struct Case {
        const char* name;
        std::uint32_t interval_ms;
        std::uint8_t probes;
        std::uint32_t want_interval_ms;
        std::uint8_t want_probes;
    };
    for (const Case& c : {Case{"low", 1, 1, 100, 1}, Case{"high", 3'600'000, 255, 10'000, 10},
                          Case{"inside", 250, 7, 250, 7}, Case{"edge", 100, 10, 100, 10},
                          Case{"edge2", 10'000, 11, 10'000, 10}}) {
        const Sent s = register_with(reg(c.name, c.interval_ms, c.probes), kAlpha);
        ASSERT_EQ(s.type(), kap::Type::accept) << c.name;
        EXPECT_EQ(s.body<kap::Accept>().interval_ms, c.want_interval_ms) << c.name;
        EXPECT_EQ(s.body<kap::Accept>().probes, c.want_probes) << c.name;
        EXPECT_EQ(peer(c.name).interval, milliseconds(c.want_interval_ms)) << c.name;
        EXPECT_EQ(peer(c.name).probes, c.want_probes) << c.name;
    }
}

TEST_F(ServerTest, NewLimitsApplyToNewRegistrationsOnly) {
    add_peer("alpha", kAlpha, 200, 3);
    PeerLimits l = limits;
    l.min_interval = 1s;
    server->set_limits(l);
    EXPECT_EQ(server->limits(), l);
    EXPECT_EQ(peer("alpha").interval, 200ms);
    const Sent s = register_with(reg("beta", 200, 3), kBeta);
    EXPECT_EQ(s.body<kap::Accept>().interval_ms, 1000u);
}

TEST_F(ServerTest, CookieIsBoundToSourceNonceAndTime) {
    kap::Register r = reg("alpha");
    deliver({.session = 0, .body = r}, kAlpha);
    const kap::Cookie cookie = sink.sent.at(0).body<kap::Challenge>().cookie;

    // The cookie echoed from another port is not valid there: challenged again.
    r.cookie = cookie;
    Address other = kAlpha;
    other.set_port(40001);
    deliver({.session = 0, .body = r}, other);
    EXPECT_EQ(sink.sent.back().type(), kap::Type::challenge);
    EXPECT_NE(sink.sent.back().body<kap::Challenge>().cookie, cookie);

    // Another nonce: challenged again.
    kap::Register r2 = r;
    r2.nonce = r.nonce + 1;
    deliver({.session = 0, .body = r2}, kAlpha);
    EXPECT_EQ(sink.sent.back().type(), kap::Type::challenge);
    EXPECT_EQ(sink.sent.back().body<kap::Challenge>().nonce, r2.nonce);

    // A forged cookie: challenged again.
    kap::Register r3 = r;
    r3.cookie[0] ^= 1;
    deliver({.session = 0, .body = r3}, kAlpha);
    EXPECT_EQ(sink.sent.back().type(), kap::Type::challenge);
    EXPECT_EQ(server->peers().size(), 0u);

    // The contract: valid for at least 30 s...
    clock.advance(30s);
    deliver({.session = 0, .body = r}, kAlpha);
    EXPECT_EQ(sink.sent.back().type(), kap::Type::accept);
    EXPECT_EQ(server->peers().size(), 1u);
}

TEST_F(ServerTest, CookieExpiresWithin120Seconds) {
    kap::Register r = reg("alpha");
    deliver({.session = 0, .body = r}, kAlpha);
    r.cookie = sink.sent.at(0).body<kap::Challenge>().cookie;
    clock.advance(120s);
    deliver({.session = 0, .body = r}, kAlpha);
    EXPECT_EQ(sink.sent.back().type(), kap::Type::challenge);
    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_TRUE(sink.events.empty());
}

TEST_F(ServerTest, InvalidParametersAreRejectedWithoutState) {
    struct Case {
        const char* what;
        std::string name;
        std::uint32_t interval_ms;
        std::uint8_t probes;
    };
    const std::vector<Case> cases = {
        {"empty name", "", 200, 3},
        {"space", "a b", 200, 3},
        {"slash", "a/b", 200, 3},
        {"nul", std::string("a\0b", 3), 200, 3},
        {"high byte", "caf\xc3\xa9", 200, 3},
        {"interval 0", "alpha", 0, 3},
        {"interval too long", "alpha", 3'600'001, 3},
        {"interval max", "alpha", 0xFFFFFFFF, 3},
        {"probes 0", "alpha", 200, 0},
    };
    for (const Case& c : cases) {
        const kap::Register r = reg(c.name, c.interval_ms, c.probes);
        const Sent s = register_with(r, kAlpha);
        ASSERT_EQ(s.type(), kap::Type::reject) << c.what;
        EXPECT_EQ(s.msg.diag, kap::Diag::invalid_parameters) << c.what;
        EXPECT_EQ(s.msg.session, 0u) << c.what;
        EXPECT_EQ(s.body<kap::Reject>().nonce, r.nonce) << c.what;
        EXPECT_EQ(s.bytes.size(), 20u) << c.what;
    }
    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_TRUE(sink.events.empty());
    EXPECT_FALSE(server->next_deadline().has_value());
}

// Names longer than 64 bytes cannot be encoded by kap::encode but arrive on the
// wire (name_len is a byte); decode accepts them and the server must REJECT.
TEST_F(ServerTest, OverlongNameIsRejected) {
    for (const std::size_t len : {65u, 100u, 255u}) {
        const kap::Register r = reg(std::string(64, 'n'));
        const auto replies = handshake(
            [&](const kap::Cookie& c) {
                kap::Register copy = r;
                copy.cookie = c;
                Bytes b = encode({.session = 0, .body = copy});
                b.resize(50 + len, 'n');
                b[33] = static_cast<std::uint8_t>(len);
                b[6] = static_cast<std::uint8_t>(b.size() >> 8);
                b[7] = static_cast<std::uint8_t>(b.size());
                EXPECT_TRUE(kap::decode(b).ok());
                return b;
            },
            kAlpha);
        ASSERT_EQ(replies.size(), 2u) << len;
        EXPECT_EQ(replies[0].type(), kap::Type::challenge);
        EXPECT_EQ(replies[1].type(), kap::Type::reject) << len;
        EXPECT_EQ(replies[1].msg.diag, kap::Diag::invalid_parameters);
        EXPECT_EQ(replies[1].body<kap::Reject>().nonce, r.nonce);
    }
    EXPECT_EQ(server->peers().size(), 0u);
}

TEST_F(ServerTest, ServerFullIsRejectedButKnownNamesStillRegister) {
    limits.max_peers = 2;
    make_server();
    add_peer("alpha", kAlpha);
    add_peer("beta", kBeta);
    const kap::Register r = reg("gamma");
    const Sent s = register_with(r, kGamma);
    ASSERT_EQ(s.type(), kap::Type::reject);
    EXPECT_EQ(s.msg.diag, kap::Diag::server_full);
    EXPECT_EQ(s.msg.session, 0u);
    EXPECT_EQ(s.body<kap::Reject>().nonce, r.nonce);
    EXPECT_EQ(server->peers().size(), 2u);
    EXPECT_FALSE(known("gamma"));

    // A known name is not a new peer.
    EXPECT_EQ(register_with(reg("alpha"), kAlpha).type(), kap::Type::accept);
    // Nor a restart of a known name.
    EXPECT_EQ(register_with(reg("beta", 200, 3, 0x2222), kBeta).type(), kap::Type::accept);

    // Once a peer leaves and is forgotten, there is room again.
    bye(kAlpha, peer("alpha").session, peer("alpha").seq_sent);
    run_for(limits.forget_after + 1s);
    EXPECT_FALSE(known("alpha"));
    EXPECT_EQ(register_with(reg("gamma"), kGamma).type(), kap::Type::accept);
}

TEST_F(ServerTest, SessionIdsAreDistinctAndNonZero) {
    std::vector<std::uint32_t> ids;
    for (int i = 0; i < 200; ++i) {
        const std::uint32_t s = add_peer("p" + std::to_string(i), kAlpha);
        EXPECT_NE(s, 0u);
        ids.push_back(s);
    }
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
}

// ---- Detection ---------------------------------------------------------------

TEST_F(ServerTest, ProbesGoOutExactlyEveryIntervalWithoutDrift) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3, 0x1111, 3ms);
    const TimePoint registered = clock.now();
    run_for(200ms * 1000 + 1ms);

    const auto probes = probes_to(kAlpha);
    ASSERT_GE(probes.size(), 1000u);
    EXPECT_LE(probes.size(), 1001u);
    EXPECT_GT(probes[0].at, registered);
    EXPECT_LE(probes[0].at, registered + 200ms);
    for (std::size_t i = 0; i < probes.size(); ++i) {
        const auto& p = probes[i].body<kap::Probe>();
        EXPECT_EQ(probes[i].msg.session, session);
        EXPECT_EQ(probes[i].msg.diag, kap::Diag::none);
        EXPECT_EQ(probes[i].route, route);
        EXPECT_EQ(probes[i].bytes.size(), 28u);
        EXPECT_EQ(p.seq, i + 1);
        EXPECT_EQ(p.tx_time, wire_time(probes[i].at));
        if (i > 0) {
            ASSERT_EQ(probes[i].at - probes[i - 1].at, 200ms) << "probe " << i;
        }
    }
    EXPECT_EQ(probes.back().at - probes.front().at, 200ms * (probes.size() - 1));

    // Every ACK counted, the round trip measured, no state change at all.
    const Peer& p = peer("alpha");
    EXPECT_EQ(p.state, PeerState::up);
    EXPECT_EQ(p.probes_sent, probes.size());
    EXPECT_EQ(p.seq_sent, probes.size());
    EXPECT_EQ(p.acks_received, p.seq_acked);
    EXPECT_GE(p.acks_received + 1, probes.size());
    ASSERT_TRUE(p.rtt.has_value());
    EXPECT_EQ(*p.rtt, 3ms);
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(total_drops(), 0u);
}

// Probe times sit on whole milliseconds (the wheel's tick) even when the
// registration did not, so that they fire exactly.
TEST_F(ServerTest, ProbeTimesSitOnWholeMilliseconds) {
    clock.advance(123'456ns);
    add_peer("alpha", kAlpha, 250, 3, 0x1111, 1ms);
    const TimePoint registered = clock.now();
    run_for(3s);
    const auto probes = probes_to(kAlpha);
    ASSERT_GE(probes.size(), 11u);
    EXPECT_GT(probes[0].at, registered);
    EXPECT_LE(probes[0].at, registered + 251ms);
    for (std::size_t i = 0; i < probes.size(); ++i) {
        EXPECT_EQ(probes[i].at.time_since_epoch() % 1ms, 0ns) << i;
        if (i > 0) {
            EXPECT_EQ(probes[i].at - probes[i - 1].at, 250ms) << i;
        }
    }
    EXPECT_EQ(peer("alpha").rtt, std::optional<Duration>(1ms));
}

TEST_F(ServerTest, RttIsAckTimeMinusProbeTime) {
    add_peer("alpha", kAlpha, 200, 3, 0x1111, 17ms);
    run_for(1s);
    ASSERT_TRUE(peer("alpha").rtt.has_value());
    EXPECT_EQ(*peer("alpha").rtt, 17ms);
    responders[kAlpha].delay = 42ms;
    run_for(1s);
    EXPECT_EQ(*peer("alpha").rtt, 42ms);
}

TEST_F(ServerTest, SuspectAndDownAtExactlyTheContractInstants) {
    add_peer("alpha", kAlpha, 200, 3);
    run_for(10s);
    const std::size_t answered_probes = probes_to(kAlpha).size();
    ASSERT_GE(answered_probes, 49u);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").rtt, std::optional<Duration>(5ms));

    // The peer goes silent: the first probe sent from now on is the first unanswered.
    responders[kAlpha].answering = false;
    const std::size_t events = sink.events.size();
    const TimePoint silent = clock.now();
    run_until(silent + 200ms);
    const auto after = probes_to(kAlpha, 0);
    ASSERT_EQ(after.size(), answered_probes + 1);
    const TimePoint first_unanswered = after.back().at;
    ASSERT_GT(first_unanswered, silent);

    // Up until one interval after it, then suspect at exactly that instant.
    run_until(first_unanswered + 200ms - 1ns);
    EXPECT_EQ(sink.events.size(), events);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").missed, 0u);
    run_until(first_unanswered + 200ms);
    ASSERT_EQ(sink.events.size(), events + 1);
    const Event& suspect = sink.events.back();
    EXPECT_EQ(suspect.kind, EventKind::suspect);
    EXPECT_EQ(suspect.previous, PeerState::up);
    EXPECT_EQ(suspect.at, first_unanswered + 200ms);
    EXPECT_EQ(suspect.since, first_unanswered + 200ms);
    EXPECT_EQ(suspect.missed, 1u);
    EXPECT_EQ(peer("alpha").state, PeerState::suspect);
    EXPECT_EQ(peer("alpha").since, first_unanswered + 200ms);

    run_until(first_unanswered + 600ms - 1ns);
    EXPECT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(peer("alpha").state, PeerState::suspect);
    EXPECT_EQ(peer("alpha").missed, 2u);

    // probes × interval after the first unanswered probe.
    run_until(first_unanswered + 600ms);
    ASSERT_EQ(sink.events.size(), events + 2);
    const Event& down = sink.events.back();
    EXPECT_EQ(down.kind, EventKind::down);
    EXPECT_EQ(down.previous, PeerState::suspect);
    EXPECT_EQ(down.at, first_unanswered + 600ms);
    EXPECT_EQ(down.since, first_unanswered + 600ms);
    EXPECT_EQ(down.missed, 3u);
    EXPECT_EQ(peer("alpha").state, PeerState::down);
    EXPECT_EQ(peer("alpha").since, first_unanswered + 600ms);
    EXPECT_EQ(server->peers().counts().in(PeerState::down), 1u);

    // Probes kept going every interval until then, on the same grid.
    const auto all = probes_to(kAlpha);
    ASSERT_EQ(all.size(), answered_probes + 4);  // 3 unanswered + the first slow one
    for (std::size_t i = answered_probes; i < all.size(); ++i)
        EXPECT_EQ(all[i].at, first_unanswered + 200ms * (i - answered_probes));
    run_for(4s);
    EXPECT_EQ(sink.events.size(), events + 2);
}

TEST_F(ServerTest, OneProbeDetectionHasNoSuspectPhase) {
    add_peer("alpha", kAlpha, 200, 1);
    run_for(2s);
    responders[kAlpha].answering = false;
    const std::size_t n = probes_to(kAlpha).size();
    const std::size_t events = sink.events.size();
    run_for(2s);
    const TimePoint first_unanswered = probes_to(kAlpha).at(n).at;
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::down);
    EXPECT_EQ(sink.events.back().previous, PeerState::up);
    EXPECT_EQ(sink.events.back().since, first_unanswered + 200ms);
}

TEST_F(ServerTest, AckArrivingExactlyWhenTheNextProbeIsDueCounts) {
    add_peer("alpha", kAlpha, 200, 1, 0x1111, 200ms);
    run_for(10s);
    EXPECT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
}

TEST_F(ServerTest, LateAckForANewerSeqResetsMissed) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(2s);
    responders[kAlpha].answering = false;
    const std::size_t n = probes_to(kAlpha).size();
    const std::size_t events = sink.events.size();
    // Two unanswered probes: suspect, missed 2 (after the third probe went out).
    run_for(200ms);
    const TimePoint first = probes_to(kAlpha).at(n).at;
    run_until(first + 400ms);
    EXPECT_EQ(peer("alpha").state, PeerState::suspect);
    EXPECT_EQ(peer("alpha").missed, 2u);
    const auto pending = probes_to(kAlpha);
    ASSERT_EQ(pending.size(), n + 3);

    // The ACK for the second unanswered probe arrives after the next probe was due.
    clock.set(first + 450ms);
    const auto& late = pending[n + 1].body<kap::Probe>();
    ack(kAlpha, session, late.seq, late.tx_time, 0x1111);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").missed, 0u);
    EXPECT_EQ(peer("alpha").seq_acked, late.seq);
    EXPECT_EQ(peer("alpha").rtt, std::optional<Duration>(first + 450ms - pending[n + 1].at));
    ASSERT_EQ(sink.events.size(), events + 2);
    EXPECT_EQ(sink.events.back().kind, EventKind::up);
    EXPECT_EQ(sink.events.back().previous, PeerState::suspect);
    EXPECT_EQ(sink.events.back().at, first + 450ms);

    // The count starts over: the probe sent at first + 400ms stays unanswered
    // (one more suspect), the ones after are answered, and it never goes down.
    responders[kAlpha].answering = true;
    run_for(10s);
    std::vector<EventKind> kinds;
    for (std::size_t i = events; i < sink.events.size(); ++i) kinds.push_back(sink.events[i].kind);
    EXPECT_EQ(kinds, (std::vector<EventKind>{EventKind::suspect, EventKind::up, EventKind::suspect,
                                             EventKind::up}));
    EXPECT_EQ(peer("alpha").state, PeerState::up);
}

TEST_F(ServerTest, AcksAlwaysLateByMoreThanAnIntervalFlapButNeverGoDown) {
    add_peer("alpha", kAlpha, 200, 3, 0x1111, 250ms);
    run_for(20s);
    for (const Event& e : sink.events) EXPECT_NE(e.kind, EventKind::down);
    EXPECT_NE(peer("alpha").state, PeerState::down);
}

TEST_F(ServerTest, InvalidAcksAreDroppedAndChangeNothing) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(2s);
    responders[kAlpha].answering = false;
    run_for(450ms);
    ASSERT_EQ(peer("alpha").state, PeerState::suspect);
    const Peer& p = peer("alpha");
    const std::uint64_t acked = p.seq_acked;
    const std::uint64_t sent = p.seq_sent;
    ASSERT_GT(sent, acked);
    const auto before = snapshot(server->peers());
    const std::size_t events = sink.events.size();
    const std::size_t replies = sink.sent.size();
    const auto probes = probes_to(kAlpha);
    const std::uint64_t tx = probes.back().body<kap::Probe>().tx_time;

    ack(kAlpha, session, acked, tx, 0x1111);  // already acknowledged
    EXPECT_EQ(drops(Drop::stale_ack), 1u);
    ack(kAlpha, session, acked - 1, tx, 0x1111);
    EXPECT_EQ(drops(Drop::stale_ack), 2u);
    ack(kAlpha, session, sent + 1, tx, 0x1111);  // never sent
    EXPECT_EQ(drops(Drop::stale_ack), 3u);
    ack(kAlpha, session, UINT64_MAX, tx, 0x1111);
    EXPECT_EQ(drops(Drop::stale_ack), 4u);
    ack(kAlpha, session, sent, tx, 0x2222);  // another incarnation
    EXPECT_EQ(drops(Drop::stale_ack), 5u);
    Address other_port = kAlpha;
    other_port.set_port(40001);
    ack(other_port, session, sent, tx, 0x1111);
    EXPECT_EQ(drops(Drop::wrong_source), 1u);
    ack(kBeta, session, sent, tx, 0x1111);  // another host
    EXPECT_EQ(drops(Drop::wrong_source), 2u);

    EXPECT_EQ(snapshot(server->peers()), before);
    EXPECT_EQ(sink.events.size(), events);
    EXPECT_EQ(sink.sent.size(), replies) << "invalid ACKs are never answered";

    // The valid one still works afterwards.
    ack(kAlpha, session, sent, tx, 0x1111);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").seq_acked, sent);
    // And the same one again is a replay.
    ack(kAlpha, session, sent, tx, 0x1111);
    EXPECT_EQ(drops(Drop::stale_ack), 6u);
}

TEST_F(ServerTest, AckWithTxTimeInTheFutureLeavesRttAlone) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    responders[kAlpha].answering = false;
    run_for(250ms);
    ASSERT_GE(peer("alpha").seq_sent, 1u);
    ack(kAlpha, session, 1, wire_time(clock.now() + 1h), 0x1111);
    EXPECT_EQ(peer("alpha").seq_acked, 1u);
    EXPECT_FALSE(peer("alpha").rtt.has_value());
}

// A stalled daemon (the loop ran late by several intervals) must not fire the
// missed probe times back to back, each counting the one before as unanswered.
TEST_F(ServerTest, LateTimerDoesNotBurstProbesOrDeclarePeersDown) {
    add_peer("alpha", kAlpha, 200, 3);
    run_for(5s);
    const std::size_t n = probes_to(kAlpha).size();
    const TimePoint last = probes_to(kAlpha).back().at;
    const std::size_t events = sink.events.size();

    clock.advance(2s + 50ms);  // nothing runs meanwhile
    run_for(0ns);
    const auto probes = probes_to(kAlpha);
    ASSERT_EQ(probes.size(), n + 1) << "one probe after the stall, not a burst";
    EXPECT_EQ(probes.back().at, clock.now());
    // The schedule stays on the same grid, strictly after now.
    ASSERT_TRUE(server->next_deadline().has_value());
    const Duration offset = *server->next_deadline() - last;
    EXPECT_EQ(offset % 200ms, 0ns);
    EXPECT_GT(*server->next_deadline(), clock.now());
    EXPECT_LE(*server->next_deadline(), clock.now() + 200ms);

    run_for(10s);
    EXPECT_EQ(sink.events.size(), events);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    const auto later = probes_to(kAlpha, 0);
    for (std::size_t i = n + 2; i < later.size(); ++i)
        EXPECT_EQ(later[i].at - later[i - 1].at, 200ms);
}

// ---- Down, left, forgotten ---------------------------------------------------

TEST_F(ServerTest, DownPeersAreProbedSlowlyAndComeBackUpOnAnAck) {
    limits.down_probe_interval = 1s;
    limits.forget_after = 30s;
    make_server();
    add_peer("alpha", kAlpha, 200, 3);
    run_for(2s);
    responders[kAlpha].answering = false;
    run_for(900ms);  // down within 800 ms, the next slow probe 1 s later
    ASSERT_EQ(peer("alpha").state, PeerState::down);
    const TimePoint down_at = peer("alpha").since;
    const std::size_t n_at_down = probes_to(kAlpha).size();

    run_until(down_at + 3500ms);
    {
        const auto probes = probes_to(kAlpha);
        // The probe at the moment it went down, then one per down_probe_interval.
        ASSERT_EQ(probes.size(), n_at_down + 3);
        EXPECT_EQ(probes[n_at_down - 1].at, down_at);
        EXPECT_EQ(probes[n_at_down].at, down_at + 1s);
        EXPECT_EQ(probes[n_at_down + 1].at, down_at + 2s);
        EXPECT_EQ(probes[n_at_down + 2].at, down_at + 3s);
    }
    const std::size_t events = sink.events.size();
    responders[kAlpha].answering = true;
    run_until(down_at + 4s + 5ms);
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::up);
    EXPECT_EQ(sink.events.back().previous, PeerState::down);
    EXPECT_EQ(sink.events.back().at, down_at + 4s + 5ms);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").missed, 0u);

    // Normal-rate probing resumes one interval after the ACK.
    const std::size_t n_up = probes_to(kAlpha).size();
    run_for(2s);
    const auto probes = probes_to(kAlpha);
    ASSERT_GE(probes.size(), n_up + 9);
    EXPECT_EQ(probes[n_up].at, down_at + 4s + 5ms + 200ms);
    for (std::size_t i = n_up + 1; i < probes.size(); ++i)
        EXPECT_EQ(probes[i].at - probes[i - 1].at, 200ms);
    EXPECT_EQ(sink.events.size(), events + 1);
}

TEST_F(ServerTest, DownPeersAreForgottenAfterForgetAfter) {
    limits.down_probe_interval = 1s;
    limits.forget_after = 10s;
    make_server();
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    add_peer("beta", kBeta, 200, 3);
    run_for(2s);
    responders[kAlpha].answering = false;
    run_for(900ms);
    ASSERT_EQ(peer("alpha").state, PeerState::down);
    const TimePoint down_at = peer("alpha").since;
    const std::size_t n_at_down = probes_to(kAlpha).size();

    run_until(down_at + 10s - 1ns);
    EXPECT_TRUE(known("alpha"));
    EXPECT_EQ(probes_to(kAlpha).size(), n_at_down + 9);
    const std::size_t events = sink.events.size();
    run_until(down_at + 10s);
    EXPECT_FALSE(known("alpha"));
    EXPECT_EQ(server->peers().size(), 1u);
    EXPECT_EQ(server->peers().find_session(session), PeerTable::kNone);
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::forgotten);
    EXPECT_EQ(sink.events.back().previous, PeerState::down);
    EXPECT_EQ(sink.events.back().name, "alpha");
    EXPECT_EQ(sink.events.back().at, down_at + 10s);
    EXPECT_EQ(server->peers().counts().in(PeerState::down), 0u);

    // Nothing more is sent to it; the other peer carries on.
    run_for(20s);
    EXPECT_EQ(probes_to(kAlpha).size(), n_at_down + 9);
    EXPECT_EQ(peer("beta").state, PeerState::up);

    // A late ACK now names an unknown session.
    const std::size_t replies = sink.sent.size();
    ack(kAlpha, session, 1, 0, 0x1111);
    ASSERT_EQ(sink.sent.size(), replies + 1);
    EXPECT_EQ(sink.sent.back().type(), kap::Type::bye);
    EXPECT_EQ(sink.sent.back().msg.diag, kap::Diag::unknown_session);
}

TEST_F(ServerTest, ByeFromThePeerMeansLeftThenForgotten) {
    limits.forget_after = 60s;
    make_server();
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(3s);
    responders[kAlpha].answering = false;
    run_for(200ms);  // exactly one unanswered probe, not yet suspect
    const Peer& p = peer("alpha");
    const std::uint64_t acked = p.seq_acked;
    const std::uint64_t sent = p.seq_sent;
    const std::size_t events = sink.events.size();

    // Stale: older than what was acknowledged.
    bye(kAlpha, session, acked - 1);
    EXPECT_EQ(drops(Drop::stale_bye), 1u);
    // From another port.
    Address other = kAlpha;
    other.set_port(1);
    bye(other, session, sent);
    EXPECT_EQ(drops(Drop::wrong_source), 1u);
    // Any diag but "shutting down".
    for (const auto d : {kap::Diag::none, kap::Diag::removed, kap::Diag::unknown_session,
                         static_cast<kap::Diag>(200)})
        bye(kAlpha, session, sent, d);
    EXPECT_EQ(drops(Drop::bad_diag), 4u);
    EXPECT_EQ(sink.events.size(), events);
    EXPECT_EQ(peer("alpha").state, PeerState::up);

    // seq == highest acknowledged is accepted (the unanswered probe may be lost).
    const TimePoint left_at = clock.now();
    const std::size_t replies = sink.sent.size();
    bye(kAlpha, session, acked);
    EXPECT_EQ(sink.sent.size(), replies) << "a goodbye is not answered";
    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::left);
    EXPECT_EQ(sink.events.back().previous, PeerState::up);
    EXPECT_EQ(peer("alpha").state, PeerState::left);
    EXPECT_EQ(server->peers().counts().in(PeerState::left), 1u);

    // A repeated goodbye changes nothing; ACKs are no longer accepted.
    bye(kAlpha, session, sent);
    EXPECT_EQ(sink.events.size(), events + 1);
    ack(kAlpha, session, sent, 0, 0x1111);
    EXPECT_EQ(peer("alpha").seq_acked, acked);

    const std::size_t probes = probes_to(kAlpha).size();
    run_until(left_at + 60s - 1ns);
    EXPECT_EQ(probes_to(kAlpha).size(), probes) << "left peers are not probed";
    EXPECT_TRUE(known("alpha"));
    EXPECT_EQ(sink.events.size(), events + 1);
    run_until(left_at + 60s);
    EXPECT_FALSE(known("alpha"));
    ASSERT_EQ(sink.events.size(), events + 2);
    EXPECT_EQ(sink.events.back().kind, EventKind::forgotten);
    EXPECT_EQ(sink.events.back().previous, PeerState::left);
    EXPECT_FALSE(server->next_deadline().has_value());
}

TEST_F(ServerTest, ByeWithAHigherSeqThanAcknowledgedIsAccepted) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(1s);
    bye(kAlpha, session, peer("alpha").seq_sent + 5);
    EXPECT_EQ(peer("alpha").state, PeerState::left);
}

TEST_F(ServerTest, LeftPeerRegisteringAgainIsUp) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(1s);
    bye(kAlpha, session, peer("alpha").seq_sent);
    ASSERT_EQ(peer("alpha").state, PeerState::left);
    const Sent s = register_with(reg("alpha"), kAlpha);
    ASSERT_EQ(s.type(), kap::Type::accept);
    EXPECT_EQ(s.msg.session, session);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(sink.events.back().kind, EventKind::up);
    EXPECT_EQ(sink.events.back().previous, PeerState::left);
    const std::size_t n = probes_to(kAlpha).size();
    run_for(1s);
    EXPECT_GE(probes_to(kAlpha).size(), n + 4);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    run_for(limits.forget_after + 1s);
    EXPECT_TRUE(known("alpha")) << "the forget timer of the left state was cancelled";
}

TEST_F(ServerTest, DownPeerRegisteringAgainIsUpWithTheSameSession) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(1s);
    responders[kAlpha].answering = false;
    run_for(2s);
    ASSERT_EQ(peer("alpha").state, PeerState::down);
    responders[kAlpha].answering = true;
    const Sent s = register_with(reg("alpha"), kAlpha);
    EXPECT_EQ(s.msg.session, session);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").missed, 0u);
    EXPECT_EQ(sink.events.back().kind, EventKind::up);
    // Probing is back at the granted interval.
    const std::size_t n = probes_to(kAlpha).size();
    run_for(2s);
    EXPECT_GE(probes_to(kAlpha).size(), n + 9);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
}

// ---- Moves and restarts ------------------------------------------------------

TEST_F(ServerTest, SameIncarnationFromANewAddressIsAMove) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    run_for(2s);
    const std::uint64_t seq = peer("alpha").seq_sent;
    const Address moved = addr("203.0.113.5:5555");
    const Route other_route{2, addr("192.0.2.2:7371")};
    responders[moved] = responders[kAlpha];
    responders.erase(kAlpha);
    const std::size_t events = sink.events.size();

    kap::Register r = reg("alpha");
    deliver_bytes(encode({.session = 0, .body = r}), moved, other_route);
    r.cookie = sink.sent.back().body<kap::Challenge>().cookie;
    deliver_bytes(encode({.session = 0, .body = r}), moved, other_route);
    ASSERT_EQ(sink.sent.back().type(), kap::Type::accept);
    EXPECT_EQ(sink.sent.back().msg.session, session);
    EXPECT_EQ(sink.sent.back().route, other_route);

    ASSERT_EQ(sink.events.size(), events + 1);
    const Event& e = sink.events.back();
    EXPECT_EQ(e.kind, EventKind::moved);
    EXPECT_EQ(e.previous, PeerState::up);
    EXPECT_EQ(e.address, moved);
    EXPECT_EQ(e.session, session);
    EXPECT_NE(e.reason.find(kAlpha.to_string()), std::string::npos) << e.reason;
    EXPECT_EQ(peer("alpha").address, moved);
    EXPECT_EQ(*peer("alpha").route, other_route);

    const std::size_t to_old = probes_to(kAlpha).size();
    const std::size_t before = sink.sent.size();
    run_for(2s);
    EXPECT_EQ(probes_to(kAlpha).size(), to_old);
    const auto probes = probes_to(moved, before);
    ASSERT_GE(probes.size(), 9u);
    EXPECT_EQ(probes[0].body<kap::Probe>().seq, seq + 1) << "same session, seq carries on";
    for (const Sent& s : probes) EXPECT_EQ(s.route, other_route);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(sink.events.size(), events + 1);

    // ACKs from the old address are now from the wrong source.
    const auto& last = probes.back().body<kap::Probe>();
    const std::uint64_t acked = peer("alpha").seq_acked;
    ack(kAlpha, session, last.seq, last.tx_time, 0x1111);
    EXPECT_EQ(drops(Drop::wrong_source), 1u);
    EXPECT_EQ(peer("alpha").seq_acked, acked);
}

TEST_F(ServerTest, NewIncarnationIsARestartWithANewSession) {
    const std::uint32_t old_session = add_peer("alpha", kAlpha, 200, 3, 0x1111);
    run_for(2s);
    ASSERT_GT(peer("alpha").seq_sent, 5u);
    const std::size_t events = sink.events.size();

    responders[kAlpha].incarnation = 0x2222;
    const Sent s = register_with(reg("alpha", 300, 4, 0x2222), kAlpha);
    ASSERT_EQ(s.type(), kap::Type::accept);
    const std::uint32_t new_session = s.msg.session;
    EXPECT_NE(new_session, old_session);
    EXPECT_NE(new_session, 0u);
    EXPECT_EQ(s.body<kap::Accept>().interval_ms, 300u);

    ASSERT_EQ(sink.events.size(), events + 1);
    EXPECT_EQ(sink.events.back().kind, EventKind::restarted);
    EXPECT_EQ(sink.events.back().previous, PeerState::up);
    EXPECT_EQ(sink.events.back().session, new_session);
    EXPECT_EQ(server->peers().size(), 1u);
    EXPECT_EQ(server->peers().find_session(old_session), PeerTable::kNone);
    EXPECT_EQ(server->peers().find_session(new_session), server->peers().find_name("alpha"));
    const Peer& p = peer("alpha");
    EXPECT_EQ(p.incarnation, 0x2222u);
    EXPECT_EQ(p.seq_sent, 0u);
    EXPECT_EQ(p.seq_acked, 0u);
    EXPECT_EQ(p.interval, 300ms);
    EXPECT_EQ(p.probes, 4);

    const std::size_t before = sink.sent.size();
    run_for(2s);
    const auto probes = probes_to(kAlpha, before);
    ASSERT_GE(probes.size(), 6u);
    EXPECT_EQ(probes[0].msg.session, new_session);
    EXPECT_EQ(probes[0].body<kap::Probe>().seq, 1u) << "seq restarts at 1";
    for (std::size_t i = 1; i < probes.size(); ++i) {
        EXPECT_EQ(probes[i].body<kap::Probe>().seq, i + 1);
        EXPECT_EQ(probes[i].at - probes[i - 1].at, 300ms);
    }
    EXPECT_EQ(peer("alpha").state, PeerState::up);

    // The old incarnation's session is unknown now.
    const std::size_t replies = sink.sent.size();
    ack(kAlpha, old_session, 1, 0, 0x1111);
    ASSERT_EQ(sink.sent.size(), replies + 1);
    EXPECT_EQ(sink.sent.back().msg.diag, kap::Diag::unknown_session);
    // And an ACK of the old incarnation on the new session is stale.
    ack(kAlpha, new_session, peer("alpha").seq_sent, 0, 0x1111);
    EXPECT_EQ(drops(Drop::stale_ack), 1u);
}

TEST_F(ServerTest, RestartOfADownPeerBringsItUp) {
    add_peer("alpha", kAlpha, 200, 3, 0x1111);
    run_for(1s);
    responders[kAlpha].answering = false;
    run_for(2s);
    ASSERT_EQ(peer("alpha").state, PeerState::down);
    responders[kAlpha] = Responder{0x3333, 5ms, true};
    register_with(reg("alpha", 200, 3, 0x3333), kAlpha);
    EXPECT_EQ(sink.events.back().kind, EventKind::restarted);
    EXPECT_EQ(sink.events.back().previous, PeerState::down);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    run_for(5s);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("alpha").missed, 0u);
}

// ---- Unknown sessions ----------------------------------------------------------

TEST_F(ServerTest, UnknownSessionsAreAnsweredWithRateLimitedBye7) {
    clock.advance(5s);
    const Bytes ack_bytes = encode({.session = 0xDEAD, .body = kap::Ack{9, 9, 9}});
    const Bytes bye_bytes =
        encode({.diag = kap::Diag::shutting_down, .session = 0xBEEF, .body = kap::Bye{3}});
    const auto count_bye7 = [&](std::size_t from) {
        std::size_t n = 0;
        for (const Sent& s : sent_since(from)) {
            EXPECT_EQ(s.type(), kap::Type::bye);
            EXPECT_EQ(s.msg.diag, kap::Diag::unknown_session);
            EXPECT_EQ(s.msg.session, 0u);
            EXPECT_EQ(s.body<kap::Bye>().seq, 0u);
            EXPECT_EQ(s.bytes.size(), 20u);
            ++n;
        }
        return n;
    };

    std::size_t before = sink.sent.size();
    for (int i = 0; i < 10; ++i) deliver_bytes(i % 2 ? ack_bytes : bye_bytes, kAlpha);
    EXPECT_EQ(count_bye7(before), ServerCore::kUnknownSessionRepliesPerSecond);
    EXPECT_EQ(drops(Drop::unknown_session), 10u);
    EXPECT_EQ(drops(Drop::rate_limited), 10u - ServerCore::kUnknownSessionRepliesPerSecond);

    // The budget is per host, not per port.
    Address same_host = kAlpha;
    same_host.set_port(999);
    before = sink.sent.size();
    deliver_bytes(ack_bytes, same_host);
    EXPECT_EQ(count_bye7(before), 0u);
    // Another host has its own.
    before = sink.sent.size();
    for (int i = 0; i < 10; ++i) deliver_bytes(ack_bytes, kGamma);
    EXPECT_EQ(count_bye7(before), ServerCore::kUnknownSessionRepliesPerSecond);

    // Still the same second.
    clock.advance(999ms);
    before = sink.sent.size();
    deliver_bytes(ack_bytes, kAlpha);
    EXPECT_EQ(count_bye7(before), 0u);
    // The next one.
    clock.advance(1ms);
    before = sink.sent.size();
    for (int i = 0; i < 10; ++i) deliver_bytes(ack_bytes, kAlpha);
    EXPECT_EQ(count_bye7(before), ServerCore::kUnknownSessionRepliesPerSecond);

    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_TRUE(sink.events.empty());
}

// BYE diag 7 is what a server sends. If a server answered one with another,
// a single datagram spoofed from server A to server B would start an endless
// exchange between them.
TEST_F(ServerTest, Bye7IsNeverAnswered) {
    clock.advance(5s);
    const std::uint32_t session = add_peer("alpha", kAlpha);
    const std::size_t sent = sink.sent.size();
    bye(kGamma, 0, 0, kap::Diag::unknown_session);
    bye(kGamma, 0x1234, 0, kap::Diag::unknown_session);
    bye(kAlpha, session, 0, kap::Diag::unknown_session);
    EXPECT_EQ(sink.sent.size(), sent);
    EXPECT_EQ(drops(Drop::bad_diag), 3u);
    EXPECT_EQ(peer("alpha").state, PeerState::up);

    // Two servers wired back to back, one spoofed BYE 7 between them: silence.
    SeededRandom other_random{43};
    RecordingSink other_sink{clock};
    ServerCore other(limits, other_random, other_sink, clock.now());
    const Address a = addr("192.0.2.10:7371"), b = addr("192.0.2.20:7371");
    std::vector<std::pair<bool, Bytes>> wire = {
        {true, encode({.diag = kap::Diag::unknown_session, .session = 0, .body = kap::Bye{0}})}};
    std::size_t hops = 0, seen_a = sink.sent.size(), seen_b = 0;
    while (!wire.empty() && hops < 100) {
        auto [to_b, bytes] = wire.back();
        wire.pop_back();
        ++hops;
        if (to_b) {
            other.on_datagram(bytes, a, route, clock.now());
        } else {
            server->on_datagram(bytes, b, route, clock.now());
        }
        for (; seen_a < sink.sent.size(); ++seen_a) wire.push_back({true, sink.sent[seen_a].bytes});
        for (; seen_b < other_sink.sent.size(); ++seen_b)
            wire.push_back({false, other_sink.sent[seen_b].bytes});
    }
    EXPECT_EQ(hops, 1u);
}

TEST_F(ServerTest, RateLimitDoesNotTouchKnownSessions) {
    const std::uint32_t session = add_peer("alpha", kAlpha, 200, 3);
    clock.advance(2s);
    const Bytes junk = encode({.session = session ^ 1, .body = kap::Ack{9, 9, 9}});
    for (int i = 0; i < 100; ++i) deliver_bytes(junk, kAlpha);
    run_for(5s);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_GT(peer("alpha").acks_received, 20u);
}

// ---- Malformed datagrams -------------------------------------------------------

class MalformedTest : public ServerTest {
protected:
    void SetUp() override {
        ServerTest::SetUp();
        session = add_peer("alpha", kAlpha, 200, 3);
        add_peer("beta", kBeta, 200, 3);
        run_for(1s);
        responders[kAlpha].answering = false;
        run_for(450ms);  // alpha suspect, with an ACK it could still send
        ASSERT_EQ(peer("alpha").state, PeerState::suspect);
        const Peer& p = peer("alpha");
        valid_ack = encode(
            {.session = session, .body = kap::Ack{p.seq_sent, wire_time(clock.now()), 0x1111}});
        valid_bye = encode(
            {.diag = kap::Diag::shutting_down, .session = session, .body = kap::Bye{p.seq_sent}});
        kap::Register r = reg("gamma");
        deliver({.session = 0, .body = r}, kAlpha);
        r.cookie = sink.sent.back().body<kap::Challenge>().cookie;
        valid_register = encode({.session = 0, .body = r});
        remember();
    }

    void remember() {
        snap = snapshot(server->peers());
        events = sink.events.size();
        sent = sink.sent.size();
        dropped = total_drops();
        deadline = server->next_deadline();
    }

    // Delivers bytes that must be dropped: nothing changes, one drop counted.
    void expect_dropped(std::span<const std::uint8_t> b, const Address& from,
                        const std::string& what) {
        deliver_bytes(b, from);
        EXPECT_EQ(total_drops(), dropped + 1) << what;
        EXPECT_EQ(snapshot(server->peers()), snap) << what;
        EXPECT_EQ(sink.events.size(), events) << what;
        EXPECT_EQ(sink.sent.size(), sent) << what << ": a malformed datagram is never answered";
        EXPECT_EQ(server->next_deadline(), deadline) << what;
        dropped = total_drops();
    }

    std::uint32_t session = 0;
    Bytes valid_ack, valid_bye, valid_register;
    std::vector<PeerSnap> snap;
    std::size_t events = 0, sent = 0;
    std::uint64_t dropped = 0;
    std::optional<TimePoint> deadline;
};

Bytes with_length(Bytes b) {
    b[6] = static_cast<std::uint8_t>(b.size() >> 8);
    b[7] = static_cast<std::uint8_t>(b.size());
    return b;
}

TEST_F(MalformedTest, EachFramingRuleHasItsCounter) {
    struct Case {
        const char* what;
        std::function<Bytes(Bytes)> mutate;
        Drop drop;
    };
    // clang-format off
    const std::vector<Case> cases = {
        {"empty", [](Bytes) { return Bytes{}; }, Drop::too_short},
        {"11 bytes", [](Bytes b) { b.resize(11); return b; }, Drop::too_short},
        {"magic 0", [](Bytes b) { b[0] = 0x4A; return b; }, Drop::bad_magic},
        {"magic 1", [](Bytes b) { b[1] = 0x00; return b; }, Drop::bad_magic},
        {"version 0", [](Bytes b) { b[2] = 0; return b; }, Drop::bad_version},
        {"version 2", [](Bytes b) { b[2] = 2; return b; }, Drop::bad_version},
        {"length +1", [](Bytes b) { ++b[7]; return b; }, Drop::bad_length},
        {"length -1", [](Bytes b) { --b[7]; return b; }, Drop::bad_length},
        {"length high", [](Bytes b) { b[6] = 1; return b; }, Drop::bad_length},
        {"truncated", [](Bytes b) { b.pop_back(); return b; }, Drop::bad_length},
        {"extended", [](Bytes b) { b.push_back(0); return b; }, Drop::bad_length},
        {"flag 2", [](Bytes b) { b[4] = 0x02; return b; }, Drop::bad_flags},
        {"flag 0x80", [](Bytes b) { b[4] = 0x81; return b; }, Drop::bad_flags},
        {"type 0", [](Bytes b) { b[3] = 0; return b; }, Drop::bad_type},
        {"type 8", [](Bytes b) { b[3] = 8; return b; }, Drop::bad_type},
        {"type 255", [](Bytes b) { b[3] = 255; return b; }, Drop::bad_type},
        {"body +4", [](Bytes b) { b.resize(b.size() + 4); return with_length(b); }, Drop::bad_size},
        {"body -1", [](Bytes b) { b.pop_back(); return with_length(b); }, Drop::bad_size},
        {"ack <-> bye", [](Bytes b) { b[3] = b[3] == 6 ? 7 : 6; return b; }, Drop::bad_size},
        {"auth without room", [](Bytes b) { b[4] = 1; return b; }, Drop::bad_size},
        {"auth trailer, no keys",
         [](Bytes b) {
             b[4] = 1;
             b.resize(b.size() + kap::kAuthTrailerSize, 0x5A);
             return with_length(b);
         },
         Drop::unauthenticated},
    };
    // clang-format on
    for (const Case& c : cases) {
        for (const Bytes* base : {&valid_ack, &valid_bye}) {
            const std::uint64_t before = drops(c.drop);
            expect_dropped(c.mutate(*base), kAlpha, c.what);
            EXPECT_EQ(drops(c.drop), before + 1) << c.what;
        }
    }
    // The unmodified datagrams were valid all along.
    deliver_bytes(valid_ack, kAlpha);
    EXPECT_EQ(peer("alpha").state, PeerState::up);
}

TEST_F(MalformedTest, ServerToPeerTypesAreWrongDirection) {
    const std::vector<kap::Message> msgs = {
        {.session = 0, .body = kap::Challenge{1, {}}},
        {.session = session, .body = kap::Accept{1, 2, 200, 3}},
        {.diag = kap::Diag::invalid_parameters, .session = 0, .body = kap::Reject{1}},
        {.session = session, .body = kap::Probe{1, 2}},
    };
    for (const auto& m : msgs)
        expect_dropped(encode(m), kAlpha, std::string(kap::to_string(kap::type_of(m))));
    EXPECT_EQ(drops(Drop::wrong_direction), msgs.size());
}

TEST_F(MalformedTest, EveryTruncationIsDropped) {
    for (const Bytes* base : {&valid_ack, &valid_bye, &valid_register}) {
        for (std::size_t n = 0; n < base->size(); ++n) {
            const Bytes b(base->begin(), base->begin() + static_cast<std::ptrdiff_t>(n));
            expect_dropped(b, kAlpha, "truncated to " + std::to_string(n));
            // Even with the length field fixed up to match, the body is short.
            if (n >= kap::kHeaderSize)
                expect_dropped(with_length(b), kAlpha, "fixed " + std::to_string(n));
        }
    }
}

TEST_F(MalformedTest, BitFlipsThatBreakFramingAreDropped) {
    std::size_t malformed = 0;
    for (const Bytes* base : {&valid_ack, &valid_bye, &valid_register}) {
        for (std::size_t bit = 0; bit < base->size() * 8; ++bit) {
            Bytes b = *base;
            b[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
            if (kap::decode(b).ok()) continue;  // well-formed: a different, valid request
            ++malformed;
            expect_dropped(b, kAlpha, "bit " + std::to_string(bit));
        }
    }
    // Every header bit outside diag and session (7 bytes) breaks framing, but
    // one: an ACK (type 6) with bit 2 of its type flipped is a CHALLENGE (type 2)
    // of the same size.
    EXPECT_GE(malformed, 3u * 7u * 8u - 1u);
}

// Random datagrams from everywhere, including the peers' own addresses, while
// the peers are probed: undecodable ones change nothing and are all counted;
// decodable ones from strangers never touch the known peers either.
TEST_F(ServerTest, RandomisedFloodNeverChangesPeerState) {
    const std::uint64_t seed = test_seed();
    std::cout << "KEEPALIVE_TEST_SEED=" << seed << "\n";
    RecordProperty("seed", std::to_string(seed));
    SCOPED_TRACE("KEEPALIVE_TEST_SEED=" + std::to_string(seed));
    std::mt19937_64 rng(seed);

    const std::uint32_t sa = add_peer("alpha", kAlpha, 200, 3);
    const std::uint32_t sb = add_peer("beta", kBeta, 100, 5);
    run_for(1s);
    const std::size_t events = sink.events.size();
    const std::vector<Address> sources = {kAlpha, kBeta, kGamma, addr("10.0.0.1:1"),
                                          addr("[::1]:7371")};

    std::vector<Bytes> templates = {
        encode({.session = sa, .body = kap::Ack{1, 2, 0x1111}}),
        encode({.diag = kap::Diag::shutting_down, .session = sb, .body = kap::Bye{1}}),
        encode({.session = 0, .body = reg("alpha")}),
        encode({.session = sa, .body = kap::Probe{1, 2}}),
        encode({.session = 0, .body = kap::Accept{1, 2, 3, 4}}),
    };
    std::uint64_t malformed = 0;
    std::uint64_t drops_before = total_drops();
    const std::uint64_t wrong_before = drops(Drop::wrong_direction);
    const std::uint64_t unknown_before = drops(Drop::unknown_session);
    std::uint64_t wellformed_wrong_direction = 0, wellformed_unknown = 0;

    for (int round = 0; round < 200; ++round) {
        for (int i = 0; i < 100; ++i) {
            Bytes b;
            switch (rng() % 4) {
                case 0:  // noise
                    b.resize(rng() % 400);
                    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
                    break;
                case 1: {  // a template, truncated or extended
                    b = templates[rng() % templates.size()];
                    b.resize(rng() % (b.size() + 40));
                    if (rng() % 2 && b.size() >= 8) b = with_length(b);
                    break;
                }
                case 2: {  // a template with random bytes overwritten
                    b = templates[rng() % templates.size()];
                    const int n = 1 + static_cast<int>(rng() % 4);
                    for (int k = 0; k < n; ++k)
                        b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
                    break;
                }
                default: {  // a template with header bytes overwritten
                    b = templates[rng() % templates.size()];
                    b[rng() % kap::kHeaderSize] = static_cast<std::uint8_t>(rng());
                    break;
                }
            }
            const Address& from = sources[rng() % sources.size()];
            auto decoded = kap::decode(b);
            if (!decoded) {
                ++malformed;
                const auto snap = snapshot(server->peers());
                const std::size_t sent = sink.sent.size();
                deliver_bytes(b, from);
                ASSERT_EQ(snapshot(server->peers()), snap);
                ASSERT_EQ(sink.sent.size(), sent);
            } else if (from != kAlpha && from != kBeta) {
                const auto t = kap::type_of(*decoded);
                if (t != kap::Type::register_ && t != kap::Type::ack && t != kap::Type::bye)
                    ++wellformed_wrong_direction;
                else if (t != kap::Type::register_ && decoded->session != sa &&
                         decoded->session != sb &&
                         !(t == kap::Type::bye && decoded->diag == kap::Diag::unknown_session))
                    ++wellformed_unknown;
                deliver_bytes(b, from);  // checks: never larger than the request
            }
        }
        run_for(50ms);  // the peers keep answering their probes meanwhile
    }
    std::cout << malformed << " malformed datagrams\n";
    EXPECT_GT(malformed, 10'000u);
    EXPECT_EQ(drops(Drop::wrong_direction) - wrong_before, wellformed_wrong_direction);
    EXPECT_EQ(drops(Drop::unknown_session) - unknown_before, wellformed_unknown);
    EXPECT_GE(total_drops() - drops_before, malformed);
    std::uint64_t framing = 0;
    for (std::size_t i = 0; i < kap::kDecodeErrorCount; ++i)
        framing += drops(drop_for(static_cast<kap::DecodeError>(i)));
    EXPECT_EQ(framing, malformed);

    // Strangers may have registered names of their own, but alpha and beta never changed.
    for (std::size_t i = events; i < sink.events.size(); ++i) {
        EXPECT_NE(sink.events[i].name, "alpha");
        EXPECT_NE(sink.events[i].name, "beta");
    }
    EXPECT_EQ(peer("alpha").state, PeerState::up);
    EXPECT_EQ(peer("beta").state, PeerState::up);
    EXPECT_EQ(peer("alpha").session, sa);
    EXPECT_EQ(peer("beta").session, sb);
    EXPECT_EQ(peer("alpha").address, kAlpha);
}

// ---- Shutdown ------------------------------------------------------------------

TEST_F(ServerTest, ShutdownSaysGoodbyeToEveryPeerNotGone) {
    limits.forget_after = 1h;
    make_server();
    const std::uint32_t sa = add_peer("alpha", kAlpha, 200, 3);
    const std::uint32_t sb = add_peer("beta", kBeta, 200, 3);
    const std::uint32_t sg = add_peer("gamma", kGamma, 300, 3);
    run_for(2s);
    bye(kBeta, sb, peer("beta").seq_sent);
    responders[kGamma].answering = false;
    run_for(3s);
    ASSERT_EQ(peer("gamma").state, PeerState::down);
    ASSERT_EQ(peer("beta").state, PeerState::left);

    const std::size_t before = sink.sent.size();
    server->shutdown();
    const auto byes = sent_since(before);
    ASSERT_EQ(byes.size(), 2u);
    std::map<std::uint32_t, Sent> by_session;
    for (const Sent& s : byes) {
        EXPECT_EQ(s.type(), kap::Type::bye);
        EXPECT_EQ(s.msg.diag, kap::Diag::shutting_down);
        EXPECT_EQ(s.route, route);
        by_session[s.msg.session] = s;
    }
    ASSERT_EQ(by_session.count(sa), 1u);
    ASSERT_EQ(by_session.count(sg), 1u);
    EXPECT_EQ(by_session[sa].to, kAlpha);
    EXPECT_EQ(by_session[sa].body<kap::Bye>().seq, peer("alpha").seq_sent);
    EXPECT_EQ(by_session[sg].to, kGamma);
    EXPECT_EQ(by_session[sg].body<kap::Bye>().seq, peer("gamma").seq_sent);
    EXPECT_GT(peer("gamma").seq_sent, 0u);
}

TEST_F(ServerTest, ShutdownBeforeAnyProbeCarriesSeqZero) {
    const std::uint32_t s = add_peer("alpha", kAlpha);
    server->shutdown();
    ASSERT_EQ(sink.sent.back().type(), kap::Type::bye);
    EXPECT_EQ(sink.sent.back().msg.session, s);
    EXPECT_EQ(sink.sent.back().body<kap::Bye>().seq, 0u);
}

// ---- Scale ---------------------------------------------------------------------

TEST_F(ServerTest, TenThousandPeersAreEachProbedOncePerInterval) {
    constexpr int kPeers = 10'000;
    const TimePoint t0 = clock.now();
    std::vector<Address> addrs;
    for (int i = 0; i < kPeers; ++i) {
        addrs.push_back(Address::v4(0x0A000000u + static_cast<std::uint32_t>(i / 100),
                                    static_cast<std::uint16_t>(20000 + i % 100)));
        add_peer("peer-" + std::to_string(i), addrs.back(), 1000, 3,
                 0x1000u + static_cast<unsigned>(i), 1ms);
    }
    ASSERT_EQ(server->peers().size(), static_cast<std::size_t>(kPeers));
    EXPECT_EQ(clock.now(), t0);

    run_until(t0 + 4s);
    std::unordered_map<Address, std::vector<TimePoint>, AddressHash> times;
    for (const Sent& s : sink.sent)
        if (s.type() == kap::Type::probe) times[s.to].push_back(s.at);
    ASSERT_EQ(times.size(), static_cast<std::size_t>(kPeers));
    std::vector<int> phase_ms;
    TimePoint earliest_next = TimePoint::max();
    for (const Address& a : addrs) {
        const auto& t = times[a];
        ASSERT_EQ(t.size(), 4u) << a.to_string();
        for (int k = 0; k < 4; ++k) {
            // Exactly one probe in each interval (t0 + k s, t0 + (k+1) s].
            EXPECT_GT(t[static_cast<std::size_t>(k)], t0 + std::chrono::seconds(k));
            EXPECT_LE(t[static_cast<std::size_t>(k)], t0 + std::chrono::seconds(k + 1));
            if (k > 0) {
                EXPECT_EQ(t[static_cast<std::size_t>(k)] - t[static_cast<std::size_t>(k) - 1], 1s);
            }
        }
        phase_ms.push_back(static_cast<int>((t[0] - t0) / 1ms));
        earliest_next = std::min(earliest_next, t.back() + 1s);
    }
    std::sort(phase_ms.begin(), phase_ms.end());
    const auto distinct = std::unique(phase_ms.begin(), phase_ms.end()) - phase_ms.begin();
    EXPECT_GT(distinct, 900) << "peers probe in lockstep";

    ASSERT_TRUE(server->next_deadline().has_value());
    EXPECT_EQ(*server->next_deadline(), earliest_next);
    EXPECT_LE(timer_calls, 4u * 1000u) << "at most one wake-up per millisecond with work";
    EXPECT_EQ(server->peers().counts().in(PeerState::up), static_cast<std::size_t>(kPeers));
    EXPECT_EQ(sink.events.size(), static_cast<std::size_t>(kPeers));  // the registrations
    EXPECT_EQ(total_drops(), 0u);

    // All of them falling silent: all down exactly probes × interval after their
    // first unanswered probe.
    for (auto& [a, r] : responders) r.answering = false;
    const std::size_t events = sink.events.size();
    std::unordered_map<Address, TimePoint, AddressHash> first_unanswered;
    const std::size_t mark = sink.sent.size();
    run_until(t0 + 8s);
    for (std::size_t i = mark; i < sink.sent.size(); ++i)
        if (sink.sent[i].type() == kap::Type::probe)
            first_unanswered.emplace(sink.sent[i].to, sink.sent[i].at);
    std::size_t downs = 0;
    for (std::size_t i = events; i < sink.events.size(); ++i) {
        const Event& e = sink.events[i];
        if (e.kind != EventKind::down) continue;
        ++downs;
        EXPECT_EQ(e.since, first_unanswered.at(e.address) + 3s);
        EXPECT_EQ(e.at, e.since);
    }
    EXPECT_EQ(downs, static_cast<std::size_t>(kPeers));
}

// ---- Defences: what one host, or the daemon's own overload, may do ---------

TEST_F(ServerTest, OneHostIsCappedWhileOthersStillRegister) {
    limits.max_per_host = 3;
    make_server();
    for (int i = 0; i < 3; ++i)
        add_peer("a" + std::to_string(i),
                 addr(("198.51.100.7:" + std::to_string(40000 + i)).c_str()));
    const auto before = snapshot(server->peers());
    const Sent refused = register_with(reg("a3"), addr("198.51.100.7:40003"));
    ASSERT_EQ(refused.type(), kap::Type::reject);
    EXPECT_EQ(refused.msg.diag, kap::Diag::server_full);
    EXPECT_EQ(snapshot(server->peers()), before);
    // Another host is not affected, and a known name renews within the cap.
    EXPECT_EQ(register_with(reg("b0"), kBeta).type(), kap::Type::accept);
    EXPECT_EQ(register_with(reg("a0"), addr("198.51.100.7:40000")).type(), kap::Type::accept);
    // A takeover counts against the host taking over.
    EXPECT_EQ(register_with(reg("b0", 200, 3, 0x2222), addr("198.51.100.7:40009")).type(),
              kap::Type::reject);
    EXPECT_EQ(peer("b0").address, kBeta);
}

TEST_F(ServerTest, TakeoverFromAnotherHostIsReportedAsAMoveWithBothAddresses) {
    add_peer("db1", kAlpha, 200, 3, 0x1111);
    const std::size_t e = sink.events.size();
    const Sent s = register_with(reg("db1", 200, 3, 0x2222), kBeta);
    ASSERT_EQ(s.type(), kap::Type::accept);
    const auto events = events_since(e);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, EventKind::moved);
    EXPECT_EQ(events[0].address, kBeta);
    EXPECT_EQ(events[0].previous_address, kAlpha);
    EXPECT_NE(events[0].reason.find(kAlpha.to_string()), std::string::npos) << events[0].reason;
    // From the same host, a new incarnation is a restart, as before.
    const std::size_t e2 = sink.events.size();
    ASSERT_EQ(register_with(reg("db1", 200, 3, 0x3333), kBeta).type(), kap::Type::accept);
    ASSERT_EQ(events_since(e2).size(), 1u);
    EXPECT_EQ(events_since(e2)[0].kind, EventKind::restarted);
}

TEST_F(ServerTest, ASessionThatNeverAnswersIsDownWithinProbesSecondsAndSoonForgotten) {
    // Granted an hour x 3, it would hold its slot for hours without a word.
    limits.max_interval = 1h;
    make_server();
    responders[kAlpha] = Responder{0x1111, 5ms, false};
    ASSERT_EQ(register_with(reg("mute", 3'600'000, 3), kAlpha).type(), kap::Type::accept);
    run_for(3s);
    EXPECT_EQ(peer("mute").state, PeerState::suspect);
    run_for(2s);
    EXPECT_EQ(peer("mute").state, PeerState::down);
    EXPECT_EQ(probes_to(kAlpha).size(), 4u);  // three unanswered, one slow probe at down
    run_for(ServerCore::kUnansweredForgetAfter);
    EXPECT_FALSE(known("mute"));
    EXPECT_EQ(sink.events.back().kind, EventKind::forgotten);
}

TEST_F(ServerTest, AnAnsweringSessionLeavesProbationForItsGrantedInterval) {
    limits.max_interval = 1h;
    make_server();
    add_peer("slow", kAlpha, 60'000, 3);
    run_for(2s);
    ASSERT_EQ(probes_to(kAlpha).size(), 1u);  // the first within a second, answered
    run_for(59s);
    EXPECT_EQ(probes_to(kAlpha).size(), 2u);
    const auto p = probes_to(kAlpha);
    EXPECT_EQ(p[1].at - p[0].at, 60s);
    EXPECT_EQ(peer("slow").state, PeerState::up);
}

TEST_F(ServerTest, DoubtAboutOwnReceptionWithholdsOneVerdictNotMore) {
    add_peer("p", kAlpha, 200, 1);
    run_for(1s);
    ASSERT_EQ(peer("p").state, PeerState::up);
    // The next probe goes unanswered; the daemon then finds it lost datagrams.
    const TimePoint probe_at = silence_until_next_probe(kAlpha);
    run_for(50ms);
    server->doubt_receive(clock.now());
    run_until(probe_at + 200ms);
    EXPECT_EQ(peer("p").state, PeerState::up) << "a verdict on evidence the daemon may have lost";
    EXPECT_EQ(server->verdicts_withheld(), 1u);
    // The probe after the doubt is fair evidence: down one interval later.
    run_until(probe_at + 400ms);
    EXPECT_EQ(peer("p").state, PeerState::down);
    EXPECT_EQ(sink.events.back().at, probe_at + 400ms);
}

// ACKs left in a queue deeper than one step reads are doubted like lost
// ones, but a queue is no overflow: it sheds nothing.
TEST_F(ServerTest, DatagramsLeftUnreadWithholdAVerdictAndShedNothing) {
    add_peer("p", kAlpha, 200, 1);
    run_for(1s);
    const TimePoint probe_at = silence_until_next_probe(kAlpha);
    run_for(50ms);
    server->doubt_unread(clock.now());
    run_until(probe_at + 200ms);
    EXPECT_EQ(peer("p").state, PeerState::up);
    EXPECT_EQ(server->verdicts_withheld(), 1u);
    run_until(probe_at + 400ms);
    EXPECT_EQ(peer("p").state, PeerState::down);
    // An overflow then would have a newcomer told busy for 3 s after its
    // window closed.
    run_until(probe_at + 1200ms);
    add_peer("q", kBeta, 200, 1);
    EXPECT_EQ(peer("q").state, PeerState::up);
    EXPECT_EQ(server->registrations_shed(), 0u);
    EXPECT_EQ(server->load().episodes(), 0u);
}

TEST_F(ServerTest, ADeadPeerIsFoundEvenWhileTheServerKeepsDoubting) {
    add_peer("p", kAlpha, 200, 2);
    run_for(1s);
    const TimePoint first_unanswered = silence_until_next_probe(kAlpha);
    // The server loses datagrams all the time from now on.
    while (peer("p").state != PeerState::down && clock.now() < first_unanswered + 10s) {
        run_for(10ms);
        server->doubt_receive(clock.now());
    }
    ASSERT_EQ(peer("p").state, PeerState::down);
    EXPECT_EQ(server->verdicts_withheld(), ServerCore::kMaxWithheld);
    // Detection is late by the withheld probes, and no more.
    EXPECT_EQ(sink.events.back().at, first_unanswered + (2 + ServerCore::kMaxWithheld) * 200ms);
}

// The daemon was stopped (SIGSTOP, a starved or paused VM) for 1.5 s and came
// back 2 ms before one of the peer's probe times: the probe it sends at once
// has 2 ms to be answered, and this peer needs 30.
TEST_F(ServerTest, AProbeTheServerSentTooLateToBeAnsweredIsNoEvidence) {
    responders[kAlpha] = Responder{0x1111, 30ms, true};
    add_peer("p", kAlpha, 100, 1);
    run_for(1s);
    ASSERT_EQ(peer("p").state, PeerState::up);
    const TimePoint last = probes_to(kAlpha).back().at;
    const std::size_t events_before = sink.events.size();

    const std::size_t before = sink.sent.size();
    clock.set(last + 1598ms);
    server->on_timer(clock.now());
    dispatch(before);
    ASSERT_EQ(probes_to(kAlpha).back().at, last + 1598ms);
    run_for(1s);
    EXPECT_EQ(peer("p").state, PeerState::up);
    EXPECT_EQ(sink.events.size(), events_before) << sink.events.back().reason;
    EXPECT_EQ(server->verdicts_withheld(), 1u);
}

TEST_F(ServerTest, APeerThatDiedWhileTheServerWasStoppedIsDownOneProbeLater) {
    responders[kAlpha] = Responder{0x1111, 30ms, true};
    add_peer("p", kAlpha, 100, 2);
    run_for(1s);
    const TimePoint last = probes_to(kAlpha).back().at;
    responders[kAlpha].answering = false;

    clock.set(last + 1598ms);
    server->on_timer(clock.now());
    run_for(1s);
    ASSERT_EQ(peer("p").state, PeerState::down);
    EXPECT_EQ(server->verdicts_withheld(), 1u);
    // The rushed probe (sent at +1598 ms) was not counted: the two after it were.
    EXPECT_EQ(sink.events.back().at, last + 1600ms + 2 * 100ms);
}

TEST_F(ServerTest, OversizedDatagramsCountAsReceived) {
    const auto before = server->datagrams_received();
    server->count_dropped_datagram(Drop::bad_length);
    EXPECT_EQ(server->datagrams_received(), before + 1);
    EXPECT_EQ(drops(Drop::bad_length), 1u);
}

}  // namespace
}  // namespace keepalive
