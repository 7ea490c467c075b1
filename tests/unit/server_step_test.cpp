// One late wake-up is not one huge step: ServerCore::on_timer runs at most
// kMaxDuePerStep due peers and says when more are due, so the daemon reads
// its sockets between the pieces. Fake clock.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <string>
#include <unordered_set>

#include "server_driver.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using namespace test_support;

std::size_t probes_sent(const ServerDriver& d,
                        std::unordered_set<Address, AddressHash>* to = nullptr) {
    std::size_t n = 0;
    for (const auto& r : d.replies) {
        if (kap::type_of(r.msg) != kap::Type::probe) continue;
        ++n;
        if (to) to->insert(r.to);
    }
    return n;
}

TEST(ServerStep, ALateWakeUpIsServedInBoundedPiecesAndEveryPeerIsProbed) {
    const std::size_t peers = 3 * ServerCore::kMaxDuePerStep + 100;
    PeerLimits limits;
    limits.shed_busy_percent = 0;
    ServerDriver d(limits);
    for (std::size_t i = 0; i < peers; ++i)
        d.add_peer(fmt::format("p{}", i),
                   Address::v4(0x0a000000u + static_cast<std::uint32_t>(i), 7000), 1000, 3);
    d.replies.clear();
    d.events.clear();

    // The loop was held off its CPU until every peer's first probe was due.
    d.clock.advance(1500ms);
    std::size_t steps = 0;
    bool more = true;
    while (more) {
        const std::size_t before = probes_sent(d);
        more = d.server->on_timer(d.clock.now());
        ++steps;
        EXPECT_LE(probes_sent(d) - before, ServerCore::kMaxDuePerStep);
        if (more) {
            ASSERT_TRUE(d.server->next_deadline());
            EXPECT_LE(*d.server->next_deadline(), d.clock.now()) << "the rest is due at once";
        }
    }
    std::unordered_set<Address, AddressHash> probed;
    probes_sent(d, &probed);
    EXPECT_EQ(probed.size(), peers);
    EXPECT_EQ(steps, 4u);  // 3 172 due, in pieces of at most 1 024
    EXPECT_TRUE(d.events.empty()) << d.events.front().reason;
}

}  // namespace
}  // namespace keepalive
