// Whether the server is over capacity, from what the daemon can see of
// itself: the share of each second its loop spent working (CPU time, so a
// busy host does not look like a busy daemon) and whether a receive queue
// overflowed. While it sheds, the server answers new registrations with
// REJECT diag 9 (busy); the sessions it holds are served as before.
#pragma once

#include <cstdint>

#include "core/clock.hpp"

namespace keepalive {

class LoadShedder {
public:
    // The signal is judged over whole windows of this length.
    static constexpr Duration kWindow = std::chrono::seconds(1);
    // Shedding ends after this many windows in a row below the leave threshold
    // and without an overflow: the hysteresis that keeps it from flapping.
    static constexpr unsigned kCalmWindows = 3;
    // The leave threshold is this many points below the enter threshold.
    static constexpr unsigned kHysteresisPercent = 15;

    // busy_percent: shed from a window in which the loop was busy at least
    // this share of the time (1 .. 100), or whose receive queue overflowed;
    // 0 never sheds.
    explicit LoadShedder(unsigned busy_percent, TimePoint now)
        : busy_percent_(busy_percent), window_start_(now) {}

    void set_busy_percent(unsigned busy_percent) {
        busy_percent_ = busy_percent;
        if (busy_percent == 0) shedding_ = false;
    }
    unsigned busy_percent() const { return busy_percent_; }

    // One loop iteration ending at `now` took `busy` of CPU time.
    void note_busy(Duration busy, TimePoint now);
    // A receive queue overflowed (datagrams for us were lost) at `now`.
    void note_overflow(TimePoint now);
    // Whether new registrations are to be shed at `now`; closes the windows that ended.
    bool shedding(TimePoint now) {
        roll(now);
        return shedding_;
    }
    bool shedding() const { return shedding_; }

    // The busy share of the last whole window, 0 .. 1.
    double last_busy_fraction() const { return last_fraction_; }
    // Whether the last whole window saw an overflow.
    bool last_overflowed() const { return last_overflowed_; }
    // Times shedding began.
    std::uint64_t episodes() const { return episodes_; }

private:
    void roll(TimePoint now);
    void judge(double fraction, bool overflowed);

    unsigned busy_percent_;
    TimePoint window_start_;
    Duration busy_{};
    bool overflowed_ = false;
    bool shedding_ = false;
    unsigned calm_ = 0;
    double last_fraction_ = 0;
    bool last_overflowed_ = false;
    std::uint64_t episodes_ = 0;
};

}  // namespace keepalive
