// One TCP target's pieces that do not need the event loop: what a socket
// error means for the target (a pure function), the reconnect backoff, and the
// socket calls (options, connect, SO_ERROR, TCP_INFO).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"
#include "core/peer.hpp"
#include "core/random.hpp"
#include "core/result.hpp"
#include "daemon/target_config.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {

// Where a target's connection was when it failed.
enum class TargetPhase : std::uint8_t { connecting, established };

// What a failure means: the event to report, the state it leaves the target
// in, and its cause (in words: daemon/event_text.hpp).
struct TargetOutcome {
    EventKind event;  // down, left or restarted
    PeerState state;  // down, left or up
    EventCause cause;
    // The host answered (a FIN or a RST): it is worth reconnecting at once.
    bool host_answered;
    friend bool operator==(const TargetOutcome&, const TargetOutcome&) = default;
};

// The outcome of a connection that failed with `error` (an errno value, or 0
// for an orderly close: recv() returned 0 after the service's FIN).
//   established, 0            -> left "closed by the service"
//   established, ECONNRESET   -> restarted (the host answered a probe with a reset)
//   ETIMEDOUT                 -> down "no answer to keepalive probes" (established) or
//                                down "no answer to connection attempts" (connecting)
//   EHOSTUNREACH/ENETUNREACH  -> down "unreachable"
//   ECONNREFUSED              -> down "connection refused"
//   anything else             -> down "connection failed"
TargetOutcome classify_failure(TargetPhase phase, int error);

// The text of last_error for a failure, e.g. "ECONNREFUSED: Connection refused".
std::string failure_text(int error);

// The wait before reconnect attempt number `failures` (1, 2, ...) after failed
// ones: 1 s doubling up to 30 s, each drawn from [3/4, 1] of that, so that
// targets failing together do not retry in lockstep.
Duration backoff_delay(unsigned failures, RandomSource& random);
inline constexpr Duration kMaxBackoff = std::chrono::seconds(30);

// A non-blocking TCP socket to t.address with SO_KEEPALIVE, TCP_KEEPIDLE,
// TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT set from t, with connect()
// started. `connected` tells whether it completed at once. Fails with the
// errno of the first call that failed (connect's says why, e.g. ENETUNREACH).
struct StartedConnect {
    UniqueFd fd;
    bool connected;
};
Result<StartedConnect, int> start_connect(const TargetConfig& t);

// The pending error of a socket (SO_ERROR), clearing it; 0 if none.
int take_socket_error(int fd);

// What the kernel knows of an established connection (TCP_INFO).
struct TcpFigures {
    std::optional<Duration> rtt;   // smoothed round-trip time, if measured
    std::uint32_t unanswered = 0;  // keepalive probes sent without answer so far
};
std::optional<TcpFigures> tcp_figures(int fd);

}  // namespace keepalive
