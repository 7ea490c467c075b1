// Shared by the benchmark programs: the daemon (or the floor) as a child
// process, and what /proc says about it.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
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
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
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

extern char** environ;

namespace keepalive::bench {

using namespace std::chrono_literals;
using std::chrono::duration_cast;
using Ms = std::chrono::duration<double, std::milli>;

[[noreturn]] inline void fail_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

inline double ms_between(TimePoint from, TimePoint to) {
    return Ms(to - from).count();
}

inline std::vector<std::size_t> parse_list(std::string_view text) {
    std::vector<std::size_t> out;
    std::size_t pos = 0;
    while (pos <= text.size()) {
        const std::size_t comma = std::min(text.find(',', pos), text.size());
        const std::string item(text.substr(pos, comma - pos));
        if (!item.empty()) out.push_back(std::stoul(item));
        pos = comma + 1;
    }
    return out;
}

// Nearest-rank percentiles of a sample.
struct Summary {
    std::size_t n = 0;
    double min = 0, median = 0, p99 = 0, max = 0, mean = 0;
};

inline Summary summarize(std::vector<double> v) {
    Summary s;
    s.n = v.size();
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    const auto rank = [&](double q) {
        const auto r = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
        return v[std::clamp<std::size_t>(r, 1, v.size()) - 1];
    };
    s.min = v.front();
    s.median = rank(0.5);
    s.p99 = rank(0.99);
    s.max = v.back();
    double sum = 0;
    for (double x : v) sum += x;
    s.mean = sum / static_cast<double>(v.size());
    return s;
}

inline std::string summary_row(std::string_view label, const Summary& s) {
    return fmt::format("| {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} |", label, s.n,
                       s.min, s.median, s.p99, s.max, s.mean);
}

// ---- the daemon under test ----------------------------------------------------

struct MemoryStatus {
    long rss_kib = 0;
    long hwm_kib = 0;
    long rss_anon_kib = 0;
    long ctxt_switches = 0;  // voluntary + involuntary: each wake-up is at least one
};

inline MemoryStatus read_memory(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    MemoryStatus m;
    std::string line;
    const auto field = [&](std::string_view key, long& out) {
        if (line.rfind(key, 0) == 0) out = std::strtol(line.c_str() + key.size(), nullptr, 10);
    };
    while (std::getline(in, line)) {
        field("VmRSS:", m.rss_kib);
        field("VmHWM:", m.hwm_kib);
        field("RssAnon:", m.rss_anon_kib);
        long switches = 0;
        field("voluntary_ctxt_switches:", switches);
        field("nonvoluntary_ctxt_switches:", switches);
        m.ctxt_switches += switches;
    }
    return m;
}

// utime + stime of a process, in seconds.
inline double read_cpu_seconds(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string text;
    std::getline(in, text);
    // The command name may hold spaces; fields are counted after its closing ')'.
    const auto close = text.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream fields(text.substr(close + 2));
    std::string f;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && fields >> f; ++i) {
        if (i == 14) utime = std::stoull(f);
        if (i == 15) stime = std::stoull(f);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Seconds a process's threads spent running and waiting on a run queue
// (/proc/<pid>/task/*/schedstat), for telling a slow daemon from a starved one.
struct SchedTimes {
    double running = 0;
    double waiting = 0;
};

inline SchedTimes read_sched_times(pid_t pid) {
    SchedTimes t;
    std::error_code ec;
    for (const auto& task :
         std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
        std::ifstream in(task.path() / "schedstat");
        unsigned long long run_ns = 0, wait_ns = 0;
        if (in >> run_ns >> wait_ns) {
            t.running += static_cast<double>(run_ns) / 1e9;
            t.waiting += static_cast<double>(wait_ns) / 1e9;
        }
    }
    return t;
}

inline double own_cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const auto tv = [](const timeval& t) {
        return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
    };
    return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// Datagrams the kernel dropped at the UDP socket bound to 127.0.0.1:port
// (receive buffer full), from the last column of /proc/net/udp.
inline std::uint64_t udp_socket_drops(std::uint16_t port) {
    std::ifstream in("/proc/net/udp");
    const std::string local = fmt::format("0100007F:{:04X}", port);
    std::string line;
    std::uint64_t drops = 0;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string slot, address;
        fields >> slot >> address;
        if (address != local) continue;
        const auto end = line.find_last_not_of(' ');
        const auto start = line.find_last_of(' ', end) + 1;
        drops += std::stoull(line.substr(start, end - start + 1));
    }
    return drops;
}

inline std::uint16_t free_udp_port() {
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket");
    sockaddr_storage ss{};
    const socklen_t len = Address::v4(0x7f000001, 0).to_sockaddr(ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) fail_errno("bind");
    socklen_t got = sizeof ss;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &got);
    ::close(fd);
    return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), got)->port();
}

