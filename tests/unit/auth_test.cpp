// Authentication in the protocol core: the keys file parser, and a server and
// a peer session that sign with their active key and accept only datagrams
// signed with a key they hold. Fake clock, no sockets.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/keys_file.hpp"
#include "core/peer_session.hpp"
#include "core/server.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using test_support::addr;
using test_support::Bytes;
using test_support::drop_count;
using test_support::kStart;

const std::string kHex1(64, 'a');  // 32 bytes of 0xaa
const std::string kHex2(64, 'b');
const std::string kHex3(96, 'c');  // 48 bytes

// ---- keys file --------------------------------------------------------------

::testing::AssertionResult fails_at(const std::string& text, std::uint32_t line,
                                    std::uint32_t column, std::string_view fragment) {
    const auto r = parse_keys(text, "keys");
    if (r) return ::testing::AssertionFailure() << "parsed without error:\n" << text;
    const auto& e = r.error();
    if (e.file == "keys" && e.line == line && e.column == column &&
        e.message.find(fragment) != std::string::npos)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << e.to_string() << "\nexpected keys:" << line
                                         << ":" << column << ": ..." << fragment << "...";
}

TEST(KeysFile, ParsesIdsKeysCommentsAndBlankLines) {
    const auto r = parse_keys("# rotation set\n\n  7 " + kHex1 + "  # old\n0x10\t" + kHex3 +
                                  "\r\n4294967295 " + kHex2 + "\n",
                              "keys");
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->size(), 3u);
    ASSERT_NE(r->active(), nullptr);
    EXPECT_EQ(r->active()->id, 7u);  // the first line
    EXPECT_EQ(r->find(7)->secret, std::vector<std::uint8_t>(32, 0xaa));
    EXPECT_EQ(r->find(16)->secret, std::vector<std::uint8_t>(48, 0xcc));
    EXPECT_EQ(r->find(4294967295u)->secret, std::vector<std::uint8_t>(32, 0xbb));
}

TEST(KeysFile, EveryMalformedLineIsAnErrorAtItsLineAndColumn) {
    EXPECT_TRUE(fails_at("", 1, 1, "holds no key"));
    EXPECT_TRUE(fails_at("# only a comment\n\n", 1, 1, "holds no key"));
    EXPECT_TRUE(fails_at("x1 " + kHex1 + "\n", 1, 1, "key id \"x1\" is not a number"));
    EXPECT_TRUE(fails_at("4294967296 " + kHex1, 1, 1, "is not a number"));
    EXPECT_TRUE(fails_at("-1 " + kHex1, 1, 1, "is not a number"));
    EXPECT_TRUE(fails_at("1 " + kHex1 + "\n\n  1 " + kHex2, 3, 3, "listed twice"));
    EXPECT_TRUE(fails_at("\n1\n", 2, 2, "has no key"));
    EXPECT_TRUE(fails_at("1 # no key\n", 1, 3, "has no key"));
    EXPECT_TRUE(fails_at("1 " + kHex1.substr(0, 10) + "g" + kHex1, 1, 13, "not a hex digit"));
    EXPECT_TRUE(fails_at("1 " + kHex1 + "a", 1, 3, "odd number of hex digits"));
    EXPECT_TRUE(fails_at("1 " + kHex1.substr(0, 62), 1, 3, "must be 32 to 128 bytes"));
    EXPECT_TRUE(fails_at("1 " + std::string(258, 'a'), 1, 3, "not 129"));
    EXPECT_TRUE(fails_at("1 " + kHex1 + " extra", 1, 68, "unexpected \"extra\""));
    EXPECT_TRUE(fails_at(std::string("1 ") + '\0', 1, 3, "NUL"));
}

// ---- server and peer with keys ------------------------------------------------

kap::KeyRing ring(std::initializer_list<std::pair<std::uint32_t, std::uint8_t>> keys) {
    kap::KeyRing r;
    for (auto [id, fill] : keys) r.add({id, std::vector<std::uint8_t>(32, fill)});
    return r;
}

