#include "core/sleep_detector.hpp"

#include <gtest/gtest.h>

namespace keepalive {
namespace {

using namespace std::chrono_literals;

TEST(SleepDetector, TheFirstReadingIsTheBaseline) {
    SleepDetector d;
    EXPECT_FALSE(d.observe(5s).has_value());
    EXPECT_FALSE(d.observe(5s).has_value());
    EXPECT_EQ(d.total(), 0s);
}

TEST(SleepDetector, ASuspendIsTheGrowthOfBoottimeOverMonotonic) {
    SleepDetector d;
    d.observe(5s);
    EXPECT_EQ(d.observe(35s), 30s);
    // Measured from the new baseline: one sleep is reported once.
    EXPECT_FALSE(d.observe(35s).has_value());
    EXPECT_EQ(d.observe(37s), 2s);
    EXPECT_EQ(d.total(), 32s);
}

TEST(SleepDetector, ReadingNoiseIsNoSleep) {
    SleepDetector d;
    d.observe(5s);
    // A reading delayed between its two clocks errs high; the baseline stays.
    EXPECT_FALSE(d.observe(5s + 60ms).has_value());
    EXPECT_FALSE(d.observe(5s + 1ms).has_value());
    EXPECT_FALSE(d.observe(5s + 99ms).has_value());
    EXPECT_EQ(d.observe(5s + 100ms), 100ms);
    EXPECT_EQ(d.total(), 100ms);
}

TEST(SleepDetector, ALowerReadingLowersTheBaseline) {
    SleepDetector d;
    d.observe(5s + 80ms);  // noisy first reading
    d.observe(5s);
    EXPECT_EQ(d.observe(5s + 150ms), 150ms);
}

}  // namespace
}  // namespace keepalive
