// Durations as operators write them in configuration files and on the command
// line: one non-negative integer followed by one unit, ms, s, m or h.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"

namespace keepalive {

// Parses "250ms", "1s", "10m", "1h": ASCII digits immediately followed by a
// unit (ms, s, m, h), nothing else (no sign, fraction, space or other unit).
// Returns nullopt on any other text and on values too large for a Duration.
std::optional<Duration> parse_duration(std::string_view text);

// The shortest exact spelling, using the largest unit that divides d evenly:
// 1500ms -> "1500ms", 60s -> "1m", 90min -> "90m", 0 -> "0ms".
// Whole milliseconds round-trip through parse_duration. Sub-millisecond
// values are written in "us" or "ns" and negative values with a leading '-',
// which parse_duration does not accept.
std::string format_duration(Duration d);

}  // namespace keepalive
