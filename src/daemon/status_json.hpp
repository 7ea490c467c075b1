// What the control socket answers, as JSON documents.
#pragma once

#include <nlohmann/json.hpp>

#include "core/server.hpp"

namespace keepalive {

// One row of the peers list: {"name", "address", "state", "session", "interval_ms", "probes",
//   "missed", "rtt_us", "since", "probes_sent", "acks_received", "protocol", "last_error"}.
nlohmann::json peer_row(const Peer& peer, TimePoint now);

// {"peers": [row, ...]}: the core's peers and the `extra` rows (the TCP targets), by name.
nlohmann::json peers_json(const ServerCore& core, TimePoint now,
                          nlohmann::json extra = nlohmann::json::array());

struct DaemonInfo {
    std::string version;
    std::string config;
    std::vector<std::string> listen;
    double uptime_s = 0;
};

// {"peers": N, "up": .., "suspect": .., "down": .., "left": .., "summary": "...",
//  "drops": {"bad_magic": n, ...}, "datagrams_received": n, "epoch": "hex", "daemon": {...}}
// `counts` are those of the core's peers and of the TCP targets together.
nlohmann::json status_json(const ServerCore& core, const PeerCounts& counts,
                           const DaemonInfo& info);

// The counts of both tables.
PeerCounts operator+(const PeerCounts& a, const PeerCounts& b);

}  // namespace keepalive