struct LogCounts {
    std::uint64_t lines = 0, registered = 0, up = 0, suspect = 0, down = 0, left = 0;
    // Peer events the daemon's rate limit held back, from its summary lines:
    // while this grows, the lines counted by name are a lower bound.
    std::uint64_t not_logged = 0;
};

// A peer event read from the daemon's log, with the peer's name and when the
// line arrived.
struct PeerEvent {
    enum class Kind : std::uint8_t { suspect, down, left };
    std::string name;
    Kind kind;
    TimePoint at;
};

class DaemonProcess {
public:
    struct Options {
        std::string binary;
        std::string min_interval = "10ms";
        std::size_t max_peers = 100'000;
        std::size_t max_per_host = 256;
        // A stand-in program instead of the daemon (the floor): started as
        // `binary --listen 127.0.0.1:PORT extra_args...`, with no config and no
        // control socket.
        bool stand_in = false;
        std::vector<std::string> extra_args;
        std::string peers_config;  // lines appended to the config's [peers] table
        std::string log_copy;      // if set, every stderr line is also written here
    };

    explicit DaemonProcess(const Options& options) : options_(options) {
        char dir_template[] = "/tmp/kabench.XXXXXX";
        if (::mkdtemp(dir_template) == nullptr) fail_errno("mkdtemp");
        dir_ = dir_template;
        port_ = free_udp_port();
        control_ = dir_ + "/ctl.sock";
        const std::string config = dir_ + "/keepalived.toml";
        {
            std::ofstream out(config);
            out << fmt::format(
                "[server]\nlisten = [\"127.0.0.1:{}\"]\ncontrol_socket = \"{}\"\n"
                "[peers]\nmin_interval = \"{}\"\nmax_peers = {}\nmax_per_host = {}\n",
                port_, control_, options.min_interval, options.max_peers, options.max_per_host);
            out << options.peers_config;
        }
        if (!options.log_copy.empty()) log_copy_.open(options.log_copy);

        int pipe_fds[2];
        if (::pipe2(pipe_fds, O_CLOEXEC) != 0) fail_errno("pipe2");
        // The daemon gets a clean systemd environment: no notify socket, no
        // inherited listeners, no journal stream.
        std::vector<std::string> env_store;
        for (char** e = environ; *e != nullptr; ++e) {
            const std::string_view kv(*e);
            bool drop = false;
            for (std::string_view k : {"NOTIFY_SOCKET=", "LISTEN_", "JOURNAL_STREAM=", "WATCHDOG_"})
                drop = drop || kv.rfind(k, 0) == 0;
            if (!drop) env_store.emplace_back(kv);
        }
        std::vector<char*> envp;
        for (auto& s : env_store) envp.push_back(s.data());
        envp.push_back(nullptr);
        std::vector<std::string> args = {options.binary, "--config", config, "--log-target",
                                         "stderr"};
        if (options.stand_in)
            args = {options.binary, "--listen", fmt::format("127.0.0.1:{}", port_)};
        args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
        std::vector<char*> argv;
        for (auto& s : args) argv.push_back(s.data());
        argv.push_back(nullptr);

        const pid_t parent = ::getpid();
        pid_ = ::fork();
        if (pid_ < 0) fail_errno("fork");
        if (pid_ == 0) {
            // Do not outlive a bench that crashed.
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(127);
            const int null = ::open("/dev/null", O_RDWR);
            ::dup2(null, 0);
            ::dup2(null, 1);
            ::dup2(pipe_fds[1], 2);
            ::execve(argv[0], argv.data(), envp.data());
            ::_exit(127);
        }
        ::close(pipe_fds[1]);
        stderr_fd_ = pipe_fds[0];
        reader_ = std::thread([this] { read_stderr(); });
        try {
            wait_ready();
        } catch (...) {
            clean_up();
            throw;
        }
    }

    DaemonProcess(const DaemonProcess&) = delete;
    DaemonProcess& operator=(const DaemonProcess&) = delete;

    ~DaemonProcess() { clean_up(); }

