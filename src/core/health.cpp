#include "core/health.hpp"

#include <algorithm>
#include <chrono>

namespace keepalive {

void LossWindow::record(bool lost, std::uint32_t size) {
    if (size == 0) return;
    if (bits_.size() > size) clear();  // the window shrank on reload: start again
    if (bits_.size() < size) {
        if (bits_.empty()) bits_.reserve(size);
        bits_.push_back(lost);
        lost_ += lost;
        return;
    }
    lost_ -= bits_[next_];
    bits_[next_] = lost;
    lost_ += lost;
    next_ = (next_ + 1) % size;
}

// TCP's smoothing (RFC 6298, alpha 1/8): one slow answer does not make a
// peer degraded, a lasting change does within a few probes.
void PeerHealth::rtt_sample(Duration rtt) {
    const std::int64_t us = std::clamp<std::int64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(rtt).count(), 0, INT32_MAX);
    // Between two values in range: stays in range.
    srtt_us_ = static_cast<std::int32_t>(srtt_us_ < 0 ? us : srtt_us_ + (us - srtt_us_) / 8);
}

HealthFigures PeerHealth::judge(const HealthPolicy& policy, bool degraded_now,
                                const LossWindow* window) const {
    HealthFigures f{.lost = window ? window->lost() : 0,
                    .window = window ? window->size() : 0,
                    .rtt = smoothed_rtt()};
    if (policy.loss) {
        // Counted against the whole window from the first probe on, so a new
        // peer losing many of its first probes is caught before the window fills.
        const double limit = *policy.loss * policy.loss_window * (degraded_now ? 0.5 : 1.0);
        f.loss_over = f.lost > limit;
    }
    if (policy.rtt && f.rtt) {
        const Duration limit = degraded_now ? *policy.rtt * 4 / 5 : *policy.rtt;
        f.rtt_over = *f.rtt > limit;
    }
    return f;
}

bool FlapDamper::recovered(TimePoint now, const HealthPolicy& policy) {
    if (!policy.hold_down) return false;
    std::erase_if(recoveries_, [&](TimePoint t) { return now - t > *policy.hold_down; });
    recoveries_.push_back(now);
    return recoveries_.size() > policy.flap_threshold;
}

void FlapDamper::answered(TimePoint now) {
    if (!answering_since_) answering_since_ = now;
}

void FlapDamper::unanswered() {
    answering_since_.reset();
}

bool FlapDamper::released(TimePoint now, const HealthPolicy& policy) const {
    return !policy.hold_down || (answering_since_ && now - *answering_since_ >= *policy.hold_down);
}

}  // namespace keepalive
