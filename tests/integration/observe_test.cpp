// What other programs see of keepalived: the Prometheus text (keepalivectl
// metrics and the node_exporter textfile). Real binaries on loopback; each
// test has its own directory, port and control socket.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

// promtool from Debian's prometheus package, if installed.
std::optional<std::string> promtool() {
    for (const char* p : {"/usr/bin/promtool", "/usr/local/bin/promtool"})
        if (::access(p, X_OK) == 0) return std::string(p);
    return std::nullopt;
}

// A structural check for when promtool is absent (and besides it): every
// sample line is NAME[{LABELS}] VALUE under a TYPE line of its family, and
// families are not repeated. Returns the samples by "NAME{LABELS}".
std::map<std::string, std::string> samples_of(const std::string& text) {
    std::map<std::string, std::string> out;
    std::set<std::string> families;
    std::string family;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with("# HELP")) continue;
        if (line.starts_with("# TYPE ")) {
            family = line.substr(7, line.find(' ', 7) - 7);
            EXPECT_TRUE(families.insert(family).second) << "family repeated: " << family;
            continue;
        }
        const auto space = line.rfind(' ');
        EXPECT_NE(space, std::string::npos) << line;
        if (space == std::string::npos) continue;
        const std::string key = line.substr(0, space);
        EXPECT_EQ(key.substr(0, key.find('{')), family) << line;
        EXPECT_TRUE(out.emplace(key, line.substr(space + 1)).second) << "duplicate: " << line;
    }
    return out;
}

void expect_promtool_accepts(const std::string& text, const TempDir& dir) {
    const auto tool = promtool();
    if (!tool) {
        std::cout << "promtool not installed (Debian package prometheus): structural check only\n";
        return;
    }
    write_file(dir.file("check.prom"), text);
    // promtool reads the exposition on stdin; a shell redirects the file there.
    const RunResult r = run({"/bin/sh", "-c", *tool + " check metrics < " + dir.file("check.prom")});
    EXPECT_TRUE(r.status.exited_with(0)) << r.status.to_string() << "\n" << r.out << r.err;
}

class ObserveTest : public ::testing::Test {
protected:
    ObserveTest() {
        port_ = free_udp_port();
        config_.listen.push_back(server());
        config_.control_socket = dir_.file("control.sock");
    }

    std::string server() const { return "127.0.0.1:" + std::to_string(port_); }
    Strings ctl(Strings args) const {
        args.insert(args.begin(), {ctl_path(), "--socket", config_.control_socket});
        return args;
    }

    void start_daemon(const std::string& extra_toml = {}) {
        write_file(dir_.file("keepalived.toml"), config_.to_toml() + "\n" + extra_toml);
        SpawnOptions options;
        options.stderr_path = dir_.file("keepalived.log");
        daemon_.emplace(Strings{keepalived_path(), "--config", dir_.file("keepalived.toml"),
                                "--log-target", "stderr"},
                        options);
        if (!wait_until([&] {
                return !daemon_->running() || try_ctl_json({"--socket", config_.control_socket,
                                                            "status"})
                                                  .has_value();
            }) ||
            !daemon_->running())
            fail("keepalived did not come up:\n" + daemon_->stderr_text());
    }

    void start_peer(const std::string& name) {
        SpawnOptions options;
        options.stderr_path = dir_.file("peer-" + name + ".log");
        peers_.try_emplace(name,
                           Strings{peer_path(), "--server", server(), "--name", name, "--interval",
                                   "100ms", "--probes", "3", "--log-target", "stderr"},
                           options);
    }

    std::optional<json> peer_json(const std::string& name) {
        const auto j = try_ctl_json({"--socket", config_.control_socket, "peers"});
        if (!j) return std::nullopt;
        for (const auto& p : j->at("peers"))
            if (p.at("name") == name) return p;
        return std::nullopt;
    }
    std::string peer_state(const std::string& name) {
        const auto p = peer_json(name);
        return p ? p->at("state").get<std::string>() : "";
    }
    void wait_for_state(const std::string& name, const std::string& state) {
        if (!wait_until([&] { return peer_state(name) == state; }))
            fail("peer " + name + " did not become " + state + "\n" + daemon_->stderr_text());
    }
    // Up and answered at least one probe (a peer that never answered is
    // forgotten when it goes down, not kept as down).
    void wait_until_answered(const std::string& name) {
        if (!wait_until([&] {
                const auto p = peer_json(name);
                return p && p->at("state") == "up" && p->at("acks_received").get<int>() > 0;
            }))
            fail("peer " + name + " did not answer\n" + daemon_->stderr_text());
    }

    std::string metrics() {
        const RunResult r = run(ctl({"metrics"}));
        if (!r.status.exited_with(0)) fail("keepalivectl metrics: " + r.status.to_string() + r.err);
        return r.out;
    }

