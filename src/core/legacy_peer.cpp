#include "core/legacy_peer.hpp"

#include <algorithm>

namespace keepalive {

LegacyPeerSession::LegacyPeerSession(legacy::Registration registration, RandomSource& random,
                                     LegacyPeerSink& sink)
    : registration_(std::move(registration)), random_(random), sink_(sink) {}

void LegacyPeerSession::start(TimePoint now) {
    backoff_ = kMinBackoff;
    send_registration(now);
}

// The old server never answers a registration; the first probe is the only
// sign it took. Wait a few intervals (at least the backoff, which doubles
// with jitter up to 30 s) before trying again.
void LegacyPeerSession::send_registration(TimePoint now) {
    const std::string text = legacy::format_registration(registration_);
    sink_.send_registration(
        std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
    probed_ = false;
    const Duration half = backoff_ / 2;
    const Duration jittered =
        half + Duration(random_.below(static_cast<std::uint64_t>(half.count()) + 1));
    deadline_ = now + std::max<Duration>(interval() * kRegisterPatience, jittered);
    backoff_ = std::min<Duration>(backoff_ * 2, kMaxBackoff);
}

void LegacyPeerSession::on_probe(std::span<const std::uint8_t> data, TimePoint now) {
    if (!legacy::parse_probe(data)) return;
    legacy::ReplyBuffer buf;
    sink_.send_reply(legacy::format_reply(registration_.name, data, buf));
    ++replies_;
    if (!probed_) {
        probed_ = true;
        backoff_ = kMinBackoff;
        sink_.legacy_event(LegacyPeerSink::Event::probed);
    }
    // The old server gives up after `probes` unanswered probes; one interval
    // more without a probe means it has forgotten us.
    deadline_ = now + interval() * (registration_.probes + 1);
}

void LegacyPeerSession::on_timer(TimePoint now) {
    if (now < deadline_) return;
    sink_.legacy_event(probed_ ? LegacyPeerSink::Event::lost : LegacyPeerSink::Event::retrying);
    send_registration(now);
}

}  // namespace keepalive
