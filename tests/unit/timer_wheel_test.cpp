#include "core/timer_wheel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using std::chrono::microseconds;
using std::chrono::nanoseconds;

// A whole-millisecond (hence tick-aligned) start, as the daemon uses.
const TimePoint t0 = TimePoint{std::chrono::hours(1)};

struct Fire {
    std::uint64_t payload;
    TimePoint deadline;
    TimePoint now;  // the time given to the advance() that fired it
};

std::vector<std::uint64_t> payloads(const std::vector<Fire>& fired) {
    std::vector<std::uint64_t> out;
    for (const Fire& f : fired) {
        out.push_back(f.payload);
    }
    return out;
}

std::vector<Fire> advance_to(TimerWheel& w, TimePoint now) {
    std::vector<Fire> fired;
    w.advance(now, [&](std::uint64_t p, TimePoint d) { fired.push_back({p, d, now}); });
    return fired;
}

// The smallest tick boundary >= t.
TimePoint ceil_tick(TimePoint t, Duration tick) {
    const auto ns = t.time_since_epoch().count();
    const auto q = ns / tick.count();
    const auto r = ns % tick.count();
    const auto base = (r < 0 ? q - 1 : q) * tick.count();
    return TimePoint{Duration(base == ns ? base : base + tick.count())};
}

// Drives the wheel like the daemon's loop: sleep until next_wakeup(), advance,
// repeat, up to `end`. fn(payload, deadline, now). Returns the number of
// advance() calls. Fails the test if the loop stops making progress.
template <typename Fn>
std::size_t run_loop(TimerWheel& w, TimePoint end, Fn&& fn,
                     std::size_t max_iterations = 10'000'000) {
    std::size_t iterations = 0;
    while (true) {
        const auto wake = w.next_wakeup();
        if (!wake || *wake > end) {
            break;
        }
        const TimePoint before = w.now();
        const TimePoint now = std::max(*wake, before);
        bool fired = false;
        w.advance(now, [&](std::uint64_t p, TimePoint d) {
            fired = true;
            fn(p, d, now);
        });
        // A wake-up that does not move time on must have had something to do.
        if (now == before && !fired) {
            ADD_FAILURE() << "event loop stuck at a wake-up with nothing due";
            break;
        }
        if (++iterations > max_iterations) {
            ADD_FAILURE() << "event loop did not settle";
            break;
        }
    }
    w.advance(end, [&](std::uint64_t p, TimePoint d) { fn(p, d, end); });
    return iterations;
}

std::uint64_t test_seed() {
    if (const char* env = std::getenv("KEEPALIVE_TEST_SEED")) {
        return std::stoull(env);
    }
    return std::random_device{}();
}

// --- basics -------------------------------------------------------------------

TEST(TimerWheel, RejectsBadParameters) {
    EXPECT_THROW(TimerWheel(t0, 1ms, 0), std::invalid_argument);
    EXPECT_THROW(TimerWheel(t0, 1ms, 3), std::invalid_argument);
    EXPECT_THROW(TimerWheel(t0, 1ms, 4095), std::invalid_argument);
    EXPECT_THROW(TimerWheel(t0, 0ms, 64), std::invalid_argument);
    EXPECT_THROW(TimerWheel(t0, -1ms, 64), std::invalid_argument);
    EXPECT_NO_THROW(TimerWheel(t0, 1ns, 1));
    // Slot numbers are stored with a mark bit in an entry's 32-bit links.
    EXPECT_THROW(TimerWheel(t0, 1ms, std::size_t{1} << 31), std::invalid_argument);
}

// Entries keep no slot number: the head and the tail of a slot's list find it
// through their end marks. Cancel the middle, the head and the tail of one
// slot's list in turn, and the list and the occupancy stay right.
TEST(TimerWheel, CancelHeadMiddleAndTailOfOneSlot) {
    TimerWheel w(t0, 1ms, 64);
    std::vector<TimerWheel::Handle> h;
    for (std::uint64_t p = 1; p <= 5; ++p) h.push_back(w.schedule(t0 + 3ms, p));
    w.schedule(t0 + 67ms, 6);                // the same slot, a revolution later
    EXPECT_TRUE(w.cancel(h[2]));             // middle
    EXPECT_TRUE(w.cancel(h[0]));             // head
    EXPECT_TRUE(w.cancel(h[4]));             // tail
    const auto c = w.schedule(t0 + 3ms, 7);  // appended after 6
    EXPECT_EQ(payloads(advance_to(w, t0 + 3ms)), (std::vector<std::uint64_t>{2, 4, 7}));
    EXPECT_EQ(w.size(), 1u);
    EXPECT_FALSE(w.cancel(c));
    EXPECT_EQ(payloads(advance_to(w, t0 + 67ms)), (std::vector<std::uint64_t>{6}));
    EXPECT_TRUE(w.empty());
    EXPECT_FALSE(w.next_wakeup());
    // A lone entry is head and tail at once: cancelling it empties the slot.
    const auto lone = w.schedule(t0 + 70ms, 8);
    EXPECT_TRUE(w.cancel(lone));
    EXPECT_FALSE(w.next_wakeup());
    EXPECT_EQ(payloads(advance_to(w, t0 + 200ms)), (std::vector<std::uint64_t>{}));
}

TEST(TimerWheel, EmptyWheel) {
    TimerWheel w(t0);
    EXPECT_EQ(w.size(), 0u);
    EXPECT_TRUE(w.empty());
    EXPECT_EQ(w.next_wakeup(), std::nullopt);
    EXPECT_TRUE(advance_to(w, t0 + 1h).empty());
    EXPECT_EQ(w.next_wakeup(), std::nullopt);
    EXPECT_EQ(w.now(), t0 + 1h);
}

