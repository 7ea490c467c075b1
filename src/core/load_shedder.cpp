#include "core/load_shedder.hpp"

namespace keepalive {

void LoadShedder::note_busy(Duration busy, TimePoint now) {
    roll(now);
    busy_ += busy;
}

void LoadShedder::note_overflow(TimePoint now) {
    roll(now);
    overflowed_ = true;
}

// Closes every window that ended by `now`. Windows in which the loop never
// ran are idle ones: each counts as a calm window.
void LoadShedder::roll(TimePoint now) {
    if (now < window_start_ + kWindow) return;
    const auto elapsed = now - window_start_;
    const auto windows = static_cast<std::uint64_t>(elapsed / kWindow);
    // Work noted in this window belongs to its first second: one loop
    // iteration is never longer than a window apart from the next.
    judge(std::chrono::duration<double>(busy_) / std::chrono::duration<double>(kWindow),
          overflowed_);
    for (std::uint64_t i = 1; i < windows && shedding_; ++i) judge(0, false);
    window_start_ += windows * kWindow;
    busy_ = Duration{};
    overflowed_ = false;
}

void LoadShedder::judge(double fraction, bool overflowed) {
    last_fraction_ = fraction;
    last_overflowed_ = overflowed;
    if (busy_percent_ == 0) {
        shedding_ = false;
        return;
    }
    const double enter = busy_percent_ / 100.0;
    const double leave =
        (busy_percent_ > kHysteresisPercent ? busy_percent_ - kHysteresisPercent : 0) / 100.0;
    if (fraction >= enter || overflowed) {
        if (!shedding_) ++episodes_;
        shedding_ = true;
        calm_ = 0;
    } else if (shedding_) {
        calm_ = fraction <= leave ? calm_ + 1 : 0;
        if (calm_ >= kCalmWindows) shedding_ = false;
    }
}

}  // namespace keepalive
