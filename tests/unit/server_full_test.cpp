// A full table costs nothing: room for max_peers is reserved up front, a
// REGISTER past it is answered REJECT "server full" (diag 4) without one
// allocation, and a failed allocation while inserting leaves the peer
// table's indexes in step. Allocations are counted by replacing the global
// operator new in this test program.
#include <fmt/format.h>

#include <cstdlib>
#include <deque>
#include <new>
#include <string>
#include <vector>

#include "test_support.hpp"

// GCC sees the replaced operator delete inlined into the library's
// deallocations and takes malloc'ed memory for a mismatch: it is not one.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {

bool g_counting = false;
std::size_t g_allocations = 0;
std::size_t g_frees = 0;
// When set, the allocation that would make g_allocations exceed it throws.
std::size_t g_fail_at = SIZE_MAX;

}  // namespace

void* operator new(std::size_t n) {
    if (g_counting) {
        if (g_allocations >= g_fail_at) throw std::bad_alloc();
        ++g_allocations;
    }
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    if (g_counting && p != nullptr) ++g_frees;
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    operator delete(p);
}

namespace keepalive::test_support {
namespace {

struct Counting {
    explicit Counting(std::size_t fail_at = SIZE_MAX) {
        g_allocations = g_frees = 0;
        g_fail_at = fail_at;
        g_counting = true;
    }
    ~Counting() {
        g_counting = false;
        g_fail_at = SIZE_MAX;
    }
};

// Keeps the last reply as bytes: storing it must not allocate.
class RawSink final : public ServerSink {
public:
    void send(const Route&, const Address&, std::span<const std::uint8_t> data) override {
        size = std::min(data.size(), last.size());
        std::copy_n(data.begin(), size, last.begin());
        ++sent;
    }
    void peer_event(const PeerEvent&) override { ++events; }
    kap::Message reply() const {
        auto m = kap::decode(std::span(last.data(), size));
        EXPECT_TRUE(static_cast<bool>(m));
        return m ? *m : kap::Message{};
    }
    std::array<std::uint8_t, kap::kMaxDatagramSize> last{};
    std::size_t size = 0;
    std::size_t sent = 0;
    std::size_t events = 0;
};

Address source(int i) {
    return addr(fmt::format("10.0.{}.{}:4000", i / 200, 1 + i % 200).c_str());
}

// A REGISTER for `name` from `from`, with the cookie its CHALLENGE gave.
Bytes cookied_register(ServerCore& server, RawSink& sink, const std::string& name,
                       const Address& from, TimePoint now) {
    kap::Register r{1, 1, 1000, 3, {}, name};
    server.on_datagram(encode({.body = r}), from, Route{1, addr("10.9.9.9:4000")}, now);
    const auto challenge = sink.reply();
    EXPECT_EQ(kap::type_of(challenge), kap::Type::challenge);
    r.cookie = std::get<kap::Challenge>(challenge.body).cookie;
    return encode({.body = r});
}

class ServerFull : public ::testing::TestWithParam<std::size_t> {};

TEST_P(ServerFull, RejectsPastMaxPeersWithoutAllocating) {
    const std::size_t name_length = GetParam();
    constexpr std::uint32_t kMax = 50;
    PeerLimits limits;
    limits.max_peers = kMax;
    SeededRandom random(test_seed());
    RawSink sink;
    const Route route{1, addr("10.9.9.9:4000")};
    ServerCore server(limits, random, sink, kStart);
    const std::size_t reserved = server.peers().capacity();
    EXPECT_GE(reserved, kMax);

    const auto name = [&](int i) {
        std::string n = fmt::format("p{}-", i);
        n.resize(name_length, 'x');
        return n;
    };
    // Filled to max_peers: the table never grew.
    for (int i = 0; i < static_cast<int>(kMax); ++i) {
        const Bytes reg = cookied_register(server, sink, name(i), source(i), kStart);
        server.on_datagram(reg, source(i), route, kStart);
        ASSERT_EQ(kap::type_of(sink.reply()), kap::Type::accept) << i;
    }
    ASSERT_EQ(server.peers().size(), kMax);
    EXPECT_EQ(server.peers().capacity(), reserved);

    // Past it: REJECT "server full" (diag 4), and not one allocation that is
    // kept. With names short enough for the string's own buffer, none at all.
    std::vector<Bytes> late;
    for (int i = 0; i < 100; ++i)
        late.push_back(cookied_register(server, sink, name(1000 + i), source(1000 + i), kStart));
    const std::size_t sent_before = sink.sent;
    const std::size_t events_before = sink.events;
    std::size_t allocations = 0;
    std::size_t frees = 0;
    std::size_t rejected = 0;
    for (int i = 0; i < 100; ++i) {
        {
            Counting counting;
            server.on_datagram(late[static_cast<std::size_t>(i)], source(1000 + i), route, kStart);
            allocations += g_allocations;
            frees += g_frees;
        }
        const auto m = sink.reply();
        rejected += kap::type_of(m) == kap::Type::reject && m.diag == kap::Diag::server_full;
    }
    EXPECT_EQ(rejected, 100u);
    EXPECT_EQ(sink.sent, sent_before + 100);
    EXPECT_EQ(sink.events, events_before);
    EXPECT_EQ(server.peers().size(), kMax);
    EXPECT_EQ(server.peers().capacity(), reserved);
    EXPECT_EQ(allocations, frees);
    if (name_length <= 15) {
        EXPECT_EQ(allocations, 0u);
    }
}

INSTANTIATE_TEST_SUITE_P(NameLengths, ServerFull, ::testing::Values(8, 64));

// Raising max_peers (a reload) reserves the new room at once.
TEST(ServerFullReload, RaisingMaxPeersReservesRoom) {
    PeerLimits limits;
    limits.max_peers = 10;
    SeededRandom random(test_seed());
    RawSink sink;
    ServerCore server(limits, random, sink, kStart);
    EXPECT_GE(server.peers().capacity(), 10u);
    limits.max_peers = 5000;
    server.set_limits(limits);
    EXPECT_GE(server.peers().capacity(), 5000u);
    // Lowering it keeps what is reserved.
    limits.max_peers = 3;
    server.set_limits(limits);
    EXPECT_GE(server.peers().capacity(), 5000u);
}

// Peer::name points into storage that outlives the peer; the table copies
// its bytes into its name arena.
PeerName name_of(int i) {
    static const std::deque<PeerNameBuffer> names = [] {
        std::deque<PeerNameBuffer> v;
        for (int n = 0; n < 64; ++n) v.emplace_back(fmt::format("peer-with-a-long-name-{}", n));
        return v;
    }();
    return names.at(static_cast<std::size_t>(i)).name();
}

Peer make_peer(int i) {
    Peer p;
    p.name = name_of(i);
    p.session = static_cast<std::uint32_t>(1000 + i);
    p.address = source(i);
    return p;
}

// Past the reserved room an insert may fail for want of memory, at any of
// its allocations: every such failure leaves the table exactly as it was.
TEST(PeerTableBadAlloc, FailedInsertLeavesIndexesInStep) {
    PeerTable table;
    table.reserve(2);
    for (int i = 0; i < 2; ++i) table.insert(make_peer(i));
    const auto check_unchanged = [&](int next) {
        EXPECT_EQ(table.size(), static_cast<std::size_t>(next));
        for (int i = 0; i < next; ++i) {
            const auto s = table.find_name(make_peer(i).name);
            ASSERT_NE(s, PeerTable::kNone);
            EXPECT_EQ(table.find_session(static_cast<std::uint32_t>(1000 + i)), s);
            EXPECT_EQ(table.on_host(source(i)), 1u);
        }
        EXPECT_EQ(table.find_name(make_peer(next).name), PeerTable::kNone);
        EXPECT_EQ(table.find_session(static_cast<std::uint32_t>(1000 + next)), PeerTable::kNone);
        EXPECT_EQ(table.on_host(source(next)), 0u);
    };
    for (int next = 2; next < 40; ++next) {
        int failures = 0;
        for (std::size_t fail_at = 0;; ++fail_at) {
            Peer p = make_peer(next);
            bool threw = false;
            {
                Counting counting(fail_at);
                try {
                    table.insert(std::move(p));
                } catch (const std::bad_alloc&) {
                    threw = true;
                }
            }
            if (!threw) break;
            ++failures;
            ASSERT_NO_FATAL_FAILURE(check_unchanged(next));
        }
        // Past the reserved room the insert allocates (the per-host entry at least).
        EXPECT_GT(failures, 0) << next;
    }
    // And the table still works: erase and reuse.
    table.erase(table.find_name(make_peer(5).name));
    EXPECT_EQ(table.on_host(source(5)), 0u);
    table.insert(make_peer(5));
    EXPECT_EQ(table.size(), 40u);
}

}  // namespace
}  // namespace keepalive::test_support
