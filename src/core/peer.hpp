// One monitored peer and the events its state machine reports.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/address.hpp"
#include "core/boxed.hpp"
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

// std::optional<Duration> in 4 bytes instead of 16, for round trips: whole
// microseconds (all that status, metrics and the journal show), never
// negative, saturating at 2^31-1 us (about 35 minutes).
class OptionalDuration {
public:
    static constexpr Duration kMax = std::chrono::microseconds(INT32_MAX);

    OptionalDuration() = default;
    OptionalDuration(Duration d) : us_(to_us(d)) {}
    OptionalDuration(std::optional<Duration> d) : us_(d ? to_us(*d) : -1) {}
    explicit operator bool() const { return us_ >= 0; }
    bool has_value() const { return us_ >= 0; }
    Duration operator*() const { return std::chrono::microseconds(us_); }
    Duration value_or(Duration d) const { return us_ >= 0 ? **this : d; }
    void reset() { us_ = -1; }
    operator std::optional<Duration>() const {
        return us_ >= 0 ? std::optional<Duration>(**this) : std::nullopt;
    }
    friend bool operator==(const OptionalDuration&, const OptionalDuration&) = default;

private:
    static std::int32_t to_us(Duration d) {
        return static_cast<std::int32_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(std::clamp(d, Duration{}, kMax))
                .count());
    }
    std::int32_t us_ = -1;
};

// The latest network error seen for a peer: an ICMP error quoting a probe, or
// a target's socket error. The daemon puts it in words
// (daemon/event_text.hpp), e.g. "host up, no agent (ICMP port unreachable)".
struct NetworkError {
    enum class Source : std::uint8_t { icmp, socket };
    Source source = Source::icmp;
    int error = 0;                      // errno: ECONNREFUSED for ICMP port unreachable, ...
    std::optional<Address> reporter{};  // icmp: the host that sent it, if known
    TimePoint at{};
    friend bool operator==(const NetworkError&, const NetworkError&) = default;
};

// A peer's name in 8 bytes instead of a view's 16 (the table holds one per
// peer): a pointer to a length byte followed by the name's bytes, in storage
// its owner keeps alive (the table's name arena for a peer in the table, a
// PeerNameBuffer elsewhere). Reads as a std::string_view.
class PeerName {
public:
    PeerName() = default;  // ""
    // `counted`: a length byte, then that many bytes.
    explicit PeerName(const char* counted) : counted_(counted) {}

    std::string_view view() const { return {data(), size()}; }
    operator std::string_view() const { return view(); }
    const char* data() const { return counted_ + 1; }
    std::size_t size() const { return static_cast<unsigned char>(*counted_); }
    bool empty() const { return size() == 0; }
    const char* begin() const { return data(); }
    const char* end() const { return data() + size(); }
    // The length byte and the bytes, as stored.
    const char* counted() const { return counted_; }

    friend bool operator==(const PeerName& a, std::string_view b) { return a.view() == b; }
    friend bool operator==(const PeerName& a, const PeerName& b) { return a.view() == b.view(); }

private:
    static constexpr char kEmpty[1] = {0};
    const char* counted_ = kEmpty;
};

// Storage for one PeerName of up to 255 bytes, with no allocation.
class PeerNameBuffer {
public:
    PeerNameBuffer() = default;
    explicit PeerNameBuffer(std::string_view name) { assign(name); }
    PeerNameBuffer(const PeerNameBuffer&) = delete;  // a PeerName points in here
    PeerNameBuffer& operator=(const PeerNameBuffer&) = delete;

    // Throws std::length_error past 255 bytes.
    PeerName assign(std::string_view name);
    PeerName name() const { return PeerName(bytes_.data()); }

private:
    std::array<char, 256> bytes_{};
};

// What few peers ever have, boxed out of line together so that the others pay
// one pointer for all three. Made on first use; never per datagram: at a loss
// verdict under a loss policy, a recovery under a hold_down policy, or an error.
struct PeerRare {
    LossWindow loss;                         // [peers] degraded_loss: the last probes' fate
    FlapDamper damper;                       // [peers] hold_down: recent recoveries
    std::optional<NetworkError> last_error;  // the latest network error seen
};

