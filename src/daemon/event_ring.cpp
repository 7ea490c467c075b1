#include "daemon/event_ring.hpp"

#include <fmt/format.h>

#include "daemon/event_text.hpp"

namespace keepalive {

nlohmann::json EventRecord::to_json() const {
    return {
        {"seq", seq},
        {"time", time},
        {"event", to_string(kind)},
        {"name", name},
        {"address", address},
        {"state", state},
        {"previous_state", previous_state},
        {"session", fmt::format("{:08x}", session)},
        {"reason", reason},
    };
}

const EventRecord& EventRing::push(const PeerEvent& event, double wall_time) {
    if (ring_.size() >= capacity_ && !ring_.empty()) ring_.pop_front();
    EventRecord& r = ring_.emplace_back();
    r.seq = next_seq_++;
    r.kind = event.kind;
    r.name = event.peer.name;
    r.address = event.peer.address.to_string();
    r.state = event.kind == EventKind::forgotten ? "forgotten" : to_string(event.peer.state);
    r.previous_state = event.previous ? std::string(to_string(*event.previous)) : std::string();
    r.session = event.peer.session;
    r.reason = event_reason(event);
    r.time = wall_time;
    return r;
}

const EventRecord* EventRing::find(std::uint64_t seq) const {
    if (seq < oldest_seq() || seq >= next_seq_) return nullptr;
    return &ring_[static_cast<std::size_t>(seq - oldest_seq())];
}

}  // namespace keepalive
