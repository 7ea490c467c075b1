// ServerCore and ICMP errors for its probes, without sockets: a fake clock,
// real datagrams from the codec, and the errors the daemon would read from
// the socket's error queue.
#include <gtest/gtest.h>

#include <cerrno>
#include <vector>

#include "core/random.hpp"
#include "core/server.hpp"
#include "daemon/event_text.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

std::string last_error(const Peer& p) {
    return p.last_error() ? network_error_text(*p.last_error()) : "";
}

struct Recorder final : ServerSink {
    void send(const Route&, const Address& to, std::span<const std::uint8_t> data) override {
        sent.push_back({to, Bytes(data.begin(), data.end())});
    }
    void peer_event(const PeerEvent& e) override {
        events.push_back({e.kind, e.peer.state, event_reason(e)});
    }
    struct Out {
        Address to;
        Bytes bytes;
    };
    struct Ev {
        EventKind kind;
        PeerState state;
        std::string reason;
    };
    std::vector<Out> sent;
    std::vector<Ev> events;
};

class ServerIcmpTest : public ::testing::Test {
protected:
    void start(bool fast_down) {
        limits.fast_down_on_icmp = fast_down;
        server = std::make_unique<ServerCore>(limits, random, sink, clock.now());
        // The handshake: REGISTER, CHALLENGE, REGISTER with the cookie, ACCEPT.
        kap::Register r{7, 0x1111, 200, 3, {}, "agent"};
        server->on_datagram(encode({.session = 0, .body = r}), peer_addr, route, clock.now());
        r.cookie = std::get<kap::Challenge>(kap::decode(sink.sent.back().bytes)->body).cookie;
        server->on_datagram(encode({.session = 0, .body = r}), peer_addr, route, clock.now());
        ASSERT_EQ(server->peers().size(), 1u);
    }
    // Runs the timer until the server sends a PROBE; returns its bytes.
    Bytes next_probe() {
        const std::size_t before = sink.sent.size();
        for (int i = 0; i < 1000 && sink.sent.size() == before; ++i) {
            clock.advance(1ms);
            server->on_timer(clock.now());
        }
        EXPECT_GT(sink.sent.size(), before);
        return sink.sent.back().bytes;
    }
    const Peer& agent() { return peer_named(*server, "agent"); }

    FakeClock clock{kStart};
    SeededRandom random{1};
    Recorder sink;
    PeerLimits limits;
    std::unique_ptr<ServerCore> server;
    Address peer_addr = addr("192.0.2.7:40000");
    Route route{1, addr("192.0.2.1:7371")};
    Address router = addr("192.0.2.254:0");
};

TEST_F(ServerIcmpTest, PortUnreachableIsRecordedAndGivenAsTheReason) {
    start(false);
    const Bytes probe = next_probe();
    server->on_icmp_error(peer_addr, ECONNREFUSED, addr("192.0.2.7:0"), probe, clock.now());
    EXPECT_EQ(last_error(agent()), "host up, no agent (ICMP port unreachable from 192.0.2.7)");
    EXPECT_EQ(agent().state, PeerState::up)
        << "without fast_down_on_icmp, ICMP alone changes nothing";

    // No ACK comes: down after the detection time, with the ICMP error as the reason.
    for (int i = 0; i < 2000 && agent().state != PeerState::down; ++i) {
        clock.advance(1ms);
        server->on_timer(clock.now());
    }
    ASSERT_EQ(agent().state, PeerState::down);
    EXPECT_EQ(sink.events.back().reason,
              "detection time expired: host up, no agent (ICMP port unreachable from 192.0.2.7)");
}

TEST_F(ServerIcmpTest, FastDownDeclaresDownAtOnce) {
    start(true);
    const Bytes probe = next_probe();
    server->on_icmp_error(peer_addr, ECONNREFUSED, std::nullopt, probe, clock.now());
    EXPECT_EQ(agent().state, PeerState::down);
    EXPECT_EQ(sink.events.back().kind, EventKind::down);
    EXPECT_EQ(sink.events.back().reason, "host up, no agent (ICMP port unreachable)");
}

TEST_F(ServerIcmpTest, HostAndNetworkUnreachableNameTheRouterAndNeverFastDown) {
    start(true);
    const Bytes probe = next_probe();
    server->on_icmp_error(peer_addr, EHOSTUNREACH, router, probe, clock.now());
    EXPECT_EQ(last_error(agent()), "unreachable (ICMP host unreachable from 192.0.2.254)");
    server->on_icmp_error(peer_addr, ENETUNREACH, router, probe, clock.now());
    EXPECT_EQ(last_error(agent()), "unreachable (ICMP network unreachable from 192.0.2.254)");
    EXPECT_EQ(agent().state, PeerState::up);
}

TEST_F(ServerIcmpTest, OnlyAProbeToTheSessionsOwnAddressCounts) {
    start(true);
    const Bytes probe = next_probe();
    // The same PROBE, but the error is about another destination: forged or stale.
    server->on_icmp_error(addr("192.0.2.8:40000"), ECONNREFUSED, std::nullopt, probe, clock.now());
    // Not a PROBE (an ACCEPT), a truncated quote, an unknown session.
    Bytes accept = encode({.session = agent().session, .body = kap::Accept{1, 2, 200, 3}});
    server->on_icmp_error(peer_addr, ECONNREFUSED, std::nullopt, accept, clock.now());
    server->on_icmp_error(peer_addr, ECONNREFUSED, std::nullopt, std::span(probe.data(), 11),
                          clock.now());
    Bytes other = probe;
    other[11] ^= 0xff;
    server->on_icmp_error(peer_addr, ECONNREFUSED, std::nullopt, other, clock.now());
    EXPECT_EQ(last_error(agent()), "");
    EXPECT_EQ(agent().state, PeerState::up);
    // The full header is enough: ICMP may quote only the start of the datagram.
    server->on_icmp_error(peer_addr, ECONNREFUSED, std::nullopt, std::span(probe.data(), 12),
                          clock.now());
    EXPECT_EQ(agent().state, PeerState::down);
}

}  // namespace
}  // namespace keepalive
