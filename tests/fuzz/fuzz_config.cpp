// Fuzz target for the configuration loader: the TOML document and the keys
// file it names. Input: TOML text, a NUL byte, keys file text. "@KEYS@" in the
// TOML stands for a private temporary file holding the keys text (mode 0600),
// so the two parsers are exercised together, as keepalived loads them.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/keys_file.hpp"
#include "daemon/config.hpp"

using namespace keepalive;

namespace {

const std::string& keys_path() {
    static const std::string path = [] {
        const char* base = std::getenv("TMPDIR");
        return std::string(base && *base ? base : "/tmp") + "/fuzz_config_keys." +
               std::to_string(::getpid());
    }();
    return path;
}

void write_keys(std::string_view text) {
    const int fd = ::open(keys_path().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) std::abort();
    if (!text.empty() && ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()))
        std::abort();
    ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const auto nul = input.find('\0');
    std::string toml(input.substr(0, nul));
    const std::string_view keys = nul == std::string_view::npos ? "" : input.substr(nul + 1);

    // The keys parser on its own: a result is a ring with an active key, or a positioned error.
    const auto ring = parse_keys(keys, "keys");
    if (ring) {
        if (ring->empty() || ring->active() == nullptr) std::abort();
        for (std::uint32_t id = 0; id < 4; ++id)
            if (const auto* k = ring->find(id); k && k->secret.size() < kap::kMinKeySize)
                std::abort();
    } else if (ring.error().line == 0 || ring.error().column == 0) {
        std::abort();  // text errors always have a place
    }

    // Both together, through the real file.
    if (toml.find("@KEYS@") != std::string::npos) write_keys(keys);
    for (auto at = toml.find("@KEYS@"); at != std::string::npos; at = toml.find("@KEYS@", at))
        toml.replace(at, 6, keys_path());
    const auto config = parse_config(toml, "fuzz.toml");
    if (config) {
        if (config->listen.empty()) std::abort();
        if (config->auth.mode == AuthMode::required &&
            (config->auth.keys.empty() || config->auth.keys.active() == nullptr))
            std::abort();  // never "required" without a usable key
        if (config->auth.mode == AuthMode::off && !config->auth.keys.empty()) std::abort();
        if (config->legacy.enable && config->auth.mode == AuthMode::required &&
            !config->legacy.allow_unauthenticated)
            std::abort();
    } else if (config.error().message.empty()) {
        std::abort();
    }
    return 0;
}