TEST(TimerWheel, FiresInDeadlineOrderAcrossSlots) {
    TimerWheel w(t0);
    w.schedule(t0 + 30ms, 3);
    w.schedule(t0 + 10ms, 1);
    w.schedule(t0 + 20ms, 2);
    w.schedule(t0 + 5ms, 0);
    EXPECT_EQ(w.size(), 4u);

    auto fired = advance_to(w, t0 + 20ms);
    EXPECT_EQ(payloads(fired), (std::vector<std::uint64_t>{0, 1, 2}));
    EXPECT_EQ(fired[0].deadline, t0 + 5ms);
    EXPECT_EQ(fired[2].deadline, t0 + 20ms);
    EXPECT_EQ(w.size(), 1u);
    EXPECT_EQ(payloads(advance_to(w, t0 + 40ms)), (std::vector<std::uint64_t>{3}));
    EXPECT_TRUE(w.empty());
}

TEST(TimerWheel, OrdersWithinSlotByDeadlineThenScheduleOrder) {
    TimerWheel w(t0);
    // All in the slot of t0 + 7ms, scheduled out of order, with ties.
    w.schedule(t0 + 7ms + 900us, 1);
    w.schedule(t0 + 7ms + 100us, 2);
    w.schedule(t0 + 7ms + 500us, 3);
    w.schedule(t0 + 7ms + 100us, 4);
    w.schedule(t0 + 7ms, 5);
    w.schedule(t0 + 7ms + 100us, 6);
    EXPECT_EQ(payloads(advance_to(w, t0 + 8ms)), (std::vector<std::uint64_t>{5, 2, 4, 6, 3, 1}));
}

TEST(TimerWheel, OrdersAcrossRevolutionsSharingASlot) {
    TimerWheel w(t0, 1ms, 8);
    // Same slot, three different revolutions, scheduled latest first.
    w.schedule(t0 + 3ms + 16ms, 3);
    w.schedule(t0 + 3ms + 8ms, 2);
    w.schedule(t0 + 3ms, 1);
    EXPECT_EQ(payloads(advance_to(w, t0 + 3ms)), (std::vector<std::uint64_t>{1}));
    EXPECT_TRUE(advance_to(w, t0 + 10ms).empty());
    EXPECT_EQ(payloads(advance_to(w, t0 + 11ms)), (std::vector<std::uint64_t>{2}));
    EXPECT_TRUE(advance_to(w, t0 + 18ms + 999us).empty());
    EXPECT_EQ(payloads(advance_to(w, t0 + 19ms)), (std::vector<std::uint64_t>{3}));
}

TEST(TimerWheel, FiresExactlyAtAlignedDeadline) {
    TimerWheel w(t0);
    const TimePoint d = t0 + 250ms;
    w.schedule(d, 42);
    EXPECT_EQ(w.next_wakeup(), d);
    EXPECT_TRUE(advance_to(w, d - 1ns).empty());
    EXPECT_EQ(w.next_wakeup(), d);
    auto fired = advance_to(w, d);
    ASSERT_EQ(fired.size(), 1u);
    EXPECT_EQ(fired[0].payload, 42u);
    EXPECT_EQ(fired[0].deadline, d);
}

TEST(TimerWheel, UnalignedDeadlineNeverFiresEarly) {
    TimerWheel w(t0);
    const TimePoint d = t0 + 250ms + 300us;
    w.schedule(d, 1);
    EXPECT_EQ(w.next_wakeup(), t0 + 251ms);  // rounded up, never early
    EXPECT_TRUE(advance_to(w, t0 + 250ms).empty());
    EXPECT_TRUE(advance_to(w, d - 1ns).empty());
    // advance() itself goes by the exact deadline, even mid-tick.
    EXPECT_EQ(payloads(advance_to(w, d)), (std::vector<std::uint64_t>{1}));
}

TEST(TimerWheel, SubTickAdvancesWithinOneSlot) {
    TimerWheel w(t0);
    w.schedule(t0 + 5ms + 200us, 1);
    w.schedule(t0 + 5ms + 600us, 2);
    EXPECT_TRUE(advance_to(w, t0 + 5ms + 100us).empty());
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms + 300us)), (std::vector<std::uint64_t>{1}));
    EXPECT_EQ(w.next_wakeup(), t0 + 6ms);
    EXPECT_TRUE(advance_to(w, t0 + 5ms + 500us).empty());
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms + 600us)), (std::vector<std::uint64_t>{2}));
}

TEST(TimerWheel, TickBoundariesAreEpochAlignedWhateverTheStart) {
    // An unaligned start must not shift tick boundaries off whole milliseconds.
    const TimePoint start = t0 + 123us;
    TimerWheel w(start);
    w.schedule(t0 + 10ms, 1);
    EXPECT_EQ(w.next_wakeup(), t0 + 10ms);
    EXPECT_EQ(payloads(advance_to(w, t0 + 10ms)), (std::vector<std::uint64_t>{1}));
}

TEST(TimerWheel, PastDeadlinesFireOnNextAdvance) {
    TimerWheel w(t0);
    advance_to(w, t0 + 100ms + 500us);
    w.schedule(t0 - 5s, 1);             // before the wheel's start
    w.schedule(t0 + 50ms, 2);           // an already passed tick
    w.schedule(t0 + 100ms + 200us, 3);  // earlier in the current tick
    w.schedule(t0 + 100ms + 500us, 4);  // exactly now
    w.schedule(t0 + 100ms + 700us, 5);  // later in the current tick
    const auto wake = w.next_wakeup();
    ASSERT_TRUE(wake);
    EXPECT_LE(*wake, w.now());
    EXPECT_EQ(*wake, t0 - 5s);
    // Same `now` again: everything due fires, in deadline order.
    EXPECT_EQ(payloads(advance_to(w, w.now())), (std::vector<std::uint64_t>{1, 2, 3, 4}));
    EXPECT_EQ(w.next_wakeup(), t0 + 101ms);
    EXPECT_EQ(payloads(advance_to(w, t0 + 101ms)), (std::vector<std::uint64_t>{5}));
}

