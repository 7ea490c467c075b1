#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace keepalive::test {
namespace {

namespace fs = std::filesystem;

std::string errno_text(const std::string& what) {
    return what + ": " + std::strerror(errno);
}

// An fd closed on scope exit; the harness is test code, so a tiny local type
// rather than the daemon's UniqueFd keeps it independent of src/net.
class Fd {
public:
    explicit Fd(int fd = -1) : fd_(fd) {}
    ~Fd() { reset(); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }
    int release() { return std::exchange(fd_, -1); }

private:
    int fd_;
};

std::string exe_dir() {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    return ec ? std::string(".") : self.parent_path().string();
}

std::string binary(const char* env_name, const char* file) {
    if (const char* p = std::getenv(env_name); p != nullptr && *p != '\0') return p;
    return exe_dir() + "/" + file;
}

std::string find_program(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return "/usr/bin/" + name;
}

bool is_stripped_variable(std::string_view entry) {
    static constexpr std::array<std::string_view, 8> kStripped = {
        "NOTIFY_SOCKET=", "WATCHDOG_USEC=",  "WATCHDOG_PID=",   "LISTEN_FDS=",
        "LISTEN_PID=",    "LISTEN_FDNAMES=", "JOURNAL_STREAM=", "INVOCATION_ID="};
    return std::any_of(kStripped.begin(), kStripped.end(),
                       [&](std::string_view p) { return entry.substr(0, p.size()) == p; });
}

std::vector<std::string> child_environment(
    const std::map<std::string, std::optional<std::string>>& changes) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view entry(*e);
        if (is_stripped_variable(entry)) continue;
        const std::string name(entry.substr(0, entry.find('=')));
        if (changes.count(name) != 0) continue;
        env.emplace_back(entry);
    }
    for (const auto& [name, value] : changes)
        if (value) env.push_back(name + "=" + *value);
    return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (auto& s : strings) out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

int open_output(const std::string& path) {
    const int fd = ::open(path.empty() ? "/dev/null" : path.c_str(),
                          O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error(errno_text("open " + path));
    return fd;
}

// fork/exec rather than posix_spawn for PR_SET_PDEATHSIG: children die with the
// test process even when it is killed. Between fork and exec only
// async-signal-safe calls are made (the test process has threads).
pid_t spawn(std::vector<std::string> argv, const SpawnOptions& options, int out_fd, int err_fd) {
    if (argv.empty()) throw std::runtime_error("spawn: empty argv");
    std::vector<std::string> env = child_environment(options.env);
    std::vector<char*> c_argv = c_strings(argv);
    std::vector<char*> c_env = c_strings(env);
    const Fd in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    int pipe_fds[2];
    if (in.get() < 0 || ::pipe2(pipe_fds, O_CLOEXEC) != 0)
        throw std::runtime_error(errno_text("spawn"));
    const Fd report_read(pipe_fds[0]);
    Fd report_write(pipe_fds[1]);
    const pid_t parent = ::getpid();

    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(errno_text("fork"));
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        for (int s = 1; s < NSIG; ++s)
            if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &dfl, nullptr);
        if (::dup2(in.get(), 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) ::_exit(127);
        ::execve(c_argv[0], c_argv.data(), c_env.data());
        const int e = errno;
        [[maybe_unused]] const ssize_t w = ::write(pipe_fds[1], &e, sizeof e);
        ::_exit(127);
    }
    report_write.reset();
    int child_errno = 0;
    ssize_t n;
    do {
        n = ::read(report_read.get(), &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        throw std::runtime_error("cannot execute " + argv[0] + ": " + std::strerror(child_errno) +
                                 " (set KEEPALIVED, KEEPALIVE_PEER and KEEPALIVECTL?)");
    }
    return pid;
}

ExitStatus decode_status(int wstatus) {
    ExitStatus s;
    if (WIFEXITED(wstatus)) s.code = WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus)) s.signal = WTERMSIG(wstatus);
    return s;
}

