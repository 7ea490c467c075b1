// Monotonic time for the whole project. Deadlines are steady_clock
// (CLOCK_MONOTONIC on Linux) so that a wall-clock step never fires or stalls
// a keepalive; the clock is injected so tests can drive time by hand.
#pragma once

#include <chrono>
#include <ctime>

namespace keepalive {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = std::chrono::nanoseconds;
using std::chrono::milliseconds;

class ClockSource {
public:
    virtual ~ClockSource() = default;
    virtual TimePoint now() const = 0;
};

class SystemClock final : public ClockSource {
public:
    TimePoint now() const override { return Clock::now(); }
};

// A clock that only moves when told to.
class FakeClock final : public ClockSource {
public:
    explicit FakeClock(TimePoint start = TimePoint{std::chrono::hours(1)}) : now_(start) {}
    TimePoint now() const override { return now_; }
    void advance(Duration d) { now_ += d; }
    void set(TimePoint t) { now_ = t; }

private:
    TimePoint now_;
};

// The reading of a POSIX clock (CLOCK_MONOTONIC, CLOCK_BOOTTIME, ...).
inline Duration read_clock(clockid_t id) {
    timespec ts{};
    clock_gettime(id, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// CPU time the calling thread has used: how the daemon measures its own load.
inline Duration thread_cpu_time() {
    return read_clock(CLOCK_THREAD_CPUTIME_ID);
}

}  // namespace keepalive
