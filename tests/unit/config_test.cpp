#include "daemon/config.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <string>

namespace keepalive {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kFile = "keepalived.toml";

// Joins lines with '\n' so that a test's line numbers are its list indexes + 1.
std::string lines(std::initializer_list<std::string_view> parts) {
    std::string out;
    for (const auto part : parts) {
        out += part;
        out += '\n';
    }
    return out;
}

const std::string kServer = lines({"[server]", R"(listen = ["127.0.0.1:7371"])"});  // 2 lines

Address addr(std::string_view text) {
    const auto a = Address::parse(text);
    EXPECT_TRUE(a) << text;
    return a.value_or(Address{});
}

// Succeeds when text fails to parse with exactly this position and message.
::testing::AssertionResult fails_at(const std::string& text, std::uint32_t line,
                                    std::uint32_t column, std::string_view message) {
    const auto result = parse_config(text, kFile);
    if (result.ok()) return ::testing::AssertionFailure() << "parsed without error:\n" << text;
    const ConfigError& e = result.error();
    if (e.file == kFile && e.line == line && e.column == column && e.message == message)
        return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "got      " << e.to_string() << "\nexpected " << kFile << ":" << line << ":" << column
           << ": " << message << "\nfor:\n"
           << text;
}

ConfigError error_of(const std::string& text) {
    const auto result = parse_config(text, kFile);
    if (result.ok()) {
        ADD_FAILURE() << "parsed without error:\n" << text;
        return {};
    }
    return result.error();
}

std::filesystem::path source_root() {
    if (const char* root = std::getenv("KEEPALIVE_SOURCE_ROOT"); root && *root) return root;
    return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

// A scratch directory removed with everything in it at the end of the test.
class TempDir {
public:
    TempDir() {
        const char* base = std::getenv("TMPDIR");
        std::string pattern = std::string(base && *base ? base : "/tmp") + "/config_test.XXXXXX";
        if (::mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    std::string write(const std::string& name, const std::string& content) const {
        const auto file = path_ / name;
        std::ofstream(file, std::ios::binary) << content;
        return file.string();
    }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// --- valid configurations ---

TEST(Config, Defaults) {
    const Config c;
    EXPECT_TRUE(c.listen.empty());
    EXPECT_EQ(c.control_socket, "/run/keepalived/control.sock");
    EXPECT_EQ(c.peers.min_interval, 100ms);
    EXPECT_EQ(c.peers.max_interval, 1h);
    EXPECT_EQ(c.peers.max_probes, 255);
    EXPECT_EQ(c.peers.max_peers, 100'000u);
    EXPECT_EQ(c.peers.forget_after, 10min);
    EXPECT_EQ(c.peers.down_probe_interval, 5s);
    EXPECT_FALSE(c.legacy.enable);
    EXPECT_FALSE(c.legacy.address);
    EXPECT_EQ(c.legacy.register_port, 5001);
    EXPECT_EQ(c.legacy.probe_port, 5002);
    EXPECT_STREQ(kDefaultConfigPath, "/etc/keepalived/keepalived.toml");
}

TEST(Config, MinimalFileGetsDefaults) {
    const auto r = parse_config(kServer, kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    const Config defaults;
    EXPECT_EQ(r->listen, std::vector<Address>{addr("127.0.0.1:7371")});
    EXPECT_EQ(r->source, kFile);
    EXPECT_EQ(r->control_socket, defaults.control_socket);
    EXPECT_EQ(r->peers.min_interval, defaults.peers.min_interval);
    EXPECT_EQ(r->peers.max_interval, defaults.peers.max_interval);
    EXPECT_EQ(r->peers.max_probes, defaults.peers.max_probes);
    EXPECT_EQ(r->peers.max_peers, defaults.peers.max_peers);
    EXPECT_EQ(r->peers.forget_after, defaults.peers.forget_after);
    EXPECT_EQ(r->peers.down_probe_interval, defaults.peers.down_probe_interval);
    EXPECT_EQ(r->legacy.enable, defaults.legacy.enable);
    EXPECT_EQ(r->legacy.address, defaults.legacy.address);
    EXPECT_EQ(r->legacy.register_port, defaults.legacy.register_port);
    EXPECT_EQ(r->legacy.probe_port, defaults.legacy.probe_port);
}

TEST(Config, FullConfig) {
    const auto r = parse_config(lines({
                                    "# every key, none at its default",
                                    "[server]",
                                    R"(listen = ["0.0.0.0:7000", "[::]:7000", "[::1]:7371",)",
                                    R"(          "192.0.2.1:65535"])",
                                    R"(control_socket = "/tmp/k.sock")",
                                    "",
                                    "[peers]",
                                    R"(min_interval = "1ms")",
                                    R"(max_interval = "10m")",
                                    "max_probes = 1",
                                    "max_peers = 10_000_000",
                                    R"(forget_after = "720h")",
                                    R"(down_probe_interval = "100ms")",
                                    "",
                                    "[legacy]",
                                    "enable = true",
                                    R"(address = "192.0.2.10")",
                                    "register_port = 1",
                                    "probe_port = 65535",
                                }),
                                "full.toml");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    const std::vector<Address> listen{addr("0.0.0.0:7000"), addr("[::]:7000"), addr("[::1]:7371"),
                                      addr("192.0.2.1:65535")};
    EXPECT_EQ(r->listen, listen);
    EXPECT_EQ(r->control_socket, "/tmp/k.sock");
    EXPECT_EQ(r->peers.min_interval, 1ms);
    EXPECT_EQ(r->peers.max_interval, 10min);
    EXPECT_EQ(r->peers.max_probes, 1);
    EXPECT_EQ(r->peers.max_peers, 10'000'000u);
    EXPECT_EQ(r->peers.forget_after, 720h);
    EXPECT_EQ(r->peers.down_probe_interval, 100ms);
    EXPECT_TRUE(r->legacy.enable);
    ASSERT_TRUE(r->legacy.address);
    EXPECT_EQ(*r->legacy.address, Address::v4(0xC000020A, 0));
    EXPECT_EQ(r->legacy.register_port, 1);
    EXPECT_EQ(r->legacy.probe_port, 65535);
    EXPECT_EQ(r->source, "full.toml");
}

TEST(Config, OtherTomlSpellingsOfTheSameDocument) {
    const auto dotted = parse_config(lines({
                                         R"(server.listen = ["[::1]:7371"])",
                                         "peers.max_probes = 3",
                                     }),
                                     kFile);
    ASSERT_TRUE(dotted.ok()) << dotted.error().to_string();
    EXPECT_EQ(dotted->listen, std::vector<Address>{addr("[::1]:7371")});
    EXPECT_EQ(dotted->peers.max_probes, 3);

    const auto inline_table =
        parse_config(R"(server = { listen = ["127.0.0.1:1"], control_socket = "/x" })", kFile);
    ASSERT_TRUE(inline_table.ok()) << inline_table.error().to_string();
    EXPECT_EQ(inline_table->control_socket, "/x");
}

TEST(Config, BoundaryValuesAreAccepted) {
    const auto r = parse_config(kServer + lines({
                                              "[peers]",
                                              R"(min_interval = "1h")",
                                              R"(max_interval = "3600000ms")",
                                              "max_probes = 255",
                                              "max_peers = 1",
                                              R"(forget_after = "1s")",
                                              R"(down_probe_interval = "1h")",
                                          }),
                                kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->peers.min_interval, 1h);
    EXPECT_EQ(r->peers.max_interval, 1h);
    EXPECT_EQ(r->peers.max_peers, 1u);
    EXPECT_EQ(r->peers.forget_after, 1s);
}

TEST(Config, ControlSocketMayUseAllOfSunPath) {
    const std::string path = "/" + std::string(106, 'a');  // 107 bytes + NUL = 108
    const auto r = parse_config(
        lines({"[server]", R"(listen = ["127.0.0.1:7371"])", "control_socket = \"" + path + "\""}),
        kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->control_socket, path);
}

TEST(Config, StateFile) {
    const auto unset = parse_config(kServer, kFile);
    ASSERT_TRUE(unset) << unset.error().to_string();
    EXPECT_FALSE(unset->state_file.has_value()) << "default: the unit's StateDirectory, or none";
    const auto path = parse_config(kServer + lines({R"(state_file = "/var/lib/k/state")"}), kFile);
    ASSERT_TRUE(path) << path.error().to_string();
    EXPECT_EQ(path->state_file, "/var/lib/k/state");
    const auto none = parse_config(kServer + lines({R"(state_file = "")"}), kFile);
    ASSERT_TRUE(none) << none.error().to_string();
    EXPECT_EQ(none->state_file, "");
}

TEST(ConfigError, StateFileMustBeAbsolute) {
    EXPECT_TRUE(fails_at(kServer + lines({R"(state_file = "state")"}), 3, 14,
                         "server.state_file: must be an absolute path (starting with \"/\") or "
                         "\"\", not \"state\""));
    EXPECT_TRUE(fails_at(kServer + lines({R"(state_file = "/var/lib/")"}), 3, 14,
                         "server.state_file: must name a file, not a directory: \"/var/lib/\""));
    EXPECT_TRUE(fails_at(kServer + lines({R"(state_file = 1)"}), 3, 14,
                         "server.state_file: must be an absolute path, or \"\" for none, not the "
                         "integer 1"));
}

TEST(Config, LegacyAddressMayBeSetWhileDisabled) {
    const auto r =
        parse_config(kServer + lines({"[legacy]", R"(address = "198.51.100.7")"}), kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_FALSE(r->legacy.enable);
    ASSERT_TRUE(r->legacy.address);
    EXPECT_EQ(r->legacy.address->host_string(), "198.51.100.7");
}

// --- the example configuration shipped with the project ---

TEST(Config, ExampleConfigParsesWithDefaults) {
    const auto path = (source_root() / "config" / "keepalived.toml").string();
    const auto r = load_config(path);
    ASSERT_TRUE(r.ok()) << r.error().to_string()
                        << "\n(set KEEPALIVE_SOURCE_ROOT to the source tree)";
    EXPECT_EQ(r->source, path);
    const std::vector<Address> loopback{addr("127.0.0.1:7371"), addr("[::1]:7371")};
    EXPECT_EQ(r->listen, loopback);
    // The example documents the defaults: it must not drift from them.
    const Config defaults;
    EXPECT_EQ(r->control_socket, defaults.control_socket);
    EXPECT_EQ(r->peers.min_interval, defaults.peers.min_interval);
    EXPECT_EQ(r->peers.max_interval, defaults.peers.max_interval);
    EXPECT_EQ(r->peers.max_probes, defaults.peers.max_probes);
    EXPECT_EQ(r->peers.max_peers, defaults.peers.max_peers);
    EXPECT_EQ(r->peers.forget_after, defaults.peers.forget_after);
    EXPECT_EQ(r->peers.down_probe_interval, defaults.peers.down_probe_interval);
    EXPECT_EQ(r->legacy.enable, defaults.legacy.enable);
    EXPECT_EQ(r->legacy.address, defaults.legacy.address);
    EXPECT_EQ(r->legacy.register_port, defaults.legacy.register_port);
    EXPECT_EQ(r->legacy.probe_port, defaults.legacy.probe_port);
}

// --- syntax errors ---

TEST(ConfigError, TomlSyntaxError) {
    const auto e = error_of(lines({"[server]", "listen = "}));
    EXPECT_EQ(e.line, 2u);
    EXPECT_EQ(e.column, 10u);
    EXPECT_TRUE(e.message.starts_with("invalid TOML: ")) << e.message;

    const auto header = error_of(lines({"", "[server"}));
    EXPECT_EQ(header.line, 2u);
    EXPECT_EQ(header.column, 8u);
}

TEST(ConfigError, DuplicateKeyIsASyntaxError) {
    const auto e =
        error_of(lines({"[server]", R"(listen = ["127.0.0.1:1"])", R"(listen = ["127.0.0.1:2"])"}));
    EXPECT_EQ(e.line, 3u);
    EXPECT_TRUE(e.message.starts_with("invalid TOML: ")) << e.message;
}

TEST(ConfigError, IntegerBeyondInt64IsASyntaxError) {
    const auto e = error_of(kServer + lines({"[peers]", "max_peers = 99999999999999999999"}));
    EXPECT_EQ(e.line, 4u);
    EXPECT_TRUE(e.message.starts_with("invalid TOML: ")) << e.message;
}

TEST(ConfigError, InvalidUtf8IsASyntaxError) {
    const auto e = error_of(kServer + "# \xff\n");
    EXPECT_EQ(e.line, 3u);
    EXPECT_TRUE(e.message.starts_with("invalid TOML: ")) << e.message;
}

// --- unknown tables and keys ---

TEST(ConfigError, UnknownKey) {
    EXPECT_TRUE(fails_at(lines({"[server]", R"(listen = ["127.0.0.1:7371"])", "  listn = 1"}), 3, 3,
                         R"(unknown key "listn" in [server]; did you mean "listen"?)"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "colour = 1"}), 4, 1,
                         R"(unknown key "colour" in [peers])"));
}

TEST(ConfigError, MisspeltRequiredKeyIsReportedAsUnknownNotMissing) {
    EXPECT_TRUE(fails_at(lines({"[server]", R"(listn = ["127.0.0.1:7371"])"}), 2, 1,
                         R"(unknown key "listn" in [server]; did you mean "listen"?)"));
}

TEST(ConfigError, KeyInTheWrongTable) {
    EXPECT_TRUE(fails_at(lines({"[server]", R"(listen = ["127.0.0.1:7371"])", "max_probes = 3"}), 3,
                         1, R"(unknown key "max_probes" in [server] (it belongs in [peers]))"));
    EXPECT_TRUE(fails_at(lines({R"(listen = ["127.0.0.1:7371"])", "[server]"}), 1, 1,
                         R"(unknown key "listen" outside any table (it belongs in [server]))"));
}

TEST(ConfigError, UnknownTable) {
    EXPECT_TRUE(fails_at(kServer + lines({"", "[peer]", "max_probes = 3"}), 4, 2,
                         "unknown table [peer]; did you mean [peers]?"));
    EXPECT_TRUE(fails_at(kServer + lines({"[statistics]"}), 3, 2, "unknown table [statistics]"));
    EXPECT_TRUE(
        fails_at(kServer + lines({"[server.tls]"}), 3, 9, R"(unknown key "tls" in [server])"));
}

TEST(ConfigError, UnknownKeyIsEscapedInTheMessage) {
    EXPECT_TRUE(fails_at(lines({"\"a\\u0001\\\"b\" = 1"}) + kServer, 1, 1,
                         R"(unknown key "a\x01\"b" outside any table)"));
}

// --- wrong types ---

TEST(ConfigError, WrongTypeForInteger) {
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "max_probes = 2.0"}), 4, 14,
                         "peers.max_probes: must be an integer from 1 to 255, not the float 2"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "max_probes = 2.5"}), 4, 14,
                         "peers.max_probes: must be an integer from 1 to 255, not the float 2.5"));
    EXPECT_TRUE(
        fails_at(kServer + lines({"[peers]", R"(max_peers = "10")"}), 4, 13,
                 R"(peers.max_peers: must be an integer from 1 to 10000000, not the string "10")"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "probe_port = true"}), 4, 14,
                         "legacy.probe_port: must be an integer from 1 to 65535, not true"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "register_port = [5001]"}), 4, 17,
                         "legacy.register_port: must be an integer from 1 to 65535, not an array"));
}

