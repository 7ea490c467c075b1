// Limits the server applies to peers; configured in [peers].
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "core/cidr.hpp"
#include "core/clock.hpp"
#include "core/health.hpp"

namespace keepalive {

struct PeerLimits {
    Duration min_interval = std::chrono::milliseconds(100);  // 1ms .. 1h, <= max_interval
    Duration max_interval = std::chrono::hours(1);           // 1ms .. 1h (protocol maximum)
    std::uint8_t max_probes = 255;                           // 1 .. 255
    std::uint32_t max_peers = 100'000;                       // 1 .. 10 000 000
    std::uint32_t max_per_host = 256;  // 1 .. 10 000 000: sessions one source host may hold
    Duration forget_after = std::chrono::minutes(10);        // 1s .. 30 days
    Duration down_probe_interval = std::chrono::seconds(5);  // 100ms .. 1h: how often down
                                                             // peers are still probed
    HealthPolicy health;                                     // degraded and damping
    // An ICMP port unreachable quoting a probe (the host is up, no agent answers) declares
    // the peer down at once. Off by default: ICMP is easily forged.
    bool fast_down_on_icmp = false;
    // Over capacity (the peers held keep the loop busy at least this share of
    // a second, or a receive queue overflowed), new registrations are
    // answered REJECT diag 9 (busy)
    // until the load has been lower for a few seconds (core/load_shedder.hpp). 0: never.
    std::uint8_t shed_busy_percent = 75;  // 0 .. 100

    // Source prefixes a peer may register from (KAP/1 and legacy); empty: any.
    std::vector<Cidr> allow;
    // Most legacy peers at once (within max_peers), so that a legacy flood
    // cannot fill the table KAP/1 peers need. Set from [legacy] max_peers.
    std::uint32_t legacy_max_peers = 10'000;

    friend bool operator==(const PeerLimits&, const PeerLimits&) = default;
};

}  // namespace keepalive
