#include "daemon/control_request.hpp"

#include <gtest/gtest.h>

namespace keepalive {
namespace {

using Kind = ControlRequest::Kind;
using State = RequestFraming::State;

TEST(ControlRequest, EveryRequestKeepalivectlSends) {
    const std::pair<const char*, ControlRequest> cases[] = {
        {"status", {Kind::status, std::nullopt}},
        {"peers", {Kind::peers, std::nullopt}},
        {"targets", {Kind::targets, std::nullopt}},
        {"metrics", {Kind::metrics, std::nullopt}},
        {"shutdown-for-good", {Kind::shutdown_for_good, std::nullopt}},
        {"watch", {Kind::watch, std::nullopt}},
        {"watch ", {Kind::watch, std::nullopt}},
        {"watch 0", {Kind::watch, 0}},
        {"watch 18446744073709551615", {Kind::watch, 18446744073709551615ULL}},
    };
    for (const auto& [line, want] : cases) {
        const auto got = parse_control_request(line);
        ASSERT_TRUE(got.ok()) << line;
        EXPECT_EQ(*got, want) << line;
    }
}

TEST(ControlRequest, AnythingElseIsAnErrorThatSaysWhich) {
    for (const char* line : {"", "Status", "status ", " status", "status\r", "peers x", "shutdown"})
        EXPECT_EQ(parse_control_request(line).error(), "unknown request") << line;
    for (const char* line :
         {"watch x", "watch -1", "watch +1", "watch 1 ", "watch 12x", "watch 18446744073709551616"})
        EXPECT_EQ(parse_control_request(line).error(), "bad watch request") << line;
}

TEST(ControlRequest, FramingWaitsForANewlineWithinTheLimit) {
    EXPECT_EQ(frame_request("", 8).state, State::incomplete);
    EXPECT_EQ(frame_request("peer", 8).state, State::incomplete);
    const auto framed = frame_request("peers\nstatus\n", 8);
    EXPECT_EQ(framed.state, State::complete);
    EXPECT_EQ(framed.line, "peers");
    EXPECT_EQ(frame_request("1234567\n", 8).state, State::complete);
    EXPECT_EQ(frame_request("12345678", 8).state, State::too_long);
    // A newline past the limit does not count: the server stops reading there.
    EXPECT_EQ(frame_request("12345678\n", 8).state, State::too_long);
}

}  // namespace
}  // namespace keepalive