TEST(TimerWheel, TimeGoingBackwardsDoesNotMoveTheCursor) {
    TimerWheel w(t0);
    advance_to(w, t0 + 10ms);
    w.schedule(t0 + 2ms, 1);
    w.schedule(t0 + 12ms, 2);
    EXPECT_TRUE(advance_to(w, t0 + 1ms).empty());
    EXPECT_EQ(w.now(), t0 + 10ms);
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms)), (std::vector<std::uint64_t>{1}));
    EXPECT_EQ(w.next_wakeup(), t0 + 12ms);
    EXPECT_EQ(payloads(advance_to(w, t0 + 12ms)), (std::vector<std::uint64_t>{2}));
}

// --- cancel and handles -----------------------------------------------------

TEST(TimerWheel, Cancel) {
    TimerWheel w(t0);
    const auto a = w.schedule(t0 + 10ms, 1);
    const auto b = w.schedule(t0 + 10ms, 2);
    const auto c = w.schedule(t0 + 20ms, 3);
    EXPECT_TRUE(w.pending(b));
    EXPECT_EQ(w.deadline(b), t0 + 10ms);
    EXPECT_TRUE(w.cancel(b));
    EXPECT_FALSE(w.pending(b));
    EXPECT_EQ(w.deadline(b), std::nullopt);
    EXPECT_EQ(w.size(), 2u);
    EXPECT_EQ(payloads(advance_to(w, t0 + 10ms)), (std::vector<std::uint64_t>{1}));
    EXPECT_FALSE(w.pending(a));
    EXPECT_TRUE(w.cancel(c));
    EXPECT_TRUE(w.empty());
    EXPECT_EQ(w.next_wakeup(), std::nullopt);
    EXPECT_TRUE(advance_to(w, t0 + 1s).empty());
}

TEST(TimerWheel, CancelUpdatesNextWakeup) {
    TimerWheel w(t0);
    const auto a = w.schedule(t0 + 10ms, 1);
    w.schedule(t0 + 30ms, 2);
    EXPECT_EQ(w.next_wakeup(), t0 + 10ms);
    w.cancel(a);
    EXPECT_EQ(w.next_wakeup(), t0 + 30ms);
}

TEST(TimerWheel, StaleHandles) {
    TimerWheel w(t0);
    EXPECT_FALSE(TimerWheel::Handle{}.valid());
    EXPECT_FALSE(w.cancel(TimerWheel::Handle{}));
    EXPECT_FALSE(w.pending(TimerWheel::Handle{}));
    EXPECT_FALSE(w.cancel(TimerWheel::Handle{12345, 0}));  // index never allocated

    // After fire.
    const auto fired = w.schedule(t0 + 1ms, 1);
    EXPECT_TRUE(fired.valid());
    advance_to(w, t0 + 1ms);
    EXPECT_FALSE(w.pending(fired));
    EXPECT_FALSE(w.cancel(fired));

    // After cancel.
    const auto cancelled = w.schedule(t0 + 5ms, 2);
    EXPECT_TRUE(w.cancel(cancelled));
    EXPECT_FALSE(w.cancel(cancelled));

    // After the index was reused: the stale handle must not touch the new entry.
    const auto reused = w.schedule(t0 + 5ms, 3);
    ASSERT_EQ(reused.index, cancelled.index);
    EXPECT_NE(reused.generation, cancelled.generation);
    EXPECT_FALSE(w.pending(cancelled));
    EXPECT_EQ(w.deadline(cancelled), std::nullopt);
    EXPECT_FALSE(w.cancel(cancelled));
    EXPECT_FALSE(w.cancel(fired));
    EXPECT_TRUE(w.pending(reused));
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms)), (std::vector<std::uint64_t>{3}));
}

// --- callbacks ----------------------------------------------------------------

TEST(TimerWheel, EntryIsNotPendingInsideItsCallback) {
    TimerWheel w(t0);
    TimerWheel::Handle h = w.schedule(t0 + 1ms, 1);
    bool called = false;
    w.advance(t0 + 1ms, [&](std::uint64_t, TimePoint) {
        called = true;
        EXPECT_FALSE(w.pending(h));
        EXPECT_FALSE(w.cancel(h));
        EXPECT_EQ(w.size(), 0u);
    });
    EXPECT_TRUE(called);
}

