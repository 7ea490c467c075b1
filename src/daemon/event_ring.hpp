// The daemon's ordered record of peer events: each gets the next daemon-wide
// sequence number (1, 2, 3, ... without gaps), and the most recent ones are
// kept in a bounded ring so that `keepalivectl watch --since SEQ` can resume
// after a short disconnect.
#pragma once

#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "core/peer.hpp"

namespace keepalive {

// One event as it is streamed, hooked and journalled; keys of to_json()
// match the journal fields (PEER_NAME -> name, ...).
struct EventRecord {
    std::uint64_t seq = 0;
    EventKind kind = EventKind::registered;
    std::string name;
    std::string address;
    std::string state;           // after the event; "forgotten" for a forgotten peer
    std::string previous_state;  // empty for a new registration
    std::uint32_t session = 0;
    std::string reason;
    double time = 0;  // wall clock, seconds since the epoch

    nlohmann::json to_json() const;
};

class EventRing {
public:
    static constexpr std::size_t kDefaultCapacity = 10'000;

    explicit EventRing(std::size_t capacity = kDefaultCapacity) : capacity_(capacity) {}

    // Numbers and keeps the event (dropping the oldest when full); returns it.
    const EventRecord& push(const PeerEvent& event, double wall_time);

    // The seq the next event will get; the last one given is next_seq() - 1.
    std::uint64_t next_seq() const { return next_seq_; }
    // The oldest seq still held, or next_seq() when empty.
    std::uint64_t oldest_seq() const { return next_seq_ - ring_.size(); }
    // The event with this seq, if still held.
    const EventRecord* find(std::uint64_t seq) const;

private:
    std::size_t capacity_;
    std::uint64_t next_seq_ = 1;
    std::deque<EventRecord> ring_;
};

}  // namespace keepalive
