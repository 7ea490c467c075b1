// keepalived's configuration: the TOML file (see config/keepalived.toml for
// every key with its default and meaning) read into plain values. Loading
// either yields a Config in which every value is within its documented range,
// or one ConfigError pointing at the offending spot in the file.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/peer_limits.hpp"
#include "core/result.hpp"
#include "daemon/target_config.hpp"

namespace keepalive {

// [peers] is PeerLimits (core/peer_limits.hpp): the core applies it.

// [legacy]: the endpoint compatible with the original Go keepalive module.
struct LegacyConfig {
    bool enable = false;
    // A specific IPv4 host (never 0.0.0.0), port 0: the ports are below.
    // Always set when enable is true; may also be set while disabled.
    std::optional<Address> address;
    std::uint16_t register_port = 5001;  // 1 .. 65535
    std::uint16_t probe_port = 5002;     // 1 .. 65535, != register_port
};

// [metrics]: the Prometheus text written for node_exporter's textfile collector.
struct MetricsConfig {
    std::string textfile;  // absolute path; empty: not written
    Duration interval = std::chrono::seconds(15);  // 1s .. 1h
};

// [[hooks]]: a command to run on peer events (see daemon/hooks.hpp).
struct HookConfigEntry {
    std::vector<std::string> exec;    // 1 .. 64 strings; exec[0] an absolute path
    std::vector<std::string> states;  // each a state name; empty: every event
    Duration timeout = std::chrono::seconds(10);  // 100ms .. 1h
    friend bool operator==(const HookConfigEntry&, const HookConfigEntry&) = default;
};

struct Config {
    // [server] listen: 1 .. 64 distinct addresses, each with a port 1 .. 65535;
    // wildcards (0.0.0.0, [::]) allowed. In file order. Never empty in a
    // loaded Config; empty in a default-constructed one.
    std::vector<Address> listen;
    std::string control_socket = "/run/keepalived/control.sock";  // absolute, < 108 bytes
    PeerLimits peers;
    LegacyConfig legacy;
    MetricsConfig metrics;
    std::vector<HookConfigEntry> hooks;  // in file order
    std::vector<TargetConfig> targets;  // [[targets]], in file order, names unique
    std::string source;  // the file name or path the configuration was read from
};

struct ConfigError {
    std::string file;
    std::uint32_t line = 0;    // 1-based; 0 when there is no position (e.g. file unreadable)
    std::uint32_t column = 0;  // 1-based, in characters (UTF-8 code points)
    std::string message;       // names the key, e.g. "peers.max_probes: must be ..."

    // "FILE:LINE:COLUMN: message", or "FILE: message" without a position.
    std::string to_string() const;
};

inline constexpr const char* kDefaultConfigPath = "/etc/keepalived/keepalived.toml";

// Parses and validates a configuration document. file_name is used in errors
// and stored in Config::source. Never throws (other than std::bad_alloc).
// Unknown tables and keys, wrong types and out-of-range values are errors;
// every key except server.listen is optional. When a document has several
// problems, the one nearest the start of the file is reported.
Result<Config, ConfigError> parse_config(std::string_view text, std::string_view file_name);

// Reads the file at path (at most 1 MiB) and parses it as above; errors name
// path as given.
Result<Config, ConfigError> load_config(const std::string& path);

}  // namespace keepalive