TEST(TimerWheel, PeriodicRescheduleFromCallbackDoesNotDrift) {
    for (const Duration period : {Duration(1s), Duration(1500ms + 250us), Duration(7s + 3us)}) {
        SCOPED_TRACE(period.count());
        TimerWheel w(t0);
        const TimePoint first = t0 + period;
        TimerWheel::Handle h = w.schedule(first, 7);
        std::int64_t k = 0;
        const std::size_t wakeups =
            run_loop(w, first + 9'999 * period, [&](std::uint64_t p, TimePoint d, TimePoint now) {
                ASSERT_EQ(p, 7u);
                ASSERT_EQ(d, first + k * period) << "period " << k;
                ASSERT_EQ(now, ceil_tick(d, 1ms)) << "period " << k;
                ++k;
                h = w.schedule(d + period, 7);  // from the deadline, not from now
            });
        EXPECT_EQ(k, 10'000);
        EXPECT_TRUE(w.pending(h));
        EXPECT_EQ(w.deadline(h), first + 10'000 * period);
        // A period longer than a revolution (4.096 s) costs a spurious wake-up
        // per revolution; a shorter one costs none.
        const std::int64_t revolution_ns = std::int64_t{4096} * 1'000'000;
        const std::int64_t per_period = 1 + period.count() / revolution_ns;
        EXPECT_LE(wakeups, static_cast<std::size_t>(10'000 * per_period));
        if (period < 4096ms) {
            EXPECT_EQ(wakeups, 10'000u);
        }
    }
}

TEST(TimerWheel, CancelAnotherEntryFromCallback) {
    TimerWheel w(t0);
    TimerWheel::Handle b;
    TimerWheel::Handle later;
    w.schedule(t0 + 1ms, 1);
    b = w.schedule(t0 + 2ms, 2);  // due in the same advance(), not yet fired
    w.schedule(t0 + 3ms, 3);
    later = w.schedule(t0 + 50ms, 4);
    std::vector<std::uint64_t> got;
    w.advance(t0 + 10ms, [&](std::uint64_t p, TimePoint) {
        got.push_back(p);
        if (p == 1) {
            EXPECT_TRUE(w.pending(b));
            EXPECT_TRUE(w.cancel(b));
            EXPECT_TRUE(w.cancel(later));
            EXPECT_FALSE(w.cancel(b));
        }
    });
    EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 3}));
    EXPECT_TRUE(w.empty());
    EXPECT_EQ(w.next_wakeup(), std::nullopt);
}

TEST(TimerWheel, CancelledDueEntryIndexReusedInsideCallback) {
    TimerWheel w(t0);
    w.schedule(t0 + 1ms, 1);
    const auto b = w.schedule(t0 + 2ms, 2);
    std::vector<std::uint64_t> got;
    TimerWheel::Handle c;
    w.advance(t0 + 5ms, [&](std::uint64_t p, TimePoint) {
        got.push_back(p);
        if (p == 1) {
            w.cancel(b);
            // Takes b's index (LIFO free list) with a due deadline: neither b
            // nor the new entry may fire in this call.
            c = w.schedule(t0 + 2ms, 3);
        }
    });
    EXPECT_EQ(c.index, b.index);
    EXPECT_EQ(got, (std::vector<std::uint64_t>{1}));
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms)), (std::vector<std::uint64_t>{3}));
}

TEST(TimerWheel, DueEntryScheduledFromCallbackWaitsForNextAdvance) {
    TimerWheel w(t0);
    w.schedule(t0 + 3ms, 1);
    std::vector<std::uint64_t> got;
    std::optional<TimePoint> wake_inside;
    w.advance(t0 + 5ms, [&](std::uint64_t p, TimePoint) {
        got.push_back(p);
        if (p == 1) {
            w.schedule(t0 + 4ms, 2);
            w.schedule(t0 + 5ms, 3);
            w.schedule(t0 + 5ms + 1ns, 4);
            wake_inside = w.next_wakeup();
        }
    });
    EXPECT_EQ(got, (std::vector<std::uint64_t>{1}));
    ASSERT_TRUE(wake_inside);
    EXPECT_LE(*wake_inside, t0 + 5ms);
    const auto wake = w.next_wakeup();
    ASSERT_TRUE(wake);
    EXPECT_LE(*wake, t0 + 5ms);
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms)), (std::vector<std::uint64_t>{2, 3}));
    EXPECT_EQ(w.next_wakeup(), t0 + 6ms);
}

TEST(TimerWheel, NextWakeupInsideCallbackSeesUnfiredDueEntries) {
    TimerWheel w(t0);
    w.schedule(t0 + 1ms, 1);
    w.schedule(t0 + 2ms, 2);
    std::vector<std::optional<TimePoint>> wakes;
    w.advance(t0 + 2ms, [&](std::uint64_t, TimePoint) { wakes.push_back(w.next_wakeup()); });
    ASSERT_EQ(wakes.size(), 2u);
    EXPECT_EQ(wakes[0], t0 + 2ms);
    EXPECT_EQ(wakes[1], std::nullopt);
}

TEST(TimerWheel, ThrowingCallbackKeepsUnfiredEntries) {
    TimerWheel w(t0);
    for (std::uint64_t i = 1; i <= 4; ++i) {
        w.schedule(t0 + std::chrono::milliseconds(i), i);
    }
    std::vector<std::uint64_t> got;
    EXPECT_THROW(w.advance(t0 + 10ms,
                           [&](std::uint64_t p, TimePoint) {
                               got.push_back(p);
                               if (p == 2) {
                                   throw std::runtime_error("boom");
                               }
                           }),
                 std::runtime_error);
    EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 2}));
    EXPECT_EQ(w.size(), 2u);
    EXPECT_EQ(payloads(advance_to(w, t0 + 10ms)), (std::vector<std::uint64_t>{3, 4}));
}

// Ties keep schedule order across a throw: what did not fire goes back ahead
// of what the callback scheduled before throwing, even with the same deadline.
TEST(TimerWheel, ThrowingCallbackKeepsTieOrder) {
    TimerWheel w(t0);
    const TimePoint d = t0 + 3ms;
    for (std::uint64_t i = 1; i <= 3; ++i) {
        w.schedule(d, i);
    }
    EXPECT_THROW(w.advance(t0 + 5ms,
                           [&](std::uint64_t p, TimePoint) {
                               if (p == 1) {
                                   w.schedule(d, 4);  // already due, scheduled after 2 and 3
                                   throw std::runtime_error("boom");
                               }
                           }),
                 std::runtime_error);
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms)), (std::vector<std::uint64_t>{2, 3, 4}));
}

