// The daemon's ordered record of peer events: each gets the next daemon-wide
// sequence number (1, 2, 3, ... without gaps), and the most recent ones are
// kept in a bounded ring so that `keepalivectl watch --since SEQ` can resume
// after a short disconnect.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/peer.hpp"
#include "daemon/event_text.hpp"

namespace keepalive {

// A peer's name held inline (1 to 64 bytes of A-Z a-z 0-9 . _ - : @, the
// KAP/1 name rule, which targets and legacy peers follow too), padded with
// NULs: a copy that outlives the peer, in 64 bytes.
class EventName {
public:
    static constexpr std::size_t kMaxSize = 64;

    EventName() = default;
    // Keeps the first kMaxSize bytes; no valid name is longer.
    explicit EventName(std::string_view name);
    std::string_view view() const;

private:
    std::array<char, kMaxSize> bytes_{};
};

// One event as it is streamed, hooked and journalled, held typed (the ring
// keeps 10 000): the words are made when it is read. Keys of to_json() match
// the journal fields (PEER_NAME -> name, ...).
struct EventRecord {
    std::uint64_t seq = 0;
    double time = 0;  // wall clock, seconds since the epoch
    EventReason reason;
    Address address;
    std::uint32_t session = 0;
    EventKind kind = EventKind::registered;
    PeerState state = PeerState::up;    // after the event
    std::optional<PeerState> previous;  // none for a new registration
    EventName name;

    // "up", ...; "forgotten" for a forgotten peer.
    std::string_view state_text() const;
    // "" for a new registration.
    std::string_view previous_state_text() const;
    std::string session_text() const;  // "0000abcd"

    nlohmann::json to_json() const;
};
// The ring keeps kDefaultCapacity of them, all resident once it has wrapped.
static_assert(sizeof(EventRecord) <= 152);

class EventRing {
public:
    static constexpr std::size_t kDefaultCapacity = 10'000;

    // Reserves room for `capacity` records (at least one), touched only as they come.
    explicit EventRing(std::size_t capacity = kDefaultCapacity);

    // Numbers and keeps the event (in place of the oldest when full); returns it.
    const EventRecord& push(const PeerEvent& event, double wall_time);

    // The seq the next event will get; the last one given is next_seq() - 1.
    std::uint64_t next_seq() const { return next_seq_; }
    // The oldest seq still held, or next_seq() when empty.
    std::uint64_t oldest_seq() const { return next_seq_ - ring_.size(); }
    // The event with this seq, if still held.
    const EventRecord* find(std::uint64_t seq) const;

private:
    // Where the record of this seq is (or will be) held.
    std::size_t index(std::uint64_t seq) const { return (seq - 1) % capacity_; }

    std::size_t capacity_;
    std::uint64_t next_seq_ = 1;
    std::vector<EventRecord> ring_;  // filled up to capacity_, then overwritten in seq order
};

}  // namespace keepalive