bool can_bind_udp(const char* host, std::uint16_t port, int family) {
    const Fd fd(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return false;
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        ::inet_pton(AF_INET, host, &sin->sin_addr);
        len = sizeof *sin;
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        ::inet_pton(AF_INET6, host, &sin6->sin6_addr);
        len = sizeof *sin6;
    }
    return ::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0;
}

std::string toml_string(std::string_view s) {
    std::string out = "\"";
    for (const char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

bool journal_socket_accepts() {
    const Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strcpy(sa.sun_path, "/run/systemd/journal/socket");
    return fd.get() >= 0 && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
}

}  // namespace

std::string keepalived_path() {
    return binary("KEEPALIVED", "keepalived");
}
std::string peer_path() {
    return binary("KEEPALIVE_PEER", "keepalive-peer");
}
std::string ctl_path() {
    return binary("KEEPALIVECTL", "keepalivectl");
}

std::string source_root() {
    if (const char* p = std::getenv("KEEPALIVE_SOURCE_ROOT"); p != nullptr && *p != '\0') return p;
    // A meson build directory usually sits in the source tree.
    const std::string guess = exe_dir() + "/..";
    if (fs::exists(guess + "/config/keepalived.toml")) return guess;
    ADD_FAILURE() << "KEEPALIVE_SOURCE_ROOT is not set and no source tree was found next to "
                  << exe_dir();
    return guess;
}

std::uint64_t test_seed() {
    static const std::uint64_t seed = [] {
        std::uint64_t s = 0;
        if (const char* e = std::getenv("KEEPALIVE_TEST_SEED")) {
            s = std::strtoull(e, nullptr, 0);
        } else {
            std::random_device rd;
            s = (std::uint64_t{rd()} << 32) | rd();
        }
        std::cout << "KEEPALIVE_TEST_SEED=" << s << std::endl;
        return s;
    }();
    return seed;
}

std::string unique_token() {
    static std::atomic<unsigned> counter{0};
    static const std::uint32_t salt = std::random_device{}();
    std::ostringstream s;
    s << std::hex << ::getpid() << 'x' << salt << 'x' << counter++;
    return s.str();
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const std::string& path, std::string_view content) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.close();
    if (!out) throw std::runtime_error("cannot write " + path);
}

TempDir::TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ka-it-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error(errno_text("mkdtemp"));
    path_ = pattern;
}

TempDir::~TempDir() {
    if (::testing::Test::HasFailure() || std::getenv("KEEPALIVE_TEST_KEEP") != nullptr) {
        std::cout << "test files kept in " << path_ << std::endl;
        return;
    }
    std::error_code ec;
    fs::remove_all(path_, ec);
}

std::string ExitStatus::to_string() const {
    if (signal != 0) return "killed by signal " + std::to_string(signal);
    return "exit code " + std::to_string(code);
}

Process::Process(std::vector<std::string> argv, SpawnOptions options)
    : name_(fs::path(argv.empty() ? "" : argv[0]).filename().string()),
      options_(std::move(options)) {
    const Fd out(open_output(options_.stdout_path));
    const Fd err(open_output(options_.stderr_path));
    pid_ = spawn(std::move(argv), options_, out.get(), err.get());
}

Process::~Process() {
    if (pid_ > 0 && !status_) kill();
}

