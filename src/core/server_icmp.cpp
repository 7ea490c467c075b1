// ServerCore's use of ICMP errors for probes: the host that answers a PROBE
// with port unreachable is up but runs no agent; a router's host or network
// unreachable says the host cannot be reached.
#include <cerrno>

#include "core/server.hpp"

namespace keepalive {
namespace {

// The session of a quoted KAP/1 PROBE: the header is enough (an ICMP error may
// quote only the first bytes of the datagram).
std::optional<std::uint32_t> quoted_probe_session(std::span<const std::uint8_t> q) {
    constexpr std::size_t kHeader = 12;
    if (q.size() < kHeader || q[0] != 0x4B || q[1] != 0x41 || q[2] != kap::kVersion ||
        q[3] != static_cast<std::uint8_t>(kap::Type::probe))
        return std::nullopt;
    return (std::uint32_t{q[8]} << 24) | (std::uint32_t{q[9]} << 16) | (std::uint32_t{q[10]} << 8) |
           std::uint32_t{q[11]};
}

}  // namespace

void ServerCore::on_icmp_error(const Address& to, int error, const std::optional<Address>& reporter,
                               std::span<const std::uint8_t> quoted, TimePoint now) {
    const auto session = quoted_probe_session(quoted);
    if (!session) return;
    const Slot slot = kap1_session(*session);
    if (slot == PeerTable::kNone) return;
    Peer& p = table_.at(slot);
    if (p.address != to) return;  // a probe to an old address, or a forged quote
    p.rare.make().last_error = NetworkError{.error = error, .reporter = reporter, .at = now};
    if (error == ECONNREFUSED && limits_.fast_down_on_icmp &&
        (p.state == PeerState::up || p.state == PeerState::suspect)) {
        change_state(slot, PeerState::down,
                     {.kind = EventKind::down,
                      .peer = p,
                      .cause = EventCause::icmp_refused,
                      .error = *p.last_error()},
                     now);
        schedule(slot, std::min(now + limits_.down_probe_interval, p.since + limits_.forget_after));
    }
}

}  // namespace keepalive
