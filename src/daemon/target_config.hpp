// [[targets]]: TCP services watched without an agent, through the kernel's
// keepalive (see daemon/targets.hpp). Read by the configuration loader.
#pragma once

#include <toml++/toml.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/address.hpp"

namespace keepalive {

struct TargetConfig {
    std::string name;  // the peer name rule (core/peer.hpp); unique among targets
    Address address;   // numeric IPv4 or IPv6 host, port 1 .. 65535, not a wildcard
    // The kernel's TCP_KEEPIDLE, TCP_KEEPINTVL (1 .. 32767 s) and TCP_KEEPCNT (1 .. 127).
    std::chrono::seconds idle{10};
    std::chrono::seconds interval{1};
    std::uint8_t probes = 3;

    // The longest silence from the target before it is declared down.
    std::chrono::seconds detection_time() const { return idle + probes * interval; }

    friend bool operator==(const TargetConfig&, const TargetConfig&) = default;
};

inline constexpr std::int64_t kMaxKeepaliveSeconds = 32767;  // TCP_KEEPIDLE/INTVL bound
inline constexpr std::int64_t kMaxKeepaliveProbes = 127;     // TCP_KEEPCNT bound
inline constexpr std::size_t kMaxTargets = 100'000;

// Reports one problem at a place in the file.
using ConfigFailure = std::function<void(const toml::source_region&, std::string)>;

// Reads the top-level `targets` node (an array of tables) into `out`. Each
// problem found goes to `fail`; `out` holds the entries that were valid.
void read_targets(const toml::node& node, std::vector<TargetConfig>& out,
                  const ConfigFailure& fail);

}  // namespace keepalive
