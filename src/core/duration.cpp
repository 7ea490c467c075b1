#include "core/duration.hpp"

#include <array>
#include <charconv>
#include <cstdint>
#include <limits>

namespace keepalive {
namespace {

struct Unit {
    std::string_view suffix;
    Duration::rep nanos;
};

// Largest first, so that format_duration picks the coarsest exact unit. Only
// the first kParsedUnits are accepted on input; us and ns exist for output.
constexpr std::array<Unit, 6> kUnits{{
    {"h", 3'600'000'000'000},
    {"m", 60'000'000'000},
    {"s", 1'000'000'000},
    {"ms", 1'000'000},
    {"us", 1'000},
    {"ns", 1},
}};

constexpr std::size_t kParsedUnits = 4;

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

}  // namespace

std::optional<Duration> parse_duration(std::string_view text) {
    std::size_t digits = 0;
    while (digits < text.size() && is_digit(text[digits])) ++digits;
    if (digits == 0) return std::nullopt;

    const std::string_view suffix = text.substr(digits);
    Duration::rep per_unit = 0;
    for (std::size_t i = 0; i < kParsedUnits; ++i)
        if (suffix == kUnits[i].suffix) per_unit = kUnits[i].nanos;
    if (per_unit == 0) return std::nullopt;

    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + digits, value);
    if (ec != std::errc{} || end != text.data() + digits) return std::nullopt;
    constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<Duration::rep>::max());
    if (value > kMax / static_cast<std::uint64_t>(per_unit)) return std::nullopt;
    return Duration(static_cast<Duration::rep>(value) * per_unit);
}

std::string format_duration(Duration d) {
    const Duration::rep count = d.count();
    if (count == 0) return "0ms";
    // Negate in unsigned arithmetic so that the minimum value does not overflow.
    const bool negative = count < 0;
    const std::uint64_t magnitude =
        negative ? 0 - static_cast<std::uint64_t>(count) : static_cast<std::uint64_t>(count);
    for (const auto& unit : kUnits) {
        const auto nanos = static_cast<std::uint64_t>(unit.nanos);
        if (magnitude % nanos != 0) continue;
        std::string out = negative ? "-" : "";
        out += std::to_string(magnitude / nanos);
        out += unit.suffix;
        return out;
    }
    return {};  // unreachable: every count is a whole number of nanoseconds
}

}  // namespace keepalive
