// The steady state allocates nothing: once peers are registered and the
// table, wheel and scratch buffers have grown, a probe going out and its ACK
// (or legacy reply) coming back make no heap allocation in ServerCore. This
// binary replaces the global operator new to count them.
#include <cstdlib>
#include <new>

#include "core/legacy.hpp"
#include "test_support.hpp"

namespace {

// Counted only while `counting` is set, so gtest's own allocations do not matter.
bool counting = false;
std::size_t allocations = 0;

void* counted_alloc(std::size_t size) {
    if (counting) ++allocations;
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}

}  // namespace

void* operator new(std::size_t size) {
    return counted_alloc(size);
}
void* operator new[](std::size_t size) {
    return counted_alloc(size);
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    if (counting) ++allocations;
    return std::malloc(size == 0 ? 1 : size);
}
void* operator new[](std::size_t size, const std::nothrow_t& t) noexcept {
    return operator new(size, t);
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete[](void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}

namespace keepalive {
namespace {

using namespace test_support;
using std::chrono::milliseconds;

constexpr std::uint32_t kKapSocket = 1;
constexpr std::uint32_t kLegacySocket = 2;
constexpr std::uint64_t kIncarnation = 0x1234;

// Keeps what was sent in fixed storage, so the sink itself allocates nothing.
class FixedSink final : public ServerSink {
public:
    struct Sent {
        Route route;
        Address to;
        std::array<std::uint8_t, kap::kMaxDatagramSize> bytes;
        std::size_t size = 0;
        std::span<const std::uint8_t> data() const { return {bytes.data(), size}; }
    };

    void send(const Route& route, const Address& to, std::span<const std::uint8_t> data) override {
        if (count == sent.size() || data.size() > kap::kMaxDatagramSize) {
            ++overflow;
            return;
        }
        Sent& s = sent[count++];
        s.route = route;
        s.to = to;
        std::copy(data.begin(), data.end(), s.bytes.begin());
        s.size = data.size();
    }
    void peer_event(const PeerEvent&) override { ++events; }

    std::array<Sent, 64> sent{};
    std::size_t count = 0;
    std::size_t overflow = 0;
    std::size_t events = 0;
};

class NoAllocation : public ::testing::Test {
protected:
    static constexpr int kPeers = 16;  // of each protocol

    NoAllocation() : server(PeerLimits{}, random, sink, clock.now()) {}

    Address kap_peer(int i) const {
        return Address::v4(0x0A000100u + static_cast<std::uint32_t>(i), 40000);
    }
    Address legacy_host(int i) const {
        return Address::v4(0x0A000200u + static_cast<std::uint32_t>(i), 40001);
    }

    void register_all() {
        for (int i = 0; i < kPeers; ++i) {
            const std::string name = "kap-" + std::to_string(i);
            kap::Register r{static_cast<std::uint64_t>(i + 1), kIncarnation, 1000, 3, {}, name};
            server.on_datagram(encode({.body = r}), kap_peer(i), kap_route, clock.now());
            ASSERT_EQ(sink.count, 1u);
            const auto challenge = kap::decode(sink.sent[0].data());
            ASSERT_TRUE(challenge && kap::type_of(*challenge) == kap::Type::challenge);
            r.cookie = std::get<kap::Challenge>(challenge->body).cookie;
            sink.count = 0;
            server.on_datagram(encode({.body = r}), kap_peer(i), kap_route, clock.now());
            ASSERT_EQ(sink.count, 1u);
            sink.count = 0;

            const std::string legacy = "old-" + std::to_string(i) + ":1:3";
            server.on_legacy_register(bytes(legacy), legacy_host(i), legacy_route,
                                      legacy::kProbePort, clock.now());
        }
        ASSERT_EQ(server.peers().size(), 2u * kPeers);
    }

    // Runs the timers for `ms` milliseconds; every probe is answered 1 ms after it left.
    void run(int ms) {
        for (int t = 0; t < ms; ++t) {
            clock.advance(milliseconds(1));
            if (const auto d = server.next_deadline(); d && *d <= clock.now())
                server.on_timer(clock.now());
            answer_probes();
        }
    }

    void answer_probes() {
        const std::size_t n = sink.count;
        sink.count = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const FixedSink::Sent& s = sink.sent[i];
            if (s.route.socket == kLegacySocket) {
                legacy::ReplyBuffer buf;
                const std::string_view name = name_of(s.to);
                server.on_legacy_reply(legacy::format_reply(name, s.data(), buf), s.to,
                                       clock.now());
                ++replies;
                continue;
            }
            const auto m = kap::decode(s.data());
            if (!m || kap::type_of(*m) != kap::Type::probe) continue;
            const auto& probe = std::get<kap::Probe>(m->body);
            std::array<std::uint8_t, kap::kMaxDatagramSize> buf;
            const std::size_t size = kap::encode(
                {.session = m->session, .body = kap::Ack{probe.seq, probe.tx_time, kIncarnation}},
                buf);
            server.on_datagram(std::span(buf.data(), size), s.to, kap_route, clock.now());
            ++acks;
        }
    }

    // The legacy name registered from the host of `to`, without building a string.
    std::string_view name_of(const Address& to) const {
        for (int i = 0; i < kPeers; ++i)
            if (legacy_host(i).same_host(to)) return legacy_names[static_cast<std::size_t>(i)];
        return "unknown";
    }

    static Bytes bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

    FakeClock clock{kStart};
    SeededRandom random{test_seed()};
    FixedSink sink;
    Route kap_route{kKapSocket, addr("192.0.2.1:7371")};
    Route legacy_route{kLegacySocket, addr("192.0.2.1:5002")};
    ServerCore server;
    std::array<std::string, kPeers> legacy_names = [] {
        std::array<std::string, kPeers> names;
        for (int i = 0; i < kPeers; ++i)
            names[static_cast<std::size_t>(i)] = "old-" + std::to_string(i);
        return names;
    }();
    std::size_t acks = 0;
    std::size_t replies = 0;
};

TEST_F(NoAllocation, ProbesAcksAndLegacyRepliesInSteadyState) {
    register_all();
    run(5000);  // off probation, every buffer at its size
    const std::uint64_t drops_before = total_drops(server);
    const std::size_t events_before = sink.events;
    acks = replies = 0;

    counting = true;
    run(20000);
    counting = false;

    EXPECT_EQ(allocations, 0u);
    // The window did what it claims: every peer probed and answered each second.
    EXPECT_GE(acks, 19u * kPeers);
    EXPECT_GE(replies, 19u * kPeers);
    EXPECT_EQ(total_drops(server), drops_before);
    EXPECT_EQ(sink.events, events_before);
    EXPECT_EQ(sink.overflow, 0u);
    EXPECT_EQ(server.peers().counts().in(PeerState::up), 2u * kPeers);
}

}  // namespace
}  // namespace keepalive
