// Rough cost of the timer wheel's operations with 100k entries: ns/op for
// schedule, cancel, next_wakeup and advance. Best of several runs.
// Usage: timer_wheel_bench [entries] [runs]

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "core/timer_wheel.hpp"

namespace {

using keepalive::Duration;
using keepalive::TimePoint;
using keepalive::TimerWheel;
using BenchClock = std::chrono::steady_clock;

const TimePoint t0 = TimePoint{std::chrono::hours(1)};
constexpr auto spread = std::chrono::seconds(10);  // deadlines over ~2.4 revolutions

std::uint64_t sink = 0;

double ns_since(BenchClock::time_point start) {
    return std::chrono::duration<double, std::nano>(BenchClock::now() - start).count();
}

struct Figures {
    double schedule_cold = std::numeric_limits<double>::max();  // pool growing
    double schedule_warm = std::numeric_limits<double>::max();  // pool reused
    double cancel = std::numeric_limits<double>::max();
    double next_wakeup = std::numeric_limits<double>::max();
    double advance_per_fired = std::numeric_limits<double>::max();  // 1 ms steps
    double advance_per_call = std::numeric_limits<double>::max();
    double advance_jump_per_fired = std::numeric_limits<double>::max();  // one call
    // Baseline on the same machine and load: an ordered multimap as a timer queue.
    double multimap_insert = std::numeric_limits<double>::max();
    double multimap_erase = std::numeric_limits<double>::max();
};

void run_baseline(const std::vector<TimePoint>& deadlines, const std::vector<std::size_t>& order,
                  Figures& f) {
    const std::size_t n = deadlines.size();
    std::multimap<TimePoint, std::uint64_t> queue;
    std::vector<std::multimap<TimePoint, std::uint64_t>::iterator> its(n);
    auto start = BenchClock::now();
    for (std::size_t i = 0; i < n; ++i) {
        its[i] = queue.emplace(deadlines[i], i);
    }
    f.multimap_insert = std::min(f.multimap_insert, ns_since(start) / static_cast<double>(n));
    start = BenchClock::now();
    for (std::size_t i : order) {
        queue.erase(its[i]);
    }
    f.multimap_erase = std::min(f.multimap_erase, ns_since(start) / static_cast<double>(n));
}

void run_once(const std::vector<TimePoint>& deadlines, const std::vector<std::size_t>& order,
              Figures& f) {
    const std::size_t n = deadlines.size();
    const auto fire = [](std::uint64_t p, TimePoint) { sink += p; };
    std::vector<TimerWheel::Handle> handles(n);

    TimerWheel w(t0);
    auto start = BenchClock::now();
    for (std::size_t i = 0; i < n; ++i) {
        handles[i] = w.schedule(deadlines[i], i);
    }
    f.schedule_cold = std::min(f.schedule_cold, ns_since(start) / static_cast<double>(n));

    start = BenchClock::now();
    for (std::size_t i : order) {
        sink += w.cancel(handles[i]) ? 1 : 0;
    }
    f.cancel = std::min(f.cancel, ns_since(start) / static_cast<double>(n));

    start = BenchClock::now();
    for (std::size_t i = 0; i < n; ++i) {
        handles[i] = w.schedule(deadlines[i], i);
    }
    f.schedule_warm = std::min(f.schedule_warm, ns_since(start) / static_cast<double>(n));

    constexpr int wakeup_calls = 100'000;
    start = BenchClock::now();
    for (int i = 0; i < wakeup_calls; ++i) {
        sink += static_cast<std::uint64_t>(w.next_wakeup()->time_since_epoch().count());
    }
    f.next_wakeup = std::min(f.next_wakeup, ns_since(start) / wakeup_calls);

    // The daemon's pattern: advance one tick at a time until all have fired.
    const auto steps = std::chrono::milliseconds(spread).count() + 1;
    start = BenchClock::now();
    for (std::int64_t ms = 1; ms <= steps; ++ms) {
        w.advance(t0 + std::chrono::milliseconds(ms), fire);
    }
    const double elapsed = ns_since(start);
    if (!w.empty()) {
        std::fprintf(stderr, "bench: %zu entries left after advancing\n", w.size());
        std::exit(1);
    }
    f.advance_per_fired = std::min(f.advance_per_fired, elapsed / static_cast<double>(n));
    f.advance_per_call = std::min(f.advance_per_call, elapsed / static_cast<double>(steps));

    // One jump past every deadline: all slots visited once, all entries sorted.
    TimerWheel j(t0);
    for (std::size_t i = 0; i < n; ++i) {
        j.schedule(deadlines[i], i);
    }
    start = BenchClock::now();
    j.advance(t0 + spread + std::chrono::seconds(1), fire);
    f.advance_jump_per_fired =
        std::min(f.advance_jump_per_fired, ns_since(start) / static_cast<double>(n));
}

}  // namespace

int main(int argc, char** argv) {
    const std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 100'000;
    const int runs = argc > 2 ? std::atoi(argv[2]) : 5;

    std::mt19937_64 rng(42);
    std::uniform_int_distribution<std::int64_t> offset(0, Duration(spread).count());
    std::vector<TimePoint> deadlines(n);
    for (TimePoint& d : deadlines) {
        d = t0 + Duration(offset(rng));
    }
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::shuffle(order.begin(), order.end(), rng);

    Figures f;
    for (int r = 0; r < runs; ++r) {
        run_once(deadlines, order, f);
        run_baseline(deadlines, order, f);
    }

    std::printf("timer wheel: %zu entries, 4096 slots x 1 ms, deadlines over 10 s, best of %d\n", n,
                runs);
    std::printf("  schedule (pool growing)    %8.1f ns/op\n", f.schedule_cold);
    std::printf("  schedule (pool reused)     %8.1f ns/op\n", f.schedule_warm);
    std::printf("  cancel (random order)      %8.1f ns/op\n", f.cancel);
    std::printf("  next_wakeup                %8.1f ns/op\n", f.next_wakeup);
    std::printf("  advance, 1 ms steps        %8.1f ns/fired entry  (%.1f ns/advance call)\n",
                f.advance_per_fired, f.advance_per_call);
    std::printf("  advance, one 11 s jump     %8.1f ns/fired entry\n", f.advance_jump_per_fired);
    std::printf("  baseline: std::multimap insert %.1f ns/op, erase %.1f ns/op\n",
                f.multimap_insert, f.multimap_erase);
    std::printf("  (checksum %llu)\n", static_cast<unsigned long long>(sink));
    return 0;
}