    TempDir dir_;
    std::uint16_t port_ = 0;
    DaemonConfig config_;
    std::optional<Process> daemon_;
    std::map<std::string, Process> peers_;
};

TEST_F(ObserveTest, MetricsArePrometheusTextWithEveryPeer) {
    start_daemon();
    start_peer("metrics-up");
    start_peer("metrics-down");
    wait_until_answered("metrics-up");
    wait_until_answered("metrics-down");
    peers_.at("metrics-down").kill();  // no goodbye: detection declares it down
    wait_for_state("metrics-down", "down");

    const std::string text = metrics();
    const auto m = samples_of(text);
    EXPECT_EQ(m.at(R"(keepalived_peer_up{name="metrics-up"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peer_up{name="metrics-down"})"), "0");
    EXPECT_EQ(m.at(R"(keepalived_peer_state{name="metrics-down",state="down"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peers{state="up"})"), "1");
    EXPECT_EQ(m.at(R"(keepalived_peers{state="down"})"), "1");
    EXPECT_EQ(m.at("keepalived_registrations_total"), "2");
    EXPECT_GT(std::stod(m.at(R"(keepalived_peer_probes_sent_total{name="metrics-up"})")), 0);
    EXPECT_GT(std::stod(m.at(R"(keepalived_peer_acks_received_total{name="metrics-up"})")), 0);
    EXPECT_TRUE(m.count(R"(keepalived_peer_rtt_seconds{name="metrics-up"})"));
    EXPECT_EQ(m.at(R"(keepalived_peer_state_changes_total{name="metrics-down"})"), "2");
    EXPECT_TRUE(m.count("keepalived_loop_lag_seconds"));
    EXPECT_TRUE(m.count("keepalived_log_events_dropped_total"));
    EXPECT_TRUE(m.count(R"(keepalived_drops_total{reason="bad_magic"})"));
    expect_promtool_accepts(text, dir_);

    // Bad usage is a usage error, not a request.
    EXPECT_TRUE(run(ctl({"metrics", "--json"})).status.exited_with(2));
}

TEST_F(ObserveTest, TextfileIsReplacedWholeEveryInterval) {
    const std::string path = dir_.file("keepalived.prom");
    start_daemon("[metrics]\ntextfile = \"" + path + "\"\ninterval = \"1s\"\n");
    start_peer("textfile-peer");
    wait_until_answered("textfile-peer");

    // Read the file as node_exporter would, as fast as possible, through at
    // least three rewrites: every read must be one whole exposition.
    std::set<ino_t> inodes;
    std::size_t reads = 0;
    std::string last;
    const bool rewritten = wait_until(
        [&] {
            struct stat st {};
            if (::stat(path.c_str(), &st) != 0) return false;
            std::string text;
            try {
                text = read_file(path);
            } catch (const std::exception&) {
                return false;  // renamed between stat and open: try again
            }
            ++reads;
            EXPECT_TRUE(text.starts_with("# HELP keepalived_build_info")) << text.substr(0, 80);
            EXPECT_TRUE(text.ends_with("\n")) << "partial file";
            EXPECT_NE(text.find("# TYPE keepalived_peer_interval_seconds gauge"), std::string::npos)
                << "partial file, " << text.size() << " bytes";
            inodes.insert(st.st_ino);
            last = std::move(text);
            return inodes.size() >= 4;
        },
        kPatience, 1ms);
    ASSERT_TRUE(rewritten) << inodes.size() << " versions seen in " << reads << " reads";
    EXPECT_EQ(samples_of(last).at(R"(keepalived_peer_up{name="textfile-peer"})"), "1");
    expect_promtool_accepts(last, dir_);
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0644u);

    // Stopped between rewrites, it leaves no temporary file behind.
    daemon_->signal(SIGTERM);
    ASSERT_TRUE(daemon_->wait().has_value());
    for (const auto& entry : std::filesystem::directory_iterator(dir_.path()))
        EXPECT_FALSE(entry.path().filename().string().starts_with(".keepalived.prom"))
            << entry.path();
}

TEST_F(ObserveTest, UnwritableTextfileIsLoggedAndTheDaemonGoesOn) {
    start_daemon("[metrics]\ntextfile = \"" + dir_.file("missing-dir/keepalived.prom") +
                 "\"\ninterval = \"1s\"\n");
    ASSERT_TRUE(wait_until([&] {
        return daemon_->stderr_text().find("metrics textfile: cannot create a file in") !=
               std::string::npos;
    })) << daemon_->stderr_text();
    start_peer("still-serving");
    wait_for_state("still-serving", "up");
}

}  // namespace
}  // namespace keepalive::test
