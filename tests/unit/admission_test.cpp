// Admission control in the core: the allow list (CIDR), the per-source budget
// of replies sent before a session exists, and the cap on legacy peers.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/cidr.hpp"
#include "core/legacy.hpp"
#include "core/reply_budget.hpp"
#include "core/server.hpp"
#include "test_support.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using test_support::addr;
using test_support::Bytes;
using test_support::drop_count;
using test_support::kStart;

TEST(Cidr, ParsesAndMatches) {
    const auto net8 = Cidr::parse("10.0.0.0/8");
    ASSERT_TRUE(net8);
    EXPECT_TRUE(net8->contains(addr("10.1.2.3:5")));
    EXPECT_TRUE(net8->contains(addr("[::ffff:10.9.9.9]:5")));  // a dual-stack socket's view
    EXPECT_FALSE(net8->contains(addr("11.0.0.1:5")));
    EXPECT_FALSE(net8->contains(addr("[::a00:1]:5")));
    EXPECT_EQ(net8->to_string(), "10.0.0.0/8");

    const auto v6 = Cidr::parse("2001:db8::/32");
    ASSERT_TRUE(v6);
    EXPECT_TRUE(v6->contains(addr("[2001:db8:ffff::1]:1")));
    EXPECT_FALSE(v6->contains(addr("[2001:db9::1]:1")));
    EXPECT_FALSE(v6->contains(addr("10.0.0.1:1")));

    const auto odd = Cidr::parse("192.0.2.128/25");
    ASSERT_TRUE(odd);
    EXPECT_TRUE(odd->contains(addr("192.0.2.200:1")));
    EXPECT_FALSE(odd->contains(addr("192.0.2.127:1")));

    const auto host = Cidr::parse("192.0.2.7");
    ASSERT_TRUE(host);
    EXPECT_TRUE(host->contains(addr("192.0.2.7:9")));
    EXPECT_FALSE(host->contains(addr("192.0.2.8:9")));
    EXPECT_TRUE(Cidr::parse("0.0.0.0/0")->contains(addr("203.0.113.1:1")));

    for (const char* bad : {"10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "::/129",
                            "10.0.0.0/8/8", "host.example/8", "", "/8", "10.0.0.0:80/8"})
        EXPECT_FALSE(Cidr::parse(bad)) << bad;
}

TEST(ReplyBudget, PerHostPerSecondWithoutGrowing) {
    ShortHashKey key{};
    key[0] = 1;
    ReplyBudget budget(key);
    const Address a = addr("192.0.2.1:1000");
    const Address a_other_port = addr("192.0.2.1:2000");
    for (int i = 0; i < 4; ++i) EXPECT_TRUE(budget.allow(i % 2 ? a : a_other_port, kStart, 4));
    EXPECT_FALSE(budget.allow(a, kStart + 999ms, 4));  // the port does not buy a new budget
    EXPECT_TRUE(budget.allow(a, kStart + 1s, 4));      // the next second does

    // A million spoofed hosts: each gets at most its budget, and memory is the fixed table.
    std::uint64_t allowed = 0;
    for (std::uint32_t i = 0; i < 1'000'000; ++i)
        allowed += budget.allow(Address::v4(0x7F000000u | i, 1), kStart + 5s, 1);
    EXPECT_LE(allowed, ReplyBudget::kSlots);
    EXPECT_GT(allowed, ReplyBudget::kSlots / 2);
}

class Sink final : public ServerSink {
public:
    void send(const Route&, const Address& to, std::span<const std::uint8_t> d) override {
        sent.push_back({to, Bytes(d.begin(), d.end())});
    }
    void peer_event(const PeerEvent&) override {}
    std::vector<std::pair<Address, Bytes>> sent;
};

class AdmissionTest : public ::testing::Test {
protected:
    void make(PeerLimits limits) {
        server = std::make_unique<ServerCore>(limits, random, sink, clock.now());
    }
    // Full handshake; the last reply (or an empty message if none came).
    std::optional<kap::Message> register_as(const std::string& name, const Address& from) {
        kap::Register r{++nonce, 7, 200, 3, {}, name};
        for (int round = 0; round < 2; ++round) {
            const Bytes d = test_support::encode({.session = 0, .body = r});
            const std::size_t before = sink.sent.size();
            server->on_datagram(d, from, route, clock.now());
            if (sink.sent.size() == before) return std::nullopt;
            EXPECT_LE(sink.sent.back().second.size(), d.size());
            auto m = kap::decode(sink.sent.back().second);
            if (!m) return std::nullopt;
            if (const auto* c = std::get_if<kap::Challenge>(&m->body)) {
                r.cookie = c->cookie;
                continue;
            }
            return *m;
        }
        return std::nullopt;
    }