TEST(ConfigError, WrongTypeForDuration) {
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "min_interval = 100"}), 4, 16,
                         "peers.min_interval: must be a duration from 1ms to 1h as a string such "
                         "as \"100ms\", not the integer 100"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "forget_after = 1979-05-27"}), 4, 16,
                         "peers.forget_after: must be a duration from 1s to 720h as a string such "
                         "as \"10m\", not a date"));
}

TEST(ConfigError, WrongTypeElsewhere) {
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", R"(enable = "yes")"}), 4, 10,
                         R"(legacy.enable: must be true or false, not the string "yes")"));
    EXPECT_TRUE(fails_at(lines({"[server]", R"(listen = "127.0.0.1:7371")"}), 2, 10,
                         "server.listen: must be an array of \"address:port\" strings, e.g. "
                         "[\"127.0.0.1:7371\"], not the string \"127.0.0.1:7371\""));
    EXPECT_TRUE(fails_at(lines({"[server]", R"(listen = ["127.0.0.1:7371", 7371])"}), 2, 29,
                         "server.listen: must be a list of \"address:port\" strings, not the "
                         "integer 7371"));
    EXPECT_TRUE(fails_at("peers = 5\n" + kServer, 1, 9,
                         "peers: must be a table ([peers]), not the integer 5"));
    EXPECT_TRUE(fails_at(lines({"[[server]]", R"(listen = ["127.0.0.1:7371"])"}), 1, 1,
                         "server: must be a table ([server]), not an array"));
    EXPECT_TRUE(fails_at(kServer + lines({R"(control_socket = 1)"}), 3, 18,
                         "server.control_socket: must be an absolute path, not the integer 1"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "address = 3221225994"}), 4, 11,
                         "legacy.address: must be an IPv4 address such as \"192.0.2.10\", not the "
                         "integer 3221225994"));
}

