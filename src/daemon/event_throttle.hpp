// Which peer events reach the log when a peer, or a host, makes them faster
// than anyone could read them: one host re-registering with a new incarnation
// in every datagram must not drown the journal (and push it past journald's
// own rate limit, where real `down` events would be lost with the flood).
//
// Each peer name and each source host has a token bucket. An event passes if
// both buckets have a token; the rest are counted and reported in one summary
// line per period. A `down` event always passes (it still spends tokens):
// detection makes at most one per peer per detection time, and it is the
// event nobody may miss.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/peer.hpp"

namespace keepalive {

class EventThrottle {
public:
    struct Limits {
        double peer_burst = 10;      // events one peer may make at once
        double peer_per_second = 1;  // and then, on average
        double host_burst = 100;     // events the peers of one source host may make at once
        double host_per_second = 20;
        Duration summary_period = std::chrono::seconds(10);
    };

    EventThrottle() = default;
    explicit EventThrottle(Limits limits) : limits_(limits) {}

    // True if the event should be logged.
    bool admit(EventKind kind, const std::string& peer, const Address& host, TimePoint now);

    // Once per summary period, and only if events were held back since the
    // last one: "N peer events not logged in the last 10 s (rate limit): ...".
    // Also forgets the buckets that are full again.
    std::optional<std::string> summary(TimePoint now);

    std::uint64_t suppressed_total() const { return suppressed_total_; }

private:
    struct Bucket {
        double tokens = 0;
        TimePoint last{};
        std::uint64_t suppressed = 0;  // in the current summary period
    };
    static bool take(Bucket& b, double burst, double per_second, TimePoint now);

    Limits limits_;
    std::unordered_map<std::string, Bucket> peers_;
    std::unordered_map<Address, Bucket, AddressHash> hosts_;  // keyed by host, port 0
    TimePoint period_start_{};
    std::uint64_t suppressed_in_period_ = 0;
    std::uint64_t suppressed_total_ = 0;
};

}  // namespace keepalive
