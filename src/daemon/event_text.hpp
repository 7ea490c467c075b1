// The daemon's words for what the core reports as data: an event's cause,
// a peer's last network error, the one-line summary of the table. The log,
// the journal fields, hooks, `keepalivectl watch`/`status` and the targets
// list all take their text from here, so each is said one way only.
#pragma once

#include <fmt/format.h>

#include <string>

#include "core/peer.hpp"
#include "core/peer_table.hpp"

namespace keepalive {

// Why the event happened, e.g. "detection time expired" or "3 probes
// unanswered" (PEER_REASON, KEEPALIVE_REASON, the event's "reason").
std::string event_reason(const PeerEvent& event);
// The reason of a cause that needs no figures (the TCP targets' causes), e.g.
// "connection refused"; "" for the others.
std::string_view fixed_reason(EventCause cause);

// The sentence for the log, e.g. `peer db1 (10.0.0.5:4000) is down: detection time expired`.
std::string describe(const PeerEvent& event);

// e.g. "host up, no agent (ICMP port unreachable from 192.0.2.7)" or
// "ECONNREFUSED: Connection refused".
std::string network_error_text(const NetworkError& error);

// "3 peers: 2 up, 0 suspect, 1 down, 0 left" (and ", N degraded" after up when there are some).
std::string summary_line(const PeerCounts& counts);

}  // namespace keepalive

// A peer's name in fmt (the core has no fmt).
template <>
struct fmt::formatter<keepalive::PeerName> : fmt::formatter<std::string_view> {
    template <typename Context>
    auto format(const keepalive::PeerName& n, Context& ctx) const {
        return fmt::formatter<std::string_view>::format(n.view(), ctx);
    }
};
