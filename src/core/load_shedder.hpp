// Whether the server is over capacity, from what the daemon can see of
// itself: the share of each second its loop spent serving the peers it holds
// (CPU time, so a busy host does not look like a busy daemon; newcomers'
// REGISTERs, which end, are left out) and whether a receive queue
// overflowed. While it sheds, the server answers new registrations with
// REJECT diag 9 (busy); the sessions it holds are served as before.
//
// Shedding alone reacts a window late, and a fleet registering at once would
// be admitted whole in that time. So newcomers are also paced: from the work
// of the last window (loop CPU per probe sent) it works out how many more
// probes a second the loop can take before the threshold, and admits new
// peers worth half of that per window.
//
// A registration storm is not an overload: handshakes inflate a window's CPU
// per probe, and a fleet registering at once overflows any receive queue. So
// the load held in a window with newcomers' REGISTERs is at most what its
// probes cost in the last window without them (kCostRise above it, for a
// table that grew); the cost per probe that paces is the lowest of the
// recent windows (allowed to rise by kCostRise a window), the headroom is
// what the probes held leave (not the handshakes', which end), and a window
// that read more newcomers' REGISTERs than it sent probes does not start
// shedding, however busy or overflowed: pacing alone answers it.
//
// The hysteresis is in time, not in load: an episode ends after kCalmWindows
// windows under the threshold without an overflow. A band under the
// threshold (15 points until the fifth session) trapped a daemon whose
// steady load fell inside it, 110 000 peers at 62 to 65% after a storm:
// every newcomer was told busy for good. Pacing, which admits half the
// headroom a window, keeps a load near the threshold from flapping.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/clock.hpp"

namespace keepalive {

class LoadShedder {
public:
    // The signal is judged over whole windows of this length.
    static constexpr Duration kWindow = std::chrono::seconds(1);
    // Shedding ends after this many windows in a row below the threshold and
    // without an overflow.
    static constexpr unsigned kCalmWindows = 3;
    // Fewer probes than this in a window say too little about their cost:
    // the next window admits newcomers worth kRoomUnknownCost probes a second.
    static constexpr std::uint64_t kMinProbesToPace = 1000;
    static constexpr double kRoomUnknownCost = 10'000;
    // How much the remembered cost per probe may rise from one window to the next.
    static constexpr double kCostRise = 1.25;
    // A window with fewer newcomers' REGISTERs than this share of its probes
    // measures the steady cost per probe.
    static constexpr double kSteadyRegisterShare = 0.01;

    // busy_percent: shed from a window in which the peers held kept the loop
    // busy at least this share of the time (1 .. 100), or whose receive queue
    // overflowed; 0 never sheds.
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
    // Whether a new peer probed every `interval` fits in this window's pace;
    // admit() takes it from there. The server admits at a newcomer's first
    // REGISTER, before the CHALLENGE: one that comes back with its cookie is
    // turned away only while shedding.
    bool has_room(Duration interval, TimePoint now) {
        roll(now);
        if (busy_percent_ == 0) return true;
        return !shedding_ && added_ + rate_of(interval) <= room_;
    }
    bool admit(Duration interval, TimePoint now) {
        if (!has_room(interval, now)) return false;
        added_ += rate_of(interval);
        return true;
    }
    // One probe sent: its cost is what paces newcomers.
    void note_probe() { ++probes_; }
    // One REGISTER read for a name the table does not hold (before its cookie).
    void note_register() { ++registers_; }
    // New probes per second this window may still take.
    double room() const { return room_ - added_; }

    // The busy share of the last whole window, 0 .. 1.
    double last_busy_fraction() const { return last_fraction_; }
    // Whether the last whole window saw an overflow.
    bool last_overflowed() const { return last_overflowed_; }
    // The share of a second one probe costs, as pacing counts it (0: not known yet).
    double cost_per_probe() const { return cost_; }
    // Times shedding began.
    std::uint64_t episodes() const { return episodes_; }

private:
    void roll(TimePoint now);
    void judge(double held, bool overflowed, bool may_start);
    double held_share(double fraction);
    void pace(double held);
    static double rate_of(Duration interval) {
        return 1.0 / std::max(std::chrono::duration<double>(interval).count(), 1e-3);
    }

    unsigned busy_percent_;
    TimePoint window_start_;
    Duration busy_{};
    bool overflowed_ = false;
    bool shedding_ = false;
    unsigned calm_ = 0;
    double last_fraction_ = 0;
    bool last_overflowed_ = false;
    std::uint64_t episodes_ = 0;
    std::uint64_t probes_ = 0;        // sent in this window
    std::uint64_t registers_ = 0;     // newcomers' REGISTERs read in this window
    double cost_ = 0;                 // share of a second per probe, 0 until known
    double steady_cost_ = 0;          // the same in the last window without newcomers
    double room_ = kRoomUnknownCost;  // probes/s newcomers may add in this window
    double added_ = 0;                // probes/s added this window
};

}  // namespace keepalive