// One record per peer, 136 bytes (the table holds up to millions): what
// a probe and an ACK touch comes first; what only events and status read
// follows; what few peers ever have is boxed out of line (PeerRare).
struct Peer {
    // Hot: read or written by every probe and ACK.
    std::uint32_t session = 0;
    PeerState state = PeerState::up;
    Protocol protocol = Protocol::kap1;
    std::uint8_t probes = 0;
    std::uint8_t withheld = 0;  // consecutive unanswered probes not counted (server's own loss)
    std::uint32_t missed = 0;   // consecutive unanswered probes
    std::uint32_t acks_received = 0;  // saturates (as probes_sent)
    std::uint64_t seq_sent = 0;
    std::uint64_t seq_acked = 0;
    std::uint64_t incarnation = 0;
    Address address;            // probes go here: the source of the last accepted registration
    TimerWheel::Handle timer;   // the one wheel entry: next probe, or forgetting
    TimePoint last_probe_at{};  // RTT of legacy peers, whose replies carry no time
    Duration interval{};
    // Where probes leave from; shared by every peer of that socket and local
    // address (PeerTable interns it). Null for a peer outside the table (a target).
    const Route* route = nullptr;
    OptionalDuration rtt;
    PeerHealth health;

    // Warm: state changes, status and events.
    std::uint32_t probes_sent = 0;
    std::uint32_t state_changes = 0;  // since the name entered the table
    TimePoint since{};                // when the current state began
    // In the table, its own copy (PeerTable::insert); elsewhere (a target),
    // storage its owner keeps alive.
    PeerName name;
    Boxed<PeerRare> rare;  // none until first needed

    // The latest network error seen, null if none.
    const NetworkError* last_error() const {
        return rare && rare->last_error ? &*rare->last_error : nullptr;
    }
    // Held down for flapping (FlapDamper).
    bool damped() const { return rare && rare->damper.held(); }
    // Its loss window, null if it has none.
    const LossWindow* loss_window() const { return rare ? &rare->loss : nullptr; }
};
// The hot part stays small and every peer costs the table its 136 bytes at most.
static_assert(sizeof(Peer) <= 136);

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

// Why an event happened. The core reports the cause and the figures its
// words need (see PeerEvent); the daemon puts them in words
// (daemon/event_text.hpp), so that no event costs the core an allocation.
enum class EventCause : std::uint8_t {
    // KAP/1 and legacy peers (ServerCore).
    registered,         // a new session
    registered_legacy,  // a new legacy (Go module) peer
    grant_changed,      // registered again with another grant: interval_before, probes_before
    registered_again,   // back up by registering again
    restarted,          // a new incarnation from the same host
    taken_over,         // a new incarnation from another host: previous_address
    moved,              // the same session from another address: previous_address
    ack_received,
    damping_ended,      // a damped peer answered for hold_down
    recovered,          // degraded no more: health
    degraded,           // health, with what is over its limit
    damped,             // recoveries within hold_down
    unanswered,         // missed probes in a row
    detection_expired,  // error: the network error seen within the detection time, if any
    icmp_refused,       // fast down on ICMP port unreachable: error
    goodbye,            // BYE "shutting down"
    forgotten,          // kept_for in state `previous`
    // TCP targets (daemon/targets.hpp).
    configured,
    configuration_changed,  // detail: the old configuration
    unconfigured,           // removed from the configuration
    connected,
    closed_by_service,
    reset_by_host,
    connection_reset,
    no_answer_to_keepalives,
    no_answer_to_connects,
    unreachable,
    connection_refused,
    connection_failed,
};
inline constexpr std::size_t kEventCauseCount =
    static_cast<std::size_t>(EventCause::connection_failed) + 1;

// A state change, with the peer as it is after the change. Plain data: it
// is made on the stack and costs no allocation.
struct PeerEvent {
    EventKind kind;
    std::optional<PeerState> previous{};  // none for a new registration
    const Peer& peer;
    EventCause cause;
    std::optional<Address> previous_address{};  // taken_over, moved: where the peer was
    // The figures the cause's words need (see EventCause); the rest stay zero.
    std::uint32_t count = 0;  // unanswered: probes missed; damped: recoveries
    // grant_changed: the interval before; damped, damping_ended: hold_down;
    // forgotten: how long it was kept.
    Duration duration{};
    std::uint8_t probes_before = 0;       // grant_changed
    HealthFigures health{};               // degraded, recovered
    std::optional<NetworkError> error{};  // detection_expired (if any), icmp_refused
    // configuration_changed: text the daemon keeps alive during the call (never set by the core).
    std::string_view detail{};
};
static_assert(std::is_trivially_copyable_v<PeerEvent>);

}  // namespace keepalive