struct Wire final : ServerSink, PeerSessionSink {
    // server -> peer
    void send(const Route&, const Address& to, std::span<const std::uint8_t> d) override {
        to_peer.push_back({to, Bytes(d.begin(), d.end())});
    }
    void peer_event(const PeerEvent& e) override { events.push_back(e.kind); }
    // peer -> server
    void send(std::span<const std::uint8_t> d) override {
        to_server.emplace_back(d.begin(), d.end());
    }
    void session_event(const SessionEvent&) override {}

    std::vector<std::pair<Address, Bytes>> to_peer;
    std::vector<Bytes> to_server;
    std::vector<EventKind> events;
};

class AuthTest : public ::testing::Test {
protected:
    void make(std::optional<kap::KeyRing> server_keys, std::optional<kap::KeyRing> peer_keys) {
        server = std::make_unique<ServerCore>(PeerLimits{}, random, wire, clock.now());
        server->set_auth(std::move(server_keys));
        peer = std::make_unique<PeerSession>(
            PeerSessionOptions{"db1", 100, 3, std::move(peer_keys)}, peer_random, wire);
    }

    // Moves datagrams both ways at once, stepping the clock 1 ms at a time and
    // firing timers that fall due.
    void run_for(Duration d) {
        const TimePoint until = clock.now() + d;
        while (clock.now() < until) {
            pump();
            clock.advance(1ms);
            if (auto t = server->next_deadline(); t && *t <= clock.now())
                server->on_timer(clock.now());
            if (auto t = peer->next_deadline(); t && *t <= clock.now()) peer->on_timer(clock.now());
        }
        pump();
    }
    void pump() {
        while (!wire.to_peer.empty() || !wire.to_server.empty()) {
            auto to_server = std::move(wire.to_server);
            wire.to_server.clear();
            for (const auto& d : to_server) deliver(d);
            auto to_peer = std::move(wire.to_peer);
            wire.to_peer.clear();
            for (const auto& [to, d] : to_peer) {
                ++answers;
                peer->on_datagram(d, clock.now());
            }
        }
    }
    void deliver(const Bytes& d) {
        const std::size_t before = wire.to_peer.size();
        server->on_datagram(d, peer_addr, route, clock.now());
        for (std::size_t i = before; i < wire.to_peer.size(); ++i)
            EXPECT_LE(wire.to_peer[i].second.size(), d.size()) << "amplification";
    }
    const Peer* db1() const {
        const auto slot = server->peers().find_name("db1");
        return slot == PeerTable::kNone ? nullptr : &server->peers().at(slot);
    }
    Bytes signed_with(const kap::Message& m, const kap::AuthKey* key) {
        Bytes out(kap::kMaxDatagramSize);
        out.resize(kap::encode(m, out, key));
        return out;
    }

    FakeClock clock{kStart};
    SeededRandom random{1};
    SeededRandom peer_random{2};
    Wire wire;
    std::unique_ptr<ServerCore> server;
    std::unique_ptr<PeerSession> peer;
    Address peer_addr = addr("198.51.100.7:40000");
    Route route{1, addr("192.0.2.1:7371")};
    std::uint64_t answers = 0;
};

TEST_F(AuthTest, SignedPeerRegistersAndStaysUp) {
    make(ring({{1, 0x11}}), ring({{1, 0x11}}));
    peer->start(clock.now());
    run_for(2s);
    ASSERT_NE(db1(), nullptr);
    EXPECT_EQ(db1()->state, PeerState::up);
    EXPECT_GT(db1()->acks_received, 15u);
    EXPECT_EQ(peer->state(), SessionState::registered);
    EXPECT_EQ(peer->dropped(), 0u);
    for (auto c : server->drops()) EXPECT_EQ(c, 0u);
}

