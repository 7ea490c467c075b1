#include "daemon/config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <memory>
#include <span>
#include <system_error>
#include <tuple>

#include "core/duration.hpp"
#include "core/keys_file.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t kMaxListen = 64;
constexpr std::size_t kSunPathSize = sizeof(sockaddr_un::sun_path);
// A configuration file is a few hundred bytes; the cap keeps a wrong path
// (a log, /dev/zero) from being read without end.
constexpr std::size_t kMaxFileSize = 1 << 20;
constexpr std::size_t kMaxQuoted = 64;

constexpr std::string_view kServerKeys[] = {"listen", "control_socket", "state_file"};
constexpr std::string_view kPeersKeys[] = {
    "min_interval",  "max_interval",    "max_probes",   "max_peers",     "max_per_host",
    "forget_after",  "allow",           "down_probe_interval",           "fast_down_on_icmp",
    "degraded_loss", "degraded_window", "degraded_rtt", "hold_down",     "flap_threshold",
    "shed_busy_percent"};
constexpr std::string_view kLegacyKeys[] = {"enable",     "address",   "register_port",
                                            "probe_port", "max_peers", "allow_unauthenticated"};
constexpr std::string_view kAuthKeys[] = {"mode", "keys_file", "active"};
constexpr std::string_view kMetricsKeys[] = {"textfile", "interval"};

struct Section {
    std::string_view name;
    std::span<const std::string_view> keys;
};
constexpr std::array<Section, 5> kSections{{
    {"server", kServerKeys},
    {"peers", kPeersKeys},
    {"legacy", kLegacyKeys},
    {"auth", kAuthKeys},
    {"metrics", kMetricsKeys},
}};

// Where the [auth] and [legacy] keys that constrain each other were written,
// for the checks made once the whole document has been read.
struct Positions {
    std::optional<toml::source_region> auth_mode;
    std::optional<toml::source_region> keys_file;
    std::optional<toml::source_region> active;
    std::optional<toml::source_region> legacy_enable;
};

// Collects the problems found while walking the document and keeps the one
// nearest the start of the file, so the report does not depend on the order
// in which toml++ hands out keys (alphabetical). A missing key ranks after
// everything else: the likely cause is a misspelt key, reported further down.
class Checker {
public:
    explicit Checker(std::string_view file) : file_(file) {}

    void fail(const toml::node& node, std::string message) {
        add(false, node.source(), std::move(message));
    }
    void fail(const toml::key& key, std::string message) {
        add(false, key.source(), std::move(message));
    }
    // where: the table the key is missing from, or the key that requires it.
    void fail_missing(const toml::source_region& where, std::string message) {
        add(true, where, std::move(message));
    }

    void fail_at(const toml::source_region& where, std::string message) {
        add(false, where, std::move(message));
    }

    const std::optional<ConfigError>& first() const { return first_; }

private:
    using Rank = std::tuple<bool, std::uint32_t, std::uint32_t>;

    void add(bool missing, const toml::source_region& where, std::string message) {
        const Rank rank{missing, where.begin.line, where.begin.column};
        if (first_ && rank >= first_rank_) return;
        first_ = ConfigError{file_, where.begin.line, where.begin.column, std::move(message)};
        first_rank_ = rank;
    }

    std::string file_;
    std::optional<ConfigError> first_;
    Rank first_rank_{};
};

// Text from the file, made safe and short for an error message.
std::string escaped(std::string_view text) {
    std::string out;
    std::size_t n = 0;
    for (const char ch : text) {
        if (++n > kMaxQuoted) {
            out += "...";
            break;
        }
        const auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20 || c == 0x7f) {
            constexpr char kHex[] = "0123456789abcdef";
            out += "\\x";
            out += kHex[c >> 4];
            out += kHex[c & 0xf];
        } else {
            out += ch;
        }
    }
    return out;
}

std::string quoted(std::string_view text) {
    return "\"" + escaped(text) + "\"";
}

std::string format_double(double v) {
    std::array<char, 64> buf{};
    const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
    if (ec != std::errc{}) return "?";
    return std::string(buf.data(), end);
}