// --- out of range ---

TEST(ConfigError, IntegerOutOfRange) {
    // The example from the design notes, to the column.
    EXPECT_TRUE(fails_at(lines({"# keepalived", "", "[server]", R"(listen = ["127.0.0.1:7371"])",
                                "", "[peers]", "  max_probes = 300"}),
                         7, 16, "peers.max_probes: must be an integer from 1 to 255, not 300"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "max_probes = 0"}), 4, 14,
                         "peers.max_probes: must be an integer from 1 to 255, not 0"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "max_probes = -1"}), 4, 14,
                         "peers.max_probes: must be an integer from 1 to 255, not -1"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "max_peers = 10_000_001"}), 4, 13,
                         "peers.max_peers: must be an integer from 1 to 10000000, not 10000001"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "max_peers = 0"}), 4, 13,
                         "peers.max_peers: must be an integer from 1 to 10000000, not 0"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "register_port = 0"}), 4, 17,
                         "legacy.register_port: must be an integer from 1 to 65535, not 0"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "probe_port = 65536"}), 4, 14,
                         "legacy.probe_port: must be an integer from 1 to 65535, not 65536"));
}

TEST(ConfigError, DurationOutOfRange) {
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", R"(min_interval = "0ms")"}), 4, 16,
                         R"(peers.min_interval: must be a duration from 1ms to 1h, not "0ms")"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", R"(max_interval = "61m")"}), 4, 16,
                         R"(peers.max_interval: must be a duration from 1ms to 1h, not "61m")"));
    EXPECT_TRUE(
        fails_at(kServer + lines({"[peers]", R"(max_interval = "3600001ms")"}), 4, 16,
                 R"(peers.max_interval: must be a duration from 1ms to 1h, not "3600001ms")"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", R"(forget_after = "999ms")"}), 4, 16,
                         R"(peers.forget_after: must be a duration from 1s to 720h, not "999ms")"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", R"(forget_after = "721h")"}), 4, 16,
                         R"(peers.forget_after: must be a duration from 1s to 720h, not "721h")"));
    EXPECT_TRUE(
        fails_at(kServer + lines({"[peers]", R"(down_probe_interval = "99ms")"}), 4, 23,
                 R"(peers.down_probe_interval: must be a duration from 100ms to 1h, not "99ms")"));
    // Too large even for the parser: reported as out of range, not as malformed.
    EXPECT_TRUE(fails_at(
        kServer + lines({"[peers]", R"(forget_after = "99999999999999999999h")"}), 4, 16,
        R"(peers.forget_after: must be a duration from 1s to 720h, not "99999999999999999999h")"));
}

