// The log's event rate limit, under a fake clock.
#include "daemon/event_throttle.hpp"

#include <gtest/gtest.h>

namespace keepalive {
namespace {

using namespace std::chrono_literals;

const TimePoint kStart{1000s};
const Address kHostA = Address::v4(0xC0000201, 4000);  // 192.0.2.1
const Address kHostB = Address::v4(0xC0000202, 4000);

TEST(EventThrottle, APeerGetsItsBurstThenOneEventASecond) {
    EventThrottle t;
    int passed = 0;
    for (int i = 0; i < 100; ++i) passed += t.admit(EventKind::restarted, "p", kHostA, kStart);
    EXPECT_EQ(passed, 10);
    EXPECT_FALSE(t.admit(EventKind::restarted, "p", kHostA, kStart + 500ms));
    EXPECT_TRUE(t.admit(EventKind::restarted, "p", kHostA, kStart + 1s));
    // Another peer, even on the same host, has its own bucket.
    EXPECT_TRUE(t.admit(EventKind::restarted, "q", kHostA, kStart + 1s));
    EXPECT_EQ(t.suppressed_total(), 91u);
}

TEST(EventThrottle, DownAlwaysPasses) {
    EventThrottle t;
    for (int i = 0; i < 50; ++i) t.admit(EventKind::up, "p", kHostA, kStart);
    EXPECT_FALSE(t.admit(EventKind::up, "p", kHostA, kStart));
    EXPECT_TRUE(t.admit(EventKind::down, "p", kHostA, kStart));
}

TEST(EventThrottle, AHostsPeersShareItsBucket) {
    EventThrottle t;
    int passed = 0;
    for (int i = 0; i < 500; ++i)
        passed += t.admit(EventKind::registered, "n" + std::to_string(i), kHostA, kStart);
    EXPECT_EQ(passed, 100);
    EXPECT_TRUE(t.admit(EventKind::registered, "other", kHostB, kStart));
}

TEST(EventThrottle, OneSummaryPerPeriodOnlyWhenSomethingWasHeldBack) {
    EventThrottle t;
    for (int i = 0; i < 30; ++i) t.admit(EventKind::restarted, "noisy", kHostA, kStart);
    EXPECT_FALSE(t.summary(kStart + 5s).has_value());  // the period is not over
    const auto line = t.summary(kStart + 10s);
    ASSERT_TRUE(line.has_value());
    EXPECT_NE(line->find("20 peer events not logged in the last 10 s"), std::string::npos) << *line;
    EXPECT_NE(line->find("most from noisy (20)"), std::string::npos) << *line;
    EXPECT_FALSE(t.summary(kStart + 20s).has_value());  // nothing held back since
    // Buckets refilled meanwhile are forgotten: a full burst again.
    int passed = 0;
    for (int i = 0; i < 30; ++i)
        passed += t.admit(EventKind::restarted, "noisy", kHostA, kStart + 40s);
    EXPECT_EQ(passed, 10);
}

}  // namespace
}  // namespace keepalive
