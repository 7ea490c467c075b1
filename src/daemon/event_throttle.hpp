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
//
// The buckets live in two fixed tables indexed by a keyed hash, so memory and
// the work of a summary stay the same whatever the number of peers; two
// names that share a slot share a bucket, which only ever limits them more.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

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
    static constexpr std::size_t kSlots = 4096;

    // `key` salts the hash so that nobody can pick names that share a bucket.
    explicit EventThrottle(std::uint64_t key = 0);
    EventThrottle(std::uint64_t key, Limits limits) : limits_(limits), key_(key) {}

    // True if the event should be logged.
    bool admit(EventKind kind, std::string_view peer, const Address& host, TimePoint now);

    // Once per summary period, and only if events were held back since the
    // last one: "N peer events not logged in the last 10 s (rate limit): ...".
    std::optional<std::string> summary(TimePoint now);

    std::uint64_t suppressed_total() const { return suppressed_total_; }

private:
    struct Bucket {
        std::uint64_t owner = 0;  // the full hash of the key the bucket holds
        double tokens = 0;
        TimePoint last{};
        std::uint64_t suppressed = 0;  // in the current summary period
    };
    static bool take(Bucket& b, std::uint64_t owner, double burst, double per_second,
                     TimePoint now);
    std::uint64_t hash(std::string_view bytes) const;

    Limits limits_;
    std::uint64_t key_;
    std::array<Bucket, kSlots> peers_{};
    std::array<Bucket, kSlots> hosts_{};
    TimePoint period_start_{};
    std::uint64_t suppressed_in_period_ = 0;
    std::uint64_t suppressed_total_ = 0;
    std::string noisiest_;  // the peer with the most held back this period
    std::uint64_t noisiest_count_ = 0;
};

}  // namespace keepalive
