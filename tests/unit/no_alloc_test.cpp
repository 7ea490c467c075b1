// The steady state allocates nothing: once peers are registered and the
// table, wheel and scratch buffers have grown, a probe going out and its ACK
// (or legacy reply) coming back make no heap allocation in ServerCore, and
// neither do the events of peers that go suspect, down, degraded, up again
// or restart (events are plain data; the daemon puts them in words). This
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
    void peer_event(const PeerEvent& e) override {
        ++events;
        ++by_kind[static_cast<std::size_t>(e.kind)];
        ++by_cause[static_cast<std::size_t>(e.cause)];
    }
    std::size_t kind(EventKind k) const { return by_kind[static_cast<std::size_t>(k)]; }
    std::size_t cause(EventCause c) const { return by_cause[static_cast<std::size_t>(c)]; }

    std::array<Sent, 64> sent{};
    std::size_t count = 0;
    std::size_t overflow = 0;
    std::size_t events = 0;
    std::array<std::size_t, kEventKindCount> by_kind{};
    std::array<std::size_t, kEventCauseCount> by_cause{};
};

class NoAllocation : public ::testing::Test {
protected:
    static constexpr int kPeers = 16;  // of each protocol

    // Round trips over 100 ms make a peer degraded (no loss window: that one
    // is boxed and made at a peer's first probe under a loss policy).
    static PeerLimits limits() {
        PeerLimits l;
        l.health.rtt = milliseconds(100);
        return l;
    }

    NoAllocation() : server(limits(), random, sink, clock.now()) {
        incarnations.fill(kIncarnation);
    }

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

    // Runs the timers for `ms` milliseconds; every probe is answered 1 ms
    // after it left, or after its peer's delay, or not if its peer is silent.
    void run(int ms) {
        for (int t = 0; t < ms; ++t) {
            clock.advance(milliseconds(1));
            if (const auto d = server.next_deadline(); d && *d <= clock.now())
                server.on_timer(clock.now());
            deliver_delayed();
            answer_probes();
        }
    }

    // The index of the KAP/1 or legacy test peer at `to`'s host.
    static int index_of(const Address& to) { return to.bytes()[3]; }

