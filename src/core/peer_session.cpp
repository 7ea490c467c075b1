#include "core/peer_session.hpp"

#include <algorithm>

namespace keepalive {

PeerSession::PeerSession(PeerSessionOptions options, RandomSource& random, PeerSessionSink& sink)
    : options_(std::move(options)), random_(random), sink_(sink), incarnation_(random.next_u64()) {}

void PeerSession::start(TimePoint now) {
    backoff_ = kMinBackoff;
    register_now(now);
}

// One registration attempt: a fresh nonce, then wait a jittered backoff
// (between half and all of it) before the next, doubling up to 30 s.
void PeerSession::register_now(TimePoint now) {
    state_ = SessionState::registering;
    nonce_ = random_.next_u64();
    send_register(kap::Cookie{});
    const auto half = backoff_ / 2;
    deadline_ = now + half + Duration(random_.below(static_cast<std::uint64_t>(half.count()) + 1));
    backoff_ = std::min<Duration>(backoff_ * 2, kMaxBackoff);
}

void PeerSession::send_register(const kap::Cookie& cookie) {
    send({.session = 0,
          .body = kap::Register{nonce_, incarnation_, options_.interval_ms, options_.probes, cookie,
                                options_.name}});
}

void PeerSession::send(const kap::Message& m) {
    std::array<std::uint8_t, kap::kMaxDatagramSize> buf;
    const kap::AuthKey* key = options_.keys ? options_.keys->active() : nullptr;
    if (const std::size_t n = kap::encode(m, buf, key); n > 0) sink_.send(std::span(buf.data(), n));
}

Duration PeerSession::lost_after() const {
    return milliseconds(std::uint64_t{granted_interval_ms_} * (granted_probes_ + 1u));
}

void PeerSession::on_datagram(std::span<const std::uint8_t> data, TimePoint now) {
    if (state_ == SessionState::stopped) return;
    const kap::KeyRing* keys = options_.keys ? &*options_.keys : nullptr;
    auto decoded = kap::decode(data, keys, keys != nullptr);
    if (!decoded) {
        ++dropped_;
        return;
    }
    const kap::Message& m = *decoded;
    if (const auto* c = std::get_if<kap::Challenge>(&m.body)) {
        if (state_ == SessionState::registering && c->nonce == nonce_)
            send_register(c->cookie);
        else
            ++dropped_;
    } else if (const auto* a = std::get_if<kap::Accept>(&m.body)) {
        if (state_ != SessionState::registering || a->nonce != nonce_ || a->interval_ms == 0 ||
            a->probes == 0) {
            ++dropped_;
            return;
        }
        const bool restarted = epoch_ != 0 && a->epoch != epoch_;
        if (m.session != session_ || restarted) highest_seq_ = 0;
        session_ = m.session;
        epoch_ = a->epoch;
        granted_interval_ms_ = a->interval_ms;
        granted_probes_ = a->probes;
        state_ = SessionState::registered;
        backoff_ = kMinBackoff;
        grace_until_seq_.reset();
        // The first probe comes within one interval; allow the full loss budget from now.
        deadline_ = now + lost_after();
        sink_.session_event({SessionEventKind::registered});
        if (restarted) sink_.session_event({SessionEventKind::server_restarted});
    } else if (const auto* r = std::get_if<kap::Reject>(&m.body)) {
        if (state_ != SessionState::registering || r->nonce != nonce_) {
            ++dropped_;
            return;
        }
        // Keep the backoff timer: the next attempt comes when it expires.
        nonce_ = random_.next_u64();
        sink_.session_event({SessionEventKind::rejected, m.diag});
    } else if (const auto* p = std::get_if<kap::Probe>(&m.body)) {
        // While registering again we keep answering our old session: a spoofed
        // BYE 7 must not silence us, and a real loss means no probes come.
        if (state_ == SessionState::stopped || session_ == 0 || m.session != session_ ||
            p->seq <= highest_seq_) {
            ++dropped_;
            return;
        }
        highest_seq_ = p->seq;
        ++probes_answered_;
        // A probe the old process sent before its goodbye, reordered behind
        // it, says nothing about the new one: only a higher seq ends the grace.
        const bool in_grace = grace_until_seq_ && p->seq <= *grace_until_seq_;
        if (!in_grace) grace_until_seq_.reset();
        if (state_ == SessionState::registered && !in_grace) deadline_ = now + lost_after();
        send({.session = session_, .body = kap::Ack{p->seq, p->tx_time, incarnation_}});
    } else if (const auto* b = std::get_if<kap::Bye>(&m.body)) {
        // diag 7 carries session 0 and seq 0; it is trusted for coming from the
        // server's address. Others must be for our session and not a replay.
        const bool unknown =
            m.diag == kap::Diag::unknown_session && state_ == SessionState::registered;
        const bool ours =
            state_ == SessionState::registered && m.session == session_ && b->seq >= highest_seq_;
        if (!unknown && !ours) {
            ++dropped_;
            return;
        }
        sink_.session_event({SessionEventKind::goodbye, m.diag});
        if (m.diag == kap::Diag::restarting && !unknown) {
            // The server will be back with our session: keep it and keep
            // answering, and wait the restart grace longer before giving up.
            if (!grace_until_seq_) deadline_ += kRestartGrace;
            grace_until_seq_ = b->seq;
        } else if (m.diag == kap::Diag::shutting_down || unknown) {
            backoff_ = kMinBackoff;
            register_now(now);
        } else {
            // Removed by the operator: do not undo that at once.
            state_ = SessionState::registering;
            nonce_ = random_.next_u64();
            backoff_ = kMaxBackoff;
            deadline_ = now + kMaxBackoff;
        }
    } else {
        ++dropped_;  // REGISTER or ACK sent to a peer
    }
}

void PeerSession::on_timer(TimePoint now) {
    if (state_ == SessionState::stopped || now < deadline_) return;
    if (state_ == SessionState::registered) {
        sink_.session_event({SessionEventKind::lost});
        backoff_ = kMinBackoff;
    }
    register_now(now);
}

std::optional<TimePoint> PeerSession::next_deadline() const {
    if (state_ == SessionState::stopped) return std::nullopt;
    return deadline_;
}

void PeerSession::stop() {
    if (state_ == SessionState::registered)
        send({.diag = kap::Diag::shutting_down,
              .session = session_,
              .body = kap::Bye{highest_seq_}});
    state_ = SessionState::stopped;
}

}  // namespace keepalive
