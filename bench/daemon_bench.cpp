// daemon_bench: measures the real keepalived from the outside, over loopback.
//
// It starts the daemon binary, then plays many peers itself with the project's
// codec. One UDP socket carries thousands of peers: the server keys peers by
// name and probes the source address of their REGISTER, so each PROBE is told
// apart by its session id. The daemon's stderr is read on a thread that stamps
// every line with CLOCK_MONOTONIC as it arrives.
//
// Three measurements (see docs/benchmarks.md):
//   detection   error of the moment a peer is declared down, against
//               probes x interval after the first unanswered probe
//   rss         the daemon's resident memory with 0 and N registered peers
//   throughput  probe/ACK pairs per second handled, and daemon CPU per pair
//
// Usage: daemon_bench [options] [PATH-TO-KEEPALIVED]   (or env KEEPALIVED)
// Prints figures; it is not a test and asserts nothing about them.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "bench_process.hpp"
#include "fleet.hpp"

namespace keepalive {
namespace {

using sim::Fleet;
using namespace bench;
using namespace std::chrono_literals;
using std::chrono::duration_cast;

// Busy-looping child processes that compete with the daemon for the CPUs.
class CpuHogs {
public:
    explicit CpuHogs(int count) {
        for (int i = 0; i < count; ++i) {
            const pid_t pid = ::fork();
            if (pid < 0) fail_errno("fork");
            if (pid == 0) {
                ::prctl(PR_SET_PDEATHSIG, SIGKILL);
                // Under a real-time bench (chrt) the hogs still compete as ordinary
                // processes, not as real-time spinners that would starve the machine.
                if (::sched_getscheduler(0) != SCHED_OTHER) {
                    const sched_param normal{};
                    ::sched_setscheduler(0, SCHED_OTHER, &normal);
                }
                volatile std::uint64_t spin = 0;
                for (;;) spin = spin + 1;
            }
            pids_.push_back(pid);
        }
    }
    CpuHogs(const CpuHogs&) = delete;
    CpuHogs& operator=(const CpuHogs&) = delete;
    ~CpuHogs() {
        for (pid_t pid : pids_) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }

private:
    std::vector<pid_t> pids_;
};

// ---- the measurements -------------------------------------------------------------

struct BenchConfig {
    std::string daemon;
    std::string log_dir;  // keep each daemon's stderr here when set
    std::uint64_t seed = 1;
    bool verbose = false;

    std::size_t det_rounds = 5;
    std::size_t det_peers = 100;
    std::uint32_t det_interval_ms = 200;
    std::uint8_t det_probes = 3;
    std::vector<std::size_t> det_loads = {0};
    double det_answer_s = 3.0;
    double jitter_s = 5.0;

    std::vector<std::size_t> rss_peers = {10'000, 100'000};
    std::uint32_t rss_interval_ms = 1000;

