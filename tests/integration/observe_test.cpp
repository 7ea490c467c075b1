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
    const RunResult r =
        run({"/bin/sh", "-c", *tool + " check metrics < " + dir.file("check.prom")});
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
                return !daemon_->running() ||
                       try_ctl_json({"--socket", config_.control_socket, "status"}).has_value();
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

std::optional<std::string> first_executable(std::initializer_list<const char*> paths) {
    for (const char* p : paths)
        if (::access(p, X_OK) == 0) return std::string(p);
    return std::nullopt;
}
std::optional<std::string> ip_path() {
    return first_executable({"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"});
}
std::optional<std::string> nft_path() {
    return first_executable({"/usr/sbin/nft", "/sbin/nft"});
}

// A network namespace joined to this one by a veth pair, with names and a
// /30 subnet unique to this process; removed (with its veth and nft table)
// on destruction.
class NetNs {
public:
    NetNs() {
        if (!ip_path() || !nft_path()) {
            why_ = "ip or nft not installed";
            return;
        }
        const std::string ip = *ip_path();
        const int id = static_cast<int>(::getpid());
        name_ = "kadeg" + std::to_string(id);
        host_if_ = "kdh" + std::to_string(id);
        ns_if_ = "kdn" + std::to_string(id);
        const std::string net =
            "10.231." + std::to_string(id % 250) + "." + std::to_string((id / 250) % 63 * 4);
        host_ip_ = net.substr(0, net.rfind('.') + 1) + std::to_string((id / 250) % 63 * 4 + 1);
        ns_ip_ = net.substr(0, net.rfind('.') + 1) + std::to_string((id / 250) % 63 * 4 + 2);
        const std::vector<Strings> setup = {
            {ip, "netns", "add", name_},
            {ip, "link", "add", host_if_, "type", "veth", "peer", "name", ns_if_},
            {ip, "link", "set", ns_if_, "netns", name_},
            {ip, "addr", "add", host_ip_ + "/30", "dev", host_if_},
            {ip, "link", "set", host_if_, "up"},
            {ip, "netns", "exec", name_, "ip", "addr", "add", ns_ip_ + "/30", "dev", ns_if_},
            {ip, "netns", "exec", name_, "ip", "link", "set", ns_if_, "up"},
            {ip, "netns", "exec", name_, "ip", "link", "set", "lo", "up"},
        };
        for (const auto& argv : setup) {
            const RunResult r = run(argv);
            if (!r.status.exited_with(0)) {
                why_ = "`" + argv[0] + " " + argv[1] + " " + argv[2] + "` failed: " + r.err;
                return;
            }
        }
        ok_ = true;
    }
    ~NetNs() {
        if (!ok_ && name_.empty()) return;
        const std::string ip = ip_path().value_or("ip");
        run({ip, "link", "del", host_if_});
        run({ip, "netns", "del", name_});
    }
    NetNs(const NetNs&) = delete;
    NetNs& operator=(const NetNs&) = delete;

    bool ok() const { return ok_; }
    const std::string& why() const { return why_; }
    const std::string& name() const { return name_; }
    const std::string& host_ip() const { return host_ip_; }
    // Runs `nft -f -` inside the namespace with `script`.
    RunResult nft(const std::string& script) const {
        const std::string ip = *ip_path();
        return run({"/bin/sh", "-c",
                    ip + " netns exec " + name_ + " " + *nft_path() + " -f - <<'EOF'\n" + script +
                        "\nEOF\n"});
    }

private:
    std::string name_, host_if_, ns_if_, host_ip_, ns_ip_, why_;
    bool ok_ = false;
};

