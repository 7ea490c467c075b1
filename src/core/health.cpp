#include "core/health.hpp"

#include <fmt/format.h>

namespace keepalive {

void LossWindow::record(bool lost, std::uint32_t size) {
    if (size == 0) return;
    if (bits_.size() > size) clear();  // the window shrank on reload: start again
    if (bits_.size() < size) {
        bits_.push_back(lost);
        lost_ += lost;
        return;
    }
    lost_ -= bits_[next_];
    bits_[next_] = lost;
    lost_ += lost;
    next_ = (next_ + 1) % size;
}

void LossWindow::clear() {
    bits_.clear();
    next_ = 0;
    lost_ = 0;
}

void PeerHealth::probe_outcome(bool lost, const HealthPolicy& policy) {
    if (policy.loss) window_.record(lost, policy.loss_window);
}

// TCP's smoothing (RFC 6298, alpha 1/8): one slow answer does not make a
// peer degraded, a lasting change does within a few probes.
void PeerHealth::rtt_sample(Duration rtt) {
    srtt_ = srtt_ ? *srtt_ + (rtt - *srtt_) / 8 : rtt;
}

void PeerHealth::reset() {
    window_.clear();
    srtt_.reset();
}

std::optional<std::string> PeerHealth::degraded_reason(const HealthPolicy& policy,
                                                       bool degraded_now) const {
    std::string why;
    if (policy.loss) {
        // Counted against the whole window from the first probe on, so a new
        // peer losing many of its first probes is caught before the window fills.
        const double limit = *policy.loss * policy.loss_window * (degraded_now ? 0.5 : 1.0);
        if (window_.lost() > limit)
            why = fmt::format("lost {} of the last {} probes", window_.lost(), window_.size());
    }
    if (policy.rtt && srtt_) {
        const Duration limit = degraded_now ? *policy.rtt * 4 / 5 : *policy.rtt;
        if (*srtt_ > limit) {
            if (!why.empty()) why += ", ";
            why += fmt::format("round trip {:.1f} ms",
                               std::chrono::duration<double, std::milli>(*srtt_).count());
        }
    }
    if (why.empty()) return std::nullopt;
    return why;
}

std::string PeerHealth::describe() const {
    std::string out = fmt::format("lost {} of the last {} probes", window_.lost(), window_.size());
    if (srtt_)
        out += fmt::format(", round trip {:.1f} ms",
                           std::chrono::duration<double, std::milli>(*srtt_).count());
    return out;
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

bool FlapDamper::released(TimePoint now, const HealthPolicy& policy) const {
    return !policy.hold_down || (answering_since_ && now - *answering_since_ >= *policy.hold_down);
}

void FlapDamper::release() {
    held_ = false;
    answering_since_.reset();
    recoveries_.clear();
}

}  // namespace keepalive