Process::Process(Process&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      name_(std::move(o.name_)),
      options_(std::move(o.options_)),
      status_(o.status_) {}

Process& Process::operator=(Process&& o) noexcept {
    if (this != &o) {
        if (pid_ > 0 && !status_) kill();
        pid_ = std::exchange(o.pid_, -1);
        name_ = std::move(o.name_);
        options_ = std::move(o.options_);
        status_ = o.status_;
    }
    return *this;
}

void Process::signal(int sig) const {
    if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

void Process::reap(int wstatus) {
    status_ = decode_status(wstatus);
}

bool Process::running() {
    if (pid_ <= 0 || status_) return false;
    int wstatus = 0;
    if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) reap(wstatus);
    return !status_;
}

std::optional<ExitStatus> Process::wait(Millis timeout) {
    const auto deadline = Clock::now() + timeout;
    while (running()) {
        if (Clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(2ms);
    }
    return status_;
}

ExitStatus Process::kill() {
    if (pid_ > 0 && !status_) {
        ::kill(pid_, SIGKILL);
        int wstatus = 0;
        while (::waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
        }
        reap(wstatus);
    }
    return status_.value_or(ExitStatus{});
}

std::string Process::stdout_text() const {
    return read_file(options_.stdout_path);
}
std::string Process::stderr_text() const {
    return read_file(options_.stderr_path);
}

RunResult run(std::vector<std::string> argv, Millis timeout, SpawnOptions options) {
    int out_pipe[2];
    int err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw std::runtime_error(errno_text("pipe"));
    Fd out_read(out_pipe[0]);
    Fd out_write(out_pipe[1]);
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error(errno_text("pipe"));
    Fd err_read(err_pipe[0]);
    Fd err_write(err_pipe[1]);
    const pid_t pid = spawn(std::move(argv), options, out_write.get(), err_write.get());
    out_write.reset();
    err_write.reset();

    RunResult result;
    const auto deadline = Clock::now() + timeout;
    bool killed = false;
    while (out_read.get() >= 0 || err_read.get() >= 0) {
        pollfd p[2] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
        const int r = ::poll(p, 2, killed ? 1000 : static_cast<int>(std::max<long long>(left, 0)));
        if (r == 0 && !killed) {
            ::kill(pid, SIGKILL);  // its pipes then reach EOF
            killed = true;
            continue;
        }
        if (r < 0 && errno != EINTR) break;
        for (int i = 0; i < 2; ++i) {
            if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
            char buf[8192];
            const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
            if (n > 0) {
                (i == 0 ? result.out : result.err).append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || errno != EINTR) {
                (i == 0 ? out_read : err_read).reset();
            }
        }
        if (r == 0 && killed) break;
    }
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    result.status = decode_status(wstatus);
    return result;
}

bool wait_until(const std::function<bool()>& predicate, Millis timeout, Millis poll_every) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        if (predicate()) return true;
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(poll_every);
    }
}

bool ipv6_available() {
    static const bool available = can_bind_udp("::1", 0, AF_INET6);
    return available;
}

std::uint16_t free_udp_port() {
    static std::set<std::uint16_t> given;
    static std::mt19937 rng{std::random_device{}()};
    // Ports below the ephemeral range, so that no peer's socket (bound to port 0)
    // can take one between this check and the daemon's bind.
    unsigned low = 32768;
    std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
    range >> low;
    const unsigned lo = low > 12000 ? 10000 : 61000;
    const unsigned hi = low > 12000 ? low - 1 : 65535;
    std::uniform_int_distribution<unsigned> pick(lo, hi);
    for (int attempt = 0; attempt < 1000; ++attempt) {
        const auto port = static_cast<std::uint16_t>(pick(rng));
        if (given.count(port) != 0) continue;
        if (!can_bind_udp("127.0.0.1", port, AF_INET)) continue;
        if (ipv6_available() && !can_bind_udp("::1", port, AF_INET6)) continue;
        given.insert(port);
        return port;
    }
    throw std::runtime_error("no free UDP port found");
}

std::string DaemonConfig::to_toml() const {
    std::ostringstream s;
    s << "[server]\nlisten = [";
    for (std::size_t i = 0; i < listen.size(); ++i) s << (i ? ", " : "") << toml_string(listen[i]);
    s << "]\ncontrol_socket = " << toml_string(control_socket) << "\n\n[peers]\n"
      << "min_interval = " << toml_string(min_interval) << "\n"
      << "max_interval = " << toml_string(max_interval) << "\n"
      << "max_probes = " << max_probes << "\n"
      << "max_peers = " << max_peers << "\n"
      << "max_per_host = " << max_per_host << "\n"
      << "forget_after = " << toml_string(forget_after) << "\n"
      << "down_probe_interval = " << toml_string(down_probe_interval) << "\n"
      << extra;
    return s.str();
}

