#include "daemon/control_request.hpp"

#include <charconv>

namespace keepalive {

RequestFraming frame_request(std::string_view received, std::size_t max_size) {
    const auto nl = received.find('\n');
    // A newline past the limit is never looked for: the server reads at most
    // max_size bytes before it gives up.
    if (nl != std::string_view::npos && nl < max_size)
        return {RequestFraming::State::complete, received.substr(0, nl)};
    if (received.size() >= max_size) return {RequestFraming::State::too_long, {}};
    return {};
}

Result<ControlRequest, std::string> parse_control_request(std::string_view line) {
    using Kind = ControlRequest::Kind;
    if (line == "status") return ControlRequest{Kind::status, std::nullopt};
    if (line == "peers") return ControlRequest{Kind::peers, std::nullopt};
    if (line == "targets") return ControlRequest{Kind::targets, std::nullopt};
    if (line == "metrics") return ControlRequest{Kind::metrics, std::nullopt};
    if (line == "shutdown-for-good") return ControlRequest{Kind::shutdown_for_good, std::nullopt};
    if (line == "watch" || line == "watch ") return ControlRequest{Kind::watch, std::nullopt};
    if (line.starts_with("watch ")) {
        const std::string_view text = line.substr(6);
        std::uint64_t since = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), since);
        if (ec != std::errc{} || end != text.data() + text.size())
            return Err{std::string("bad watch request")};
        return ControlRequest{Kind::watch, since};
    }
    return Err{std::string("unknown request")};
}

}  // namespace keepalive