// Leftovers of a throw are cancelled and their indexes reused (in the
// opposite order) by entries due at once: each fires once, in schedule order.
TEST(TimerWheel, ThrowLeftoversCancelledAndIndexesReused) {
    TimerWheel w(t0);
    w.schedule(t0 + 1ms, 1);
    const auto b = w.schedule(t0 + 1ms, 2);
    const auto c = w.schedule(t0 + 1ms, 3);
    EXPECT_THROW(
        w.advance(t0 + 5ms, [&](std::uint64_t, TimePoint) { throw std::runtime_error("boom"); }),
        std::runtime_error);
    EXPECT_TRUE(w.cancel(b));
    EXPECT_TRUE(w.cancel(c));
    w.schedule(t0 + 3ms, 4);  // takes c's index
    w.schedule(t0 + 3ms, 5);  // takes b's index
    EXPECT_EQ(payloads(advance_to(w, t0 + 5ms)), (std::vector<std::uint64_t>{4, 5}));
    EXPECT_TRUE(w.empty());
}

// A limited advance() fires the earliest `limit` due entries and leaves the
// rest pending, ahead of what its callback scheduled meanwhile; cancelled
// entries do not count against the limit.
TEST(TimerWheel, LimitedAdvanceFiresTheRestFirstNextTime) {
    TimerWheel w(t0);
    for (std::uint64_t i = 1; i <= 7; ++i) w.schedule(t0 + std::chrono::milliseconds(i % 3), i);
    const TimerWheel::Handle cancelled = w.schedule(t0, 8);
    const auto none = [](std::uint64_t) {};
    std::vector<std::uint64_t> got;
    const auto record = [&](std::uint64_t p, TimePoint) {
        got.push_back(p);
        if (p == 3) {
            w.cancel(cancelled);
            w.schedule(t0 + 2ms, 9);  // due already; ties with 2 and 5, after them
        }
    };
    EXPECT_TRUE(w.advance(t0 + 5ms, record, none, 3));
    EXPECT_EQ(got, (std::vector<std::uint64_t>{3, 6, 1}));  // deadline 0, 0, then 1 ms
    ASSERT_TRUE(w.next_wakeup());
    EXPECT_LE(*w.next_wakeup(), t0 + 5ms);
    got.clear();
    EXPECT_TRUE(w.advance(t0 + 5ms, record, none, 3));
    EXPECT_EQ(got, (std::vector<std::uint64_t>{4, 7, 2}));
    got.clear();
    EXPECT_TRUE(w.advance(t0 + 5ms, record, none, 3)) << "leftovers only, and 9 is due";
    EXPECT_EQ(got, (std::vector<std::uint64_t>{5}));
    got.clear();
    EXPECT_FALSE(w.advance(t0 + 5ms, record, none, 3));
    EXPECT_EQ(got, (std::vector<std::uint64_t>{9}));
    EXPECT_TRUE(w.empty());
}

// A leftover of a limited advance() is cancelled between calls and its index
// reused for an entry already due: the leftover must not fire, and the new
// entry fires with its own payload and deadline once the leftovers are done
// (due_ records no payload, deadline or generation of its own).
TEST(TimerWheel, LeftoverCancelledAndIndexReusedBetweenLimitedAdvances) {
    TimerWheel w(t0);
    w.schedule(t0 + 1ms, 1);
    const auto b = w.schedule(t0 + 2ms, 2);
    w.schedule(t0 + 3ms, 3);
    std::vector<Fire> got;
    std::vector<std::uint64_t> seen_ahead;
    const auto record = [&](std::uint64_t p, TimePoint d) { got.push_back({p, d, t0 + 5ms}); };
    const auto ahead = [&](std::uint64_t p) { seen_ahead.push_back(p); };
    EXPECT_TRUE(w.advance(t0 + 5ms, record, ahead, 1));
    EXPECT_EQ(payloads(got), (std::vector<std::uint64_t>{1}));
    EXPECT_TRUE(w.cancel(b));
    const auto c = w.schedule(t0 + 1ms, 4);
    ASSERT_EQ(c.index, b.index);
    got.clear();
    EXPECT_TRUE(w.advance(t0 + 5ms, record, ahead, 5)) << "leftovers only, and 4 is due";
    EXPECT_EQ(payloads(got), (std::vector<std::uint64_t>{3}));
    got.clear();
    EXPECT_FALSE(w.advance(t0 + 5ms, record, ahead, 5));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].payload, 4u);
    EXPECT_EQ(got[0].deadline, t0 + 1ms);
    EXPECT_TRUE(w.empty());
    // ahead() saw what was collected, in firing order: 1 2 3 first, then 4.
    ASSERT_GE(seen_ahead.size(), 4u);
    EXPECT_EQ(seen_ahead.back(), 4u);
}

TEST(TimerWheel, NestedAdvanceThrowsAndLeavesOuterCallIntact) {
    TimerWheel w(t0);
    for (std::uint64_t i = 1; i <= 3; ++i) {
        w.schedule(t0 + std::chrono::milliseconds(i), i);
    }
    std::vector<std::uint64_t> got;
    w.advance(t0 + 5ms, [&](std::uint64_t p, TimePoint) {
        got.push_back(p);
        if (p == 1) {
            EXPECT_THROW(advance_to(w, t0 + 10ms), std::logic_error);
        }
    });
    EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 2, 3}));
    EXPECT_TRUE(w.empty());
    EXPECT_EQ(w.now(), t0 + 5ms);
}

// --- revolutions, jumps, wrap-around -------------------------------------------

