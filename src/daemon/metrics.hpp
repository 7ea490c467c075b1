// The Prometheus text exposition (format 0.0.4) of the daemon and its peers,
// for `keepalivectl metrics` and node_exporter's textfile collector.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/server.hpp"

namespace keepalive {

// What the daemon knows beyond the core.
struct DaemonStats {
    std::string version;
    double uptime_s = 0;
    double loop_lag_s = 0;      // how late the last timer ran
    double loop_lag_max_s = 0;  // the worst since start
    std::uint64_t log_events_dropped = 0;
    std::uint64_t send_errors = 0;
    std::uint64_t unroutable = 0;
    std::array<std::uint64_t, kEventKindCount> events{};  // peer events by kind, since start
    std::uint64_t last_event_seq = 0;  // the seq of the latest event (0: none yet)
    std::size_t hooks_running = 0;
    std::size_t hooks_pending = 0;
    std::uint64_t hooks_started = 0;
    std::uint64_t hooks_dropped = 0;
    std::size_t watchers = 0;
};

// Produces the text a piece at a time so that a large peer table need not be
// rendered whole in one loop iteration. The core must outlive the generator;
// the table may change between pieces (a peer added meanwhile may be missed
// by the families already past it, one removed is skipped).
class MetricsText {
public:
    static constexpr std::size_t kDefaultPeersPerPiece = 1000;

    MetricsText(const ServerCore& core, DaemonStats stats);

    // Appends the next piece to `out`: the daemon-wide families first, then
    // each per-peer family with at most `peers` samples per piece. Returns
    // false once everything has been produced (and then appends nothing).
    bool next(std::string& out, std::size_t peers = kDefaultPeersPerPiece);

private:
    void daemon_families(std::string& out) const;
    void peer_sample(std::string& out, const Peer& p) const;

    const ServerCore& core_;
    DaemonStats stats_;
    bool daemon_done_ = false;
    std::size_t family_ = 0;    // index into the per-peer families
    PeerTable::Slot slot_ = 0;  // next slot of the current family
    bool header_done_ = false;  // HELP/TYPE of the current family written
};

// The whole text at once.
std::string metrics_text(const ServerCore& core, const DaemonStats& stats);

}  // namespace keepalive
