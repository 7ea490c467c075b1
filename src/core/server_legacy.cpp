// ServerCore's side of the Go keepalive module's text protocol: legacy peers
// share the table, the state machine and the events with KAP/1 peers.
#include <utility>

#include "core/legacy.hpp"
#include "core/server.hpp"

namespace keepalive {

void ServerCore::on_legacy_register(std::span<const std::uint8_t> data, const Address& from,
                                    const Route& probe_route, std::uint16_t probe_port,
                                    TimePoint now) {
    ++received_;
    const auto reg = legacy::parse_registration(data);
    // The old protocol has no way to grant other values, so out-of-limit
    // requests are refused rather than clamped.
    const Duration interval = reg ? Duration(std::chrono::seconds(reg->interval_s)) : Duration{};
    if (!reg || interval < limits_.min_interval || interval > limits_.max_interval ||
        reg->probes > limits_.max_probes) {
        count(Drop::legacy_malformed);
        return;
    }
    if (!allowed(from)) {
        count(Drop::not_allowed);  // the legacy protocol has no REJECT
        return;
    }
    if (reserved(reg->name)) {
        count(Drop::legacy_refused);
        return;
    }
    // The legacy protocol has no "busy": over capacity a newcomer is not
    // answered, and registers again on its own schedule.
    if (shed_new_name(reg->name, interval, true, now)) return;
    Address target = from;
    target.set_port(probe_port);
    const auto probes = static_cast<std::uint8_t>(reg->probes);

    Slot slot = table_.find_name(reg->name);
    // A legacy registration has no cookie, so its source may be forged: the
    // first probes to a host that has never answered come out of its budget.
    const bool never_answered = slot == PeerTable::kNone || table_.at(slot).acks_received == 0;
    if (never_answered && !handshake_budget_allows(from, now)) {
        count(Drop::rate_limited);
        return;
    }
    if (slot == PeerTable::kNone) {
        if (table_.size() >= limits_.max_peers || legacy_peers_ >= limits_.legacy_max_peers ||
            host_full(from)) {
            count(Drop::legacy_refused);
            return;
        }
        // Its room was taken by shed_new_name() above.
        if (shedder_.shedding(now)) {
            ++registrations_shed_;
            return;
        }
        slot = admit({.name = reg->name,
                      .protocol = Protocol::legacy,
                      .incarnation = 0,
                      .address = target,
                      .route = probe_route,
                      .interval = interval,
                      .probes = probes},
                     now);
    } else {
        Peer& p = table_.at(slot);
        // Without authentication, a name belongs to the host that holds it
        // until that host is down or gone.
        const bool held = answering(p.state);
        if (p.protocol != Protocol::legacy || (held && !p.address.same_host(from))) {
            count(Drop::legacy_refused);
            return;
        }
        // A re-registration: the token restarts.
        p.seq_sent = p.seq_acked = 0;
        renew(slot, interval, probes, target, probe_route, now);
    }
    schedule(slot, first_probe_time(interval, now));
}

void ServerCore::on_legacy_reply(std::span<const std::uint8_t> data, const Address& from,
                                 TimePoint now) {
    ++received_;
    const auto reply = legacy::parse_reply(data);
    if (!reply) {
        count(Drop::legacy_malformed);
        return;
    }
    const Slot slot = table_.find_name(reply->name);
    if (slot == PeerTable::kNone || table_.at(slot).protocol != Protocol::legacy ||
        !table_.at(slot).address.same_host(from)) {
        count(Drop::legacy_unknown);
        return;
    }
    const Peer& p = table_.at(slot);
    if (reply->token <= p.seq_acked || reply->token > p.seq_sent) {
        count(Drop::stale_ack);
        return;
    }
    acknowledge(
        slot, reply->token,
        reply->token == p.seq_sent ? std::optional<Duration>(now - p.last_probe_at) : std::nullopt,
        now);
}

}  // namespace keepalive