TEST(TimerWheel, DeadlinesSeveralRevolutionsAway) {
    // 8 slots of 1 ms: a revolution is 8 ms.
    TimerWheel w(t0, 1ms, 8);
    w.schedule(t0 + 35ms + 500us, 1);  // 4+ revolutions away
    w.schedule(t0 + 3ms, 2);
    w.schedule(t0 + 19ms, 3);  // same slot as 2, two revolutions later

    std::vector<Fire> fired;
    const std::size_t wakeups =
        run_loop(w, t0 + 100ms, [&](std::uint64_t p, TimePoint d, TimePoint now) {
            fired.push_back({p, d, now});
        });
    ASSERT_EQ(payloads(fired), (std::vector<std::uint64_t>{2, 3, 1}));
    for (const Fire& f : fired) {
        EXPECT_EQ(f.now, ceil_tick(f.deadline, 1ms)) << f.payload;
    }
    // Three real wake-ups plus at most one spurious one per revolution.
    EXPECT_LE(wakeups, 3u + 36 / 8 + 1);
}

TEST(TimerWheel, NextWakeup) {
    TimerWheel w(t0, 1ms, 8);
    EXPECT_EQ(w.next_wakeup(), std::nullopt);

    const auto h = w.schedule(t0 + 5ms, 1);
    EXPECT_EQ(w.next_wakeup(), t0 + 5ms);
    w.cancel(h);
    EXPECT_EQ(w.next_wakeup(), std::nullopt);

    w.schedule(t0 + 5ms + 1ns, 2);
    EXPECT_EQ(w.next_wakeup(), t0 + 6ms);
    advance_to(w, t0 + 6ms);

    // Far away (slot of t0 + 7ms, three revolutions on): a spurious wake-up at
    // the end of the slot's tick in each revolution, never later than due.
    const TimePoint far = t0 + 7ms + 24ms + 10us;
    w.schedule(far, 3);
    EXPECT_EQ(w.next_wakeup(), t0 + 8ms);
    advance_to(w, t0 + 8ms);
    EXPECT_EQ(w.next_wakeup(), t0 + 16ms);
    advance_to(w, t0 + 16ms);
    EXPECT_EQ(w.next_wakeup(), t0 + 24ms);
    advance_to(w, t0 + 24ms);
    EXPECT_EQ(w.next_wakeup(), t0 + 32ms);  // its own revolution: ceil(far)
    EXPECT_TRUE(advance_to(w, far - 1ns).empty());
    EXPECT_EQ(w.next_wakeup(), t0 + 32ms);
    EXPECT_EQ(payloads(advance_to(w, t0 + 32ms)), (std::vector<std::uint64_t>{3}));
    EXPECT_EQ(w.next_wakeup(), std::nullopt);

    // A near entry behind a far one in an earlier slot: the far slot's
    // spurious wake-up comes first, then the near deadline exactly.
    w.schedule(t0 + 33ms + 8ms, 4);  // slot 1, next revolution
    w.schedule(t0 + 35ms, 5);        // slot 3, this revolution
    EXPECT_EQ(w.next_wakeup(), t0 + 34ms);
    advance_to(w, t0 + 34ms);
    EXPECT_EQ(w.next_wakeup(), t0 + 35ms);
}

TEST(TimerWheel, JumpLargerThanARevolution) {
    TimerWheel w(t0, 1ms, 16);
    std::multimap<TimePoint, std::uint64_t> expected;
    std::uint64_t id = 0;
    // Deadlines over five revolutions, scheduled in an order unrelated to time.
    for (int i = 0; i < 80; ++i) {
        const TimePoint d = t0 + std::chrono::microseconds(((i * 37) % 80) * 1000 + (i % 3) * 300);
        w.schedule(d, id);
        expected.emplace(d, id++);
    }
    // Part way: only what is due, in order, across the wrap of the slot array.
    auto fired = advance_to(w, t0 + 41ms + 500us);
    std::vector<std::uint64_t> want;
    for (auto it = expected.begin(); it != expected.end() && it->first <= t0 + 41ms + 500us;) {
        want.push_back(it->second);
        it = expected.erase(it);
    }
    EXPECT_EQ(payloads(fired), want);
    // Then far beyond every deadline in a single call.
    fired = advance_to(w, t0 + 10s);
    want.clear();
    for (const auto& [d, p] : expected) {
        want.push_back(p);
    }
    EXPECT_EQ(payloads(fired), want);
    EXPECT_TRUE(w.empty());
}

TEST(TimerWheel, JumpOfExactlyOneRevolution) {
    TimerWheel w(t0, 1ms, 8);
    w.schedule(t0 + 8ms, 1);   // same slot as the cursor, next revolution
    w.schedule(t0 + 16ms, 2);  // and the one after
    w.schedule(t0 + 7ms, 3);
    EXPECT_EQ(payloads(advance_to(w, t0 + 8ms)), (std::vector<std::uint64_t>{3, 1}));
    EXPECT_EQ(payloads(advance_to(w, t0 + 16ms)), (std::vector<std::uint64_t>{2}));
}

// Periodic entries of assorted periods, driven by next_wakeup(), must each
// fire at exactly first + k * period, at the tick boundary at or after it.
void check_long_run(TimePoint start, Duration tick, std::size_t slots, Duration span) {
    TimerWheel w(start, tick, slots);
    std::vector<Duration> periods;
    std::vector<std::int64_t> counts;
    for (int i = 1; i <= 40; ++i) {
        periods.push_back(tick * (i * 7 % 53 + 1) + Duration(i % 4 == 0 ? 0 : tick.count() / 3));
        counts.push_back(0);
        w.schedule(start + periods.back(), static_cast<std::uint64_t>(i - 1));
    }
    TimePoint last = start;
    run_loop(w, start + span, [&](std::uint64_t p, TimePoint d, TimePoint now) {
        ASSERT_LT(p, periods.size());
        ++counts[p];
        ASSERT_EQ(d, start + counts[p] * periods[p]);
        ASSERT_EQ(now, ceil_tick(d, tick));
        ASSERT_GE(d, last);
        last = d;
        w.schedule(d + periods[p], p);
    });
    for (std::size_t i = 0; i < periods.size(); ++i) {
        EXPECT_EQ(counts[i], span / periods[i]) << i;
    }
}