    std::vector<std::size_t> tp_peers = {5'000, 10'000, 12'500, 15'000, 17'500, 20'000};
    std::uint32_t tp_interval_ms = 100;
    double tp_warmup_s = 3.0;
    double tp_window_s = 10.0;
    std::size_t register_window = 512;  // handshakes in flight (rss and throughput)
};

DaemonProcess::Options daemon_options(const BenchConfig& c, const std::string& run) {
    DaemonProcess::Options o;
    o.binary = c.daemon;
    if (!c.log_dir.empty()) o.log_copy = c.log_dir + "/" + run + ".log";
    return o;
}

Duration seconds(double s) {
    return duration_cast<Duration>(std::chrono::duration<double>(s));
}

// Lateness of plain 1 ms clock_nanosleep wake-ups: what the machine itself
// gives any timer, for comparison with the daemon's figures.
std::vector<double> wakeup_lateness_ms(double seconds_to_run) {
    std::vector<double> late;
    timespec t{};
    clock_gettime(CLOCK_MONOTONIC, &t);
    const auto count = static_cast<std::size_t>(seconds_to_run * 1000);
    for (std::size_t i = 0; i < count; ++i) {
        t.tv_nsec += 1'000'000;
        if (t.tv_nsec >= 1'000'000'000) {
            t.tv_nsec -= 1'000'000'000;
            ++t.tv_sec;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nullptr);
        timespec now{};
        clock_gettime(CLOCK_MONOTONIC, &now);
        late.push_back(static_cast<double>(now.tv_sec - t.tv_sec) * 1e3 +
                       static_cast<double>(now.tv_nsec - t.tv_nsec) / 1e6);
    }
    return late;
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string line;
    std::getline(in, line);
    return line;
}

void run_detection(const BenchConfig& c, std::size_t load) {
    fmt::print(
        "\n## Detection error: {} peers, interval {} ms, probes {}, {} busy-loop "
        "process{}\n\n",
        c.det_peers, c.det_interval_ms, c.det_probes, load, load == 1 ? "" : "es");
    fmt::print("loadavg before: {}\n\n", load_average());
    fmt::print(
        "error = arrival of the daemon's \"is down\" line on its stderr pipe - "
        "(arrival of the first unanswered PROBE + probes x interval), in ms\n\n");
    fmt::print("| run | peers | min | median | p99 | max | mean |\n");
    fmt::print("|---|---:|---:|---:|---:|---:|---:|\n");
    const Duration expected = milliseconds(c.det_interval_ms) * c.det_probes;
    std::vector<double> all_recv, all_tx, all_probe_late, all_down_late;
    std::size_t missing = 0;
    std::uint64_t early_suspects = 0;
    CpuHogs hogs(static_cast<int>(load));
    const std::vector<double> jitter = wakeup_lateness_ms(c.jitter_s);
    for (std::size_t round = 0; round < c.det_rounds; ++round) {
        DaemonProcess daemon(daemon_options(c, fmt::format("detection-load{}-{}", load, round)));
        Fleet fleet(daemon.address(), c.seed + round);
        fleet.add(fmt::format("det{}-", round), c.det_peers, c.det_interval_ms, c.det_probes);
        if (!fleet.register_all(20s)) throw std::runtime_error("detection: registration failed");
        fleet.pump_for(seconds(c.det_answer_s));
        early_suspects += daemon.log_counts().suspect;
        fleet.set_answering(false);
        const TimePoint give_up = Clock::now() + expected + 3s;
        while (Clock::now() < give_up && daemon.down_times().size() < c.det_peers)
            fleet.pump_for(20ms);
        const auto downs = daemon.down_times();
        std::vector<double> recv_err;
        for (const auto& p : fleet.peers()) {
            const auto it = downs.find(p.name);
            if (it == downs.end() || !p.first_unanswered) {
                ++missing;
                continue;
            }
            const TimePoint line = it->second;
            const TimePoint tx{Duration(static_cast<Duration::rep>(p.first_unanswered_tx))};
            const TimePoint deadline = p.deadline_of(p.first_unanswered_seq);
            recv_err.push_back(ms_between(*p.first_unanswered + expected, line));
            all_tx.push_back(ms_between(tx + expected, line));
            all_probe_late.push_back(ms_between(deadline, tx));
            all_down_late.push_back(ms_between(deadline + expected, line));
            if (c.verbose)
                fmt::print(stderr,
                           "{}: error {:.3f} ms, probe sent {:.3f} ms late, down line "
                           "{:.3f} ms after the scheduled instant\n",
                           p.name, recv_err.back(), all_probe_late.back(), all_down_late.back());
        }
        fmt::print("{}\n", summary_row(fmt::format("round {}", round + 1), summarize(recv_err)));
        all_recv.insert(all_recv.end(), recv_err.begin(), recv_err.end());
        std::fflush(stdout);
    }
    fmt::print("{}\n", summary_row("**all rounds**", summarize(all_recv)));
    fmt::print("\nWhere it comes from (all rounds, ms):\n\n");
    fmt::print("| quantity | n | min | median | p99 | max | mean |\n");
    fmt::print("|---|---:|---:|---:|---:|---:|---:|\n");
    fmt::print("{}\n", summary_row("error (as above)", summarize(all_recv)));
    fmt::print("{}\n", summary_row("error from the PROBE's tx_time instead of its arrival",
                                   summarize(all_tx)));
    fmt::print("{}\n", summary_row("first unanswered PROBE: tx_time - its scheduled time",
                                   summarize(all_probe_late)));
    fmt::print("{}\n",
               summary_row("down line arrival - scheduled down instant", summarize(all_down_late)));
    fmt::print("{}\n", summary_row(fmt::format("machine: 1 ms clock_nanosleep lateness ({:.0f} s)",
                                               c.jitter_s),
                                   summarize(jitter)));
    fmt::print(
        "\npeers without a down line or an unanswered probe: {}; suspect events "
        "while still answering: {}; loadavg after: {}\n",
        missing, early_suspects, load_average());
    std::fflush(stdout);
}

std::size_t status_count(const nlohmann::json& status, const char* key) {
    return status.value(key, std::size_t{0});
}

void run_rss(const BenchConfig& c) {
    fmt::print("\n## Resident memory: peers at interval {} ms, probes 3, all up\n\n",
               c.rss_interval_ms);
    fmt::print(
        "| peers | up | VmRSS KiB | VmHWM KiB | RssAnon KiB | RSS over 0 peers KiB | "
        "bytes/peer | registration s |\n");
    fmt::print("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    bool baseline_printed = false;
    for (std::size_t n : c.rss_peers) {
        DaemonProcess daemon(daemon_options(c, fmt::format("rss-{}", n)));
        (void)daemon.control("status");
        std::this_thread::sleep_for(200ms);
        const MemoryStatus base = read_memory(daemon.pid());
        if (!baseline_printed) {
            fmt::print("| 0 | 0 | {} | {} | {} | 0 | - | - |\n", base.rss_kib, base.hwm_kib,
                       base.rss_anon_kib);
            baseline_printed = true;
        }
        Fleet fleet(daemon.address(), c.seed + n);
        fleet.add("rss-", n, c.rss_interval_ms, 3);
        const TimePoint start = Clock::now();
        if (!fleet.register_all(300s, c.register_window))
            throw std::runtime_error("rss: registration failed");
        const double registration_s = ms_between(start, Clock::now()) / 1000;
        std::size_t up = 0;
        const TimePoint give_up = Clock::now() + 60s;
        while (Clock::now() < give_up) {
            fleet.pump_for(250ms);
            up = status_count(daemon.control("status"), "up");
            if (up == n) break;
        }
        // Steady state: every peer probed and answered at least twice more.
        fleet.pump_for(milliseconds(2 * c.rss_interval_ms));
        up = status_count(daemon.control("status"), "up");
        const MemoryStatus m = read_memory(daemon.pid());
        const long over = m.rss_kib - base.rss_kib;
        fmt::print("| {} | {} | {} | {} | {} | {} | {:.0f} | {:.2f} |\n", n, up, m.rss_kib,
                   m.hwm_kib, m.rss_anon_kib, over,
                   static_cast<double>(over) * 1024.0 / static_cast<double>(n), registration_s);
        std::fflush(stdout);
    }
    fmt::print(
        "\n(bytes/peer = (VmRSS with N peers - VmRSS of the same daemon before any "
        "registration) / N)\n");
}

void run_throughput(const BenchConfig& c) {
    fmt::print(
        "\n## Throughput: interval {} ms, probes 3, {:.0f} s window after {:.0f} s "
        "warm-up\n\n",
        c.tp_interval_ms, c.tp_window_s, c.tp_warmup_s);
    fmt::print("loadavg before: {}\n\n", load_average());
    fmt::print(
        "| peers | nominal probes/s | probes received/s | ACKs handled/s | probes lost | "
        "ACKs lost | daemon drops | suspect events | not up at end | daemon CPU % | "
        "daemon CPU us per pair | daemon run-queue wait % | bench CPU % | "
        "bench run-queue wait % |\n");
    fmt::print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (std::size_t n : c.tp_peers) {
        DaemonProcess daemon(daemon_options(c, fmt::format("throughput-{}", n)));
        Fleet fleet(daemon.address(), c.seed + n);
        fleet.add("tp-", n, c.tp_interval_ms, 3);
        if (!fleet.register_all(300s, c.register_window))
            throw std::runtime_error("throughput: registration failed");
        fleet.pump_for(seconds(c.tp_warmup_s));

        const auto status0 = daemon.control("status");
        const double cpu0 = read_cpu_seconds(daemon.pid());
        const double own0 = own_cpu_seconds();
        const SchedTimes daemon_sched0 = read_sched_times(daemon.pid());
        const SchedTimes own_sched0 = read_sched_times(::getpid());
        const Fleet::Stats fs0 = fleet.stats();
        const LogCounts log0 = daemon.log_counts();
        const std::uint64_t ack_drops0 = udp_socket_drops(daemon.port());
        const std::uint64_t probe_drops0 = udp_socket_drops(fleet.local_port());
        const TimePoint t0 = Clock::now();

        fleet.pump_for(seconds(c.tp_window_s));

        const TimePoint t1 = Clock::now();
        const auto status1 = daemon.control("status");
        const double cpu1 = read_cpu_seconds(daemon.pid());
        const double own1 = own_cpu_seconds();
        const SchedTimes daemon_sched1 = read_sched_times(daemon.pid());
        const SchedTimes own_sched1 = read_sched_times(::getpid());
        const Fleet::Stats fs1 = fleet.stats();
        const LogCounts log1 = daemon.log_counts();
        const std::uint64_t ack_drops1 = udp_socket_drops(daemon.port());
        const std::uint64_t probe_drops1 = udp_socket_drops(fleet.local_port());

        const double elapsed = ms_between(t0, t1) / 1000;
        const auto received = static_cast<double>(status_count(status1, "datagrams_received") -
                                                  status_count(status0, "datagrams_received"));
        const double nominal = static_cast<double>(n) * 1000.0 / c.tp_interval_ms;
        const std::size_t not_up = status_count(status1, "suspect") + status_count(status1, "down");
        fmt::print(
            "| {} | {:.0f} | {:.0f} | {:.0f} | {} | {} | {} | {} | {} | {:.1f} | {:.2f} | "
            "{:.1f} | {:.1f} | {:.1f} |\n",
            n, nominal, static_cast<double>(fs1.probes - fs0.probes) / elapsed, received / elapsed,
            std::max(fs1.seq_gaps - fs0.seq_gaps, probe_drops1 - probe_drops0),
            ack_drops1 - ack_drops0,
            status_count(status1, "datagrams_dropped") - status_count(status0, "datagrams_dropped"),
            log1.suspect - log0.suspect, not_up, 100.0 * (cpu1 - cpu0) / elapsed,
            received > 0 ? (cpu1 - cpu0) * 1e6 / received : 0.0,
            100.0 * (daemon_sched1.waiting - daemon_sched0.waiting) / elapsed,
            100.0 * (own1 - own0) / elapsed,
            100.0 * (own_sched1.waiting - own_sched0.waiting) / elapsed);
        std::fflush(stdout);
    }
    fmt::print(
        "\n(ACKs handled/s: the daemon's datagrams_received counter over the window. "
        "Probes lost: seq gaps seen by the bench, or kernel drops at its socket. ACKs "
        "lost: kernel drops at the daemon's socket (/proc/net/udp). Daemon drops: its "
        "datagrams_dropped counter. CPU from /proc/<pid>/stat utime+stime; us per pair "
        "= ms per 1000 pairs. Run-queue wait: time runnable but not running, all "
        "threads, from /proc/<pid>/task/*/schedstat. loadavg after: {})\n",
        load_average());
}

std::string first_line_of(const std::string& path, std::string_view prefix) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(prefix, 0) == 0) return line;
    return {};
}

void print_machine(const BenchConfig& c) {
    std::string model = first_line_of("/proc/cpuinfo", "model name");
    if (const auto colon = model.find(':'); colon != std::string::npos)
        model = model.substr(colon + 2);
    std::ifstream version("/proc/sys/kernel/osrelease");
    std::string kernel;
    std::getline(version, kernel);
    fmt::print("# keepalived daemon benchmark\n\n");
    std::ifstream autogroup_file("/proc/self/autogroup");
    std::string autogroup;
    std::getline(autogroup_file, autogroup);
    const int policy = ::sched_getscheduler(0);
    sched_param param{};
    ::sched_getparam(0, &param);
    const std::string policy_text =
        policy == SCHED_FIFO ? fmt::format("SCHED_FIFO {}", param.sched_priority)
        : policy == SCHED_RR ? fmt::format("SCHED_RR {}", param.sched_priority)
                             : fmt::format("SCHED_OTHER nice {}", ::getpriority(PRIO_PROCESS, 0));
    fmt::print("daemon: {}\nCPUs online: {}\nCPU: {}\nkernel: {}\n", c.daemon,
               sysconf(_SC_NPROCESSORS_ONLN), model, kernel);
    fmt::print("scheduling (bench and daemon): {}, autogroup {}\nloadavg: {}\n", policy_text,
               autogroup, load_average());
}

constexpr const char* kUsage =
    "Usage: daemon_bench [options] [KEEPALIVED]   (default: $KEEPALIVED)\n"
    "  --only LIST             detection,rss,throughput (default: all three)\n"
    "  --rounds N              detection rounds, a fresh daemon each (default 5)\n"
    "  --det-peers N           peers per detection round (default 100)\n"
    "  --det-interval-ms MS    (default 200)\n"
    "  --det-probes N          (default 3)\n"
    "  --load LIST             busy-loop processes per detection run, e.g. 0,2 (default 0)\n"
    "  --rss-peers LIST        (default 10000,100000)\n"
    "  --rss-interval-ms MS    (default 1000)\n"
    "  --tp-peers LIST         (default 5000,10000,12500,15000,17500,20000)\n"
    "  --tp-interval-ms MS     (default 100)\n"
    "  --tp-window S           measured seconds per step (default 10)\n"
    "  --register-window N     handshakes in flight while registering (default 512)\n"
    "  --log-dir DIR           keep each daemon's stderr as DIR/<run>.log\n"
    "  --seed N                (default 1)\n"
    "  --verbose               detection: one line per peer on stderr\n"
    "The daemon inherits this program's scheduling policy and nice value.\n";

}  // namespace
}  // namespace keepalive