    FakeClock clock{kStart};
    SeededRandom random{3};
    Sink sink;
    std::unique_ptr<ServerCore> server;
    Route route{1, addr("192.0.2.1:7371")};
    std::uint64_t nonce = 0;
};

TEST_F(AdmissionTest, RegisterFromOutsideTheAllowListIsRejectedWithoutState) {
    PeerLimits limits;
    limits.allow = {*Cidr::parse("10.0.0.0/8"), *Cidr::parse("2001:db8::/32")};
    make(limits);
    const auto outside = register_as("intruder", addr("192.0.2.50:4000"));
    ASSERT_TRUE(outside);
    EXPECT_TRUE(std::holds_alternative<kap::Reject>(outside->body));
    EXPECT_EQ(outside->diag, kap::Diag::not_permitted);
    EXPECT_EQ(sink.sent.size(), 1u);  // no CHALLENGE first
    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_EQ(drop_count(*server, Drop::not_allowed), 1u);

    const auto inside = register_as("db1", addr("10.2.3.4:4000"));
    ASSERT_TRUE(inside);
    EXPECT_TRUE(std::holds_alternative<kap::Accept>(inside->body));
    const auto inside6 = register_as("db2", addr("[2001:db8::9]:4000"));
    ASSERT_TRUE(inside6);
    EXPECT_TRUE(std::holds_alternative<kap::Accept>(inside6->body));
    EXPECT_EQ(server->peers().size(), 2u);

    // Legacy registrations from outside create nothing either (and get no answer).
    const std::string legacy = "intruder2:1:3";
    server->on_legacy_register(
        {reinterpret_cast<const std::uint8_t*>(legacy.data()), legacy.size()},
        addr("192.0.2.50:4000"), route, 5002, clock.now());
    EXPECT_EQ(server->peers().size(), 2u);
    EXPECT_EQ(drop_count(*server, Drop::not_allowed), 2u);
}

TEST_F(AdmissionTest, SpoofedRegistersAreChallengedWithinTheBudgetOnly) {
    make(PeerLimits{});
    const Address victim = addr("198.51.100.1:53");
    std::size_t answered = 0;
    std::size_t bytes_in = 0;
    std::size_t bytes_out = 0;
    for (int i = 0; i < 1000; ++i) {
        kap::Register r{static_cast<std::uint64_t>(i), 1, 200, 3, {}, "x"};
        r.cookie.fill(static_cast<std::uint8_t>(i | 1));  // random-looking, never valid
        const Bytes d = test_support::encode({.session = 0, .body = r});
        const std::size_t before = sink.sent.size();
        server->on_datagram(d, victim, route, clock.now());
        bytes_in += d.size();
        for (std::size_t k = before; k < sink.sent.size(); ++k)
            bytes_out += sink.sent[k].second.size();
        answered += sink.sent.size() - before;
    }
    const PeerLimits defaults;
    EXPECT_EQ(answered, defaults.max_per_host);  // one second's budget for that host
    EXPECT_EQ(drop_count(*server, Drop::rate_limited), 1000u - defaults.max_per_host);
    EXPECT_EQ(drop_count(*server, Drop::stale_cookie), 1000u);
    EXPECT_EQ(server->peers().size(), 0u);
    EXPECT_LT(bytes_out, bytes_in);
}

TEST_F(AdmissionTest, LegacyPeersAreCappedSoKap1PeersStillFit) {
    PeerLimits limits;
    limits.max_peers = 10;
    limits.legacy_max_peers = 3;
    limits.min_interval = 1s;
    make(limits);
    for (int i = 0; i < 6; ++i) {
        const std::string reg = "old" + std::to_string(i) + ":1:3";
        server->on_legacy_register({reinterpret_cast<const std::uint8_t*>(reg.data()), reg.size()},
                                   Address::v4(0x0A000001u + static_cast<std::uint32_t>(i), 40000),
                                   route, 5002, clock.now());
    }
    EXPECT_EQ(server->peers().size(), 3u);
    EXPECT_EQ(drop_count(*server, Drop::legacy_refused), 3u);
    for (int i = 0; i < 7; ++i) {
        const auto m = register_as("new" + std::to_string(i),
                                   Address::v4(0x0B000001u + static_cast<std::uint32_t>(i), 40000));
        ASSERT_TRUE(m);
        EXPECT_TRUE(std::holds_alternative<kap::Accept>(m->body)) << i;
    }
    EXPECT_EQ(server->peers().size(), 10u);
}

}  // namespace
}  // namespace keepalive
