#include "daemon/hooks.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/duration.hpp"
#include "daemon/event_text.hpp"

extern char** environ;

namespace keepalive {
namespace {

// What the daemon got from systemd is not the hook's to use.
bool inherited(std::string_view entry) {
    for (const std::string_view prefix :
         {"NOTIFY_SOCKET=", "WATCHDOG_PID=", "WATCHDOG_USEC=", "LISTEN_FDS=", "LISTEN_PID=",
          "LISTEN_FDNAMES=", "KEEPALIVE_"})
        if (entry.starts_with(prefix)) return false;
    return true;
}

std::vector<std::string> environment(const EventRecord& e) {
    std::vector<std::string> env;
    for (char** p = environ; p != nullptr && *p != nullptr; ++p)
        if (inherited(*p)) env.emplace_back(*p);
    const auto add = [&](std::string_view key, std::string_view value) {
        env.push_back(fmt::format("KEEPALIVE_{}={}", key, value));
    };
    add("PEER_NAME", e.name.view());
    add("PEER_STATE", e.state_text());
    add("PEER_PREVIOUS_STATE", e.previous_state_text());
    add("PEER_ADDRESS", e.address.to_string());
    add("PEER_SESSION", e.session_text());
    add("EVENT", to_string(e.kind));
    add("EVENT_SEQ", std::to_string(e.seq));
    add("REASON", e.reason.text());
    return env;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (auto& s : strings) out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

// One line for the journal: a hook's stderr may hold anything.
std::string one_line(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    std::string out;
    for (const char c : text) {
        if (c == '\n')
            out += " | ";
        else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            out += '?';
        else
            out += c;
    }
    return out;
}

}  // namespace

bool hook_matches(const HookConfig& hook, const EventRecord& e) {
    return hook.states.empty() ||
           std::find(hook.states.begin(), hook.states.end(), e.state_text()) != hook.states.end();
}

HookRunner::HookRunner(EventLoop& loop, Logger& log) : loop_(loop), log_(log) {
    timer_ = loop_.add_timer([this] { on_timeout(); });
}

HookRunner::~HookRunner() {
    for (auto& [fd, r] : running_) {
        ::kill(-r.pid, SIGKILL);
        loop_.remove_fd(fd);
        if (r.err) loop_.remove_fd(r.err.get());
        ::waitpid(r.pid, nullptr, 0);
    }
    loop_.arm_timer(timer_, std::nullopt);
}

void HookRunner::on_event(const EventRecord& event) {
    for (const HookConfig& hook : hooks_) {
        if (!hook_matches(hook, event)) continue;
        if (pending_ >= kMaxPending) {
            if (dropped_++ == 0 || dropped_ % 10'000 == 0)
                log_.logf(LOG_WARNING, "hooks: {} runs queued, dropping; {} dropped so far",
                          pending_, dropped_);
            continue;
        }
        const std::string name(event.name.view());
        auto& queue = queues_[name];
        // A peer is in ready_ exactly when it has queued jobs and none running.
        if (queue.empty() && !busy_[name]) ready_.push_back(name);
        queue.push_back(Job{hook, event});
        ++pending_;
    }
    pump();
}

void HookRunner::pump() {
    while (running_.size() < kMaxRunning && !ready_.empty()) {
        const std::string name = std::move(ready_.front());
        ready_.pop_front();
        auto it = queues_.find(name);
        if (it == queues_.end() || it->second.empty()) continue;
        Job job = std::move(it->second.front());
        it->second.pop_front();
        --pending_;
        if (start(std::move(job))) {
            busy_[name] = true;
        } else if (!it->second.empty()) {
            ready_.push_back(name);  // the next event of this peer may still run
        } else {
            queues_.erase(it);
            busy_.erase(name);
        }
    }
    arm_timer();
}

bool HookRunner::start(Job job) {
    const std::string& path = job.hook.exec.front();
    const auto failed = [&](const char* what, int error) {
        log_.logf(LOG_WARNING, "hook {} for peer {} (event {}): {}: {}", path,
                  job.event.name.view(), job.event.seq, what, std::strerror(error));
        return false;
    };
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) return failed("pipe", errno);
    UniqueFd err_read(pipe_fds[0]);
    UniqueFd err_write(pipe_fds[1]);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, err_write.get(), 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // Its own process group, so a timeout kills what it started too; no
    // signal blocked (the daemon blocks those it reads through signalfd) and
    // every disposition at its default.
    sigset_t none;
    sigset_t all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                        POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_USEVFORK);
    std::vector<std::string> argv_strings = job.hook.exec;
    std::vector<std::string> env_strings = environment(job.event);
    auto argv = pointers(argv_strings);
    auto envp = pointers(env_strings);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, path.c_str(), &actions, &attr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) return failed("cannot run it", rc);
    err_write.reset();

