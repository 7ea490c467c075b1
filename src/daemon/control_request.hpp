// The control socket's requests, without I/O: how a client's bytes become one
// request line, and what that line asks for. The server and the fuzzer share
// these, so every byte a client can send goes through code a fuzzer has seen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/result.hpp"

namespace keepalive {

// What the bytes received so far from a client hold.
struct RequestFraming {
    enum class State : std::uint8_t {
        incomplete,  // no newline yet and still under the limit: read more
        complete,    // `line` is the request (without its newline); the rest is ignored
        too_long,    // `max_size` bytes and no newline: close the connection
    };
    State state = State::incomplete;
    std::string_view line;  // into the buffer passed in
};
RequestFraming frame_request(std::string_view received, std::size_t max_size);

struct ControlRequest {
    enum class Kind : std::uint8_t { status, peers, targets, metrics, watch, shutdown_for_good };
    Kind kind = Kind::status;
    // watch only: the first event seq wanted; nullopt from now on.
    std::optional<std::uint64_t> since;

    friend bool operator==(const ControlRequest&, const ControlRequest&) = default;
};

// One request line: "status", "peers", "targets", "metrics", "watch",
// "watch SEQ" (decimal), "shutdown-for-good". Anything else is an error whose
// text is the answer's "error" field.
Result<ControlRequest, std::string> parse_control_request(std::string_view line);

}  // namespace keepalive