int main(int argc, char** argv) {
    using namespace keepalive;
    signal(SIGPIPE, SIG_IGN);
    // Tables appear row by row even when stdout is a file.
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    BenchConfig c;
    if (const char* env = std::getenv("KEEPALIVED")) c.daemon = env;
    std::vector<std::string> only = {"detection", "rss", "throughput"};
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            const auto value = [&]() -> std::string {
                if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
                return argv[++i];
            };
            if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            } else if (arg == "--only") {
                only.clear();
                std::string list = value();
                std::istringstream in(list);
                for (std::string item; std::getline(in, item, ',');) only.push_back(item);
            } else if (arg == "--rounds") {
                c.det_rounds = std::stoul(value());
            } else if (arg == "--det-peers") {
                c.det_peers = std::stoul(value());
            } else if (arg == "--det-interval-ms") {
                c.det_interval_ms = static_cast<std::uint32_t>(std::stoul(value()));
            } else if (arg == "--det-probes") {
                c.det_probes = static_cast<std::uint8_t>(std::stoul(value()));
            } else if (arg == "--load") {
                c.det_loads = parse_list(value());
            } else if (arg == "--rss-peers") {
                c.rss_peers = parse_list(value());
            } else if (arg == "--rss-interval-ms") {
                c.rss_interval_ms = static_cast<std::uint32_t>(std::stoul(value()));
            } else if (arg == "--tp-peers") {
                c.tp_peers = parse_list(value());
            } else if (arg == "--tp-interval-ms") {
                c.tp_interval_ms = static_cast<std::uint32_t>(std::stoul(value()));
            } else if (arg == "--tp-window") {
                c.tp_window_s = std::stod(value());
            } else if (arg == "--register-window") {
                c.register_window = std::max<std::size_t>(1, std::stoul(value()));
            } else if (arg == "--log-dir") {
                c.log_dir = value();
            } else if (arg == "--verbose") {
                c.verbose = true;
            } else if (arg == "--seed") {
                c.seed = std::stoull(value());
            } else if (!arg.empty() && arg[0] != '-' && i == argc - 1) {
                c.daemon = arg;
            } else {
                throw std::invalid_argument("unknown argument " + arg);
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "daemon_bench: %s\n%s", e.what(), kUsage);
        return 2;
    }
    if (c.daemon.empty()) {
        std::fprintf(stderr, "daemon_bench: no daemon: pass its path or set KEEPALIVED\n%s",
                     kUsage);
        return 2;
    }
    try {
        print_machine(c);
        const auto wanted = [&](std::string_view m) {
            return std::find(only.begin(), only.end(), m) != only.end();
        };
        if (wanted("detection"))
            for (std::size_t load : c.det_loads) run_detection(c, load);
        if (wanted("rss")) run_rss(c);
        if (wanted("throughput")) run_throughput(c);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "daemon_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