    void stop() {
        if (pid_ <= 0) return;
        ::kill(pid_, SIGTERM);
        int status = 0;
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
    }

    pid_t pid() const { return pid_; }
    std::uint16_t port() const { return port_; }
    Address address() const { return Address::v4(0x7f000001, port_); }

    // The request's JSON answer on the control socket ("status" or "peers").
    nlohmann::json control(std::string_view request) const {
        const int fd = connect_control();
        if (fd < 0) fail_errno("connect " + control_);
        // Generous: on a loaded shared machine, a daemon holding 100 000 peers
        // took more than 5 s to answer "status" (the run then failed).
        timeval tv{30, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        const std::string line = std::string(request) + "\n";
        if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) < 0) {
            ::close(fd);
            fail_errno("send control request");
        }
        std::string reply;
        char buf[65536];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            reply.append(buf, static_cast<std::size_t>(n));
        }
        ::close(fd);
        return nlohmann::json::parse(reply);
    }

    // Arrival time of the first "is down" line for each peer name.
    std::unordered_map<std::string, TimePoint> down_times() const {
        std::lock_guard lock(mutex_);
        return down_times_;
    }
    LogCounts log_counts() const {
        std::lock_guard lock(mutex_);
        return counts_;
    }
    // Every suspect, down and left line so far, in the order they arrived.
    // The daemon's rate limit thins them when many peers of one host change
    // at once; watch() does not.
    std::vector<PeerEvent> peer_events() const {
        std::lock_guard lock(mutex_);
        return peer_events_;
    }

    // From now on, every suspect, down and left event through `keepalivectl
    // watch` (the event ring, which no rate limit thins), as it arrives.
    // Returns when the stream is open: events before it are not in it.
    void watch() {
        if (watch_fd_ >= 0) return;
        watch_fd_ = connect_control();
        if (watch_fd_ < 0) fail_errno("connect " + control_);
        if (::send(watch_fd_, "watch\n", 6, MSG_NOSIGNAL) < 0) fail_errno("send watch");
        {
            std::lock_guard lock(mutex_);
            watch_from_ = Clock::now();
        }
        watcher_ = std::thread([this] { read_watch(); });
    }
    // When watch() began (the epoch: never).
    TimePoint watched_from() const {
        std::lock_guard lock(mutex_);
        return watch_from_;
    }
    std::vector<PeerEvent> watched_events() const {
        std::lock_guard lock(mutex_);
        return watched_;
    }
    // Events the stream said it missed (the reader fell a ring behind).
    std::uint64_t watch_missed() const {
        std::lock_guard lock(mutex_);
        return watch_missed_;
    }

