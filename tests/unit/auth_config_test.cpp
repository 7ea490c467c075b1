// [auth] in the configuration: it fails closed. Every way a keys file can be
// unusable is a configuration error with FILE:LINE:COLUMN, never "auth off".
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "daemon/config.hpp"

namespace keepalive {
namespace {

constexpr std::string_view kFile = "keepalived.toml";
const std::string kKey1 = "1 " + std::string(64, 'a') + "\n";
const std::string kKey2 = "2 " + std::string(64, 'b') + "\n";

class AuthConfigTest : public ::testing::Test {
protected:
    AuthConfigTest() {
        const char* base = std::getenv("TMPDIR");
        std::string pattern = std::string(base && *base ? base : "/tmp") + "/auth_config.XXXXXX";
        if (::mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
        dir_ = pattern;
    }
    ~AuthConfigTest() override {
        std::error_code ignored;
        std::filesystem::remove_all(dir_, ignored);
    }

    std::string keys(const std::string& content, mode_t mode = 0600) {
        const std::string path = (dir_ / "keys").string();
        std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
        ::chmod(path.c_str(), mode);
        return path;
    }

    // Lines 1-2 [server], line 3 [auth], line 4 mode, line 5 keys_file, then `extra`.
    static std::string config(const std::string& keys_path, const std::string& extra = "") {
        return "[server]\nlisten = [\"127.0.0.1:7371\"]\n[auth]\nmode = \"required\"\n"
               "keys_file = \"" +
               keys_path + "\"\n" + extra;
    }

    static ConfigError error_of(const std::string& text) {
        const auto r = parse_config(text, kFile);
        if (r.ok()) {
            ADD_FAILURE() << "parsed without error:\n" << text;
            return {};
        }
        return r.error();
    }

    // The error is at auth.keys_file (line 5, column 13) and says `fragment`.
    static void expect_at_keys_file(const std::string& text, std::string_view fragment) {
        const ConfigError e = error_of(text);
        EXPECT_EQ(e.file, kFile);
        EXPECT_EQ(e.line, 5u);
        EXPECT_EQ(e.column, 13u);
        EXPECT_NE(e.message.find(fragment), std::string::npos) << e.to_string();
        EXPECT_EQ(e.message.rfind("auth.keys_file: ", 0), 0u) << e.to_string();
    }

    std::filesystem::path dir_;
};

TEST_F(AuthConfigTest, RequiredLoadsTheKeysAndTheFirstIsActive) {
    const auto r = parse_config(config(keys(kKey1 + kKey2)), kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_EQ(r->auth.mode, AuthMode::required);
    EXPECT_EQ(r->auth.keys.size(), 2u);
    EXPECT_EQ(r->auth.keys.active()->id, 1u);
    EXPECT_FALSE(r->auth.active);

    const auto r2 = parse_config(config(keys(kKey1 + kKey2), "active = 2\n"), kFile);
    ASSERT_TRUE(r2.ok()) << r2.error().to_string();
    EXPECT_EQ(r2->auth.keys.active()->id, 2u);
    ::chmod((dir_ / "keys").c_str(), 0400);  // read-only for the owner is fine too
    EXPECT_TRUE(parse_config(config(dir_ / "keys"), kFile).ok());
}

TEST_F(AuthConfigTest, OffByDefaultAndWhenSaid) {
    const auto r = parse_config("[server]\nlisten = [\"127.0.0.1:7371\"]\n", kFile);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->auth.mode, AuthMode::off);
    EXPECT_TRUE(r->auth.keys.empty());
    EXPECT_TRUE(
        parse_config("[server]\nlisten = [\"127.0.0.1:7371\"]\n[auth]\nmode = \"off\"\n", kFile)
            .ok());
}

TEST_F(AuthConfigTest, MissingUnreadableOrExposedKeysFileIsAnError) {
    expect_at_keys_file(config((dir_ / "absent").string()), "No such file or directory");
    expect_at_keys_file(config(dir_.string()), "not a regular file");
    expect_at_keys_file(config(keys(kKey1, 0640)), "accessible by group or others (mode 0640)");
    expect_at_keys_file(config(keys(kKey1, 0604)), "accessible by group or others (mode 0604)");
    expect_at_keys_file(config(keys(kKey1, 0620)), "accessible by group or others");
    const std::string fifo = (dir_ / "fifo").string();
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    expect_at_keys_file(config(fifo), "not a regular file");
}

TEST_F(AuthConfigTest, EmptyOrMalformedKeysFileIsAnErrorInTheKeysFile) {
    const std::string path = keys("");
    ConfigError e = error_of(config(path));
    EXPECT_EQ(e.to_string().substr(0, path.size() + 5), path + ":1:1:") << e.to_string();
    EXPECT_NE(e.message.find("holds no key"), std::string::npos);

    e = error_of(config(keys("# keys\n" + kKey1 + "2 xyz\n")));
    EXPECT_EQ(e.file, path);
    EXPECT_EQ(e.line, 3u);
    EXPECT_EQ(e.column, 3u);
    EXPECT_NE(e.message.find("not a hex digit"), std::string::npos) << e.to_string();

    e = error_of(config(keys("1 " + std::string(62, 'a') + "\n")));
    EXPECT_EQ(e.file, path);
    EXPECT_EQ(e.line, 1u);
    EXPECT_NE(e.message.find("32 to 128 bytes"), std::string::npos) << e.to_string();
}

TEST_F(AuthConfigTest, InconsistentAuthSettingsAreErrors) {
    const std::string path = keys(kKey1);
    ConfigError e = error_of(config(path, "active = 9\n"));
    EXPECT_EQ(e.to_string(), std::string(kFile) + ":6:10: auth.active: no key has id 9 in " + path);

    e = error_of("[server]\nlisten = [\"127.0.0.1:7371\"]\n[auth]\nmode = \"required\"\n");
    EXPECT_EQ(e.line, 4u);
    EXPECT_NE(e.message.find("auth.keys_file: required"), std::string::npos) << e.to_string();

    e = error_of("[server]\nlisten = [\"127.0.0.1:7371\"]\n[auth]\nkeys_file = \"" + path + "\"\n");
    EXPECT_EQ(e.line, 4u);
    EXPECT_NE(e.message.find("auth.mode is \"off\""), std::string::npos) << e.to_string();

    e = error_of("[server]\nlisten = [\"127.0.0.1:7371\"]\n[auth]\nmode = \"on\"\n");
    EXPECT_EQ(e.to_string(),
              std::string(kFile) + ":4:8: auth.mode: must be \"off\" or \"required\", not \"on\"");

    e = error_of(config("keys"));
    EXPECT_EQ(e.line, 5u);
    EXPECT_NE(e.message.find("absolute path"), std::string::npos) << e.to_string();

    e = error_of(config(path, "[auth.extra]\n"));
    EXPECT_NE(e.message.find("unknown key"), std::string::npos) << e.to_string();
}

TEST_F(AuthConfigTest, LegacyWithRequiredAuthNeedsExplicitConsent) {
    const std::string path = keys(kKey1);
    const std::string legacy = "[legacy]\nenable = true\naddress = \"127.0.0.1\"\n";
    const ConfigError e = error_of(config(path, legacy));
    EXPECT_EQ(e.line, 7u);
    EXPECT_EQ(e.column, 10u);
    EXPECT_NE(e.message.find("legacy.allow_unauthenticated = true"), std::string::npos)
        << e.to_string();
    const auto r = parse_config(config(path, legacy + "allow_unauthenticated = true\n"), kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    EXPECT_TRUE(r->legacy.allow_unauthenticated);
    EXPECT_EQ(r->auth.mode, AuthMode::required);
}

TEST(AdmissionConfig, AllowListAndLegacyMaxPeers) {
    const auto r = parse_config(
        "[server]\nlisten = [\"127.0.0.1:7371\"]\n[peers]\n"
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n"
        "[legacy]\nmax_peers = 50\n",
        kFile);
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    ASSERT_EQ(r->peers.allow.size(), 3u);
    EXPECT_EQ(r->peers.allow[0].to_string(), "10.0.0.0/8");
    EXPECT_EQ(r->peers.allow[2].to_string(), "192.0.2.7/32");
    EXPECT_EQ(r->peers.legacy_max_peers, 50u);

    const auto bad = parse_config(
        "[server]\nlisten = [\"127.0.0.1:7371\"]\n[peers]\nallow = [\"10.0.0.0/8\", "
        "\"10.0.0.1/8\"]\n",
        kFile);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().line, 4u);
    EXPECT_EQ(bad.error().column, 24u);
    EXPECT_NE(bad.error().message.find("peers.allow: \"10.0.0.1/8\" is not an address prefix"),
              std::string::npos)
        << bad.error().to_string();
    const auto zero =
        parse_config("[server]\nlisten = [\"127.0.0.1:7371\"]\n[legacy]\nmax_peers = 0\n", kFile);
    ASSERT_FALSE(zero.ok());
    EXPECT_EQ(zero.error().line, 4u);
}

}  // namespace
}  // namespace keepalive