// Gray failure on a real path: 30% of the peer's ACKs dropped by nft in its
// namespace. The peer becomes degraded once, stays so without flapping or
// going down, shows as degraded everywhere, and is up again, once, when the
// loss stops.
TEST(Degraded, RandomLossInANamespaceMakesAPeerDegradedUntilItStops) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root for network namespaces";
    NetNs ns;
    if (!ns.ok()) GTEST_SKIP() << "cannot make a network namespace: " << ns.why();

    TempDir dir;
    const std::uint16_t port = free_udp_port();
    DaemonConfig config;
    config.listen.push_back(ns.host_ip() + ":" + std::to_string(port));
    config.control_socket = dir.file("control.sock");
    write_file(dir.file("keepalived.toml"),
               config.to_toml() + "degraded_loss = \"10%\"\ndegraded_window = 50\n");
    SpawnOptions daemon_options;
    daemon_options.stderr_path = dir.file("keepalived.log");
    Process daemon(
        {keepalived_path(), "--config", dir.file("keepalived.toml"), "--log-target", "stderr"},
        daemon_options);
    const auto field = [&](const char* key) -> json {
        const auto j = try_ctl_json({"--socket", config.control_socket, "peers"});
        if (!j) return nullptr;
        for (const auto& p : j->at("peers"))
            if (p.at("name") == "gray") return p.at(key);
        return nullptr;
    };
    const auto state = [&]() -> std::string {
        const json s = field("state");
        return s.is_string() ? s.get<std::string>() : "";
    };
    const auto log = [&] { return daemon.stderr_text(); };
    // Events by kind from the metrics: the journal lines may be rate-limited.
    const auto count = [&](const std::string& kind) {
        const RunResult r = run({ctl_path(), "--socket", config.control_socket, "metrics"});
        const auto m = samples_of(r.out);
        const auto it = m.find("keepalived_peer_events_total{kind=\"" + kind + "\"}");
        return it == m.end() ? std::string("?") : it->second;
    };

    SpawnOptions peer_options;
    peer_options.stderr_path = dir.file("peer.log");
    Process peer({*ip_path(), "netns", "exec", ns.name(), peer_path(), "--server",
                  ns.host_ip() + ":" + std::to_string(port), "--name", "gray", "--interval", "20ms",
                  "--probes", "30", "--log-target", "stderr"},
                 peer_options);
    ASSERT_TRUE(wait_until([&] { return state() == "up"; })) << log() << peer.stderr_text();
    ASSERT_EQ(count("degraded"), "0") << log();

    const RunResult drop = ns.nft(
        "table inet kadeg {\n chain out {\n  type filter hook output priority 0;\n  udp dport " +
        std::to_string(port) + " numgen random mod 100 < 30 drop\n }\n}");
    ASSERT_TRUE(drop.status.exited_with(0)) << drop.err;
    ASSERT_TRUE(wait_until([&] { return state() == "degraded"; })) << log();
    // Before the window holds enough losses, each loss is a suspect and an up.
    const std::string suspects = count("suspect");

    // About 15 of every 50 lost: far above the 5 that keep it degraded. Watch
    // it for 150 more probes.
    const auto sent = field("probes_sent").get<std::uint64_t>();
    ASSERT_TRUE(wait_until([&] { return field("probes_sent").get<std::uint64_t>() >= sent + 150; }))
        << log();
    EXPECT_EQ(state(), "degraded");
    EXPECT_EQ(count("degraded"), "1") << log();
    EXPECT_EQ(count("down"), "0") << log();
    EXPECT_EQ(count("suspect"), suspects) << log();  // no flapping to suspect on each loss
    const auto status = try_ctl_json({"--socket", config.control_socket, "status"});
    ASSERT_TRUE(status);
    EXPECT_EQ(status->at("degraded"), 1);
    EXPECT_NE(status->at("summary").get<std::string>().find("1 degraded"), std::string::npos);
    const RunResult metrics = run({ctl_path(), "--socket", config.control_socket, "metrics"});
    EXPECT_NE(metrics.out.find(R"(keepalived_peer_state{name="gray",state="degraded"} 1)"),
              std::string::npos)
        << metrics.out;

    ASSERT_TRUE(ns.nft("delete table inet kadeg").status.exited_with(0));
    ASSERT_TRUE(wait_until([&] { return state() == "up"; })) << log();
    EXPECT_EQ(count("degraded"), "1") << log();
}

}  // namespace
}  // namespace keepalive::test