// What the operator wrote, for "must be X, not <describe>" messages.
std::string describe(const toml::node& node) {
    switch (node.type()) {
        case toml::node_type::string:
            return "the string " + quoted(node.as_string()->get());
        case toml::node_type::integer:
            return "the integer " + std::to_string(node.as_integer()->get());
        case toml::node_type::floating_point:
            return "the float " + format_double(node.as_floating_point()->get());
        case toml::node_type::boolean:
            return node.as_boolean()->get() ? "true" : "false";
        case toml::node_type::array:
            return "an array";
        case toml::node_type::table:
            return "a table";
        case toml::node_type::date:
            return "a date";
        case toml::node_type::time:
            return "a time";
        case toml::node_type::date_time:
            return "a date-time";
        case toml::node_type::none:
            break;
    }
    return "nothing";
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// The candidate a typo most likely meant, if any is close enough.
std::optional<std::string_view> closest(std::string_view typo,
                                        std::span<const std::string_view> candidates) {
    std::optional<std::string_view> best;
    std::size_t best_distance = std::min<std::size_t>(2, typo.size() / 2) + 1;
    for (const auto candidate : candidates) {
        const std::size_t d = edit_distance(typo, candidate);
        if (d < best_distance) {
            best = candidate;
            best_distance = d;
        }
    }
    return best;
}

const Section* section_holding(std::string_view key) {
    for (const auto& section : kSections)
        if (std::find(section.keys.begin(), section.keys.end(), key) != section.keys.end())
            return &section;
    return nullptr;
}

void check_section_keys(Checker& c, const toml::table& table, const Section& section) {
    for (auto&& [key, value] : table) {
        const auto name = key.str();
        if (std::find(section.keys.begin(), section.keys.end(), name) != section.keys.end())
            continue;
        std::string message =
            "unknown key " + quoted(name) + " in [" + std::string(section.name) + "]";
        if (const auto* home = section_holding(name))
            message += " (it belongs in [" + std::string(home->name) + "])";
        else if (const auto guess = closest(name, section.keys))
            message += "; did you mean \"" + std::string(*guess) + "\"?";
        c.fail(key, std::move(message));
    }
}

void report_unknown_top_level(Checker& c, const toml::key& key, const toml::node& value) {
    const auto name = key.str();
    std::string message;
    if (value.is_table()) {
        message = "unknown table [" + escaped(name) + "]";
        std::array<std::string_view, kSections.size()> names{};
        std::transform(kSections.begin(), kSections.end(), names.begin(),
                       [](const Section& s) { return s.name; });
        if (const auto guess = closest(name, names))
            message += "; did you mean [" + std::string(*guess) + "]?";
    } else {
        message = "unknown key " + quoted(name) + " outside any table";
        if (const auto* home = section_holding(name))
            message += " (it belongs in [" + std::string(home->name) + "])";
    }
    c.fail(key, std::move(message));
}

std::optional<std::int64_t> read_integer(Checker& c, const toml::node& node,
                                         const std::string& name, std::int64_t lo,
                                         std::int64_t hi) {
    const std::string expected = name + ": must be an integer from " + std::to_string(lo) + " to " +
                                 std::to_string(hi) + ", not ";
    // Only an integer node may be read as one: value_or<int64_t> on a float is UB in toml++.
    if (!node.is_integer()) {
        c.fail(node, expected + describe(node));
        return std::nullopt;
    }
    const std::int64_t value = node.as_integer()->get();
    if (value < lo || value > hi) {
        c.fail(node, expected + std::to_string(value));
        return std::nullopt;
    }
    return value;
}

std::optional<bool> read_bool(Checker& c, const toml::node& node, const std::string& name) {
    if (!node.is_boolean()) {
        c.fail(node, name + ": must be true or false, not " + describe(node));
        return std::nullopt;
    }
    return node.as_boolean()->get();
}

const std::string* read_string(Checker& c, const toml::node& node, const std::string& name,
                               std::string_view what) {
    if (!node.is_string()) {
        c.fail(node, name + ": must be " + std::string(what) + ", not " + describe(node));
        return nullptr;
    }
    return &node.as_string()->get();
}

// Digits then letters: the shape of a duration whose number is too large.
bool shaped_like_duration(std::string_view text) {
    const auto digit_end = text.find_first_not_of("0123456789");
    if (digit_end == 0 || digit_end == std::string_view::npos) return false;
    const auto unit = text.substr(digit_end);
    return unit == "ms" || unit == "s" || unit == "m" || unit == "h";
}

std::optional<Duration> read_duration(Checker& c, const toml::node& node, const std::string& name,
                                      Duration lo, Duration hi, Duration example) {
    const std::string range =
        "a duration from " + format_duration(lo) + " to " + format_duration(hi);
    const auto* text = read_string(
        c, node, name, range + " as a string such as \"" + format_duration(example) + "\"");
    if (!text) return std::nullopt;
    const auto value = parse_duration(*text);
    if (!value && !shaped_like_duration(*text)) {
        c.fail(node, name + ": " + quoted(*text) +
                         " is not a duration; write a whole number followed by ms, s, m or h, "
                         "e.g. \"250ms\", \"5s\", \"10m\"");
        return std::nullopt;
    }
    if (!value || *value < lo || *value > hi) {
        c.fail(node, name + ": must be " + range + ", not " + quoted(*text));
        return std::nullopt;
    }
    return value;
}

std::optional<std::uint16_t> read_port(Checker& c, const toml::node& node,
                                       const std::string& name) {
    const auto value = read_integer(c, node, name, 1, 65535);
    if (!value) return std::nullopt;
    return static_cast<std::uint16_t>(*value);
}

// "host:99999": the host is fine and only the port is out of range.
bool only_port_out_of_range(std::string_view text) {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return false;
    const auto port = text.substr(colon + 1);
    if (port.empty() || port.find_first_not_of("0123456789") != std::string_view::npos)
        return false;
    return Address::parse(std::string(text.substr(0, colon)) + ":0").has_value();
}

void read_listen(Checker& c, const toml::node& node, std::vector<Address>& out) {
    const std::string name = "server.listen";
    const auto* array = node.as_array();
    if (!array) {
        c.fail(node, name +
                         ": must be an array of \"address:port\" strings, e.g. "
                         "[\"127.0.0.1:7371\"], not " +
                         describe(node));
        return;
    }
    if (array->empty()) {
        c.fail(node, name + ": must list at least one address, e.g. [\"127.0.0.1:7371\"]");
        return;
    }
    if (array->size() > kMaxListen) {
        c.fail(node, name + ": must list at most " + std::to_string(kMaxListen) +
                         " addresses, not " + std::to_string(array->size()));
        return;
    }
    std::vector<std::size_t> entry_numbers;  // 1-based position in the array of each of out
    for (std::size_t i = 0; i < array->size(); ++i) {
        const toml::node& element = *array->get(i);
        const auto* text = read_string(c, element, name, "a list of \"address:port\" strings");
        if (!text) continue;
        const auto address = Address::parse(*text);
        if ((address && address->port() == 0) || (!address && only_port_out_of_range(*text))) {
            c.fail(element, name + ": " + quoted(*text) + " must have a port from 1 to 65535");
            continue;
        }
        if (!address) {
            c.fail(element, name + ": " + quoted(*text) +
                                " is not a numeric address and port such as "
                                "\"127.0.0.1:7371\", \"0.0.0.0:7371\" or \"[::1]:7371\"");
            continue;
        }
        const auto same = std::find(out.begin(), out.end(), *address);
        if (same != out.end()) {
            c.fail(element, name + ": " + quoted(*text) + " is listed twice (also entry " +
                                std::to_string(entry_numbers[same - out.begin()]) + ")");
            continue;
        }
        out.push_back(*address);
        entry_numbers.push_back(i + 1);
    }
}

void read_control_socket(Checker& c, const toml::node& node, std::string& out) {
    const std::string name = "server.control_socket";
    const auto* path = read_string(c, node, name, "an absolute path");
    if (!path) return;
    if (path->empty() || path->front() != '/') {
        c.fail(node,
               name + ": must be an absolute path (starting with \"/\"), not " + quoted(*path));
    } else if (path->back() == '/') {
        c.fail(node, name + ": must name a socket file, not a directory: " + quoted(*path));
    } else if (path->find('\0') != std::string::npos) {
        c.fail(node, name + ": must not contain a NUL character");
    } else if (path->size() >= kSunPathSize) {
        c.fail(node, name + ": must be shorter than " + std::to_string(kSunPathSize) +
                         " bytes (the limit of a Unix socket path), not " +
                         std::to_string(path->size()) + " bytes");
    } else {
        out = *path;
    }
}

void read_state_file(Checker& c, const toml::node& node, std::optional<std::string>& out) {
    const std::string name = "server.state_file";
    const auto* path = read_string(c, node, name, "an absolute path, or \"\" for none");
    if (!path) return;
    if (!path->empty() && path->front() != '/')
        c.fail(node, name + ": must be an absolute path (starting with \"/\") or \"\", not " +
                         quoted(*path));
    else if (!path->empty() && path->back() == '/')
        c.fail(node, name + ": must name a file, not a directory: " + quoted(*path));
    else if (path->find('\0') != std::string::npos)
        c.fail(node, name + ": must not contain a NUL character");
    else
        out = *path;
}

void read_server(Checker& c, const toml::table& table, Config& config) {
    check_section_keys(c, table, kSections[0]);
    if (const auto* node = table.get("listen"))
        read_listen(c, *node, config.listen);
    else
        c.fail_missing(table.source(),
                       "server.listen: required; list the addresses to serve on, e.g. "
                       "listen = [\"127.0.0.1:7371\", \"[::1]:7371\"]");
    if (const auto* node = table.get("control_socket"))
        read_control_socket(c, *node, config.control_socket);
    if (const auto* node = table.get("state_file")) read_state_file(c, *node, config.state_file);
}

// "20%": a whole percentage from 1 to 100, as a fraction.
std::optional<double> read_percent(Checker& c, const toml::node& node, const std::string& name) {
    const std::string what = "a percentage from 1% to 100% as a string such as \"20%\"";
    const auto* text = read_string(c, node, name, what);
    if (!text) return std::nullopt;
    const std::string_view digits = std::string_view(*text).substr(0, text->size() - 1);
    int value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (text->empty() || text->back() != '%' || digits.empty() || ec != std::errc{} ||
        end != digits.data() + digits.size() || value < 1 || value > 100) {
        c.fail(node, name + ": must be " + what + ", not " + quoted(*text));
        return std::nullopt;
    }
    return value / 100.0;
}

void read_peers(Checker& c, const toml::table& table, PeerLimits& peers) {
    check_section_keys(c, table, kSections[1]);
    bool intervals_valid = true;
    const auto duration = [&](std::string_view key, Duration lo, Duration hi, Duration& out) {
        const auto* node = table.get(key);
        if (!node) return;
        if (const auto value = read_duration(c, *node, "peers." + std::string(key), lo, hi, out))
            out = *value;
        else if (key == "min_interval" || key == "max_interval")
            intervals_valid = false;
    };
    duration("min_interval", 1ms, 1h, peers.min_interval);
    duration("max_interval", 1ms, 1h, peers.max_interval);
    duration("forget_after", 1s, 24h * 30, peers.forget_after);
    duration("down_probe_interval", 100ms, 1h, peers.down_probe_interval);

    HealthPolicy& health = peers.health;
    if (const auto* node = table.get("degraded_loss"))
        if (const auto value = read_percent(c, *node, "peers.degraded_loss")) health.loss = *value;
    if (const auto* node = table.get("degraded_window"))
        if (const auto value = read_integer(c, *node, "peers.degraded_window", 10, 1000))
            health.loss_window = static_cast<std::uint32_t>(*value);
    if (const auto* node = table.get("degraded_rtt"))
        if (const auto value = read_duration(c, *node, "peers.degraded_rtt", 1ms, 1h, 50ms))
            health.rtt = *value;
    if (const auto* node = table.get("hold_down"))
        if (const auto value = read_duration(c, *node, "peers.hold_down", 1s, 24h, 30s))
            health.hold_down = *value;
    if (const auto* node = table.get("flap_threshold"))
        if (const auto value = read_integer(c, *node, "peers.flap_threshold", 1, 100))
            health.flap_threshold = static_cast<std::uint32_t>(*value);

    if (const auto* node = table.get("max_probes"))
        if (const auto value = read_integer(c, *node, "peers.max_probes", 1, 255))
            peers.max_probes = static_cast<std::uint8_t>(*value);
    if (const auto* node = table.get("max_peers"))
        if (const auto value = read_integer(c, *node, "peers.max_peers", 1, 10'000'000))
            peers.max_peers = static_cast<std::uint32_t>(*value);
    if (const auto* node = table.get("max_per_host"))
        if (const auto value = read_integer(c, *node, "peers.max_per_host", 1, 10'000'000))
            peers.max_per_host = static_cast<std::uint32_t>(*value);
    if (const auto* node = table.get("fast_down_on_icmp"))
        if (const auto value = read_bool(c, *node, "peers.fast_down_on_icmp"))
            peers.fast_down_on_icmp = *value;
    if (const auto* node = table.get("shed_busy_percent"))
        if (const auto value = read_integer(c, *node, "peers.shed_busy_percent", 0, 100))
            peers.shed_busy_percent = static_cast<std::uint8_t>(*value);

    if (const auto* node = table.get("allow")) {
        const auto* array = node->as_array();
        if (!array) {
            c.fail(*node,
                   "peers.allow: must be an array of address prefixes, e.g. "
                   "[\"10.0.0.0/8\", \"2001:db8::/32\"], not " +
                       describe(*node));
        } else {
            for (std::size_t i = 0; i < array->size(); ++i) {
                const toml::node& element = *array->get(i);
                const auto* text =
                    read_string(c, element, "peers.allow", "a list of address prefixes");
                if (!text) continue;
                if (const auto cidr = Cidr::parse(*text))
                    peers.allow.push_back(*cidr);
                else
                    c.fail(element, "peers.allow: " + quoted(*text) +
                                        " is not an address prefix such as \"10.0.0.0/8\", "
                                        "\"2001:db8::/32\" or \"192.0.2.7\" (no bits set "
                                        "beyond the length)");
            }
        }
    }

    if (intervals_valid && peers.min_interval > peers.max_interval) {
        const auto min_text = format_duration(peers.min_interval);
        const auto max_text = format_duration(peers.max_interval);
        if (const auto* min_node = table.get("min_interval"))
            c.fail(*min_node, "peers.min_interval: must not be greater than peers.max_interval (" +
                                  min_text + " > " + max_text + ")");
        else if (const auto* max_node = table.get("max_interval"))
            c.fail(*max_node, "peers.max_interval: must not be less than peers.min_interval (" +
                                  max_text + " < " + min_text + ", the default)");
    }
}

void read_legacy(Checker& c, const toml::table& table, LegacyConfig& legacy) {
    check_section_keys(c, table, kSections[2]);
    if (const auto* node = table.get("enable"))
        if (const auto value = read_bool(c, *node, "legacy.enable")) legacy.enable = *value;

    bool address_given = false;
    if (const auto* node = table.get("address")) {
        address_given = true;
        const std::string name = "legacy.address";
        if (const auto* text =
                read_string(c, *node, name, "an IPv4 address such as \"192.0.2.10\"")) {
            const auto address = Address::parse_host(*text, 0);
            if (!address)
                c.fail(*node, name + ": " + quoted(*text) +
                                  " is not an IPv4 address such as \"192.0.2.10\" (no port)");
            else if (address->family() != Address::Family::v4)
                c.fail(*node, name +
                                  ": must be an IPv4 address (the legacy protocol is IPv4 "
                                  "only), not " +
                                  quoted(*text));
            else if (address->is_any())
                c.fail(*node, name + ": must be a specific IPv4 address, not the wildcard " +
                                  quoted(*text));
            else
                legacy.address = address;
        }
    }

    const auto* register_node = table.get("register_port");
    const auto* probe_node = table.get("probe_port");
    bool ports_valid = true;
    if (register_node) {
        const auto port = read_port(c, *register_node, "legacy.register_port");
        ports_valid = ports_valid && port;
        if (port) legacy.register_port = *port;
    }
    if (probe_node) {
        const auto port = read_port(c, *probe_node, "legacy.probe_port");
        ports_valid = ports_valid && port;
        if (port) legacy.probe_port = *port;
    }
    if (ports_valid && legacy.register_port == legacy.probe_port) {
        const std::string both = std::to_string(legacy.probe_port);
        if (probe_node)
            c.fail(*probe_node,
                   "legacy.probe_port: must differ from legacy.register_port (both " + both + ")");
        else if (register_node)
            c.fail(*register_node,
                   "legacy.register_port: must differ from legacy.probe_port (both " + both +
                       ", the default of legacy.probe_port)");
    }

    if (const auto* node = table.get("max_peers"))
        if (const auto value = read_integer(c, *node, "legacy.max_peers", 1, 10'000'000))
            legacy.max_peers = static_cast<std::uint32_t>(*value);
    if (const auto* node = table.get("allow_unauthenticated"))
        if (const auto value = read_bool(c, *node, "legacy.allow_unauthenticated"))
            legacy.allow_unauthenticated = *value;

    if (legacy.enable && !address_given)
        c.fail_missing(table.get("enable")->source(),
                       "legacy.address: required when legacy.enable = true; set the IPv4 "
                       "address to serve the legacy protocol on");
}

void read_auth(Checker& c, const toml::table& table, AuthConfig& auth, Positions& at) {
    check_section_keys(c, table, kSections[3]);
    if (const auto* node = table.get("mode")) {
        at.auth_mode = node->source();
        if (const auto* text = read_string(c, *node, "auth.mode", "\"off\" or \"required\"")) {
            if (*text == "off")
                auth.mode = AuthMode::off;
            else if (*text == "required")
                auth.mode = AuthMode::required;
            else
                c.fail(*node, "auth.mode: must be \"off\" or \"required\", not " + quoted(*text));
        }
    }
    if (const auto* node = table.get("keys_file")) {
        at.keys_file = node->source();
        if (const auto* path = read_string(c, *node, "auth.keys_file", "an absolute path")) {
            if (path->empty() || path->front() != '/')
                c.fail(*node,
                       "auth.keys_file: must be an absolute path (starting with \"/\"), "
                       "not " +
                           quoted(*path));
            else if (path->find('\0') != std::string::npos)
                c.fail(*node, "auth.keys_file: must not contain a NUL character");
            else
                auth.keys_file = *path;
        }
    }
    if (const auto* node = table.get("active")) {
        at.active = node->source();
        if (const auto value = read_integer(c, *node, "auth.active", 0, 0xFFFFFFFF))
            auth.active = static_cast<std::uint32_t>(*value);
    }
}

// The rules that span keys, checked once every key has been read without error.
void check_auth(Checker& c, const toml::table& root, Config& config, const Positions& at) {
    AuthConfig& auth = config.auth;
    const auto* auth_table = root.get("auth");
    if (auth.mode == AuthMode::required && auth.keys_file.empty())
        c.fail_missing(at.auth_mode ? *at.auth_mode : auth_table->source(),
                       "auth.keys_file: required when auth.mode = \"required\"; name the file "
                       "of \"ID HEX-KEY\" lines, e.g. keys_file = \"/etc/keepalived/keys\"");
    if (auth.mode == AuthMode::off && at.keys_file)
        c.fail_missing(*at.keys_file,
                       "auth.keys_file: set, but auth.mode is \"off\"; set auth.mode = "
                       "\"required\" to authenticate, or remove keys_file");
    if (auth.mode == AuthMode::off && at.active)
        c.fail_missing(*at.active, "auth.active: set, but auth.mode is \"off\"");
    if (config.legacy.enable && auth.mode == AuthMode::required &&
        !config.legacy.allow_unauthenticated)
        c.fail_missing(at.legacy_enable ? *at.legacy_enable : toml::source_region{},
                       "legacy.enable: the legacy protocol cannot authenticate, and auth.mode "
                       "is \"required\"; set legacy.allow_unauthenticated = true to serve "
                       "unauthenticated legacy peers anyway");
}

// Reads the keys file named by [auth]. Problems in its text are reported at
// their place in it; a file that cannot be used at all, at auth.keys_file.
std::optional<ConfigError> load_auth_keys(std::string_view file, AuthConfig& auth,
                                          const Positions& at) {
    auto keys = load_keys_file(auth.keys_file);
    if (!keys) {
        const KeysFileError& e = keys.error();
        if (e.line != 0) return ConfigError{e.file, e.line, e.column, e.message};
        return ConfigError{std::string(file), at.keys_file->begin.line, at.keys_file->begin.column,
                           "auth.keys_file: " + quoted(auth.keys_file) + ": " + e.message};
    }
    if (auth.active) {
        if (!keys->find(*auth.active))
            return ConfigError{std::string(file), at.active->begin.line, at.active->begin.column,
                               "auth.active: no key has id " + std::to_string(*auth.active) +
                                   " in " + auth.keys_file};
        keys->set_active(*auth.active);
    }
    auth.keys = std::move(*keys);
    return std::nullopt;
}

void read_metrics(Checker& c, const toml::table& table, MetricsConfig& metrics) {
    check_section_keys(c, table, kSections[4]);
    if (const auto* node = table.get("textfile")) {
        const std::string name = "metrics.textfile";
        if (const auto* path = read_string(c, *node, name, "an absolute path")) {
            if (path->empty() || path->front() != '/')
                c.fail(*node, name + ": must be an absolute path (starting with \"/\"), not " +
                                  quoted(*path));
            else if (path->back() == '/')
                c.fail(*node, name + ": must name a file, not a directory: " + quoted(*path));
            else if (path->find('\0') != std::string::npos)
                c.fail(*node, name + ": must not contain a NUL character");
            else
                metrics.textfile = *path;
        }
    }
    if (const auto* node = table.get("interval"))
        if (const auto value = read_duration(c, *node, "metrics.interval", 1s, 1h, 15s))
            metrics.interval = *value;
}

constexpr std::string_view kHookKeys[] = {"exec", "states", "timeout"};
constexpr std::string_view kHookStates[] = {"up",   "degraded", "suspect",
                                            "down", "left",     "forgotten"};

void read_hook(Checker& c, const toml::table& table, const std::string& where,
               HookConfigEntry& hook) {
    for (auto&& [key, value] : table)
        if (std::find(std::begin(kHookKeys), std::end(kHookKeys), key.str()) ==
            std::end(kHookKeys))
            c.fail(key, "unknown key " + quoted(std::string(key.str())) + " in " + where +
                            " (known: exec, states, timeout)");
    const auto* exec = table.get("exec");
    if (!exec) {
        c.fail_missing(table.source(), where + ".exec: required; the command and its arguments, "
                                               "e.g. exec = [\"/usr/local/bin/on-peer\"]");
    } else if (const auto* array = exec->as_array();
               !array || array->empty() || array->size() > 64) {
        c.fail(*exec, where + ".exec: must be an array of 1 to 64 strings, the command (an "
                              "absolute path) and its arguments");
    } else {
        for (std::size_t i = 0; i < array->size(); ++i) {
            const auto* arg = read_string(c, *array->get(i), where + ".exec", "an array of strings");
            if (!arg) continue;
            if (arg->find('\0') != std::string::npos)
                c.fail(*array->get(i), where + ".exec: must not contain a NUL character");
            else if (i == 0 && (arg->empty() || arg->front() != '/'))
                c.fail(*array->get(i), where + ".exec: the command must be an absolute path, not " +
                                           quoted(*arg));
            else
                hook.exec.push_back(*arg);
        }
    }
    if (const auto* states = table.get("states")) {
        const std::string list = "up, degraded, suspect, down, left or forgotten";
        if (const auto* array = states->as_array(); !array) {
            c.fail(*states, where + ".states: must be an array of states (" + list + ")");
        } else {
            for (const auto& element : *array) {
                const auto* s = read_string(c, element, where + ".states", "an array of strings");
                if (!s) continue;
                if (std::find(std::begin(kHookStates), std::end(kHookStates), *s) ==
                    std::end(kHookStates))
                    c.fail(element, where + ".states: " + quoted(*s) + " is not a state (" + list +
                                        ")");
                else
                    hook.states.push_back(*s);
            }
        }
    }
    if (const auto* node = table.get("timeout"))
        if (const auto value = read_duration(c, *node, where + ".timeout", 100ms, 1h, 10s))
            hook.timeout = *value;
}

void read_hooks(Checker& c, const toml::node& node, std::vector<HookConfigEntry>& hooks) {
    const auto* array = node.as_array();
    if (!array || !array->is_array_of_tables()) {
        c.fail(node, "hooks: must be an array of tables ([[hooks]]), not " + describe(node));
        return;
    }
    for (std::size_t i = 0; i < array->size(); ++i) {
        HookConfigEntry hook;
        read_hook(c, *array->get(i)->as_table(), "hooks[" + std::to_string(i) + "]", hook);
        hooks.push_back(std::move(hook));
    }
}

ConfigError syntax_error(std::string_view file, const toml::parse_error& e) {
    std::string description(e.description());
    if (description.starts_with("Error")) description[0] = 'e';
    return ConfigError{std::string(file), e.source().begin.line, e.source().begin.column,
                       "invalid TOML: " + description};
}

}  // namespace

