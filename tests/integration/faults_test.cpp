// Network faults end to end: the real keepalived in one network namespace and
// real keepalive-peer agents in another, joined by a veth pair. Faults are nft
// rules in the daemon's namespace (there is no netem here): a silent cut, a
// heal, random loss; and a daemon paused with SIGSTOP. Namespaces, links and
// rules are created by each test and removed when it ends; the test is skipped
// with the reason when namespaces cannot be made (e.g. not root).
//
// Times come from the daemon itself where it can say: a peer's "since" in
// `peers` is the age of its state, and a down state starts at the probe
// deadline that found it down, so the test's clock (CLOCK_MONOTONIC, like the
// daemon's) places it within the time one request takes, however late the
// test looked.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "netns_pair.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;
using std::chrono::duration;

constexpr const char* kDaemonIp = "10.233.0.1";
constexpr const char* kPeerIp = "10.233.0.2";
constexpr const char* kListen = "10.233.0.1:7371";  // in the daemon's own namespace

// Every peer here: probed every 100 ms, down after 5 unanswered probes.
constexpr Millis kInterval = 100ms;
constexpr int kProbes = 5;
constexpr Millis kDetection = kInterval * kProbes;
// Down peers are probed this often: less than the agent's own patience
// ((probes + 1) x interval), so an agent that still hears probes never
// registers again, and a healed peer is brought back by a slow probe.
constexpr Millis kDownProbe = 200ms;

[[noreturn]] void fail(const std::string& message) {
    throw std::runtime_error(message);
}

double ms(Clock::duration d) {
    return duration<double, std::milli>(d).count();
}

class FaultsTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (!net_.ok()) GTEST_SKIP() << net_.why_not();
        config_.listen = {kListen};
        config_.control_socket = dir_.file("control.sock");
        config_.down_probe_interval = std::to_string(kDownProbe.count()) + "ms";
    }

    void start_daemon(SpawnOptions options = {}) {
        write_file(dir_.file("keepalived.toml"), config_.to_toml());
        options.stderr_path = dir_.file("keepalived.log");
        daemon_.emplace(net_.in(NetnsPair::Side::daemon,
                                {keepalived_path(), "--config", dir_.file("keepalived.toml"),
                                 "--log-target", "stderr"}),
                        options);
        if (!wait_until([&] { return !daemon_->running() || status().has_value(); }) ||
            !daemon_->running())
            fail("keepalived did not come up:\n" + log());
    }

    void start_peer(const std::string& name) {
        SpawnOptions options;
        options.stderr_path = dir_.file(name + ".log");
        peers_.emplace_back(net_.in(NetnsPair::Side::other,
                                    {peer_path(), "--server", kListen, "--name", name, "--interval",
                                     std::to_string(kInterval.count()) + "ms", "--probes",
                                     std::to_string(kProbes), "--log-target", "stderr"}),
                            options);
    }

    std::string log() const { return daemon_ ? daemon_->stderr_text() : ""; }

    std::optional<json> status() {
        try {
            return control_request(config_.control_socket, "status");
        } catch (const std::exception&) {
            return std::nullopt;
        }
    }
    std::uint64_t events(const std::string& kind) {
        const auto s = status();
        if (!s) fail("no status from keepalived:\n" + log());
        return s->at("events").at(kind).get<std::uint64_t>();
    }

    // A peer's row. The daemon read its clock for it between `asked` and
    // `answered`, so the peer entered its state between entered_from() and
    // entered_by(), on the test's clock (which is the daemon's).
    struct Row {
        json peer;
        Clock::time_point asked;
        Clock::time_point answered;
        Clock::duration since() const {
            return std::chrono::duration_cast<Clock::duration>(
                duration<double>(peer.at("since").get<double>()));
        }
        Clock::time_point entered_from() const { return asked - since(); }
        Clock::time_point entered_by() const { return answered - since(); }
        Clock::time_point entered() const { return entered_from() + (answered - asked) / 2; }
    };
    std::optional<Row> row(const std::string& name) {
        const Clock::time_point asked = Clock::now();
        try {
            const json answer = control_request(config_.control_socket, "peers");
            const Clock::time_point answered = Clock::now();
            for (const auto& p : answer.at("peers"))
                if (p.at("name") == name) return Row{p, asked, answered};
        } catch (const std::exception&) {
        }
        return std::nullopt;
    }
    // Waits (polling every 10 ms) until `name` is in `state`.
    Row wait_for(const std::string& name, const std::string& state, Millis limit = kPatience) {
        std::optional<Row> seen;
        const bool ok = wait_until(
            [&] {
                seen = row(name);
                return seen && seen->peer.at("state") == state;
            },
            limit, 10ms);
        if (!ok)
            fail("peer " + name + " never became " + state + ": " +
                 (seen ? seen->peer.dump() : "(no row)") + "\nlog:\n" + log());
        return *seen;
    }
    // Waits until `name` is up and has answered `acks` more probes than `after`.
    void wait_for_acks(const std::string& name, std::uint64_t acks, std::uint64_t after = 0) {
        std::optional<Row> r;
        const bool ok = wait_until(
            [&] {
                r = row(name);
                return r && r->peer.at("state") == "up" &&
                       r->peer.at("acks_received").get<std::uint64_t>() >= after + acks;
            },
            kPatience, 10ms);
        if (!ok)
            fail("peer " + name + " never answered " + std::to_string(acks) +
                 " probes: " + (r ? r->peer.dump() : "(no row)") + "\nlog:\n" + log());
    }

    // The daemon's namespace (kDaemonIp) and the peers' (kPeerIp); the nft
    // table kaf is in the daemon's.
    NetnsPair net_{{.daemon_prefix = "kfd",
                    .other_prefix = "kfp",
                    .daemon_ip = kDaemonIp,
                    .other_ip = kPeerIp,
                    .filtered = NetnsPair::Side::daemon,
                    .table = "kaf"}};
    TempDir dir_;
    DaemonConfig config_;
    std::optional<Process> daemon_;
    std::vector<Process> peers_;
};

