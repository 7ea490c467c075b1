#include "daemon/status_json.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace keepalive {

using std::chrono::duration;
using std::chrono::duration_cast;
using std::chrono::microseconds;

nlohmann::json peer_row(const Peer& p, TimePoint now) {
    return {
        {"name", p.name},
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
        {"last_error",
         p.last_error.empty() ? nlohmann::json(nullptr) : nlohmann::json(p.last_error)},
    };
}

nlohmann::json peers_json(const ServerCore& core, TimePoint now, nlohmann::json extra) {
    std::vector<const Peer*> peers;
    peers.reserve(core.peers().size());
    core.peers().for_each([&](PeerTable::Slot, const Peer& p) { peers.push_back(&p); });
    std::sort(peers.begin(), peers.end(),
              [](const Peer* a, const Peer* b) { return a->name < b->name; });

    auto list = nlohmann::json::array();
    for (const Peer* p : peers) list.push_back(peer_row(*p, now));
    if (!extra.empty()) {
        for (auto& row : extra) list.push_back(std::move(row));
        std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
            return a.at("name").template get_ref<const std::string&>() <
                   b.at("name").template get_ref<const std::string&>();
        });
    }
    return {{"peers", std::move(list)}};
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