TEST(ConfigError, BadDuration) {
    const std::string hint =
        " is not a duration; write a whole number followed by ms, s, m or h, e.g. \"250ms\", "
        "\"5s\", \"10m\"";
    for (const char* text : {"1.5s", "1", "ms", "-1s", "1 s", "1sec", "1d", ""}) {
        EXPECT_TRUE(
            fails_at(kServer + lines({"[peers]", "min_interval = \"" + std::string(text) + "\""}),
                     4, 16, "peers.min_interval: \"" + std::string(text) + "\"" + hint));
    }
}

TEST(ConfigError, BadListenAddress) {
    const std::string what =
        " is not a numeric address and port such as \"127.0.0.1:7371\", \"0.0.0.0:7371\" or "
        "\"[::1]:7371\"";
    for (const char* text : {"localhost:7371", "127.0.0.1", "::1:7371", "[127.0.0.1]:7371",
                             "127.0.0.1:-1", "256.0.0.1:7371", ""}) {
        EXPECT_TRUE(fails_at(lines({"[server]", "listen = [\"" + std::string(text) + "\"]"}), 2, 11,
                             "server.listen: \"" + std::string(text) + "\"" + what));
    }
    for (const char* text : {"[::1]:0", "127.0.0.1:0", "127.0.0.1:65536", "[::]:99999999999"}) {
        EXPECT_TRUE(fails_at(
            lines({"[server]", "listen = [\"" + std::string(text) + "\"]"}), 2, 11,
            "server.listen: \"" + std::string(text) + "\" must have a port from 1 to 65535"));
    }
}

