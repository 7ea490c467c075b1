// Whether the machine slept (suspend, hibernation): CLOCK_BOOTTIME counts the
// time asleep and CLOCK_MONOTONIC does not, so their difference grows by
// exactly that. The daemon reads both clocks; this judges the readings.
#pragma once

#include <optional>

#include "core/clock.hpp"

namespace keepalive {

class SleepDetector {
public:
    // Growth smaller than this is the reading's own noise, not a sleep.
    static constexpr Duration kNoticed = std::chrono::milliseconds(100);

    // `asleep` is CLOCK_BOOTTIME minus CLOCK_MONOTONIC, read now. Returns how
    // long the machine slept since the previous reading, if at least kNoticed.
    // The first reading only sets the baseline.
    std::optional<Duration> observe(Duration asleep) {
        // The baseline is the lowest reading since the last sleep: a reading
        // delayed between its two clocks errs high, never low.
        if (!baseline_ || asleep < *baseline_) {
            baseline_ = asleep;
            return std::nullopt;
        }
        const Duration slept = asleep - *baseline_;
        if (slept < kNoticed) return std::nullopt;
        baseline_ = asleep;
        total_ += slept;
        return slept;
    }
    // Every sleep noticed since start.
    Duration total() const { return total_; }

private:
    std::optional<Duration> baseline_;
    Duration total_{};
};

}  // namespace keepalive
