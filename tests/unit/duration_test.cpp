#include "core/duration.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <limits>

namespace keepalive {
namespace {

using namespace std::chrono_literals;

TEST(ParseDuration, EveryUnit) {
    EXPECT_EQ(parse_duration("250ms"), Duration(250ms));
    EXPECT_EQ(parse_duration("1s"), Duration(1s));
    EXPECT_EQ(parse_duration("10m"), Duration(10min));
    EXPECT_EQ(parse_duration("1h"), Duration(1h));
    EXPECT_EQ(parse_duration("1500ms"), Duration(1500ms));
    EXPECT_EQ(parse_duration("90m"), Duration(90min));
    EXPECT_EQ(parse_duration("007s"), Duration(7s));
}

TEST(ParseDuration, Zero) {
    EXPECT_EQ(parse_duration("0ms"), Duration::zero());
    EXPECT_EQ(parse_duration("0s"), Duration::zero());
    EXPECT_EQ(parse_duration("0m"), Duration::zero());
    EXPECT_EQ(parse_duration("0h"), Duration::zero());
}

TEST(ParseDuration, LargestValuesThatFit) {
    // Duration is int64 nanoseconds: 9223372036854775807ns, about 2562047h.
    EXPECT_EQ(parse_duration("2562047h"), Duration(2562047h));
    EXPECT_EQ(parse_duration("9223372036854ms"), Duration(9223372036854ms));
}

TEST(ParseDuration, Overflow) {
    EXPECT_EQ(parse_duration("99999999999999999999h"), std::nullopt);   // beyond uint64
    EXPECT_EQ(parse_duration("18446744073709551616ms"), std::nullopt);  // 2^64
    EXPECT_EQ(parse_duration("2562048h"), std::nullopt);                // beyond int64 ns
    EXPECT_EQ(parse_duration("9223372036855ms"), std::nullopt);
    EXPECT_EQ(parse_duration("9999999999999s"), std::nullopt);
}

TEST(ParseDuration, RejectsGarbage) {
    for (const char* text :
         {"",      "1",     "ms",    "s",       "1.5s", "-1s",  "+1s",          "1 s",  " 1s",
          "1s ",   "1sec",  "1S",    "1MS",     "1us",  "1ns",  "1d",           "1ms1", "1s2m",
          "1h30m", "0x10s", "1e3ms", "1,000ms", "s1",   "1m s", "\xef\xbc\x91s"}) {
        EXPECT_EQ(parse_duration(text), std::nullopt) << "\"" << text << "\"";
    }
    EXPECT_EQ(parse_duration(std::string_view("1s\0", 3)), std::nullopt);
}

TEST(FormatDuration, ShortestExactForm) {
    EXPECT_EQ(format_duration(Duration::zero()), "0ms");
    EXPECT_EQ(format_duration(1ms), "1ms");
    EXPECT_EQ(format_duration(1500ms), "1500ms");
    EXPECT_EQ(format_duration(1000ms), "1s");
    EXPECT_EQ(format_duration(60s), "1m");
    EXPECT_EQ(format_duration(90s), "90s");
    EXPECT_EQ(format_duration(3600s), "1h");
    EXPECT_EQ(format_duration(90min), "90m");
    EXPECT_EQ(format_duration(720h), "720h");
    EXPECT_EQ(format_duration(100ms), "100ms");
}

TEST(FormatDuration, SubMillisecondAndNegative) {
    EXPECT_EQ(format_duration(1500us), "1500us");
    EXPECT_EQ(format_duration(1ns), "1ns");
    EXPECT_EQ(format_duration(-5s), "-5s");
    EXPECT_EQ(format_duration(Duration::min()), "-9223372036854775808ns");
    EXPECT_EQ(format_duration(Duration::max()), "9223372036854775807ns");
}

TEST(FormatDuration, RoundTripsCanonicalText) {
    for (const char* text : {"0ms", "1ms", "999ms", "1001ms", "1s", "59s", "61s", "1m", "59m",
                             "61m", "1h", "25h", "720h", "2562047h"}) {
        const auto d = parse_duration(text);
        ASSERT_TRUE(d) << text;
        EXPECT_EQ(format_duration(*d), text);
    }
}

TEST(FormatDuration, RoundTripsWholeMilliseconds) {
    for (const Duration d : {Duration(0ms), Duration(1ms), Duration(100ms), Duration(60000ms),
                             Duration(3599999ms), Duration(3600000ms), Duration(24h * 30),
                             Duration(std::chrono::milliseconds(9223372036854))}) {
        const auto back = parse_duration(format_duration(d));
        ASSERT_TRUE(back) << format_duration(d);
        EXPECT_EQ(*back, d);
    }
    // Non-canonical input comes back in canonical form.
    EXPECT_EQ(format_duration(*parse_duration("60000ms")), "1m");
    EXPECT_EQ(format_duration(*parse_duration("120m")), "2h");
}

}  // namespace
}  // namespace keepalive
