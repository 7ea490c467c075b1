// One monitored peer and the events its state machine reports.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/health.hpp"
#include "core/timer_wheel.hpp"

namespace keepalive {

// degraded: up, but losing more probes or answering slower than [peers] allows.
enum class PeerState : std::uint8_t { up, suspect, down, left, degraded };
inline constexpr std::size_t kPeerStateCount = 5;
std::string_view to_string(PeerState);
// Up, degraded or suspect: the peer is there, as far as the server knows.
inline bool answering(PeerState s) {
    return s == PeerState::up || s == PeerState::degraded || s == PeerState::suspect;
}

// tcp: an agentless target watched through the kernel's TCP keepalive (daemon/targets.hpp).
enum class Protocol : std::uint8_t { kap1, legacy, tcp };
std::string_view to_string(Protocol);

// 1 to 64 bytes of A-Z a-z 0-9 . _ - : @ (the KAP/1 name rule, used for legacy names too).
bool valid_peer_name(std::string_view name);

// Where a peer's traffic leaves from: the server socket its registration
// arrived on and the local address it was sent to (replies use it as source).
struct Route {
    std::uint32_t socket = 0;
    Address local;
    friend bool operator==(const Route&, const Route&) = default;
};

struct Peer {
    std::string name;
    Protocol protocol = Protocol::kap1;
    std::uint32_t session = 0;
    std::uint64_t incarnation = 0;
    Address address;  // probes go here: the source of the last accepted registration
    Route route;
    Duration interval{};
    std::uint8_t probes = 0;

    PeerState state = PeerState::up;
    TimePoint since{};  // when the current state began
    std::uint64_t seq_sent = 0;
    std::uint64_t seq_acked = 0;
    std::uint32_t missed = 0;  // consecutive unanswered probes
    std::uint8_t withheld = 0;  // consecutive unanswered probes not counted (server's own loss)
    std::optional<Duration> rtt;
    TimePoint last_probe_at{};  // RTT of legacy peers, whose replies carry no time
    std::uint64_t probes_sent = 0;
    std::uint64_t acks_received = 0;
    std::uint64_t state_changes = 0;  // since the name entered the table
    PeerHealth health;
    FlapDamper damper;
    // The latest network error seen for this peer (an ICMP error quoting a probe, or a
    // target's socket error), e.g. "port unreachable: host up, no agent"; empty if none.
    std::string last_error;
    TimePoint last_error_at{};

    TimerWheel::Handle timer;  // the one wheel entry: next probe, or forgetting
};

enum class EventKind : std::uint8_t {
    registered,
    up,
    suspect,
    down,
    left,
    restarted,
    moved,
    forgotten,
    degraded,  // up but sick: loss or RTT over [peers] degraded_loss / degraded_rtt
    damped     // flapping: held down until it has answered for [peers] hold_down
};
inline constexpr std::size_t kEventKindCount = 10;
std::string_view to_string(EventKind);

// A state change, with a copy of the peer as it is after the change.
struct PeerEvent {
    EventKind kind;
    std::optional<PeerState> previous;  // none for a new registration
    const Peer& peer;
    std::string reason;
    std::optional<Address> previous_address;  // for `moved`: where the peer was
};

}  // namespace keepalive
