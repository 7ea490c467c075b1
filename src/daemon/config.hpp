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
#include "core/codec.hpp"
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
    // 1 .. 10 000 000: legacy peers at once (copied into PeerLimits::legacy_max_peers).
    std::uint32_t max_peers = 10'000;
    // The legacy protocol cannot authenticate: with [auth] mode = "required"
    // it may be enabled only when this says so explicitly.
    bool allow_unauthenticated = false;
};

// [auth]: KAP/1 datagram authentication (the AUTH trailer).
enum class AuthMode { off, required };
struct AuthConfig {
    AuthMode mode = AuthMode::off;
    // Absolute path; set exactly when mode is required. The file is read while
    // the configuration loads, so a loaded Config holds its keys.
    std::string keys_file;
    std::optional<std::uint32_t> active;  // as configured; none: the file's first key
    kap::KeyRing keys;                    // non-empty with an active key when required
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
    // [server] state_file: where the peer table is kept across restarts. None:
    // "state" in $STATE_DIRECTORY when systemd sets it, else no file. Empty: no file.
    std::optional<std::string> state_file;  // absolute when non-empty
    PeerLimits peers;
    LegacyConfig legacy;
    AuthConfig auth;
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
// and stored in Config::source. With [auth] mode = "required" the keys file is
// read too; a keys file that is missing, unreadable, accessible by group or
// others, empty or malformed is an error (in the keys file's FILE:LINE:COLUMN
// when the problem is in its text, else at auth.keys_file), never "auth off".
// Never throws (other than std::bad_alloc).
// Unknown tables and keys, wrong types and out-of-range values are errors;
// every key except server.listen is optional. When a document has several
// problems, the one nearest the start of the file is reported.
Result<Config, ConfigError> parse_config(std::string_view text, std::string_view file_name);

// Reads the file at path (at most 1 MiB) and parses it as above; errors name
// path as given.
Result<Config, ConfigError> load_config(const std::string& path);

}  // namespace keepalive