TEST(ConfigError, ListenCount) {
    EXPECT_TRUE(
        fails_at(lines({"[server]", "listen = []"}), 2, 10,
                 R"(server.listen: must list at least one address, e.g. ["127.0.0.1:7371"])"));
    std::string many = "listen = [";
    for (int port = 1; port <= 65; ++port) many += "\"127.0.0.1:" + std::to_string(port) + "\",";
    many += "]";
    EXPECT_TRUE(fails_at(lines({"[server]", many}), 2, 10,
                         "server.listen: must list at most 64 addresses, not 65"));
    many.erase(many.rfind("\"127.0.0.1:65\","), 15);
    EXPECT_TRUE(parse_config(lines({"[server]", many}), kFile).ok());
}

TEST(ConfigError, BadControlSocket) {
    EXPECT_TRUE(fails_at(kServer + lines({R"(control_socket = "control.sock")"}), 3, 18,
                         "server.control_socket: must be an absolute path (starting with \"/\"), "
                         "not \"control.sock\""));
    EXPECT_TRUE(fails_at(kServer + lines({R"(control_socket = "")"}), 3, 18,
                         "server.control_socket: must be an absolute path (starting with \"/\"), "
                         "not \"\""));
    EXPECT_TRUE(fails_at(kServer + lines({R"(control_socket = "/run/keepalived/")"}), 3, 18,
                         "server.control_socket: must name a socket file, not a directory: "
                         "\"/run/keepalived/\""));
    EXPECT_TRUE(fails_at(kServer + lines({R"(control_socket = "/run/a\u0000b")"}), 3, 18,
                         "server.control_socket: must not contain a NUL character"));
    const std::string too_long = "/" + std::string(107, 'a');
    EXPECT_TRUE(fails_at(kServer + lines({"control_socket = \"" + too_long + "\""}), 3, 18,
                         "server.control_socket: must be shorter than 108 bytes (the limit of a "
                         "Unix socket path), not 108 bytes"));
}

TEST(ConfigError, BadLegacyAddress) {
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", R"(address = "::1")"}), 4, 11,
                         "legacy.address: must be an IPv4 address (the legacy protocol is IPv4 "
                         "only), not \"::1\""));
    EXPECT_TRUE(
        fails_at(kServer + lines({"[legacy]", R"(address = "0.0.0.0")"}), 4, 11,
                 R"(legacy.address: must be a specific IPv4 address, not the wildcard "0.0.0.0")"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", R"(address = "192.0.2.10:5001")"}), 4, 11,
                         "legacy.address: \"192.0.2.10:5001\" is not an IPv4 address such as "
                         "\"192.0.2.10\" (no port)"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", R"(address = "example.org")"}), 4, 11,
                         "legacy.address: \"example.org\" is not an IPv4 address such as "
                         "\"192.0.2.10\" (no port)"));
}

// --- cross-field rules ---

