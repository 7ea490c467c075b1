#include "core/legacy.hpp"

#include <algorithm>
#include <charconv>

#include "core/peer.hpp"

namespace keepalive::legacy {
namespace {

std::string_view as_text(std::span<const std::uint8_t> data) {
    return {reinterpret_cast<const char*>(data.data()), data.size()};
}

// Digits only: no sign, no spaces, no leading zero, at most `max`.
std::optional<std::uint64_t> parse_number(std::string_view s, std::uint64_t max) {
    if (s.empty() || s.size() > 20 || s.front() == '0') return std::nullopt;
    std::uint64_t v = 0;
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || p != s.data() + s.size() || v > max) return std::nullopt;
    return v;
}

}  // namespace

std::optional<Registration> parse_registration(std::span<const std::uint8_t> data) {
    const std::string_view text = as_text(data);
    const auto first = text.find(':');
    if (first == std::string_view::npos) return std::nullopt;
    const auto second = text.find(':', first + 1);
    if (second == std::string_view::npos || text.find(':', second + 1) != std::string_view::npos)
        return std::nullopt;
    const std::string_view name = text.substr(0, first);
    if (!valid_peer_name(name)) return std::nullopt;
    const auto interval = parse_number(text.substr(first + 1, second - first - 1), 3600);
    const auto probes = parse_number(text.substr(second + 1), 255);
    if (!interval || !probes) return std::nullopt;
    return Registration{std::string(name), static_cast<std::uint32_t>(*interval),
                        static_cast<std::uint32_t>(*probes)};
}

std::string format_registration(const Registration& r) {
    return r.name + ":" + std::to_string(r.interval_s) + ":" + std::to_string(r.probes);
}

std::span<const std::uint8_t> format_probe(std::uint64_t token, ProbeBuffer& out) {
    constexpr std::string_view kPrefix = "keepalive:";
    char* const begin = reinterpret_cast<char*>(out.data());
    std::copy(kPrefix.begin(), kPrefix.end(), begin);
    const auto end = std::to_chars(begin + kPrefix.size(), begin + out.size(), token).ptr;
    return {out.data(), static_cast<std::size_t>(end - begin)};
}

std::optional<std::uint64_t> parse_probe(std::span<const std::uint8_t> data) {
    constexpr std::string_view kPrefix = "keepalive:";
    const std::string_view text = as_text(data);
    if (text.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
    return parse_number(text.substr(kPrefix.size()), UINT64_MAX);
}

std::optional<Reply> parse_reply(std::span<const std::uint8_t> data) {
    const std::string_view text = as_text(data);
    const auto colon = text.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    const std::string_view name = text.substr(0, colon);
    if (!valid_peer_name(name)) return std::nullopt;
    std::string_view rest = text.substr(colon + 1);
    // The old client pads with whatever its buffer holds: the token ends at the first NUL.
    rest = rest.substr(0, rest.find('\0'));
    const auto token = parse_number(rest, UINT64_MAX);
    if (!token) return std::nullopt;
    return Reply{name, *token};
}

std::span<const std::uint8_t> format_reply(std::string_view name,
                                           std::span<const std::uint8_t> probe, ReplyBuffer& out) {
    name = name.substr(0, 64);
    std::size_t n = std::copy(name.begin(), name.end(), out.begin()) - out.begin();
    out[n++] = ':';
    const auto colon = std::find(probe.begin(), probe.end(), std::uint8_t{':'});
    const std::size_t start = static_cast<std::size_t>(colon - probe.begin()) + 1;
    // The old client's buffer: the probe's bytes, then zeros, 256 bytes in all.
    for (std::size_t i = start; i < kClientBuffer; ++i)
        out[n++] = i < probe.size() ? probe[i] : std::uint8_t{0};
    return {out.data(), n};
}

}  // namespace keepalive::legacy