namespace {

RunResult run_ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv{ctl_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.emplace_back("--json");
    return run(std::move(argv), kPatience);
}

}  // namespace

std::optional<nlohmann::json> try_ctl_json(const std::vector<std::string>& args) {
    const RunResult r = run_ctl(args);
    if (!r.status.exited_with(0)) return std::nullopt;
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    return j;
}

nlohmann::json ctl_json(const std::vector<std::string>& args) {
    const RunResult r = run_ctl(args);
    if (!r.status.exited_with(0))
        throw std::runtime_error("keepalivectl failed (" + r.status.to_string() + "): " + r.err);
    try {
        return nlohmann::json::parse(r.out);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(std::string("keepalivectl printed invalid JSON: ") + e.what() +
                                 "\n" + r.out);
    }
}

nlohmann::json control_request(const std::string& socket_path, std::string_view request) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof sa.sun_path) throw std::runtime_error("socket path too long");
    std::memcpy(sa.sun_path, socket_path.c_str(), socket_path.size() + 1);
    const Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0 || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
        throw std::runtime_error(errno_text("connect " + socket_path));
    const std::string line = std::string(request) + "\n";
    if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(line.size()))
        throw std::runtime_error(errno_text("send"));
    std::string reply;
    const auto deadline = Clock::now() + kPatience;
    for (;;) {
        pollfd p{fd.get(), POLLIN, 0};
        if (::poll(&p, 1, 1000) < 0 && errno != EINTR) throw std::runtime_error(errno_text("poll"));
        if (Clock::now() > deadline) throw std::runtime_error("control socket: no answer");
        if ((p.revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        char buf[65536];
        const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            throw std::runtime_error(errno_text("recv"));
        }
        reply.append(buf, static_cast<std::size_t>(n));
    }
    return nlohmann::json::parse(reply);
}

bool NotifyMessage::has(std::string_view line) const {
    std::string_view rest = text;
    while (!rest.empty()) {
        const auto nl = rest.find('\n');
        if (rest.substr(0, nl) == line) return true;
        if (nl == std::string_view::npos) break;
        rest.remove_prefix(nl + 1);
    }
    return false;
}

std::optional<std::string> NotifyMessage::value(std::string_view name) const {
    std::string_view rest = text;
    while (!rest.empty()) {
        const auto nl = rest.find('\n');
        const std::string_view line = rest.substr(0, nl);
        if (line.size() > name.size() && line.substr(0, name.size()) == name &&
            line[name.size()] == '=')
            return std::string(line.substr(name.size() + 1));
        if (nl == std::string_view::npos) break;
        rest.remove_prefix(nl + 1);
    }
    return std::nullopt;
}

NotifySocket::NotifySocket(std::string path) : path_(std::move(path)) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path_.size() >= sizeof sa.sun_path) throw std::runtime_error("notify path too long");
    std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);
    Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    ::unlink(path_.c_str());
    if (fd.get() < 0 || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
        throw std::runtime_error(errno_text("notify socket " + path_));
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    Fd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (stop.get() < 0) throw std::runtime_error(errno_text("eventfd"));
    fd_ = fd.release();
    stop_fd_ = stop.release();
    thread_ = std::thread([this] { drain(); });
}

NotifySocket::~NotifySocket() {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t w = ::write(stop_fd_, &one, sizeof one);
    thread_.join();
    ::close(fd_);
    ::close(stop_fd_);
    ::unlink(path_.c_str());
}