TEST(ConfigError, MinIntervalAboveMaxInterval) {
    EXPECT_TRUE(fails_at(
        kServer + lines({"[peers]", R"(max_interval = "1s")", R"(min_interval = "2s")"}), 5, 16,
        "peers.min_interval: must not be greater than peers.max_interval (2s > "
        "1s)"));
    // Only max_interval is written: it is the one to blame, against the default minimum.
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", R"(max_interval = "50ms")"}), 4, 16,
                         "peers.max_interval: must not be less than peers.min_interval (50ms < "
                         "100ms, the default)"));
    EXPECT_TRUE(
        parse_config(
            kServer + lines({"[peers]", R"(min_interval = "1s")", R"(max_interval = "1s")"}), kFile)
            .ok());
}

TEST(ConfigError, DuplicateListenAddress) {
    EXPECT_TRUE(fails_at(lines({"[server]", "listen = [", R"(    "127.0.0.1:7371",)",
                                R"(    "[::1]:7371",)", R"(    "127.0.0.1:7371",)", "]"}),
                         5, 5,
                         R"(server.listen: "127.0.0.1:7371" is listed twice (also entry 1))"));
    // Same address written differently is still a duplicate.
    EXPECT_TRUE(fails_at(lines({"[server]", R"(listen = ["[::1]:7371", "[0:0::1]:7371"])"}), 2, 25,
                         R"(server.listen: "[0:0::1]:7371" is listed twice (also entry 1))"));
    // Same host on another port is not.
    EXPECT_TRUE(
        parse_config(lines({"[server]", R"(listen = ["[::1]:7371", "[::1]:7372"])"}), kFile).ok());
}

TEST(ConfigError, LegacyEnabledWithoutAddress) {
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "enable = true"}), 4, 10,
                         "legacy.address: required when legacy.enable = true; set the IPv4 "
                         "address to serve the legacy protocol on"));
}

TEST(ConfigError, LegacyPortsMustDiffer) {
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "probe_port = 7000", "register_port = 7000"}),
                         4, 14,
                         "legacy.probe_port: must differ from legacy.register_port (both 7000)"));
    EXPECT_TRUE(fails_at(kServer + lines({"[legacy]", "register_port = 5002"}), 4, 17,
                         "legacy.register_port: must differ from legacy.probe_port (both 5002, "
                         "the default of legacy.probe_port)"));
}

// --- missing server.listen ---

TEST(ConfigError, MissingListen) {
    EXPECT_TRUE(fails_at(lines({"", "[server]", R"(control_socket = "/x")"}), 2, 1,
                         "server.listen: required; list the addresses to serve on, e.g. "
                         "listen = [\"127.0.0.1:7371\", \"[::1]:7371\"]"));
    const auto e = error_of(lines({"[peers]", "max_probes = 3"}));
    EXPECT_EQ(e.line, 0u);
    EXPECT_EQ(e.column, 0u);
    EXPECT_EQ(e.to_string(),
              "keepalived.toml: server.listen: required; add a [server] table with the addresses "
              "to serve on, e.g. listen = [\"127.0.0.1:7371\", \"[::1]:7371\"]");
    EXPECT_EQ(error_of("").line, 0u);
}

// --- which of several errors is reported ---

TEST(ConfigError, TheEarliestOfSeveralErrorsIsReported) {
    // toml++ hands keys out alphabetically; the report follows the file.
    EXPECT_TRUE(fails_at(
        kServer + lines({"[peers]", "max_probes = 0", "forget_after = 1", "[legacy]", "aaa = 1"}),
        4, 14, "peers.max_probes: must be an integer from 1 to 255, not 0"));
    EXPECT_TRUE(fails_at(lines({"[legacy]", "zzz = 1", "[server]", R"(listen = [""])"}), 2, 1,
                         R"(unknown key "zzz" in [legacy])"));
    // A missing key ranks after every positioned error.
    EXPECT_TRUE(fails_at(lines({"[server]", "", "[peers]", "max_peers = 0"}), 4, 13,
                         "peers.max_peers: must be an integer from 1 to 10000000, not 0"));
}

TEST(ConfigError, ToString) {
    EXPECT_EQ((ConfigError{"a.toml", 7, 16, "boom"}).to_string(), "a.toml:7:16: boom");
    EXPECT_EQ((ConfigError{"a.toml", 0, 0, "boom"}).to_string(), "a.toml: boom");
    EXPECT_EQ((ConfigError{"a.toml", 3, 0, "boom"}).to_string(), "a.toml:3: boom");
    EXPECT_EQ(error_of(kServer + lines({"[peers]", "max_probes = 300"})).to_string(),
              "keepalived.toml:4:14: peers.max_probes: must be an integer from 1 to 255, not 300");
}

// --- robustness ---

