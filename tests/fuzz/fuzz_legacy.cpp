// libFuzzer target for the Go-module text protocol parsers (untrusted bytes
// on the legacy ports). Every accepted input must format back to itself.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>

#include "core/legacy.hpp"

using namespace keepalive;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> bytes(data, size);
    const std::string text(reinterpret_cast<const char*>(data), size);

    if (const auto reg = legacy::parse_registration(bytes)) {
        if (legacy::format_registration(*reg) != text) std::abort();
    }
    if (const auto token = legacy::parse_probe(bytes)) {
        legacy::ProbeBuffer probe;
        const auto formatted = legacy::format_probe(*token, probe);
        if (std::string(formatted.begin(), formatted.end()) != text) std::abort();
        // Our answer to it must parse back to the same name and token.
        legacy::ReplyBuffer buf;
        const auto reply = legacy::format_reply("fuzz", bytes, buf);
        const auto parsed = legacy::parse_reply(reply);
        if (!parsed || parsed->name != "fuzz" || parsed->token != *token) std::abort();
    }
    if (const auto reply = legacy::parse_reply(bytes)) {
        if (reply->name.empty() || reply->token == 0) std::abort();
    }
    return 0;
}