TEST_F(AuthTest, UnsignedOrWronglySignedDatagramsAreDroppedAndNeverAnswered) {
    make(ring({{1, 0x11}}), std::nullopt);  // the peer has no keys
    peer->start(clock.now());
    run_for(3s);
    EXPECT_EQ(db1(), nullptr);
    EXPECT_EQ(answers, 0u);
    EXPECT_GE(drop_count(*server, Drop::unauthenticated), 2u);  // its REGISTERs, retried

    // A peer signing with a key the server does not hold, or the right id with the wrong secret.
    make(ring({{1, 0x11}}), ring({{2, 0x11}}));
    peer->start(clock.now());
    run_for(3s);
    make(ring({{1, 0x11}}), ring({{1, 0x12}}));
    peer->start(clock.now());
    run_for(3s);
    EXPECT_EQ(db1(), nullptr);
    EXPECT_EQ(answers, 0u);
}

// Right session, right seq, right source, wrong key: nothing moves.
TEST_F(AuthTest, ForgedAckAndByeMoveNothing) {
    make(ring({{1, 0x11}}), ring({{1, 0x11}}));
    peer->start(clock.now());
    run_for(1s);
    ASSERT_NE(db1(), nullptr);
    const std::uint32_t session = db1()->session;
    const std::uint64_t incarnation = peer->incarnation();

    // The peer goes silent; a forger answers the probes in its place.
    const kap::AuthKey forged{1, std::vector<std::uint8_t>(32, 0x99)};
    peer->stop();  // says BYE; take the real BYE away before it arrives
    wire.to_server.clear();
    const std::uint64_t unauthenticated = drop_count(*server, Drop::unauthenticated);
    std::uint64_t forgeries = 0;
    for (int i = 0; i < 100 && db1()->state != PeerState::down; ++i) {
        clock.advance(10ms);
        if (auto t = server->next_deadline(); t && *t <= clock.now()) server->on_timer(clock.now());
        wire.to_peer.clear();  // the PROBEs: signed, but their seq is in plain sight
        const std::uint64_t seq = db1()->seq_sent;
        deliver(signed_with({.session = session, .body = kap::Ack{seq, 0, incarnation}}, &forged));
        ++forgeries;
    }
    EXPECT_EQ(db1()->state, PeerState::down);
    EXPECT_EQ(drop_count(*server, Drop::unauthenticated) - unauthenticated, forgeries);

    // A forged BYE for the down peer does not make it "left".
    deliver(signed_with(
        {.diag = kap::Diag::shutting_down, .session = session, .body = kap::Bye{db1()->seq_sent}},
        &forged));
    EXPECT_EQ(db1()->state, PeerState::down);
    EXPECT_TRUE(wire.to_peer.empty() ||
                std::all_of(wire.to_peer.begin(), wire.to_peer.end(), [](const auto& p) {
                    return p.second.size() == 28 + kap::kAuthTrailerSize;  // only PROBEs
                }));
}

// The server adds a key, then sends with it; the peer, holding both, never misses a probe.
TEST_F(AuthTest, KeyRotationDropsNoProbe) {
    make(ring({{1, 0x11}}), ring({{1, 0x11}, {2, 0x22}}));
    peer->start(clock.now());
    run_for(1s);
    ASSERT_NE(db1(), nullptr);
    server->set_auth(ring({{1, 0x11}, {2, 0x22}}));
    run_for(1s);
    auto both = ring({{1, 0x11}, {2, 0x22}});
    both.set_active(2);
    server->set_auth(both);
    run_for(1s);
    peer->set_keys(both);  // the peer now sends with key 2 as well
    run_for(1s);
    server->set_auth(ring({{2, 0x22}}));  // key 1 retired
    run_for(1s);
    EXPECT_EQ(db1()->state, PeerState::up);
    EXPECT_EQ(db1()->missed, 0u);
    EXPECT_EQ(db1()->acks_received, db1()->probes_sent);
    EXPECT_EQ(peer->dropped(), 0u);
    for (auto c : server->drops()) EXPECT_EQ(c, 0u);
    EXPECT_EQ(std::count(wire.events.begin(), wire.events.end(), EventKind::down), 0);
}

}  // namespace
}  // namespace keepalive