std::string ConfigError::to_string() const {
    if (line == 0) return file + ": " + message;
    std::string out = file + ":" + std::to_string(line);
    if (column != 0) out += ":" + std::to_string(column);
    return out + ": " + message;
}

Result<Config, ConfigError> parse_config(std::string_view text, std::string_view file_name) {
    toml::table root;
    try {
        root = toml::parse(text, file_name);
    } catch (const toml::parse_error& e) {
        return Err{syntax_error(file_name, e)};
    }

    Config config;
    config.source = std::string(file_name);
    Checker c(file_name);
    Positions at;
    for (auto&& [key, value] : root) {
        const std::string_view name = key.str();  // clang 14 cannot capture a binding
        if (name == "hooks") {
            read_hooks(c, value, config.hooks);
            continue;
        }
        if (name == "targets") {
            read_targets(value, config.targets,
                         [&](const toml::source_region& where, std::string message) {
                             c.fail_at(where, std::move(message));
                         });
            continue;
        }
        const auto it = std::find_if(kSections.begin(), kSections.end(),
                                     [name](const Section& s) { return s.name == name; });
        if (it == kSections.end()) {
            report_unknown_top_level(c, key, value);
            continue;
        }
        const auto* table = value.as_table();
        if (!table) {
            c.fail(value, std::string(it->name) + ": must be a table ([" + std::string(it->name) +
                              "]), not " + describe(value));
            continue;
        }
        if (it->name == "server") read_server(c, *table, config);
        if (it->name == "peers") read_peers(c, *table, config.peers);
        if (it->name == "legacy") {
            read_legacy(c, *table, config.legacy);
            if (const auto* enable = table->get("enable")) at.legacy_enable = enable->source();
        }
        if (it->name == "auth") read_auth(c, *table, config.auth, at);
        if (it->name == "metrics") read_metrics(c, *table, config.metrics);
    }
    if (!root.contains("server"))
        c.fail_missing({},
                       "server.listen: required; add a [server] table with the addresses "
                       "to serve on, e.g. listen = [\"127.0.0.1:7371\", \"[::1]:7371\"]");

    if (c.first()) return Err{*c.first()};
    config.peers.legacy_max_peers = config.legacy.max_peers;
    check_auth(c, root, config, at);
    if (c.first()) return Err{*c.first()};
    if (config.auth.mode == AuthMode::required)
        if (auto e = load_auth_keys(file_name, config.auth, at)) return Err{std::move(*e)};
    return config;
}