// A peer whose answers stop reaching the daemon (nft drops them on the
// daemon's input, without a word back) is down probes x interval after the
// first probe it could not answer, never sooner; when the link heals it is up
// again at the next slow probe.
TEST_F(FaultsTest, SilentCutIsDownAtDetectionTimeAndHealsAtTheNextSlowProbe) {
    start_daemon();
    start_peer("cut");
    wait_for_acks("cut", 10);

    // A moment when every probe sent so far had been answered: any probe left
    // unanswered by the cut was sent after it (whatever the machine's load).
    std::optional<Row> before;
    ASSERT_TRUE(wait_until(
        [&] {
            before = row("cut");
            return before && before->peer.at("probes_sent") == before->peer.at("acks_received");
        },
        kPatience, 1ms));
    const Clock::time_point all_answered = before->asked;
    const Clock::time_point cut_from = Clock::now();
    net_.nft(std::string("add rule ip kaf in ip saddr ") + kPeerIp + " drop");
    const Clock::time_point cut_by = Clock::now();
    const Row down = wait_for("cut", "down");
    const Clock::time_point down_at = down.entered();
    const Clock::time_point seen_at = Clock::now();

    // Detection is probes x interval after the first unanswered probe went
    // out. That probe left after `all_answered`, so the verdict cannot come
    // before that plus the detection time; and no later than one interval
    // after the cut was complete (the first probe after it is unanswered).
    std::printf(
        "[ figures  ] cut: down %.1f ms after the cut (rule took %.1f ms); "
        "probes x interval = %lld ms; reported %.1f ms after the verdict\n",
        ms(down_at - cut_from), ms(cut_by - cut_from), static_cast<long long>(kDetection.count()),
        ms(seen_at - down_at));
    EXPECT_GE(down.entered_by(), all_answered + kDetection) << down.peer.dump();
    EXPECT_LE(down.entered_from(), cut_by + kDetection + kInterval + 20ms) << down.peer.dump();
    EXPECT_NE(log().find("is down: detection time expired"), std::string::npos) << log();

    // Let a few slow probes go unanswered first.
    wait_until([&] {
        const auto r = row("cut");
        return r && r->peer.at("probes_sent").get<std::uint64_t>() >=
                        down.peer.at("probes_sent").get<std::uint64_t>() + 2;
    });
    const Clock::time_point heal_from = Clock::now();
    net_.nft("flush chain ip kaf in");
    const Clock::time_point heal_by = Clock::now();
    const Row up = wait_for("cut", "up");
    const Clock::time_point up_at = up.entered();
    // Slow probes go out on a grid from the moment of detection; both
    // moments are read from the daemon a few ms apart, hence a sign.
    const double step = static_cast<double>(kDownProbe.count());
    const double grid_offset_ms = std::fmod(ms(up_at - down_at) + step / 2, step) - step / 2;
    std::printf(
        "[ figures  ] heal: up %.1f ms after the heal (down_probe_interval %lld ms); "
        "%+.1f ms from a slow probe's time\n",
        ms(up_at - heal_from), static_cast<long long>(kDownProbe.count()), grid_offset_ms);
    EXPECT_GE(up.entered_by(), heal_from);
    // The next slow probe, not the one after.
    EXPECT_LE(up.entered_from(), heal_by + kDownProbe + kDownProbe * 3 / 4);
    // Brought back by a probe the daemon sent, not by the agent registering again.
    EXPECT_NE(log().find("is up: ack received"), std::string::npos) << log();
    EXPECT_EQ(log().find("registered again"), std::string::npos) << log();
    EXPECT_EQ(events("down"), 1u);
}

