#include "daemon/status_json.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "daemon/event_text.hpp"

namespace keepalive {

using std::chrono::duration;
using std::chrono::duration_cast;
using std::chrono::microseconds;

nlohmann::json peer_json(const Peer& p, TimePoint now) {
    return {
        {"name", p.name.view()},
        {"address", p.address.to_string()},
        {"protocol", to_string(p.protocol)},
        {"state", to_string(p.state)},
        {"session", fmt::format("{:08x}", p.session)},
        {"interval_ms", duration_cast<milliseconds>(p.interval).count()},
        {"probes", p.probes},
        {"missed", p.missed},
        {"rtt_us", p.rtt ? nlohmann::json(duration_cast<microseconds>(*p.rtt).count())
                         : nlohmann::json(nullptr)},
        {"since", std::max(0.0, duration<double>(now - p.since).count())},
        {"probes_sent", p.probes_sent},
        {"acks_received", p.acks_received},
        {"state_changes", p.state_changes},
        {"last_error", !p.last_error() ? nlohmann::json(nullptr)
                                     : nlohmann::json(network_error_text(*p.last_error()))},
    };
}

ControlServer::Producer peers_stream(const ServerCore& core, std::function<TimePoint()> now,
                                     nlohmann::json extra) {
    struct Cursor {
        PeerTable::Slot next = 0;
        bool started = false;
        bool first = true;
    };
    return [&core, now = std::move(now), extra = std::move(extra),
            cursor = Cursor{}](std::string& out) mutable {
        if (!cursor.started) out += "{\"peers\":[";
        cursor.started = true;
        const TimePoint t = now();
        cursor.next = core.peers().for_each_from(cursor.next, kPeersPerPiece,
                                                 [&](PeerTable::Slot, const Peer& p) {
                                                     if (!cursor.first) out += ',';
                                                     cursor.first = false;
                                                     out += peer_json(p, t).dump();
                                                 });
        if (cursor.next != PeerTable::kNone) return true;
        for (const auto& row : extra) {
            if (!cursor.first) out += ',';
            cursor.first = false;
            out += row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        }
        out += "]}\n";
        return false;
    };
}

std::string to_line(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

PeerCounts operator+(const PeerCounts& a, const PeerCounts& b) {
    PeerCounts sum;
    sum.total = a.total + b.total;
    for (std::size_t i = 0; i < kPeerStateCount; ++i) sum.by_state[i] = a.by_state[i] + b.by_state[i];
    return sum;
}

nlohmann::json status_json(const ServerCore& core, const PeerCounts& c, const DaemonInfo& info) {
    nlohmann::json drops = nlohmann::json::object();
    std::uint64_t dropped = 0;
    for (std::size_t i = 0; i < kDropCount; ++i) {
        drops[std::string(to_string(static_cast<Drop>(i)))] = core.drops()[i];
        dropped += core.drops()[i];
    }
    return {
        {"summary", summary_line(c)},
        {"peers", c.total},
        {"up", c.in(PeerState::up)},
        {"degraded", c.in(PeerState::degraded)},
        {"suspect", c.in(PeerState::suspect)},
        {"down", c.in(PeerState::down)},
        {"left", c.in(PeerState::left)},
        {"datagrams_received", core.datagrams_received()},
        {"datagrams_dropped", dropped},
        {"drops", std::move(drops)},
        {"epoch", fmt::format("{:016x}", core.epoch())},
        {"daemon",
         {{"version", info.version},
          {"config", info.config},
          {"listen", info.listen},
          {"uptime_s", info.uptime_s}}},
    };
}

}  // namespace keepalive