    void answer_probes() {
        const std::size_t n = sink.count;
        sink.count = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const FixedSink::Sent& s = sink.sent[i];
            if (s.route.socket == kLegacySocket) {
                if (legacy_silent[static_cast<std::size_t>(index_of(s.to))]) continue;
                legacy::ReplyBuffer buf;
                const std::string_view name = name_of(s.to);
                server.on_legacy_reply(legacy::format_reply(name, s.data(), buf), s.to,
                                       clock.now());
                ++replies;
                continue;
            }
            const auto m = kap::decode(s.data());
            if (!m || kap::type_of(*m) != kap::Type::probe) continue;
            const auto peer = static_cast<std::size_t>(index_of(s.to));
            if (kap_silent[peer]) continue;
            const auto& probe = std::get<kap::Probe>(m->body);
            Delayed ack{clock.now() + kap_delay[peer], s.to, {}, 0};
            ack.size = kap::encode({.session = m->session,
                                    .body = kap::Ack{probe.seq, probe.tx_time, incarnations[peer]}},
                                   ack.bytes);
            if (kap_delay[peer] == Duration::zero()) {
                deliver(ack);
            } else if (delayed_count < delayed.size()) {
                delayed[delayed_count++] = ack;
            } else {
                ++sink.overflow;
            }
        }
    }

    struct Delayed {
        TimePoint due;
        Address from;
        std::array<std::uint8_t, kap::kMaxDatagramSize> bytes;
        std::size_t size;
    };

    void deliver(const Delayed& d) {
        server.on_datagram(std::span(d.bytes.data(), d.size), d.from, kap_route, clock.now());
        ++acks;
    }

    void deliver_delayed() {
        std::size_t kept = 0;
        for (std::size_t i = 0; i < delayed_count; ++i) {
            if (delayed[i].due <= clock.now())
                deliver(delayed[i]);
            else
                delayed[kept++] = delayed[i];
        }
        delayed_count = kept;
    }

    // A new process behind KAP/1 peer `i`'s name, from the same address:
    // REGISTER, CHALLENGE, REGISTER with the cookie, ACCEPT, in fixed buffers.
    void restart(int i, std::uint64_t incarnation) {
        const auto peer = static_cast<std::size_t>(i);
        incarnations[peer] = incarnation;
        kap::Register r{1000 + peer, incarnation, 1000, 3, {}, kap_names[peer]};
        std::array<std::uint8_t, kap::kMaxDatagramSize> buf;
        std::size_t size = kap::encode({.body = r}, buf);
        const std::size_t before = sink.count;
        server.on_datagram(std::span(buf.data(), size), kap_peer(i), kap_route, clock.now());
        ASSERT_EQ(sink.count, before + 1);
        const auto challenge = kap::decode(sink.sent[before].data());
        ASSERT_TRUE(challenge && kap::type_of(*challenge) == kap::Type::challenge);
        r.cookie = std::get<kap::Challenge>(challenge->body).cookie;
        size = kap::encode({.body = r}, buf);
        server.on_datagram(std::span(buf.data(), size), kap_peer(i), kap_route, clock.now());
        ASSERT_EQ(sink.count, before + 2);
        const auto accept = kap::decode(sink.sent[before + 1].data());
        ASSERT_TRUE(accept && kap::type_of(*accept) == kap::Type::accept);
        sink.count = before;
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
    // Short names (within the small-string buffer), made before counting starts.
    std::array<std::string, kPeers> kap_names = [] {
        std::array<std::string, kPeers> names;
        for (int i = 0; i < kPeers; ++i)
            names[static_cast<std::size_t>(i)] = "kap-" + std::to_string(i);
        return names;
    }();
    std::array<std::uint64_t, kPeers> incarnations{};
    std::array<bool, kPeers> kap_silent{};
    std::array<bool, kPeers> legacy_silent{};
    std::array<Duration, kPeers> kap_delay{};
    std::array<Delayed, 64> delayed{};
    std::size_t delayed_count = 0;
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

// Every kind of event the detection path makes, each for the first time in
// the counted window, on both protocols: no allocation for any of them.
TEST_F(NoAllocation, SuspectDownUpDegradedAndRestartedEvents) {
    register_all();
    run(5000);
    const std::size_t events_before = sink.events;
    const auto kinds_before = sink.by_kind;

    counting = true;
    // Peer 0 misses one probe: suspect, then up with the next ACK.
    kap_silent[0] = true;
    run(1000);
    kap_silent[0] = false;
    // Peer 1 and legacy peer 1 fall silent: down after three probes, up
    // again when a down probe (every 5 s) is answered.
    kap_silent[1] = true;
    legacy_silent[1] = true;
    run(4000);
    kap_silent[1] = false;
    legacy_silent[1] = false;
    // Peer 2 answers slowly: degraded, then up once its round trip is back.
    kap_delay[2] = milliseconds(300);
    run(6000);
    kap_delay[2] = Duration::zero();
    // Peer 3's process restarts.
    restart(3, kIncarnation + 1);
    run(14000);
    counting = false;

    EXPECT_EQ(allocations, 0u);
    const auto made = [&](EventKind k) {
        return sink.kind(k) - kinds_before[static_cast<std::size_t>(k)];
    };
    EXPECT_GE(made(EventKind::suspect), 1u);
    EXPECT_GE(made(EventKind::down), 2u);  // KAP/1 and legacy
    EXPECT_GE(made(EventKind::degraded), 1u);
    EXPECT_GE(made(EventKind::restarted), 1u);
    EXPECT_GE(made(EventKind::up), 4u);  // 0, 1 and legacy 1 back; 2 recovered
    EXPECT_GE(sink.cause(EventCause::unanswered), 1u);
    EXPECT_GE(sink.cause(EventCause::detection_expired), 2u);
    EXPECT_GE(sink.cause(EventCause::recovered), 1u);
    EXPECT_GT(sink.events, events_before);
    EXPECT_EQ(sink.overflow, 0u);
    EXPECT_EQ(server.peers().counts().in(PeerState::up), 2u * kPeers);
}

}  // namespace
}  // namespace keepalive
