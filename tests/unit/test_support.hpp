// What the protocol-core tests share: the seed rule for randomised tests, a
// fixed start time, and small helpers for addresses and datagrams.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string_view>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/server.hpp"

namespace keepalive::test_support {

using Bytes = std::vector<std::uint8_t>;

inline const TimePoint kStart = TimePoint{std::chrono::hours(1)};

// KEEPALIVE_TEST_SEED if set, else a random one; printed once so a failing
// run can be repeated.
inline std::uint64_t test_seed() {
    static const std::uint64_t seed = [] {
        std::uint64_t s = 0;
        if (const char* e = std::getenv("KEEPALIVE_TEST_SEED"); e != nullptr && *e != '\0') {
            s = std::strtoull(e, nullptr, 0);
        } else {
            std::random_device rd;
            s = (std::uint64_t{rd()} << 32) | std::uint64_t{rd()};
        }
        std::cout << "KEEPALIVE_TEST_SEED=" << s << std::endl;
        return s;
    }();
    return seed;
}

inline Address addr(const char* text) {
    auto a = Address::parse(text);
    EXPECT_TRUE(a.has_value()) << text;
    return a.value_or(Address{});
}

inline Bytes encode(const kap::Message& m) {
    Bytes out(kap::kMaxDatagramSize);
    const std::size_t n = kap::encode(m, out);
    EXPECT_GT(n, 0u);
    out.resize(n);
    return out;
}

// The peer named `name` (a test failure if there is none).
inline const Peer& peer_named(const ServerCore& server, std::string_view name) {
    const auto slot = server.peers().find_name(name);
    EXPECT_NE(slot, PeerTable::kNone) << name;
    return server.peers().at(slot);
}

inline std::uint64_t drop_count(const ServerCore& server, Drop d) {
    return server.drops()[static_cast<std::size_t>(d)];
}

inline std::uint64_t total_drops(const ServerCore& server) {
    std::uint64_t n = 0;
    for (const auto c : server.drops()) n += c;
    return n;
}

}  // namespace keepalive::test_support
