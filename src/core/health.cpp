#include "core/health.hpp"

namespace keepalive {

void LossWindow::record(bool lost, std::uint32_t size) {
    if (size == 0) return;
    if (ring_ && ring_->bits.size() > size) clear();  // the window shrank on reload: start again
    Ring& r = ring_.make();
    if (r.bits.size() < size) {
        if (r.bits.empty()) r.bits.reserve(size);
        r.bits.push_back(lost);
        r.lost += lost;
        return;
    }
    r.lost -= r.bits[r.next];
    r.bits[r.next] = lost;
    r.lost += lost;
    r.next = (r.next + 1) % size;
}

void PeerHealth::probe_outcome(bool lost, const HealthPolicy& policy) {
    if (policy.loss) window_.record(lost, policy.loss_window);
}

// TCP's smoothing (RFC 6298, alpha 1/8): one slow answer does not make a
// peer degraded, a lasting change does within a few probes.
void PeerHealth::rtt_sample(Duration rtt) {
    srtt_ns_ = srtt_ns_ < 0 ? rtt.count() : srtt_ns_ + (rtt.count() - srtt_ns_) / 8;
}

void PeerHealth::reset() {
    window_.clear();
    srtt_ns_ = -1;
}

HealthFigures PeerHealth::judge(const HealthPolicy& policy, bool degraded_now) const {
    HealthFigures f{.lost = window_.lost(), .window = window_.size(), .rtt = smoothed_rtt()};
    if (policy.loss) {
        // Counted against the whole window from the first probe on, so a new
        // peer losing many of its first probes is caught before the window fills.
        const double limit = *policy.loss * policy.loss_window * (degraded_now ? 0.5 : 1.0);
        f.loss_over = window_.lost() > limit;
    }
    if (policy.rtt && f.rtt) {
        const Duration limit = degraded_now ? *policy.rtt * 4 / 5 : *policy.rtt;
        f.rtt_over = *f.rtt > limit;
    }
    return f;
}

bool FlapDamper::recovered(TimePoint now, const HealthPolicy& policy) {
    if (!policy.hold_down) return false;
    auto& recoveries = state_.make().recoveries;
    std::erase_if(recoveries, [&](TimePoint t) { return now - t > *policy.hold_down; });
    recoveries.push_back(now);
    return recoveries.size() > policy.flap_threshold;
}

void FlapDamper::answered(TimePoint now) {
    State& s = state_.make();
    if (!s.answering_since) s.answering_since = now;
}

void FlapDamper::unanswered() {
    if (state_) state_->answering_since.reset();
}

bool FlapDamper::released(TimePoint now, const HealthPolicy& policy) const {
    return !policy.hold_down || (state_ && state_->answering_since &&
                                 now - *state_->answering_since >= *policy.hold_down);
}

}  // namespace keepalive
