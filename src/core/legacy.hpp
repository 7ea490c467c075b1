// The text protocol of the Go keepalive module that keepalived replaces
// (ka-server / ka-client), as it behaves on the wire. Parsing is strict:
// anything that is not exactly one of these shapes is rejected.
//
//   registration  peer -> server:5001   "<name>:<interval s>:<probes>"
//   probe         server:5002 -> peer:5002   "keepalive:<token>"
//   reply         peer:5002 -> server:5002   "<name>:<token>" + NUL padding
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace keepalive::legacy {

inline constexpr std::uint16_t kRegisterPort = 5001;
inline constexpr std::uint16_t kProbePort = 5002;
// The old client reads into a 256-byte buffer and echoes all of it after the first ':'.
inline constexpr std::size_t kClientBuffer = 256;

struct Registration {
    std::string name;              // a KAP/1 name without ':' (the old format splits on it)
    std::uint32_t interval_s = 0;  // 1 .. 3600
    std::uint32_t probes = 0;      // 1 .. 255
};
std::optional<Registration> parse_registration(std::span<const std::uint8_t> data);
std::string format_registration(const Registration& r);

// "keepalive:<token>"; the token is a positive decimal number. Written into
// `out` (no allocation: one goes out per probe); returns the bytes written.
inline constexpr std::size_t kMaxProbeSize = 10 + 20;  // "keepalive:" + UINT64_MAX's digits
using ProbeBuffer = std::array<std::uint8_t, kMaxProbeSize>;
std::span<const std::uint8_t> format_probe(std::uint64_t token, ProbeBuffer& out);
std::optional<std::uint64_t> parse_probe(std::span<const std::uint8_t> data);

struct Reply {
    std::string_view name;    // up to the first ':'
    std::uint64_t token = 0;  // after it, up to the first NUL
};
std::optional<Reply> parse_reply(std::span<const std::uint8_t> data);
// What the old client sends back for `probe`: the name, ':', then the rest of
// its 256-byte receive buffer after the probe's first ':' (so NUL-padded).
// Written into `out`; a name longer than 64 bytes is cut there.
inline constexpr std::size_t kMaxReplySize = 64 + 1 + kClientBuffer;
using ReplyBuffer = std::array<std::uint8_t, kMaxReplySize>;
std::span<const std::uint8_t> format_reply(std::string_view name,
                                           std::span<const std::uint8_t> probe, ReplyBuffer& out);

}  // namespace keepalive::legacy
