// targets_bench: what 1,000 idle TCP targets cost the real keepalived.
//
// It listens on loopback and accepts every connection (holding them open),
// writes a configuration with N targets all pointing there, starts the daemon
// binary, waits until every target is up, then watches the idle daemon for a
// while: its CPU time (utime + stime from /proc/PID/stat), its resident memory
// (VmRSS) and, for contrast, the keepalive probes the kernel sent meanwhile
// (TcpExt TCPKeepAlive in /proc/net/netstat, machine-wide). The same is done
// with no targets for the baseline. Prints figures; asserts nothing.
//
// Usage: targets_bench [--targets N] [--idle S] [--seconds T] [PATH-TO-KEEPALIVED]
//        (or env KEEPALIVED); defaults 1000 targets, idle 1 s, 30 s.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "targets_bench: %s: %s\n", what.c_str(), std::strerror(errno));
    std::exit(1);
}

std::uint16_t bound_port(int fd) {
    sockaddr_in sin{};
    socklen_t len = sizeof sin;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) != 0) die("getsockname");
    return ntohs(sin.sin_port);
}

int loopback_socket(int type, bool listen_too) {
    const int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) != 0) die("bind");
    if (listen_too && ::listen(fd, 4096) != 0) die("listen");
    return fd;
}

// The service: accepts and holds every connection until told to stop.
class Holder {
public:
    Holder() : fd_(loopback_socket(SOCK_STREAM, true)), thread_([this] { run(); }) {}
    ~Holder() {
        stop_ = true;
        ::shutdown(fd_, SHUT_RDWR);
        thread_.join();
        for (const int c : conns_) ::close(c);
        ::close(fd_);
    }
    std::uint16_t port() const { return bound_port(fd_); }

private:
    void run() {
        while (!stop_) {
            const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c >= 0) conns_.push_back(c);
        }
    }
    int fd_;
    std::atomic<bool> stop_{false};
    std::vector<int> conns_;
    std::thread thread_;
};

nlohmann::json ask(const std::string& path, const std::string& request) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
        ::close(fd);
        return nullptr;
    }
    const std::string line = request + "\n";
    (void)!::send(fd, line.data(), line.size(), MSG_NOSIGNAL);
    std::string reply;
    char buf[65536];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) reply.append(buf, n);
    ::close(fd);
    return nlohmann::json::parse(reply, nullptr, false);
}

// utime + stime of a process, in seconds.
double cpu_seconds(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), {});
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) stime = std::stoull(field);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

long rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

long long kernel_keepalive_probes() {
    std::ifstream in("/proc/net/netstat");
    std::string names, values;
    while (std::getline(in, names) && std::getline(in, values)) {
        if (names.rfind("TcpExt:", 0) != 0) continue;
        std::istringstream n(names), v(values);
        for (std::string a, b; n >> a && v >> b;)
            if (a == "TCPKeepAlive") return std::stoll(b);
    }
    return -1;
}

struct Figures {
    double all_up_s = 0;
    double cpu_s = 0;
    double window_s = 0;
    long rss = 0;
    long long probes = 0;
};

Figures measure(const std::string& keepalived, int targets, int idle, int seconds) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("targets-bench-" + std::to_string(getpid()) + "-" + std::to_string(targets));
    std::filesystem::create_directories(dir);
    const int udp = loopback_socket(SOCK_DGRAM, false);  // a free port for [server] listen
    const std::uint16_t udp_port = bound_port(udp);
    ::close(udp);
    Holder holder;
    const std::string control = (dir / "control.sock").string();
    {
        std::ofstream config(dir / "keepalived.toml");
        config << "[server]\nlisten = [\"127.0.0.1:" << udp_port << "\"]\ncontrol_socket = \""
               << control << "\"\n";
        for (int i = 0; i < targets; ++i)
            config << "\n[[targets]]\nname = \"t" << i
                   << "\"\naddress = \"127.0.0.1:" << holder.port() << "\"\nidle = \"" << idle
                   << "s\"\ninterval = \"1s\"\n"
                   << "probes = 3\n";
    }
    const auto start = Clock::now();
    const pid_t pid = fork();
    if (pid == 0) {
        const std::string config = (dir / "keepalived.toml").string();
        std::freopen("/dev/null", "w", stderr);
        execl(keepalived.c_str(), keepalived.c_str(), "--config", config.c_str(), "--log-target",
              "stderr", static_cast<char*>(nullptr));
        _exit(127);
    }
    Figures f;
    for (;;) {
        const auto status = ask(control, "status");
        if (status.is_object() && status.at("up") == targets) break;
        if (Clock::now() - start > 120s) die("the targets did not all come up");
        std::this_thread::sleep_for(10ms);
    }
    f.all_up_s = std::chrono::duration<double>(Clock::now() - start).count();
    const double cpu0 = cpu_seconds(pid);
    const long long probes0 = kernel_keepalive_probes();
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
    f.window_s = std::chrono::duration<double>(Clock::now() - t0).count();
    f.cpu_s = cpu_seconds(pid) - cpu0;
    f.probes = kernel_keepalive_probes() - probes0;
    f.rss = rss_kib(pid);
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    std::filesystem::remove_all(dir);
    return f;
}

}  // namespace

int main(int argc, char** argv) {
    int targets = 1000;
    int idle = 1;
    int seconds = 30;
    std::string keepalived = std::getenv("KEEPALIVED") ? std::getenv("KEEPALIVED") : "";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--targets" && i + 1 < argc)
            targets = std::atoi(argv[++i]);
        else if (a == "--idle" && i + 1 < argc)
            idle = std::atoi(argv[++i]);
        else if (a == "--seconds" && i + 1 < argc)
            seconds = std::atoi(argv[++i]);
        else
            keepalived = a;
    }
    if (keepalived.empty()) {
        std::fprintf(stderr, "usage: targets_bench [--targets N] [--idle S] [--seconds T] PATH\n");
        return 2;
    }
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);

    const Figures base = measure(keepalived, 0, idle, seconds);
    const Figures with = measure(keepalived, targets, idle, seconds);
    fmt::print("targets_bench: {} targets on loopback, idle {} s, interval 1 s, probes 3\n",
               targets, idle);
    fmt::print("  all up after start     {:.3f} s\n", with.all_up_s);
    fmt::print("  daemon CPU, idle       {:.3f} s in {:.1f} s = {:.3f} %  (no targets: {:.3f} %)\n",
               with.cpu_s, with.window_s, 100 * with.cpu_s / with.window_s,
               100 * base.cpu_s / base.window_s);
    fmt::print("  daemon RSS             {} KiB  (no targets: {} KiB; {:.1f} KiB per target)\n",
               with.rss, base.rss,
               targets > 0 ? static_cast<double>(with.rss - base.rss) / targets : 0.0);
    fmt::print("  kernel keepalive probes meanwhile (machine-wide): {}\n", with.probes);
    return 0;
}