// Mutated copies of a valid file must never throw, and every failure must be
// a positioned or clearly worded error.
TEST(ConfigError, MutatedInputNeverThrows) {
    std::uint64_t seed = std::random_device{}();
    if (const char* env = std::getenv("KEEPALIVE_TEST_SEED")) seed = std::strtoull(env, nullptr, 0);
    std::printf("KEEPALIVE_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
    std::mt19937_64 rng(seed);

    const std::string base = kServer + lines({
                                           "[peers]",
                                           R"(min_interval = "100ms")",
                                           "max_probes = 3",
                                           R"(forget_after = "10m")",
                                           "[legacy]",
                                           "enable = true",
                                           R"(address = "192.0.2.10")",
                                           "probe_port = 5002",
                                       });
    ASSERT_TRUE(parse_config(base, kFile).ok());
    constexpr std::string_view kAlphabet = "[]{}=\"'.,#\n 0123456789smh-_:abcdeflnprtux\\\xc3";
    int failures = 0;
    for (int i = 0; i < 3000; ++i) {
        std::string text = base;
        const int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits; ++e) {
            const std::size_t at = rng() % (text.size() + 1);
            const char ch = kAlphabet[rng() % kAlphabet.size()];
            switch (rng() % 3) {
                case 0:
                    text.insert(at, 1, ch);
                    break;
                case 1:
                    if (at < text.size()) text.erase(at, 1);
                    break;
                default:
                    if (at < text.size()) text[at] = ch;
                    break;
            }
        }
        const auto r = parse_config(text, kFile);
        if (r.ok()) {
            EXPECT_FALSE(r->listen.empty()) << text;
            continue;
        }
        ++failures;
        const ConfigError& err = r.error();
        EXPECT_EQ(err.file, kFile);
        EXPECT_FALSE(err.message.empty());
        if (err.line == 0) {
            EXPECT_TRUE(err.message.starts_with("server.listen: required")) << err.message;
        } else {
            EXPECT_LE(err.line,
                      static_cast<std::uint32_t>(std::count(text.begin(), text.end(), '\n') + 1))
                << err.to_string() << "\n"
                << text;
        }
    }
    EXPECT_GT(failures, 0);
}

// --- load_config ---

TEST(LoadConfig, MissingFileNamesTheFile) {
    const TempDir dir;
    const std::string path = (dir.path() / "nope.toml").string();
    const auto r = load_config(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().file, path);
    EXPECT_EQ(r.error().line, 0u);
    EXPECT_EQ(r.error().to_string(),
              path + ": cannot open the configuration file: No such file or directory");
}

TEST(LoadConfig, DirectoryIsAnError) {
    const TempDir dir;
    const auto r = load_config(dir.path().string());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().file, dir.path().string());
    EXPECT_EQ(r.error().line, 0u);
    EXPECT_EQ(r.error().message, "not a regular file: it is a directory");
}

// Opening a FIFO for reading blocks until a writer comes: the loader must
// neither hang (no writer ever comes here) nor read it.
TEST(LoadConfig, AFifoIsRefusedWithoutBlocking) {
    const TempDir dir;
    const std::string fifo = (dir.path() / "keepalived.toml").string();
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const auto r = load_config(fifo);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().to_string(), fifo + ": not a regular file: it is a FIFO");
}

TEST(LoadConfig, ReadsAFile) {
    const TempDir dir;
    const auto path = dir.write("k.toml", kServer + lines({"[peers]", "max_probes = 9"}));
    const auto r = load_config(path);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->source, path);
    EXPECT_EQ(r->peers.max_probes, 9);
}

TEST(LoadConfig, ErrorsInTheFileNameThePath) {
    const TempDir dir;
    const auto path = dir.write("k.toml", kServer + lines({"[peers]", "max_probes = 300"}));
    const auto r = load_config(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().to_string(),
              path + ":4:14: peers.max_probes: must be an integer from 1 to 255, not 300");
}

TEST(LoadConfig, RefusesHugeFiles) {
    const TempDir dir;
    const auto path = dir.write("big.toml", kServer + std::string(1 << 20, '\n'));
    const auto r = load_config(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().message, "the configuration file is larger than 1 MiB");
}

// --- [metrics] ---

TEST(ConfigMetrics, TextfileAndInterval) {
    const Config defaults;
    EXPECT_EQ(defaults.metrics.textfile, "");
    EXPECT_EQ(defaults.metrics.interval, 15s);
    const auto r = parse_config(
        kServer + lines({"[metrics]", R"(textfile = "/var/lib/x/k.prom")", R"(interval = "2s")"}),
        kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->metrics.textfile, "/var/lib/x/k.prom");
    EXPECT_EQ(r->metrics.interval, 2s);
}

TEST(ConfigMetrics, BadValuesNameTheKey) {
    EXPECT_TRUE(fails_at(kServer + lines({"[metrics]", R"(textfile = "k.prom")"}), 4, 12,
                         "metrics.textfile: must be an absolute path (starting with \"/\"), not "
                         "\"k.prom\""));
    EXPECT_TRUE(fails_at(kServer + lines({"[metrics]", R"(textfile = "/var/lib/")"}), 4, 12,
                         "metrics.textfile: must name a file, not a directory: \"/var/lib/\""));
    EXPECT_TRUE(fails_at(kServer + lines({"[metrics]", R"(interval = "500ms")"}), 4, 12,
                         "metrics.interval: must be a duration from 1s to 1h, not \"500ms\""));
    EXPECT_TRUE(fails_at(kServer + lines({"[metrics]", "bogus = 1"}), 4, 1,
                         "unknown key \"bogus\" in [metrics]"));
}