// 30% random loss each way (nft numgen) with probes = 5. A probe and its ACK
// both get through with p = 0.7 x 0.7 = 0.49, so a probe is unanswered with
// q = 0.51, independently. A peer is down when 5 probes in a row are
// unanswered; it is probed until one is answered (one probe at detection, then
// slow ones), each answered with p, and starts counting afresh. Renewal
// theory: a cycle takes E[run] = (1 - q^5) / (p q^5) probes to reach 5 in a
// row, plus 1/p probes while down, so the expected number of downs in N
// probes is N / (E[run] + 1/p). Observed false downs must not exceed three
// times that plus 3, nor be zero (the loss must really apply).
TEST_F(FaultsTest, FalseDownsUnderRandomLossMatchTheBinomialModel) {
    const double loss_each_way = 0.30;
    const int seconds = 20;
    const int peer_count = 4;
    start_daemon();
    std::vector<std::string> names;
    for (int i = 0; i < peer_count; ++i) {
        names.push_back("lossy" + std::to_string(i));
        start_peer(names.back());
    }
    for (const auto& n : names) wait_for_acks(n, 5);

    std::uint64_t probes_before = 0;
    std::uint64_t acks_before = 0;
    for (const auto& n : names) {
        const Row r = *row(n);
        probes_before += r.peer.at("probes_sent").get<std::uint64_t>();
        acks_before += r.peer.at("acks_received").get<std::uint64_t>();
    }
    const std::uint64_t downs_before = events("down");
    const std::string percent = std::to_string(static_cast<int>(loss_each_way * 100));
    net_.nft(std::string("add rule ip kaf in ip saddr ") + kPeerIp + " numgen random mod 100 < " +
             percent + " counter drop");
    net_.nft(std::string("add rule ip kaf out ip daddr ") + kPeerIp + " numgen random mod 100 < " +
             percent + " counter drop");
    // The run's length is the fault's duration, not a wait for an event.
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
    net_.nft("flush chain ip kaf in");
    net_.nft("flush chain ip kaf out");

    std::uint64_t probes = 0;
    std::uint64_t acks = 0;
    for (const auto& n : names) {
        const Row r = *row(n);
        probes += r.peer.at("probes_sent").get<std::uint64_t>();
        acks += r.peer.at("acks_received").get<std::uint64_t>();
    }
    probes -= probes_before;
    acks -= acks_before;
    const std::uint64_t downs = events("down") - downs_before;

    const double p = (1 - loss_each_way) * (1 - loss_each_way);
    const double q = 1 - p;
    const double run = (1 - std::pow(q, kProbes)) / (p * std::pow(q, kProbes));
    const double expected = static_cast<double>(probes) / (run + 1 / p);
    const double answered = probes ? static_cast<double>(acks) / static_cast<double>(probes) : 0;
    std::printf(
        "[ figures  ] loss %.0f%% each way, probes %d, %d peers x %d s: %llu probes, "
        "%.3f answered (model %.3f); false downs %llu, model expects %.1f "
        "(one per %.1f probes)\n",
        loss_each_way * 100, kProbes, peer_count, seconds, static_cast<unsigned long long>(probes),
        answered, p, static_cast<unsigned long long>(downs), expected, run + 1 / p);
    // The loss applied as configured: 0.49 answered, +-5 sigma and more for ~800 probes.
    EXPECT_GT(probes, 400u);
    EXPECT_GT(answered, p - 0.1);
    EXPECT_LT(answered, p + 0.1);
    EXPECT_GE(downs, 1u);
    EXPECT_LE(static_cast<double>(downs), 3 * expected + 3);
    // Every peer comes back once the loss ends.
    for (const auto& n : names) wait_for(n, "up");
}