private:
    void clean_up() {
        if (watch_fd_ >= 0) ::shutdown(watch_fd_, SHUT_RDWR);
        if (watcher_.joinable()) watcher_.join();
        if (watch_fd_ >= 0) ::close(watch_fd_);
        watch_fd_ = -1;
        stop();
        if (reader_.joinable()) reader_.join();  // EOF once the daemon has exited
        ::close(stderr_fd_);
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    void read_stderr() {
        read_lines(stderr_fd_, [this](std::string_view line, TimePoint arrived) {
            on_line(line, arrived);
        });
    }
    void read_watch() {
        read_lines(watch_fd_, [this](std::string_view line, TimePoint arrived) {
            on_watch_line(line, arrived);
        });
    }
    // Calls on_line(line, arrival) for each line read from `fd` until EOF.
    template <typename OnLine>
    static void read_lines(int fd, OnLine on_line) {
        std::string pending;
        char buf[65536];
        for (;;) {
            const ssize_t n = ::read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            const TimePoint arrived = Clock::now();
            pending.append(buf, static_cast<std::size_t>(n));
            std::size_t start = 0;
            for (std::size_t nl; (nl = pending.find('\n', start)) != std::string::npos;
                 start = nl + 1)
                on_line(std::string_view(pending).substr(start, nl - start), arrived);
            pending.erase(0, start);
        }
    }

    void on_watch_line(std::string_view line, TimePoint arrived) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) return;
        std::lock_guard lock(mutex_);
        if (j.contains("missed")) {
            watch_missed_ += j.value("missed", std::uint64_t{0});
            return;
        }
        const std::string kind = j.value("event", "");
        PeerEvent::Kind k;
        if (kind == "suspect")
            k = PeerEvent::Kind::suspect;
        else if (kind == "down")
            k = PeerEvent::Kind::down;
        else if (kind == "left")
            k = PeerEvent::Kind::left;
        else
            return;
        watched_.push_back({j.value("name", ""), k, arrived});
    }

    // "<4>peer NAME (ADDRESS) is down: detection time expired": NAME, or empty.
    static std::string_view peer_name(std::string_view line) {
        const auto start = line.find("peer ");
        if (start == std::string_view::npos) return {};
        const auto end = line.find(" (", start);
        if (end == std::string_view::npos) return {};
        return line.substr(start + 5, end - start - 5);
    }

    void on_line(std::string_view line, TimePoint arrived) {
        // Each line with its arrival, in seconds since the daemon was started.
        if (log_copy_.is_open())
            log_copy_ << fmt::format("{:10.3f} ", std::chrono::duration<double>(
                                                      arrived - started_at_)
                                                      .count())
                      << line << '\n';
        std::lock_guard lock(mutex_);
        ++counts_.lines;
        if (line.find(" ready: listening on") != std::string_view::npos) ready_ = true;
        if (line.find(" registered: interval") != std::string_view::npos) ++counts_.registered;
        if (line.find(" is up: ") != std::string_view::npos) ++counts_.up;
        const auto named = [&](PeerEvent::Kind kind) {
            const std::string_view name = peer_name(line);
            if (!name.empty()) peer_events_.push_back({std::string(name), kind, arrived});
            return name;
        };
        if (line.find(" is suspect: ") != std::string_view::npos) {
            ++counts_.suspect;
            named(PeerEvent::Kind::suspect);
        }
        if (line.find(" is down: ") != std::string_view::npos) {
            ++counts_.down;
            const std::string_view name = named(PeerEvent::Kind::down);
            if (!name.empty()) down_times_.emplace(std::string(name), arrived);
        }
        if (line.find(" has left: ") != std::string_view::npos) {
            ++counts_.left;
            named(PeerEvent::Kind::left);
        }
        // "<4>N peer events not logged in the last 10 s (rate limit), ..."
        if (const auto at = line.find(" peer events not logged"); at != std::string_view::npos) {
            auto digits = line.substr(0, at);
            digits.remove_prefix(std::min(digits.find('>') + 1, digits.size()));
            std::uint64_t n = 0;
            for (char c : digits)
                if (c >= '0' && c <= '9') n = n * 10 + static_cast<std::uint64_t>(c - '0');
            counts_.not_logged += n;
        }
        if (!ready_ && line.find("cannot start") != std::string_view::npos)
            start_error_ = std::string(line);
    }

    void wait_ready() {
        const TimePoint give_up = Clock::now() + 10s;
        for (;;) {
            {
                std::lock_guard lock(mutex_);
                if (ready_) return;
                if (!start_error_.empty()) throw std::runtime_error("daemon: " + start_error_);
            }
            // Logging elsewhere (--log-target=journal), the daemon says nothing on
            // stderr: it is ready once its control socket accepts a connection.
            // (The socket's file appears at bind(), before listen(): a connect
            // then is refused.)
            if (!options_.stand_in && control_accepts()) return;
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                throw std::runtime_error(options_.binary + " exited before it was ready");
            }
            if (Clock::now() > give_up) throw std::runtime_error("daemon not ready after 10 s");
            std::this_thread::sleep_for(5ms);
        }
    }

    // A stream connected to the control socket, or -1 (errno says why).
    int connect_control() const {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) fail_errno("socket");
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::memcpy(sa.sun_path, control_.c_str(), control_.size() + 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return fd;
        const int saved = errno;
        ::close(fd);
        errno = saved;
        return -1;
    }

    bool control_accepts() const {
        const int fd = connect_control();
        if (fd >= 0) ::close(fd);
        return fd >= 0;
    }

    Options options_;
    std::string dir_;
    std::string control_;
    std::uint16_t port_ = 0;
    pid_t pid_ = -1;
    int stderr_fd_ = -1;
    std::thread reader_;
    std::ofstream log_copy_;
    const TimePoint started_at_ = Clock::now();

    mutable std::mutex mutex_;
    bool ready_ = false;
    std::string start_error_;
    LogCounts counts_;
    std::unordered_map<std::string, TimePoint> down_times_;
    std::vector<PeerEvent> peer_events_;
    int watch_fd_ = -1;
    std::thread watcher_;
    TimePoint watch_from_{};
    std::vector<PeerEvent> watched_;
    std::uint64_t watch_missed_ = 0;
};

}  // namespace keepalive::bench
