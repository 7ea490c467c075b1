// What the control socket answers, as JSON documents.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/server.hpp"
#include "daemon/control.hpp"

namespace keepalive {

// Peers written into one answer per piece: a few tens of microseconds of work.
inline constexpr std::size_t kPeersPerPiece = 128;

// One peer: {"name", "address", "state", "session", "interval_ms", "probes", "missed",
//   "rtt_us", "since", "probes_sent", "acks_received", "protocol", "last_error"}
nlohmann::json peer_json(const Peer& peer, TimePoint now);

// Streams {"peers": [peer, ...]} over the table, kPeersPerPiece peers a piece,
// each as it is when its piece is written (a peer that comes or goes while the
// answer streams may be in it or not). In table order: readers sort. The `extra`
// rows (the TCP targets, taken when the request came) follow the table's.
ControlServer::Producer peers_stream(const ServerCore& core, std::function<TimePoint()> now,
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

// Compact JSON and a newline. Text that is not UTF-8 (a config path is any
// bytes) is written with U+FFFD in its place instead of failing the answer.
std::string to_line(const nlohmann::json& j);

}  // namespace keepalive