Result<Config, ConfigError> load_config(const std::string& path) {
    const auto failure = [&](std::string_view what, int error) {
        return Err{ConfigError{path, 0, 0,
                               std::string(what) + ": " + std::generic_category().message(error)}};
    };
    // Non-blocking, and only a regular file: opening a FIFO (or a device)
    // would block until a writer comes, with every signal blocked.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return failure("cannot open the configuration file", errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                           : S_ISFIFO(st.st_mode) ? "a FIFO"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "a device or special file";
        return Err{ConfigError{path, 0, 0, std::string("not a regular file: it is ") + kind}};
    }
    const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(::fdopen(fd, "rb"), &std::fclose);
    if (!file) {
        const int error = errno;
        ::close(fd);
        return failure("cannot open the configuration file", error);
    }

    std::string text;
    std::array<char, 8192> buffer;
    while (true) {
        errno = 0;
        const std::size_t n = std::fread(buffer.data(), 1, buffer.size(), file.get());
        if (std::ferror(file.get())) return failure("cannot read the configuration file", errno);
        text.append(buffer.data(), n);
        if (text.size() > kMaxFileSize)
            return Err{ConfigError{path, 0, 0,
                                   "the configuration file is larger than " +
                                       std::to_string(kMaxFileSize >> 20) + " MiB"}};
        if (n < buffer.size()) break;
    }
    return parse_config(text, path);
}

}  // namespace keepalive
