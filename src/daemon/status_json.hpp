// What the control socket answers, as JSON documents.
#pragma once

#include <nlohmann/json.hpp>

#include "core/server.hpp"

namespace keepalive {

// {"peers": [{"name", "address", "state", "session", "interval_ms", "probes", "missed",
//   "rtt_us", "since", "probes_sent", "acks_received", "protocol"}, ...]}
nlohmann::json peers_json(const ServerCore& core, TimePoint now);

struct DaemonInfo {
    std::string version;
    std::string config;
    std::vector<std::string> listen;
    double uptime_s = 0;
};

// {"peers": N, "up": .., "suspect": .., "down": .., "left": .., "summary": "...",
//  "drops": {"bad_magic": n, ...}, "datagrams_received": n, "epoch": "hex", "daemon": {...}}
nlohmann::json status_json(const ServerCore& core, const DaemonInfo& info);

}  // namespace keepalive
