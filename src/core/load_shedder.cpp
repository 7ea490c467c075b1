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
    // backoff; pacing, by the probes the peers held will cost, is enough.
    const bool burst = registers_ > probes_;
    const double held = held_share(fraction);
    judge(held, overflowed_, !burst);
    last_fraction_ = windows == 1 ? fraction : 0;  // the last whole window was idle
    last_overflowed_ = windows == 1 && overflowed_;
    if (windows == 1)
        pace(held);
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

// The share of the window the peers held took. Newcomers' REGISTERs
// (handshakes, busy answers) end once they are registered; a REGISTER is one
// datagram in and one out, as a probe and its ACK are, so the work is split
// by count. But a handshake costs more than a probe (a MAC, an insert, an
// event), so a storm's windows are also held to what their probes cost in
// the last window without newcomers, allowing for a table that grew since.
// A window without newcomers is also where that cost is remembered from.
double LoadShedder::held_share(double fraction) {
    if (probes_ + registers_ == 0) return fraction;
    const double probes = static_cast<double>(probes_);
    const double split = fraction * probes / (probes + static_cast<double>(registers_));
    if (probes_ >= kMinProbesToPace && registers_ <= kSteadyRegisterShare * probes) {
        steady_cost_ = split / probes;
        return split;
    }
    return steady_cost_ > 0 ? std::min(split, steady_cost_ * kCostRise * probes) : split;
}

// Room for half the headroom the peers held leave below the threshold, at
// the cost per probe of the recent windows. Counting the newcomers' work as
// load kept the room at nothing while a million agents retried, each busy
// answer keeping the loop too busy to admit the next. The cost per probe is
// the held share over the probes; handshakes still inflate it (a REGISTER
// with its cookie costs a MAC and an insert), and the lowest recent cost
// leaves that out.
void LoadShedder::pace(double held) {
    if (busy_percent_ == 0) {
        room_ = std::numeric_limits<double>::infinity();
        return;
    }
    if (probes_ < kMinProbesToPace) {
        room_ = kRoomUnknownCost;
        return;
    }
    const double cost = held / static_cast<double>(probes_);  // share of a second per probe
    cost_ = cost_ > 0 ? std::min(cost, cost_ * kCostRise) : cost;
    const double headroom = busy_percent_ / 100.0 - held;
    room_ = headroom > 0 && cost_ > 0 ? headroom / cost_ / 2 : 0;
}

void LoadShedder::judge(double held, bool overflowed, bool may_start) {
    if (busy_percent_ == 0) {
        shedding_ = false;
        return;
    }
    if ((held >= busy_percent_ / 100.0 || overflowed) && (may_start || shedding_)) {
        if (!shedding_) ++episodes_;
        shedding_ = true;
        calm_ = 0;
    } else if (shedding_ && ++calm_ >= kCalmWindows) {
        shedding_ = false;
    }
}

}  // namespace keepalive