TEST(TimerWheel, LongRunAcrossManyRevolutions) {
    // 16 slots: 20 s is 1250 revolutions.
    check_long_run(t0, 1ms, 16, 20s);
    check_long_run(t0, 1ms, 4096, 60s);
}

TEST(TimerWheel, TickCounterWrapAround) {
    // Absolute millisecond count crossing 2^32 (where a 32-bit tick counter wraps).
    const TimePoint near_2_32_ms =
        TimePoint{std::chrono::milliseconds((std::int64_t{1} << 32) - 1500)};
    check_long_run(near_2_32_ms, 1ms, 64, 5s);
    // Nanosecond ticks crossing 2^32 ns and 2^32 ticks.
    check_long_run(TimePoint{nanoseconds((std::int64_t{1} << 32) - 100'000)}, 1ns, 256, 200us);
    // Negative time points (floor, not truncation, to ticks) crossing zero.
    check_long_run(TimePoint{-2s}, 1ms, 32, 4s);
    // Close to the end of the representable range.
    const TimePoint late = TimePoint{
        std::chrono::floor<std::chrono::milliseconds>(TimePoint::max().time_since_epoch() - 1h)};
    check_long_run(late, 1ms, 4096, 30s);
}

TEST(TimerWheel, DeadlineAtTimePointMax) {
    TimerWheel w(TimePoint::max() - 10ms);
    w.schedule(TimePoint::max(), 1);
    w.schedule(TimePoint::max() - 5ms - 1ns, 2);
    EXPECT_EQ(w.next_wakeup(), ceil_tick(TimePoint::max() - 5ms - 1ns, 1ms));
    EXPECT_EQ(payloads(advance_to(w, TimePoint::max() - 1ms)), (std::vector<std::uint64_t>{2}));
    EXPECT_EQ(w.next_wakeup(), TimePoint::max());  // saturated, not wrapped
    EXPECT_EQ(payloads(advance_to(w, TimePoint::max())), (std::vector<std::uint64_t>{1}));
}

// --- randomised against a reference model -------------------------------------

struct RandomConfig {
    Duration tick;
    std::size_t slots;
    TimePoint start;
};

void run_random(std::uint64_t seed, const RandomConfig& cfg) {
    std::mt19937_64 rng(seed);
    auto uniform = [&](std::int64_t lo, std::int64_t hi) {
        return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
    };
    const std::int64_t tick = cfg.tick.count();
    const std::int64_t revolution = tick * static_cast<std::int64_t>(cfg.slots);

    TimerWheel w(cfg.start, cfg.tick, cfg.slots);

    struct Item {
        TimerWheel::Handle handle;
        TimePoint deadline;
        bool alive;
    };
    std::vector<Item> items;                                           // indexed by payload
    std::map<std::pair<TimePoint, std::uint64_t>, std::uint64_t> ref;  // (deadline, seq) -> payload
    std::vector<std::pair<TimePoint, std::uint64_t>> keys;             // payload -> ref key
    std::uint64_t seq = 0;
    bool draining = false;

    auto random_deadline = [&]() {
        const TimePoint now = w.now();
        switch (uniform(0, 9)) {
            case 0:
                return now - Duration(uniform(0, 3 * revolution));
            case 1:
                return now;
            case 2:
                return now + Duration(uniform(0, tick));
            case 3:  // tick-aligned
                return ceil_tick(now, cfg.tick) + Duration(tick * uniform(0, 2 * cfg.slots));
            case 4:  // several revolutions away
                return now + Duration(uniform(revolution, 6 * revolution));
            case 5:  // a tie with an existing deadline
                if (!items.empty()) {
                    return items[static_cast<std::size_t>(uniform(0, items.size() - 1))].deadline;
                }
                return now;
            default:
                return now + Duration(uniform(0, 2 * revolution));
        }
    };
    auto do_schedule = [&]() {
        const TimePoint d = random_deadline();
        const std::uint64_t p = items.size();
        items.push_back({w.schedule(d, p), d, true});
        keys.emplace_back(d, seq);
        ref.emplace(keys.back(), p);
        ++seq;
    };
    auto do_cancel = [&]() {
        if (items.empty()) {
            return;
        }
        Item& it = items[static_cast<std::size_t>(uniform(0, items.size() - 1))];
        ASSERT_EQ(w.cancel(it.handle), it.alive);
        if (it.alive) {
            it.alive = false;
            ref.erase(keys[&it - items.data()]);
        }
        ASSERT_FALSE(w.pending(it.handle));
    };
    auto check_next_wakeup = [&]() {
        const auto wake = w.next_wakeup();
        if (ref.empty()) {
            ASSERT_EQ(wake, std::nullopt);
            return;
        }
        ASSERT_TRUE(wake);
        const TimePoint earliest = ref.begin()->first.first;
        if (earliest <= w.now()) {
            ASSERT_EQ(*wake, earliest);
            return;
        }
        ASSERT_GT(*wake, w.now());
        ASSERT_LE(*wake, ceil_tick(earliest, cfg.tick));
        const TimePoint latest = std::prev(ref.end())->first.first;
        // Everything within the current revolution: no spurious wake-up.
        if (latest < ceil_tick(w.now() + 1ns, cfg.tick) + Duration(revolution - tick)) {
            ASSERT_EQ(*wake, ceil_tick(earliest, cfg.tick));
        }
    };
    auto do_advance = [&](TimePoint now) {
        std::vector<std::uint64_t> due;
        for (auto it = ref.begin(); it != ref.end() && it->first.first <= now; ++it) {
            due.push_back(it->second);
        }
        std::size_t pos = 0;
        bool threw = false;
        try {
            w.advance(now, [&](std::uint64_t p, TimePoint d) {
                while (pos < due.size() && !items[due[pos]].alive) {
                    ++pos;
                }
                ASSERT_LT(pos, due.size()) << "fired " << p << " beyond what was due";
                ASSERT_EQ(p, due[pos]);
                ASSERT_EQ(d, items[p].deadline);
                ASSERT_LE(d, now);
                ++pos;
                items[p].alive = false;
                ref.erase(keys[p]);
                ASSERT_FALSE(w.pending(items[p].handle));
                const auto action = draining ? 9 : uniform(0, 9);
                if (action < 3) {
                    do_schedule();
                } else if (action < 5) {
                    do_cancel();
                } else if (action == 5 && uniform(0, 9) == 0) {
                    throw std::runtime_error("callback failed");  // the rest stays pending
                }
            });
        } catch (const std::runtime_error&) {
            threw = true;
        }
        for (; pos < due.size() && !threw; ++pos) {
            ASSERT_FALSE(items[due[pos]].alive) << "payload " << due[pos] << " did not fire";
        }
    };

    for (int step = 0; step < 20'000; ++step) {
        const auto op = uniform(0, 99);
        if (op < 40) {
            do_schedule();
        } else if (op < 55) {
            do_cancel();
        } else {
            TimePoint now = w.now();
            switch (uniform(0, 6)) {
                case 0:
                    break;
                case 1:
                    now += Duration(uniform(1, tick));
                    break;
                case 2:
                    now += Duration(uniform(1, 8 * tick));
                    break;
                case 3:
                    now += Duration(uniform(revolution - tick, 3 * revolution));
                    break;
                case 4:
                    now -= Duration(uniform(0, 2 * tick));  // a stale clock read
                    break;
                default:  // as the event loop does
                    if (const auto wake = w.next_wakeup()) {
                        now = std::max(now, *wake);
                    }
                    break;
            }
            do_advance(now);
        }
        if (testing::Test::HasFatalFailure()) {
            return;
        }
        ASSERT_EQ(w.size(), ref.size()) << "step " << step;
        check_next_wakeup();
        if (testing::Test::HasFatalFailure()) {
            return;
        }
    }
    draining = true;
    do_advance(w.now() + Duration(7 * revolution));
    EXPECT_TRUE(w.empty());
    EXPECT_TRUE(ref.empty());
}

TEST(TimerWheel, RandomisedAgainstReferenceModel) {
    const std::uint64_t seed = test_seed();
    std::cout << "KEEPALIVE_TEST_SEED=" << seed << "\n";
    RecordProperty("seed", std::to_string(seed));
    SCOPED_TRACE("KEEPALIVE_TEST_SEED=" + std::to_string(seed));
    const RandomConfig configs[] = {
        {1ms, 4096, t0},
        {1ms, 16, t0 + 123us},
        {1ms, 1, t0},
        {1us, 64, TimePoint{std::chrono::milliseconds((std::int64_t{1} << 32) - 20)}},
        {7ns, 8, TimePoint{-1us}},
        {1ms, 128,
         TimePoint{std::chrono::floor<std::chrono::milliseconds>(
             TimePoint::max().time_since_epoch() - 24h)}},
    };
    for (std::size_t i = 0; i < std::size(configs); ++i) {
        SCOPED_TRACE("config " + std::to_string(i));
        run_random(seed + i, configs[i]);
        if (HasFatalFailure()) {
            return;
        }
    }
}

// --- volume ---------------------------------------------------------------------

TEST(TimerWheel, HundredThousandEntries) {
    const std::uint64_t seed = test_seed();
    std::cout << "KEEPALIVE_TEST_SEED=" << seed << "\n";
    SCOPED_TRACE("KEEPALIVE_TEST_SEED=" + std::to_string(seed));
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<std::int64_t> offset(0, 10'000'000'000);  // 10 s in ns

    constexpr std::size_t n = 100'000;
    TimerWheel w(t0);
    std::vector<TimePoint> deadlines(n);
    std::vector<TimerWheel::Handle> handles(n);
    for (std::size_t i = 0; i < n; ++i) {
        deadlines[i] = t0 + Duration(offset(rng));
        handles[i] = w.schedule(deadlines[i], i);
    }
    EXPECT_EQ(w.size(), n);
    // Cancel every tenth.
    for (std::size_t i = 0; i < n; i += 10) {
        ASSERT_TRUE(w.cancel(handles[i]));
    }
    std::vector<int> fired(n, 0);
    TimePoint last = TimePoint::min();
    std::size_t count = 0;
    run_loop(w, t0 + 11s, [&](std::uint64_t p, TimePoint d, TimePoint now) {
        ASSERT_LT(p, n);
        ASSERT_EQ(d, deadlines[p]);
        ASSERT_EQ(now, ceil_tick(d, 1ms));
        ASSERT_GE(d, last);
        last = d;
        ++fired[p];
        ++count;
    });
    EXPECT_EQ(count, n - n / 10);
    for (std::size_t i = 0; i < n; ++i) {
        ASSERT_EQ(fired[i], i % 10 == 0 ? 0 : 1) << i;
    }
    EXPECT_TRUE(w.empty());
}

}  // namespace
}  // namespace keepalive
