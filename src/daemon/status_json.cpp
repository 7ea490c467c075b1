#include "daemon/status_json.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace keepalive {

using std::chrono::duration;
using std::chrono::duration_cast;
using std::chrono::microseconds;

nlohmann::json peers_json(const ServerCore& core, TimePoint now) {
    std::vector<const Peer*> peers;
    peers.reserve(core.peers().size());
    core.peers().for_each([&](PeerTable::Slot, const Peer& p) { peers.push_back(&p); });
    std::sort(peers.begin(), peers.end(),
              [](const Peer* a, const Peer* b) { return a->name < b->name; });

    auto list = nlohmann::json::array();
    for (const Peer* p : peers) {
        list.push_back({
            {"name", p->name},
            {"address", p->address.to_string()},
            {"protocol", to_string(p->protocol)},
            {"state", to_string(p->state)},
            {"session", fmt::format("{:08x}", p->session)},
            {"interval_ms", duration_cast<milliseconds>(p->interval).count()},
            {"probes", p->probes},
            {"missed", p->missed},
            {"rtt_us", p->rtt ? nlohmann::json(duration_cast<microseconds>(*p->rtt).count())
                              : nlohmann::json(nullptr)},
            {"since", std::max(0.0, duration<double>(now - p->since).count())},
            {"probes_sent", p->probes_sent},
            {"acks_received", p->acks_received},
            {"state_changes", p->state_changes},
        });
    }
    return {{"peers", std::move(list)}};
}

nlohmann::json status_json(const ServerCore& core, const DaemonInfo& info) {
    const PeerCounts& c = core.peers().counts();
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
