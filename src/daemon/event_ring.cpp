#include "daemon/event_ring.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace keepalive {

EventName::EventName(std::string_view name) {
    std::copy_n(name.begin(), std::min(name.size(), kMaxSize), bytes_.begin());
}

// A name has no NUL: the first one ends it.
std::string_view EventName::view() const {
    return {bytes_.data(), ::strnlen(bytes_.data(), kMaxSize)};
}

std::string_view EventRecord::state_text() const {
    return kind == EventKind::forgotten ? "forgotten" : to_string(state);
}

std::string_view EventRecord::previous_state_text() const {
    return previous ? to_string(*previous) : std::string_view();
}

std::string EventRecord::session_text() const {
    return fmt::format("{:08x}", session);
}

nlohmann::json EventRecord::to_json() const {
    return {
        {"seq", seq},
        {"time", time},
        {"event", to_string(kind)},
        {"name", name.view()},
        {"address", address.to_string()},
        {"state", state_text()},
        {"previous_state", previous_state_text()},
        {"session", session_text()},
        {"reason", reason.text()},
    };
}

EventRing::EventRing(std::size_t capacity) : capacity_(std::max<std::size_t>(capacity, 1)) {
    // Reserved, not made: a large reservation is fresh pages from the kernel,
    // resident only as records fill them.
    ring_.reserve(capacity_);
}

const EventRecord& EventRing::push(const PeerEvent& event, double wall_time) {
    const std::uint64_t seq = next_seq_++;
    if (ring_.size() < capacity_) ring_.emplace_back();
    EventRecord& r = ring_[index(seq)];
    r.seq = seq;
    r.time = wall_time;
    r.reason = EventReason::of(event);
    r.address = event.peer.address;
    r.session = event.peer.session;
    r.kind = event.kind;
    r.state = event.peer.state;
    r.previous = event.previous;
    r.name = EventName(event.peer.name.view());
    return r;
}

const EventRecord* EventRing::find(std::uint64_t seq) const {
    if (seq < oldest_seq() || seq >= next_seq_) return nullptr;
    return &ring_[index(seq)];
}

}  // namespace keepalive
