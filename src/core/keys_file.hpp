// The keys file shared by keepalived, keepalive-peer and the client library:
// the KAP/1 authentication keys a node holds, one per line:
//
//     # comment
//     ID HEX-KEY        # ID: 0 .. 4294967295 (decimal, or hex as 0x...),
//                       # HEX-KEY: 32 to 128 bytes as 64 to 256 hex digits
//
// Blank lines and comments (from '#' to the end of the line) are ignored. The
// first key is the active one (the one datagrams are sent with) unless the
// caller picks another. Loading fails closed: a missing, unreadable, group- or
// world-accessible, empty or malformed file is an error, never "no keys".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/codec.hpp"
#include "core/result.hpp"

namespace keepalive {

inline constexpr std::size_t kMaxKeySize = 128;

struct KeysFileError {
    std::string file;
    std::uint32_t line = 0;    // 1-based; 0 when the whole file is at fault
    std::uint32_t column = 0;  // 1-based, in bytes
    std::string message;

    // "FILE:LINE:COLUMN: message", or "FILE: message" without a position.
    std::string to_string() const;
};

// Parses the text of a keys file; `file_name` is used in errors only. Never
// throws (other than std::bad_alloc).
Result<kap::KeyRing, KeysFileError> parse_keys(std::string_view text, std::string_view file_name);

// Reads and parses the file at `path` (a regular file of at most 64 KiB that
// neither group nor others may access: mode 0600 or 0400).
Result<kap::KeyRing, KeysFileError> load_keys_file(const std::string& path);

}  // namespace keepalive
