// ServerCore across its own restarts: the table out to a snapshot and back in,
// so that a restart, crash or upgrade is invisible to the peers.
#include <algorithm>

#include "core/duration.hpp"
#include "core/server.hpp"

namespace keepalive {

ServerSnapshot ServerCore::snapshot(
    TimePoint now, const std::function<Address(std::uint32_t socket)>& listener_of) const {
    ServerSnapshot s;
    s.epoch = epoch_;
    s.peers.reserve(table_.size());
    table_.for_each([&](Slot, const Peer& p) {
        to_record(p, now, listener_of(p.route->socket), s.peers.emplace_back());
    });
    return s;
}

Result<ServerCore::Restored, std::string> ServerCore::restore(
    const ServerSnapshot& snapshot, Duration elapsed, TimePoint now,
    const std::function<std::optional<std::uint32_t>(const Address& listener)>& socket_for) {
    if (elapsed > limits_.forget_after)
        return Err{"saved " + format_duration(std::chrono::ceil<milliseconds>(elapsed)) +
                   " ago, longer than forget_after (" + format_duration(limits_.forget_after) +
                   "): every peer in it would have been forgotten"};
    elapsed = std::max(elapsed, Duration::zero());
    epoch_ = snapshot.epoch;
    Restored result;
    for (const PeerRecord& r : snapshot.peers) {
        const auto socket = socket_for(r.listener);
        if (!socket || table_.size() >= limits_.max_peers ||
            table_.find_name(r.name) != PeerTable::kNone ||
            table_.find_session(r.session) != PeerTable::kNone) {
            ++result.skipped;
            continue;
        }
        Peer p;
        PeerNameBuffer name;
        p.name = name.assign(r.name);  // the table keeps its own copy
        p.protocol = r.protocol;
        p.session = r.session;
        p.incarnation = r.incarnation;
        p.address = r.address;
        const Route route{*socket, r.route_local};
        p.route = &route;  // interned by the table
        p.interval = r.interval;
        p.probes = r.probes;
        p.state = r.state;
        p.since = now - elapsed - r.state_age;
        // Probes may have gone out after the last save, at most one per interval
        // (or per down-probe interval for a down peer): skip past all of them,
        // since a peer ignores a PROBE whose seq is not above the last it saw.
        const Duration step =
            std::max<Duration>(std::min(r.interval, limits_.down_probe_interval), milliseconds(1));
        const auto unseen = static_cast<std::uint64_t>(elapsed / step) + kRestoreSeqMargin;
        p.seq_sent = p.seq_acked = r.seq_sent + unseen;
        p.probes_sent =
            static_cast<std::uint32_t>(std::min<std::uint64_t>(r.probes_sent, UINT32_MAX));
        p.acks_received =
            static_cast<std::uint32_t>(std::min<std::uint64_t>(r.acks_received, UINT32_MAX));
        p.rtt = r.rtt;
        const Slot slot = table_.insert(std::move(p));
        ++result.peers;

        const Peer& q = table_.at(slot);
        // Soon, but spread so that a large table does not probe in one burst.
        const auto spread = std::min<Duration>(q.interval, std::chrono::seconds(1));
        const TimePoint first = first_probe_time(spread, now);
        switch (q.state) {
            case PeerState::up:
            case PeerState::degraded:  // its loss window starts afresh
            case PeerState::suspect:
                schedule(slot, first);
                break;
            case PeerState::down:
                schedule(slot, std::min(first, q.since + limits_.forget_after));
                break;
            case PeerState::left:
                schedule(slot, std::max(now, q.since + limits_.forget_after));
                break;
        }
    }
    return result;
}

}  // namespace keepalive
