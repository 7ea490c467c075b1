#include "daemon/target_config.hpp"

#include <algorithm>
#include <array>
#include <string_view>

#include "core/duration.hpp"
#include "core/peer.hpp"

namespace keepalive {
namespace {

constexpr std::array<std::string_view, 5> kTargetKeys{"name", "address", "idle", "interval",
                                                      "probes"};

std::string quoted(std::string_view text) {
    std::string out = "\"";
    for (const char ch : text.substr(0, 64)) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
            out += '?';
        else
            out += ch;
    }
    return out + (text.size() > 64 ? "...\"" : "\"");
}

std::string what_is(const toml::node& node) {
    if (node.is_string()) return "the string " + quoted(node.as_string()->get());
    if (node.is_integer()) return "the integer " + std::to_string(node.as_integer()->get());
    if (node.is_floating_point()) return "a float";
    if (node.is_boolean()) return node.as_boolean()->get() ? "true" : "false";
    if (node.is_array()) return "an array";
    if (node.is_table()) return "a table";
    return "a date or time";
}

class TargetReader {
public:
    // prefix: "targets[N]", the entry's place in the array.
    TargetReader(const ConfigFailure& fail, std::string prefix)
        : fail_(fail), prefix_(std::move(prefix)) {}

    bool ok() const { return ok_; }
    // message: "KEY: ..." about one key, or ": ..." about the entry.
    void fail(const toml::node& node, std::string message) {
        fail_(node.source(), prefix_ + (message.starts_with(":") ? "" : ".") + message);
        ok_ = false;
    }
    void fail(const toml::key& key, std::string message) {
        fail_(key.source(), prefix_ + message);
        ok_ = false;
    }

    // A whole number of seconds from 1 to kMaxKeepaliveSeconds, written as a duration.
    std::optional<std::chrono::seconds> seconds(const toml::node& node, std::string_view key) {
        const std::string range = std::string(key) +
                                  ": must be a whole number of seconds from 1s to " +
                                  std::to_string(kMaxKeepaliveSeconds) + "s";
        if (!node.is_string()) {
            fail(node, range + " as a string such as \"10s\", not " + what_is(node));
            return std::nullopt;
        }
        const std::string& text = node.as_string()->get();
        const auto d = parse_duration(text);
        if (!d) {
            fail(node, std::string(key) + ": " + quoted(text) +
                           " is not a duration; write a whole number followed by s, m or h, "
                           "e.g. \"10s\"");
            return std::nullopt;
        }
        const auto s = std::chrono::duration_cast<std::chrono::seconds>(*d);
        if (s != *d || s.count() < 1 || s.count() > kMaxKeepaliveSeconds) {
            fail(node, range + " (the kernel's limits), not " + quoted(text));
            return std::nullopt;
        }
        return s;
    }

private:
    const ConfigFailure& fail_;
    std::string prefix_;
    bool ok_ = true;
};

std::optional<TargetConfig> read_target(const toml::node& node, std::size_t index,
                                        const ConfigFailure& fail) {
    TargetReader r(fail, "targets[" + std::to_string(index) + "]");
    const auto* table = node.as_table();
    if (!table) {
        fail(node.source(),
             "targets: each entry must be a table ([[targets]]), not " + what_is(node));
        return std::nullopt;
    }
    for (auto&& [key, value] : *table)
        if (std::find(kTargetKeys.begin(), kTargetKeys.end(), key.str()) == kTargetKeys.end())
            r.fail(key, ": unknown key " + quoted(key.str()) +
                            "; a target has name, address, idle, interval and probes");

    TargetConfig t;
    if (const auto* n = table->get("name")) {
        if (!n->is_string() || !valid_peer_name(n->as_string()->get()))
            r.fail(*n,
                   "name: must be 1 to 64 characters of A-Z a-z 0-9 . _ - : @, not " + what_is(*n));
        else
            t.name = n->as_string()->get();
    } else {
        r.fail(node, "name: required");
    }
    if (const auto* n = table->get("address")) {
        const auto a = n->is_string() ? Address::parse(n->as_string()->get()) : std::nullopt;
        if (!a || a->port() == 0 || a->is_any())
            r.fail(*n,
                   "address: must be a numeric host and port such as \"192.0.2.7:5432\" or "
                   "\"[2001:db8::7]:22\" (no names, no wildcard, port 1 to 65535), not " +
                       what_is(*n));
        else
            t.address = *a;
    } else {
        r.fail(node, "address: required, e.g. address = \"192.0.2.7:5432\"");
    }
    if (const auto* n = table->get("idle"))
        if (const auto s = r.seconds(*n, "idle")) t.idle = *s;
    if (const auto* n = table->get("interval"))
        if (const auto s = r.seconds(*n, "interval")) t.interval = *s;
    if (const auto* n = table->get("probes")) {
        const auto v = n->is_integer() ? n->as_integer()->get() : 0;
        if (v < 1 || v > kMaxKeepaliveProbes)
            r.fail(*n, "probes: must be an integer from 1 to " +
                           std::to_string(kMaxKeepaliveProbes) + " (the kernel's limit), not " +
                           what_is(*n));
        else
            t.probes = static_cast<std::uint8_t>(v);
    }
    if (!r.ok()) return std::nullopt;
    return t;
}

}  // namespace

void read_targets(const toml::node& node, std::vector<TargetConfig>& out,
                  const ConfigFailure& fail) {
    const auto* array = node.as_array();
    if (!array) {
        fail(node.source(),
             "targets: must be an array of tables, written [[targets]], not " + what_is(node));
        return;
    }
    if (array->size() > kMaxTargets) {
        fail(node.source(), "targets: at most " + std::to_string(kMaxTargets) + " targets, not " +
                                std::to_string(array->size()));
        return;
    }
    std::vector<std::size_t> index_of;  // 1-based entry number of each of out
    for (std::size_t i = 0; i < array->size(); ++i) {
        const toml::node& entry = *array->get(i);
        auto target = read_target(entry, i + 1, fail);
        if (!target) continue;
        const auto same = std::find_if(
            out.begin(), out.end(), [&](const TargetConfig& t) { return t.name == target->name; });
        if (same != out.end()) {
            fail(entry.as_table()->get("name")->source(),
                 "targets[" + std::to_string(i + 1) + "].name: " + quoted(target->name) +
                     " is already the name of targets[" +
                     std::to_string(index_of[static_cast<std::size_t>(same - out.begin())]) + "]");
            continue;
        }
        out.push_back(std::move(*target));
        index_of.push_back(i + 1);
    }
}

}  // namespace keepalive