// A daemon stopped (SIGSTOP) for three detection times and then continued saw
// nothing for that long; its peers did nothing wrong. No peer may go down on
// that evidence, and the lag is on record.
TEST_F(FaultsTest, PausedDaemonDeclaresNoPeerDown) {
    const Millis pause = kDetection * 3;
    NotifySocket notify(dir_.file("notify.sock"));
    SpawnOptions options;
    options.env["NOTIFY_SOCKET"] = notify.path();
    start_daemon(options);
    const std::vector<std::string> names{"calm0", "calm1", "calm2"};
    for (const auto& n : names) start_peer(n);
    for (const auto& n : names) wait_for_acks(n, 5);
    const std::uint64_t downs_before = events("down");
    const std::uint64_t suspects_before = events("suspect");

    std::vector<std::uint64_t> acks_at_pause;
    for (const auto& n : names)
        acks_at_pause.push_back(row(n)->peer.at("acks_received").get<std::uint64_t>());
    daemon_->signal(SIGSTOP);
    // The pause is the fault itself, not a wait for an event.
    std::this_thread::sleep_for(pause);
    daemon_->signal(SIGCONT);
    // Well past a detection time after the daemon is back: every peer has
    // answered ten more probes, at its granted interval.
    for (std::size_t i = 0; i < names.size(); ++i) wait_for_acks(names[i], 10, acks_at_pause[i]);

    const json s = *status();
    const auto& loop = s.at("daemon").at("loop");
    std::printf(
        "[ figures  ] SIGSTOP for %lld ms (detection %lld ms): %llu downs, %llu suspect, "
        "max timer lag %.1f ms, verdicts withheld %llu\n",
        static_cast<long long>(pause.count()), static_cast<long long>(kDetection.count()),
        static_cast<unsigned long long>(events("down") - downs_before),
        static_cast<unsigned long long>(events("suspect") - suspects_before),
        loop.at("max_timer_lag_us").get<double>() / 1000,
        static_cast<unsigned long long>(
            s.at("daemon").at("verdicts_withheld").get<std::uint64_t>()));
    EXPECT_EQ(events("down"), downs_before) << log();
    EXPECT_GE(loop.at("max_timer_lag_us").get<std::int64_t>(),
              std::chrono::duration_cast<std::chrono::microseconds>(pause - kInterval).count());
    EXPECT_TRUE(daemon_->running());

    // The lag is on record where an operator looks: STATUS= and keepalivectl status.
    const auto worst_in_status = [&]() -> double {
        const std::string text = notify.latest("STATUS").value_or("");
        const auto at = text.find("; loop lag max ");
        return at == std::string::npos ? 0 : std::atof(text.c_str() + at + 15);
    };
    EXPECT_TRUE(wait_until([&] { return worst_in_status() >= ms(pause - kInterval); }))
        << notify.latest("STATUS").value_or("(no STATUS)");
    const RunResult text = run({ctl_path(), "--socket", config_.control_socket, "status"});
    EXPECT_TRUE(text.status.exited_with(0)) << text.err;
    EXPECT_NE(text.out.find("loop:     lag "), std::string::npos) << text.out;
    EXPECT_NE(text.out.find(" at worst; "), std::string::npos) << text.out;
    EXPECT_GE(loop.at("timer_lag_us").get<std::int64_t>(), 0);
}

}  // namespace
}  // namespace keepalive::test
