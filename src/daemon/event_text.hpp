// The daemon's words for what the core reports as data: an event's cause,
// a peer's last network error, the one-line summary of the table. The log,
// the journal fields, hooks, `keepalivectl watch`/`status` and the targets
// list all take their text from here, so each is said one way only.
#pragma once

#include <fmt/format.h>

#include <string>

#include "core/boxed.hpp"
#include "core/peer.hpp"
#include "core/peer_table.hpp"

namespace keepalive {

// An event's cause and the figures its words need (see PeerEvent), held by
// value so that the event ring keeps these instead of the words: 40 bytes and
// no allocation, but for the few causes that carry an address, a network
// error or a target's old configuration.
struct EventReason {
    struct Rare {
        std::optional<Address> previous_address;  // taken_over, moved
        std::optional<NetworkError> error;        // detection_expired (if any), icmp_refused
        std::string detail;                       // configuration_changed
    };

    Duration duration{};      // grant_changed, damping_ended, damped, forgotten
    Boxed<Rare> rare;         // none unless one of its parts is set
    OptionalDuration rtt;     // recovered, degraded
    std::uint32_t count = 0;  // unanswered, damped
    std::uint32_t lost = 0;   // recovered, degraded: the loss window
    std::uint32_t window = 0;
    EventCause cause = EventCause::registered;
    PeerState forgotten_in = PeerState::up;  // forgotten: the state it was in
    std::uint8_t probes_before = 0;          // grant_changed
    bool loss_over = false;                  // degraded
    bool rtt_over = false;

    static EventReason of(const PeerEvent& event);
    // The words, e.g. "detection time expired" or "3 probes unanswered".
    std::string text() const;
};

// Why the event happened, e.g. "detection time expired" or "3 probes
// unanswered" (PEER_REASON, KEEPALIVE_REASON, the event's "reason"):
// EventReason::of(event).text().
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