    // Through syscall(): glibc 2.36's <sys/pidfd.h> lacks extern "C".
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (!pidfd) {
        const int error = errno;
        ::kill(-pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        return failed("pidfd_open", error);
    }
    ++started_;
    const int key = pidfd.get();
    const int err_fd = err_read.get();
    Running& r = running_[key];
    r.job = std::move(job);
    r.pid = pid;
    r.pidfd = std::move(pidfd);
    r.err = std::move(err_read);
    r.started = loop_.now();
    r.deadline = loop_.now() + r.job.hook.timeout;
    loop_.add_fd(key, EPOLLIN, [this, key](std::uint32_t) { on_exit(key); });
    loop_.add_fd(err_fd, EPOLLIN, [this, key](std::uint32_t) {
        if (auto it = running_.find(key); it != running_.end()) read_stderr(it->second);
    });
    return true;
}

// Keeps the first kMaxStderr bytes; the rest is read and thrown away so the
// hook never blocks on a full pipe.
void HookRunner::read_stderr(Running& r) {
    if (!r.err) return;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(r.err.get(), buf, sizeof buf);
        if (n > 0) {
            const std::size_t room = kMaxStderr - std::min(kMaxStderr, r.stderr_text.size());
            r.stderr_text.append(buf, std::min(room, static_cast<std::size_t>(n)));
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        // EOF (or an error): every writer is gone.
        loop_.remove_fd(r.err.get());
        r.err.reset();
        return;
    }
}

void HookRunner::on_exit(int pidfd) {
    auto it = running_.find(pidfd);
    if (it == running_.end()) return;
    Running& r = it->second;
    siginfo_t info{};
    if (::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG) != 0 ||
        info.si_pid == 0)
        return;  // not yet (spurious wake-up)
    read_stderr(r);
    if (r.err) {
        loop_.remove_fd(r.err.get());  // a child it left behind may still hold the pipe
        r.err.reset();
    }
    loop_.remove_fd(pidfd);

    const EventRecord& e = r.job.event;
    std::string how;
    int priority = LOG_WARNING;
    if (r.killed) {
        how = "was killed after its timeout of " + format_duration(r.job.hook.timeout);
    } else if (info.si_code == CLD_EXITED) {
        how = "exited with status " + std::to_string(info.si_status);
        if (info.si_status == 0) priority = r.stderr_text.empty() ? LOG_DEBUG : LOG_INFO;
    } else {
        const char* sig = ::sigabbrev_np(info.si_status);
        how = "was killed by signal " +
              (sig ? "SIG" + std::string(sig) : std::to_string(info.si_status));
    }
    std::string message = fmt::format("hook {} for peer {} (event {}, {}) {}", r.job.hook.exec[0],
                                      e.name.view(), e.seq, e.state_text(), how);
    if (!r.stderr_text.empty()) message += ": " + one_line(r.stderr_text);
    log_.log(priority, message);

    const std::string name(e.name.view());
    running_.erase(it);
    auto q = queues_.find(name);
    if (q != queues_.end() && !q->second.empty()) {
        busy_[name] = false;
        ready_.push_back(name);
    } else {
        if (q != queues_.end()) queues_.erase(q);
        busy_.erase(name);
    }
    pump();
}

void HookRunner::on_timeout() {
    const TimePoint now = loop_.now();
    for (auto& [fd, r] : running_)
        if (!r.killed && r.deadline <= now) {
            ::kill(-r.pid, SIGKILL);  // the group: what it started goes too
            r.killed = true;
        }
    arm_timer();
}

void HookRunner::arm_timer() {
    std::optional<TimePoint> next;
    for (const auto& [fd, r] : running_)
        if (!r.killed && (!next || r.deadline < *next)) next = r.deadline;
    loop_.arm_timer(timer_, next);
}

}  // namespace keepalive
