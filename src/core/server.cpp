#include "core/server.hpp"

#include <algorithm>
#include <utility>

#include "core/legacy.hpp"

namespace keepalive {
namespace {

using std::chrono::duration_cast;

std::array<std::uint8_t, 32> draw_secret(RandomSource& random) {
    std::array<std::uint8_t, 32> secret{};
    for (std::size_t i = 0; i < secret.size(); i += 8) {
        const std::uint64_t v = random.next_u64();
        for (std::size_t j = 0; j < 8; ++j) secret[i + j] = static_cast<std::uint8_t>(v >> (8 * j));
    }
    return secret;
}

// Probe times sit on whole milliseconds so the 1 ms wheel fires them exactly.
TimePoint ceil_ms(TimePoint t) {
    return TimePoint{std::chrono::ceil<milliseconds>(t.time_since_epoch())};
}

// From the kernel rather than the injected RandomSource: where a budget slot
// falls changes nothing a test can see, and seeded runs keep their sequence.
ShortHashKey draw_hash_key() {
    ShortHashKey key;
    random_bytes(key);
    return key;
}

std::uint64_t to_wire_time(TimePoint t) {
    return static_cast<std::uint64_t>(t.time_since_epoch().count());
}

// The first time on the grid deadline + k * step that is after `now`. When the
// loop ran late by a step or more, the times that passed unseen are skipped
// rather than fired back to back: each would count the probe before it as
// unanswered, and a stalled daemon would declare every peer down.
TimePoint next_on_grid(TimePoint deadline, Duration step, TimePoint now) {
    TimePoint next = deadline + step;
    if (next <= now && step > Duration::zero()) next += ((now - next) / step + 1) * step;
    return next;
}

}  // namespace

// Forget a peer's health past: RTT and loss window (a new session, or back from down).
void forget_health(Peer& p) {
    p.health.reset();
    if (p.rare) p.rare->loss.clear();
}

std::string_view to_string(Drop d) {
    switch (d) {
        case Drop::too_short:
            return "too_short";
        case Drop::bad_magic:
            return "bad_magic";
        case Drop::bad_version:
            return "bad_version";
        case Drop::bad_length:
            return "bad_length";
        case Drop::bad_flags:
            return "bad_flags";
        case Drop::bad_type:
            return "bad_type";
        case Drop::bad_size:
            return "bad_size";
        case Drop::unauthenticated:
            return "unauthenticated";
        case Drop::wrong_direction:
            return "wrong_direction";
        case Drop::wrong_source:
            return "wrong_source";
        case Drop::stale_ack:
            return "stale_ack";
        case Drop::stale_bye:
            return "stale_bye";
        case Drop::bad_diag:
            return "bad_diag";
        case Drop::unknown_session:
            return "unknown_session";
        case Drop::rate_limited:
            return "rate_limited";
        case Drop::legacy_malformed:
            return "legacy_malformed";
        case Drop::legacy_unknown:
            return "legacy_unknown";
        case Drop::legacy_refused:
            return "legacy_refused";
        case Drop::stale_cookie:
            return "stale_cookie";
        case Drop::not_allowed:
            return "not_allowed";
    }
    return "?";
}

Drop drop_for(kap::DecodeError e) {
    switch (e) {
        case kap::DecodeError::too_short:
            return Drop::too_short;
        case kap::DecodeError::bad_magic:
            return Drop::bad_magic;
        case kap::DecodeError::bad_version:
            return Drop::bad_version;
        case kap::DecodeError::bad_length:
            return Drop::bad_length;
        case kap::DecodeError::bad_flags:
            return Drop::bad_flags;
        case kap::DecodeError::bad_type:
            return Drop::bad_type;
        case kap::DecodeError::bad_size:
            return Drop::bad_size;
        case kap::DecodeError::unauthenticated:
            return Drop::unauthenticated;
    }
    return Drop::bad_type;
}

ServerCore::ServerCore(const PeerLimits& limits, RandomSource& random, ServerSink& sink,
                       TimePoint now)
    : limits_(limits),
      random_(random),
      sink_(sink),
      cookies_(draw_secret(random)),
      epoch_(random.next_u64()),
      wheel_(now, milliseconds(1), kWheelSlots),
      shedder_(limits.shed_busy_percent, now),
      unknown_session_budget_(draw_hash_key()),
      handshake_budget_(draw_hash_key()) {
    reserve(limits_.max_peers);
}

void ServerCore::on_datagram(std::span<const std::uint8_t> data, const Address& from,
                             const Route& route, TimePoint now) {
    ++received_;
    auto decoded = kap::decode(data, auth_ ? &*auth_ : nullptr, auth_.has_value());
    if (!decoded) {
        count(drop_for(decoded.error()));
        return;
    }
    const kap::Message& m = *decoded;
    switch (kap::type_of(m.body)) {
        case kap::Type::register_:
            on_register(m, from, route, now);
            break;
        case kap::Type::ack:
            on_ack(m, from, route, now);
            break;
        case kap::Type::bye:
            on_bye(m, from, route, now);
            break;
        default:
            count(Drop::wrong_direction);
            break;
    }
}

// Two passes: the index cells first, then (the cells now in cache, or on
// their way) the records they point to.
void ServerCore::prefetch(std::span<const std::span<const std::uint8_t>> batch) const {
    for (const auto& d : batch)
        if (const std::uint32_t session = kap::peek_session(d)) table_.prefetch_session_index(session);
    for (const auto& d : batch)
        if (const std::uint32_t session = kap::peek_session(d)) table_.prefetch_session_peer(session);
}

void ServerCore::reply(const Route& route, const Address& to, const kap::Message& m) {
    std::array<std::uint8_t, kap::kMaxDatagramSize> buf;
    const std::size_t n = kap::encode(m, buf, auth_ ? auth_->active() : nullptr);
    if (n > 0) sink_.send(route, to, std::span(buf.data(), n));
}

void ServerCore::on_register(const kap::Message& m, const Address& from, const Route& route,
                             TimePoint now) {
    const auto& reg = std::get<kap::Register>(m.body);
    // Before the cookie: an outsider gets neither a CHALLENGE nor any state.
    if (!allowed(from)) {
        count(Drop::not_allowed);
        handshake_reply(
            route, from,
            {.diag = kap::Diag::not_permitted, .session = 0, .body = kap::Reject{reg.nonce}}, now);
        return;
    }
    // Over capacity, a newcomer is told to come back later before it costs a
    // handshake; a peer the table holds (its session lost, or moved) is served.
    if (shed_new_name(reg.name, milliseconds(reg.interval_ms), reg.cookie == kap::Cookie{}, now)) {
        handshake_reply(route, from,
                        {.diag = kap::Diag::busy, .session = 0, .body = kap::Reject{reg.nonce}},
                        now);
        return;
    }
    // The cookie proves the source address is real before any state exists.
    if (!cookies_.verify(reg.cookie, from, reg.nonce, now)) {
        // A non-zero cookie that fails is expired, forged or replayed from elsewhere.
        if (reg.cookie != kap::Cookie{}) count(Drop::stale_cookie);
        handshake_reply(
            route, from,
            {.session = 0, .body = kap::Challenge{reg.nonce, cookies_.make(from, reg.nonce, now)}},
            now);
        return;
    }
    // From here on the source address is proven: answers go where they came from.
    const auto reject = [&](kap::Diag diag) {
        reply(route, from, {.diag = diag, .session = 0, .body = kap::Reject{reg.nonce}});
    };
    if (!valid_peer_name(reg.name) || reg.interval_ms < 1 ||
        reg.interval_ms > kap::kMaxIntervalMs || reg.probes < 1) {
        reject(kap::Diag::invalid_parameters);
        return;
    }
    if (reserved(reg.name)) {
        reject(kap::Diag::not_permitted);
        return;
    }
    const Duration interval = std::clamp<Duration>(milliseconds(reg.interval_ms),
                                                   limits_.min_interval, limits_.max_interval);
    const std::uint8_t probes = std::min(reg.probes, limits_.max_probes);

    Slot slot = table_.find_name(reg.name);
    if (slot != PeerTable::kNone && table_.at(slot).protocol == Protocol::legacy &&
        answering(table_.at(slot).state)) {
        // A live legacy peer holds this name; it can be taken over once it is down.
        reject(kap::Diag::not_permitted);
        return;
    }
    if (slot == PeerTable::kNone) {
        // One host, even with real cookies, must not fill the table others need.
        if (table_.size() >= limits_.max_peers || host_full(from)) {
            reject(kap::Diag::server_full);
            return;
        }
        // Paced before the CHALLENGE (shed_new_name), so that a storm's
        // handshakes are spent only on the peers the pace admits.
        slot = admit({.name = reg.name,
                      .protocol = Protocol::kap1,
                      .incarnation = reg.incarnation,
                      .address = from,
                      .route = route,
                      .interval = interval,
                      .probes = probes},
                     now);
    } else if (Peer& p = table_.at(slot);
               p.incarnation != reg.incarnation || p.protocol == Protocol::legacy) {
        // A new process behind a known name: a fresh session from seq 1. From
        // another host it is a takeover, and it counts against that host.
        const bool other_host = !p.address.same_host(from);
        if (other_host && host_full(from)) {
            reject(kap::Diag::server_full);
            return;
        }
        const Address was = p.address;
        table_.set_session(slot, new_session_id());
        if (p.protocol == Protocol::legacy) --legacy_peers_;
        p.protocol = Protocol::kap1;
        p.incarnation = reg.incarnation;
        p.seq_sent = p.seq_acked = 0;
        p.rtt.reset();
        p.probes_sent = p.acks_received = 0;
        table_.set_address(slot, from);
        p.route = table_.intern_route(route);
        p.interval = interval;
        p.probes = probes;
        p.missed = 0;
        forget_health(p);
        if (p.rare) p.rare->damper.release();
        const PeerState previous = p.state;
        table_.set_state(slot, PeerState::up, now);
        p.since = now;  // a new session starts its time in "up" afresh
        if (other_host)
            emit({.kind = EventKind::moved,
                  .previous = previous,
                  .peer = p,
                  .cause = EventCause::taken_over,
                  .previous_address = was});
        else
            emit({.kind = EventKind::restarted,
                  .previous = previous,
                  .peer = p,
                  .cause = EventCause::restarted});
    } else {
        // A retransmission, a peer that lost us, or a move: same session. The
        // handshake just proved the path, so probes in flight count as answered.
        p.seq_acked = p.seq_sent;
        renew(slot, interval, probes, from, route, now);
    }
    const Peer& p = table_.at(slot);
    schedule(slot, first_probe_time(interval, now));
    reply(route, from,
          {.session = p.session,
           .body = kap::Accept{
               reg.nonce, epoch_,
               static_cast<std::uint32_t>(duration_cast<milliseconds>(interval).count()), probes}});
}

bool ServerCore::shed_new_name(std::string_view name, Duration interval, bool first_contact,
                               TimePoint now) {
    if (table_.find_name(name) != PeerTable::kNone) return false;
    shedder_.note_register();
    // The room is taken at the first REGISTER; the one with the cookie that
    // follows is turned away only while shedding. The source is not proven
    // yet, so the interval counts as what the limits would grant: a forged
    // REGISTER asking for 1 ms must not take the room of a thousand peers.
    const Duration granted = std::clamp(interval, limits_.min_interval, limits_.max_interval);
    if (first_contact ? shedder_.admit(granted, now) : !shedder_.shedding(now)) return false;
    ++registrations_shed_;
    return true;
}

PeerTable::Slot ServerCore::admit(NewPeer n, TimePoint now) {
    Peer p;
    PeerNameBuffer name;
    p.name = name.assign(n.name);  // the table keeps its own copy
    p.protocol = n.protocol;
    if (n.protocol == Protocol::legacy) ++legacy_peers_;
    p.session = new_session_id();
    p.incarnation = n.incarnation;
    p.address = n.address;
    p.route = &n.route;  // interned by the table
    p.interval = n.interval;
    p.probes = n.probes;
    p.since = now;
    const Slot slot = table_.insert(std::move(p));
    emit({.kind = EventKind::registered,
          .peer = table_.at(slot),
          .cause = n.protocol == Protocol::legacy ? EventCause::registered_legacy
                                                  : EventCause::registered});
    return slot;
}

// A known peer registered again within its session: new grant, new path,
// and up if it was not.
void ServerCore::renew(Slot slot, Duration interval, std::uint8_t probes, const Address& to,
                       const Route& route, TimePoint now) {
    Peer& p = table_.at(slot);
    p.missed = 0;
    if (p.interval != interval || p.probes != probes) {
        // A new grant changes what "down" means for this peer: say so.
        const Duration interval_before = p.interval;
        const std::uint8_t probes_before = p.probes;
        p.interval = interval;
        p.probes = probes;
        emit({.kind = EventKind::registered,
              .previous = p.state,
              .peer = p,
              .cause = EventCause::grant_changed,
              .duration = interval_before,
              .probes_before = probes_before});
    }
    if (*p.route != route) p.route = table_.intern_route(route);
    if (p.address != to) {
        const Address was = p.address;
        table_.set_address(slot, to);
        emit({.kind = EventKind::moved,
              .previous = p.state,
              .peer = p,
              .cause = EventCause::moved,
              .previous_address = was});
    }
    // Degraded stays degraded (its health is judged by probes), and a damped
    // peer stays held: registering again is no proof that it stopped flapping.
    if (p.state != PeerState::up && p.state != PeerState::degraded && !p.damped())
        change_state(slot, PeerState::up,
                     {.kind = EventKind::up, .peer = p, .cause = EventCause::registered_again},
                     now);
}

// Legacy peers hold session ids too (the table indexes them) but no KAP/1
// session: an ACK or BYE naming one, e.g. read from keepalivectl and sent from
// the legacy peer's forgeable address, must not acknowledge it or make it
// "left" (an old client never registers again once forgotten).
PeerTable::Slot ServerCore::kap1_session(std::uint32_t session) const {
    const Slot slot = table_.find_session(session);
    if (slot == PeerTable::kNone || table_.at(slot).protocol != Protocol::kap1)
        return PeerTable::kNone;
    return slot;
}

void ServerCore::on_ack(const kap::Message& m, const Address& from, const Route& route,
                        TimePoint now) {
    const auto& ack = std::get<kap::Ack>(m.body);
    const Slot slot = kap1_session(m.session);
    if (slot == PeerTable::kNone) {
        answer_unknown_session(from, route, now);
        return;
    }
    Peer& p = table_.at(slot);
    if (p.address != from) {
        count(Drop::wrong_source);
        return;
    }
    if (ack.incarnation != p.incarnation || ack.seq <= p.seq_acked || ack.seq > p.seq_sent ||
        p.state == PeerState::left) {
        count(Drop::stale_ack);
        return;
    }
    const TimePoint sent{Duration(static_cast<Duration::rep>(ack.tx_time))};
    acknowledge(
        slot, ack.seq,
        ack.tx_time <= to_wire_time(now) ? std::optional<Duration>(now - sent) : std::nullopt, now);
}

// Only fields change here: the peer's one timer (its next probe) stays put,
// except when leaving the slow probing of a down peer.
void ServerCore::acknowledge(Slot slot, std::uint64_t seq, std::optional<Duration> rtt,
                             TimePoint now) {
    Peer& p = table_.at(slot);
    const bool first_answer = p.acks_received == 0;
    p.seq_acked = seq;
    p.missed = 0;
    p.withheld = 0;
    if (p.acks_received != UINT32_MAX) ++p.acks_received;
    if (rtt) {
        p.rtt = rtt;
        p.health.rtt_sample(*rtt);
    }
    // Off probation: from the probe just answered, the granted interval.
    if (first_answer && p.interval > kProbationStep && p.state != PeerState::down)
        schedule(slot, ceil_ms(p.last_probe_at) + p.interval);
    if (p.state == PeerState::down) {
        recover(slot, now);
        return;
    }
    update_health(slot, now);
}

// A down peer answered. It comes back up, unless it keeps going down and
// coming back: then it is damped, held down until it has answered for
// hold_down, with one event for the whole episode.
void ServerCore::recover(Slot slot, TimePoint now) {
    Peer& p = table_.at(slot);
    const HealthPolicy& policy = limits_.health;
    // Only under a hold_down policy does a recovery need (and box) a damper.
    if (policy.hold_down && !p.damped() && p.rare.make().damper.recovered(now, policy)) {
        FlapDamper& damper = p.rare->damper;
        damper.hold();
        damper.answered(now);
        emit({.kind = EventKind::damped,
              .previous = p.state,
              .peer = p,
              .cause = EventCause::damped,
              .count = static_cast<std::uint32_t>(damper.recent_flaps()),
              .duration = *policy.hold_down});
        schedule(slot, ceil_ms(now + p.interval));  // probed at its own rate while held
        return;
    }
    if (p.damped()) {
        FlapDamper& damper = p.rare->damper;
        damper.answered(now);
        if (!damper.released(now, policy)) return;
        damper.release();
        forget_health(p);
        change_state(slot, PeerState::up,
                     {.kind = EventKind::up,
                      .peer = p,
                      .cause = EventCause::damping_ended,
                      .duration = *policy.hold_down},
                     now);
        return;
    }
    forget_health(p);  // its sickness before it went down says nothing now
    change_state(slot, PeerState::up,
                 {.kind = EventKind::up, .peer = p, .cause = EventCause::ack_received}, now);
    schedule(slot, ceil_ms(now + p.interval));
}

// Moves between up and degraded by the peer's loss window and RTT; suspect
// (an ACK just came) leaves to whichever of the two applies.
void ServerCore::update_health(Slot slot, TimePoint now) {
    Peer& p = table_.at(slot);
    const bool degraded_now = p.state == PeerState::degraded;
    if (p.state == PeerState::suspect && p.missed > 0) return;
    if (p.state != PeerState::up && p.state != PeerState::degraded && p.state != PeerState::suspect)
        return;
    const HealthFigures health = p.health.judge(limits_.health, degraded_now, p.loss_window());
    if (health.degraded() && !degraded_now) {
        change_state(slot, PeerState::degraded,
                     {.kind = EventKind::degraded,
                      .peer = p,
                      .cause = EventCause::degraded,
                      .health = health},
                     now);
    } else if (!health.degraded() && p.state != PeerState::up) {
        change_state(slot, PeerState::up,
                     {.kind = EventKind::up,
                      .peer = p,
                      .cause = degraded_now ? EventCause::recovered : EventCause::ack_received,
                      .health = health},
                     now);
    }
}

void ServerCore::on_bye(const kap::Message& m, const Address& from, const Route& route,
                        TimePoint now) {
    const auto& bye = std::get<kap::Bye>(m.body);
    // BYE diag 7 is the server's own answer to an unknown session: answering
    // one would let a single spoofed datagram start an endless exchange
    // between two servers.
    if (m.diag == kap::Diag::unknown_session) {
        count(Drop::bad_diag);
        return;
    }
    const Slot slot = kap1_session(m.session);
    if (slot == PeerTable::kNone) {
        answer_unknown_session(from, route, now);
        return;
    }
    Peer& p = table_.at(slot);
    if (p.address != from) {
        count(Drop::wrong_source);
        return;
    }
    if (m.diag != kap::Diag::shutting_down) {
        count(Drop::bad_diag);
        return;
    }
    if (bye.seq < p.seq_acked) {
        count(Drop::stale_bye);
        return;
    }
    if (p.state == PeerState::left) return;  // a repeated goodbye
    change_state(slot, PeerState::left,
                 {.kind = EventKind::left, .peer = p, .cause = EventCause::goodbye}, now);
    schedule(slot, now + forget_after(p));
}

void ServerCore::answer_unknown_session(const Address& from, const Route& route, TimePoint now) {
    count(Drop::unknown_session);
    if (!unknown_session_budget_.allow(from, now, kUnknownSessionRepliesPerSecond)) {
        count(Drop::rate_limited);
        return;
    }
    reply(route, from, {.diag = kap::Diag::unknown_session, .session = 0, .body = kap::Bye{0}});
}

void ServerCore::handshake_reply(const Route& route, const Address& from, const kap::Message& m,
                                 TimePoint now) {
    if (!handshake_budget_allows(from, now)) {
        count(Drop::rate_limited);
        return;
    }
    reply(route, from, m);
}

bool ServerCore::handshake_budget_allows(const Address& from, TimePoint now) {
    return handshake_budget_.allow(from, now,
                                   std::max(kMinHandshakeRepliesPerSecond, limits_.max_per_host));
}

bool ServerCore::allowed(const Address& from) const {
    if (limits_.allow.empty()) return true;
    return std::any_of(limits_.allow.begin(), limits_.allow.end(),
                       [&](const Cidr& c) { return c.contains(from); });
}

bool ServerCore::on_timer(TimePoint now) {
    return wheel_.advance(
        now,
        [&](std::uint64_t payload, TimePoint deadline) {
            on_due(static_cast<Slot>(payload), deadline, now);
        },
        [&](std::uint64_t payload) { table_.prefetch_peer(static_cast<Slot>(payload)); },
        kMaxDuePerStep);
}

// The heart of detection. A peer's timer fires at each probe time; the probe
// sent one interval earlier is unanswered if no ACK has come by now.
void ServerCore::on_due(Slot slot, TimePoint deadline, TimePoint now) {
    Peer& p = table_.at(slot);
    p.timer = {};
    switch (p.state) {
        case PeerState::up:
        case PeerState::degraded:
        case PeerState::suspect: {
            const bool unanswered = p.seq_sent > p.seq_acked;
            // Its ACK may be one we lost; or we sent the probe so late (the
            // daemon was stopped, starved or suspended) that its peer had
            // less than half a step to answer before this verdict. Not
            // forever, though: a server that keeps losing datagrams or
            // running late must still find dead peers.
            const bool rushed = now - p.last_probe_at < probe_step(p) / 2;
            const bool doubtful = unanswered && (receive_doubt_ > p.last_probe_at || rushed) &&
                                  p.withheld < kMaxWithheld;
            if (p.seq_sent > 0 && !doubtful && limits_.health.loss)
                p.rare.make().loss.record(unanswered, limits_.health.loss_window);
            if (unanswered) {
                if (doubtful) {
                    ++p.withheld;
                    ++verdicts_withheld_;
                } else {
                    ++p.missed;
                }
            }
            if (p.missed >= probe_budget(p)) {
                // probes × interval after the first unanswered probe went out.
                // An ICMP error within the detection window tells why.
                const NetworkError* error = p.last_error();
                const bool icmp = error && error->at + p.interval * p.probes >= deadline;
                change_state(slot, PeerState::down,
                             {.kind = EventKind::down,
                              .peer = p,
                              .cause = EventCause::detection_expired,
                              .error = icmp ? std::optional<NetworkError>(*error)
                                            : std::nullopt},
                             deadline);
                probe_down(slot, deadline, now);
                return;
            }
            // A degraded peer loses probes by definition: it stays degraded
            // rather than flapping to suspect and back with every loss.
            if (p.missed > 0 && p.state == PeerState::up)
                change_state(slot, PeerState::suspect,
                             {.kind = EventKind::suspect,
                              .peer = p,
                              .cause = EventCause::unanswered,
                              .count = p.missed},
                             deadline);
            else if (p.missed == 0)
                update_health(slot, deadline);
            send_probe(slot, now);
            schedule(slot, next_on_grid(deadline, probe_step(p), now));
            return;
        }
        case PeerState::down:
            if (p.damped()) {
                if (p.seq_sent > p.seq_acked) p.rare->damper.unanswered();
                if (!p.rare->damper.answering() && deadline - p.since >= forget_after(p)) {
                    forget(slot);
                    return;
                }
                send_probe(slot, now);
                schedule(slot, next_on_grid(deadline, p.interval, now));
                return;
            }
            if (deadline - p.since >= forget_after(p)) {
                forget(slot);
                return;
            }
            if (p.seq_sent > p.seq_acked) ++p.missed;
            probe_down(slot, deadline, now);
            return;
        case PeerState::left:
            forget(slot);
            return;
    }
}

// A down peer is still probed now and then, so that it comes back on its own.
// Not a legacy one that never answered: its address was never proven (the old
// protocol has no cookie), and probing it would reflect traffic at a victim.
void ServerCore::probe_down(Slot slot, TimePoint deadline, TimePoint now) {
    Peer& p = table_.at(slot);
    const TimePoint forget_at = p.since + forget_after(p);
    if (p.protocol == Protocol::legacy && p.acks_received == 0) {
        schedule(slot, forget_at);
        return;
    }
    send_probe(slot, now);
    schedule(slot, std::min(next_on_grid(deadline, limits_.down_probe_interval, now), forget_at));
}

// A legacy registration (no cookie: its source may be forged) that never
// answered gets a few probes, not the 255 it may ask for.
std::uint8_t ServerCore::probe_budget(const Peer& p) {
    return p.protocol == Protocol::legacy && p.acks_received == 0
               ? std::min(p.probes, kUnansweredLegacyProbes)
               : p.probes;
}

// A session that never answered a probe is not kept for long once down.
Duration ServerCore::forget_after(const Peer& p) const {
    return p.acks_received == 0 ? std::min(limits_.forget_after, kUnansweredForgetAfter)
                                : limits_.forget_after;
}

void ServerCore::send_probe(Slot slot, TimePoint now) {
    Peer& p = table_.at(slot);
    ++p.seq_sent;
    if (p.probes_sent != UINT32_MAX) ++p.probes_sent;
    p.last_probe_at = now;
    shedder_.note_probe();
    if (p.protocol == Protocol::legacy) {
        legacy::ProbeBuffer buf;
        sink_.send(*p.route, p.address, legacy::format_probe(p.seq_sent, buf));
        return;
    }
    reply(*p.route, p.address,
          {.session = p.session, .body = kap::Probe{p.seq_sent, to_wire_time(now)}});
}

void ServerCore::shutdown(kap::Diag diag) {
    table_.for_each([&](Slot, const Peer& p) {
        if (p.state == PeerState::left || p.protocol == Protocol::legacy) return;  // no BYE there
        reply(*p.route, p.address,
              {.diag = diag, .session = p.session, .body = kap::Bye{p.seq_sent}});
    });
}

void ServerCore::change_state(Slot slot, PeerState state, PeerEvent event, TimePoint at) {
    event.previous = table_.at(slot).state;
    table_.set_state(slot, state, at);
    emit(event);
}

Duration ServerCore::probe_step(const Peer& p) {
    return p.acks_received == 0 ? std::min(p.interval, kProbationStep) : p.interval;
}

void ServerCore::schedule(Slot slot, TimePoint deadline) {
    Peer& p = table_.at(slot);
    wheel_.cancel(p.timer);
    p.timer = wheel_.schedule(deadline, slot);
}

void ServerCore::forget(Slot slot) {
    Peer& p = table_.at(slot);
    wheel_.cancel(p.timer);
    emit({.kind = EventKind::forgotten,
          .previous = p.state,
          .peer = p,
          .cause = EventCause::forgotten,
          .duration = forget_after(p)});
    if (p.protocol == Protocol::legacy) --legacy_peers_;
    table_.erase(slot);
}

std::uint32_t ServerCore::new_session_id() {
    for (;;) {
        const auto id = static_cast<std::uint32_t>(random_.next_u64());
        if (id != 0 && table_.find_session(id) == PeerTable::kNone) return id;
    }
}

// A random phase within the first interval keeps peers from probing in lockstep
// (within the first probation step: a new session must show it answers).
TimePoint ServerCore::first_probe_time(Duration interval, TimePoint now) {
    const auto ms = static_cast<std::uint64_t>(
        duration_cast<milliseconds>(std::min(interval, kProbationStep)).count());
    return ceil_ms(now) + milliseconds(1 + random_.below(ms));
}

}  // namespace keepalive