void NotifySocket::drain() {
    for (;;) {
        pollfd p[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0 && errno != EINTR) return;
        for (;;) {
            // Held across recv and store so that flush() sees an empty queue only
            // once every received message is stored.
            const std::lock_guard lock(mutex_);
            char buf[4096];
            alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
            iovec iov{buf, sizeof buf};
            msghdr msg{};
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control;
            msg.msg_controllen = sizeof control;
            const ssize_t n = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
            if (n < 0) break;
            NotifyMessage m{Clock::now(), 0, std::string(buf, static_cast<std::size_t>(n))};
            for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                    ucred cred{};
                    std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
                    m.pid = cred.pid;
                }
            }
            messages_.push_back(std::move(m));
        }
        if ((p[1].revents & POLLIN) != 0) return;
    }
}

void NotifySocket::flush() const {
    for (;;) {
        {
            const std::lock_guard lock(mutex_);
            int queued = 0;
            if (::ioctl(fd_, SIOCINQ, &queued) != 0 || queued == 0) return;
        }
        std::this_thread::sleep_for(1ms);
    }
}

std::vector<NotifyMessage> NotifySocket::messages() const {
    const std::lock_guard lock(mutex_);
    return messages_;
}

std::size_t NotifySocket::count(std::string_view line) const {
    const std::lock_guard lock(mutex_);
    return static_cast<std::size_t>(std::count_if(
        messages_.begin(), messages_.end(), [&](const NotifyMessage& m) { return m.has(line); }));
}

std::optional<std::string> NotifySocket::latest(std::string_view name) const {
    const std::lock_guard lock(mutex_);
    for (auto it = messages_.rbegin(); it != messages_.rend(); ++it)
        if (auto v = it->value(name)) return v;
    return std::nullopt;
}

std::optional<std::size_t> NotifySocket::find(std::string_view line, std::size_t from) const {
    const std::lock_guard lock(mutex_);
    for (std::size_t i = from; i < messages_.size(); ++i)
        if (messages_[i].has(line)) return i;
    return std::nullopt;
}

Journald::Journald() {
    if (journal_socket_accepts()) {
        available_ = true;
        return;
    }
    const std::string binary_path = "/lib/systemd/systemd-journald";
    if (::access(binary_path.c_str(), X_OK) != 0) {
        reason_ = binary_path + " is not installed";
        return;
    }
    std::error_code ec;
    fs::create_directories("/run/systemd/journal", ec);
    if (ec) {
        reason_ = "cannot create /run/systemd/journal: " + ec.message();
        return;
    }
    try {
        dir_.emplace();
        journald_.emplace(std::vector<std::string>{binary_path},
                          SpawnOptions{dir_->file("journald.out"), dir_->file("journald.err"), {}});
    } catch (const std::exception& e) {
        reason_ = std::string("cannot start systemd-journald: ") + e.what();
        return;
    }
    if (!wait_until([this] { return journal_socket_accepts() || !journald_->running(); }, kPatience,
                    50ms) ||
        !journal_socket_accepts()) {
        reason_ = "systemd-journald did not open /run/systemd/journal/socket (" +
                  (journald_->running() ? std::string("still running")
                                        : journald_->status()->to_string()) +
                  "): " + journald_->stderr_text();
        journald_->kill();
        return;
    }
    available_ = true;
}

Journald::~Journald() {
    if (journald_ && journald_->running()) {
        journald_->signal(SIGTERM);
        if (!journald_->wait(5s)) journald_->kill();
    }
}

std::vector<nlohmann::json> Journald::entries(const std::vector<std::string>& matches) const {
    std::vector<std::string> argv{find_program("journalctl"), "--no-pager", "-o", "json"};
    argv.insert(argv.end(), matches.begin(), matches.end());
    const RunResult r = run(std::move(argv), kPatience);
    if (!r.status.exited_with(0))
        throw std::runtime_error("journalctl failed (" + r.status.to_string() + "): " + r.err);
    std::vector<nlohmann::json> out;
    std::istringstream lines(r.out);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty()) continue;
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded()) out.push_back(std::move(j));
    }
    return out;
}

}  // namespace keepalive::test