TEST(ConfigPeersHealth, DegradedAndDamping) {
    const Config defaults;
    EXPECT_EQ(defaults.peers.health, HealthPolicy{});
    EXPECT_FALSE(defaults.peers.health.loss || defaults.peers.health.rtt ||
                 defaults.peers.health.hold_down);
    const auto r = parse_config(
        kServer + lines({"[peers]", R"(degraded_loss = "20%")", "degraded_window = 100",
                         R"(degraded_rtt = "50ms")", R"(hold_down = "30s")", "flap_threshold = 5"}),
        kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->peers.health.loss, 0.2);
    EXPECT_EQ(r->peers.health.loss_window, 100u);
    EXPECT_EQ(r->peers.health.rtt, 50ms);
    EXPECT_EQ(r->peers.health.hold_down, 30s);
    EXPECT_EQ(r->peers.health.flap_threshold, 5u);

    const auto example = load_config((source_root() / "config" / "keepalived.toml").string());
    ASSERT_TRUE(example.ok()) << example.error().to_string();
    EXPECT_EQ(example->peers.health, defaults.peers.health);
}

TEST(ConfigPeersHealth, BadValuesNameTheKey) {
    const std::string percent =
        "must be a percentage from 1% to 100% as a string such as \"20%\", not ";
    for (const char* bad : {"0%", "101%", "20", "%", "twenty%", "-5%", "2.5%"})
        EXPECT_TRUE(
            fails_at(kServer + lines({"[peers]", "degraded_loss = \"" + std::string(bad) + "\""}),
                     4, 17, "peers.degraded_loss: " + percent + "\"" + bad + "\""));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "degraded_window = 5"}), 4, 19,
                         "peers.degraded_window: must be an integer from 10 to 1000, not 5"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", "flap_threshold = 0"}), 4, 18,
                         "peers.flap_threshold: must be an integer from 1 to 100, not 0"));
    EXPECT_TRUE(fails_at(kServer + lines({"[peers]", R"(hold_down = "500ms")"}), 4, 13,
                         "peers.hold_down: must be a duration from 1s to 24h, not \"500ms\""));
}

TEST(ConfigHooks, ArrayOfTables) {
    const auto r =
        parse_config(kServer + lines({"[[hooks]]", R"(exec = ["/usr/local/bin/on-peer", "--page"])",
                                      R"(states = ["down", "up"])", R"(timeout = "2s")", "",
                                      "[[hooks]]", R"(exec = ["/bin/true"])"}),
                     kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    ASSERT_EQ(r->hooks.size(), 2u);
    EXPECT_EQ(r->hooks[0].exec, (std::vector<std::string>{"/usr/local/bin/on-peer", "--page"}));
    EXPECT_EQ(r->hooks[0].states, (std::vector<std::string>{"down", "up"}));
    EXPECT_EQ(r->hooks[0].timeout, 2s);
    EXPECT_TRUE(r->hooks[1].states.empty());
    EXPECT_EQ(r->hooks[1].timeout, 10s);
}

TEST(ConfigHooks, BadHooksNameTheSpot) {
    EXPECT_TRUE(fails_at(kServer + lines({"[[hooks]]", R"(exec = ["on-peer"])"}), 4, 9,
                         "hooks[0].exec: the command must be an absolute path, not \"on-peer\""));
    EXPECT_TRUE(fails_at(kServer + lines({"[[hooks]]", R"(exec = [])"}), 4, 8,
                         "hooks[0].exec: must be an array of 1 to 64 strings, the command (an "
                         "absolute path) and its arguments"));
    EXPECT_TRUE(fails_at(kServer + lines({"[[hooks]]", R"(exec = ["/x"])", R"(states = ["gone"])"}),
                         5, 11,
                         "hooks[0].states: \"gone\" is not a state (up, degraded, suspect, down, "
                         "left or forgotten)"));
    EXPECT_TRUE(fails_at(kServer + lines({"[[hooks]]", R"(exec = ["/x"])", R"(timeout = "1ms")"}),
                         5, 11,
                         "hooks[0].timeout: must be a duration from 100ms to 1h, not \"1ms\""));
    EXPECT_TRUE(fails_at(kServer + lines({"[[hooks]]", R"(exec = ["/x"])", "user = \"root\""}), 5,
                         1, "unknown key \"user\" in hooks[0] (known: exec, states, timeout)"));
    EXPECT_TRUE(fails_at(kServer + lines({"[hooks]", R"(exec = ["/x"])"}), 3, 1,
                         "hooks: must be an array of tables ([[hooks]]), not a table"));
    const ConfigError missing = error_of(kServer + lines({"[[hooks]]", "timeout = \"1s\""}));
    EXPECT_NE(missing.message.find("hooks[0].exec: required"), std::string::npos)
        << missing.to_string();
}

}  // namespace
}  // namespace keepalive
