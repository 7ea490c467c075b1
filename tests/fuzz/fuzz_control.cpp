// Fuzz target for the control socket's request handling: the bytes a client
// sends, framed into a request line as the server reads them (in pieces of
// any size up to its read buffer), then parsed. Input: one byte choosing the
// piece sizes, then the client's bytes.
//
// Checks: a complete line holds no newline and is shorter than the limit, and
// is a prefix of what was sent; framing never looks past the limit; a parsed
// request, written back the way keepalivectl writes it, parses to the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "daemon/control.hpp"
#include "daemon/control_request.hpp"

using namespace keepalive;

namespace {

constexpr std::size_t kMax = ControlServer::kMaxRequest;

std::string format_request(const ControlRequest& r) {
    switch (r.kind) {
        case ControlRequest::Kind::status:
            return "status";
        case ControlRequest::Kind::peers:
            return "peers";
        case ControlRequest::Kind::targets:
            return "targets";
        case ControlRequest::Kind::metrics:
            return "metrics";
        case ControlRequest::Kind::shutdown_for_good:
            return "shutdown-for-good";
        case ControlRequest::Kind::watch:
            return r.since ? "watch " + std::to_string(*r.since) : "watch";
    }
    std::abort();
}

void check_parse(std::string_view line) {
    const auto request = parse_control_request(line);
    if (!request) {
        if (request.error().empty()) std::abort();
        return;
    }
    if (request->since && request->kind != ControlRequest::Kind::watch) std::abort();
    const auto again = parse_control_request(format_request(*request));
    if (!again || !(*again == *request)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    // Piece sizes 1 .. kMax, varying with the position, as recv() may return.
    const std::size_t step = data[0] % kMax + 1;
    const std::string_view sent(reinterpret_cast<const char*>(data + 1), size - 1);

    // The parser alone, on the whole input as one line.
    check_parse(sent);

    std::string received;
    std::size_t at = 0;
    for (std::size_t piece = 0; at < sent.size(); ++piece) {
        const std::size_t n = std::min(sent.size() - at, (step * (piece + 1)) % kMax + 1);
        received.append(sent.substr(at, n));
        at += n;
        const RequestFraming framed = frame_request(received, kMax);
        switch (framed.state) {
            case RequestFraming::State::incomplete:
                if (received.size() >= kMax) std::abort();
                if (received.find('\n') < kMax) std::abort();
                continue;
            case RequestFraming::State::too_long:
                if (received.size() < kMax || received.find('\n') < kMax) std::abort();
                return 0;
            case RequestFraming::State::complete:
                if (framed.line.size() >= kMax ||
                    framed.line.find('\n') != std::string_view::npos ||
                    framed.line.data() != received.data() || received[framed.line.size()] != '\n')
                    std::abort();
                check_parse(framed.line);
                return 0;
        }
    }
    return 0;
}
