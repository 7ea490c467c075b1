#include "core/load_shedder.hpp"

#include <limits>

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
    const double fraction =
        std::chrono::duration<double>(busy_) / std::chrono::duration<double>(kWindow);
    // A window in which newcomers' REGISTERs outnumber the probes is a
    // registration burst: its overflow and its handshakes' CPU say nothing
    // of the load held. Shedding would send every peer of it to a longer
    // backoff; pacing, which leaves no room after a window over the
    // threshold, is enough.
    const bool burst = registers_ > probes_;
    judge(fraction, overflowed_, !burst);
    last_overflowed_ = overflowed_;
    if (windows == 1)
        pace(fraction);
    else
        room_ = kRoomUnknownCost;  // idle windows: nothing to go by
    for (std::uint64_t i = 1; i < windows && shedding_; ++i) judge(0, false, true);
    window_start_ += windows * kWindow;
    busy_ = Duration{};
    overflowed_ = false;
    probes_ = 0;
    registers_ = 0;
    added_ = 0;
}

// Room for half the headroom below the threshold, at the cost per probe of
// the recent windows. A window's cost per probe includes the ACK and the
// handshakes of that window: while a fleet registers, several times the
// steady cost, which would admit it a few thousand a second and send the rest
// to a backoff of tens of seconds. The lowest recent cost leaves that out; the
// headroom, measured with the handshakes, still shrinks the room as they cost.
void LoadShedder::pace(double fraction) {
    if (busy_percent_ == 0) {
        room_ = std::numeric_limits<double>::infinity();
        return;
    }
    if (probes_ < kMinProbesToPace) {
        room_ = kRoomUnknownCost;
        return;
    }
    const double cost = fraction / static_cast<double>(probes_);  // share of a second per probe
    cost_ = cost_ > 0 ? std::min(cost, cost_ * kCostRise) : cost;
    const double headroom = busy_percent_ / 100.0 - fraction;
    room_ = headroom > 0 && cost_ > 0 ? headroom / cost_ / 2 : 0;
}

void LoadShedder::judge(double fraction, bool overflowed, bool may_start) {
    last_fraction_ = fraction;
    last_overflowed_ = overflowed;
    if (busy_percent_ == 0) {
        shedding_ = false;
        return;
    }
    const double enter = busy_percent_ / 100.0;
    const double leave =
        (busy_percent_ > kHysteresisPercent ? busy_percent_ - kHysteresisPercent : 0) / 100.0;
    if ((fraction >= enter || overflowed) && (may_start || shedding_)) {
        if (!shedding_) ++episodes_;
        shedding_ = true;
        calm_ = 0;
    } else if (shedding_) {
        calm_ = fraction <= leave ? calm_ + 1 : 0;
        if (calm_ >= kCalmWindows) shedding_ = false;
    }
}

}  // namespace keepalive
