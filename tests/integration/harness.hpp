// Integration test harness: runs the real keepalived, keepalive-peer and
// keepalivectl binaries on loopback and observes them from outside (exit codes,
// logs, keepalivectl JSON, sd_notify messages, journal entries).
//
// Binaries come from the environment (KEEPALIVED, KEEPALIVE_PEER, KEEPALIVECTL,
// set by meson), else from the directory holding the test executable. The
// source tree comes from KEEPALIVE_SOURCE_ROOT. Nothing here sleeps for a fixed
// time to synchronise: callers poll with wait_until() and a generous limit.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace keepalive::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// The default limit of every wait: long enough for a loaded 2-core machine.
inline constexpr Millis kPatience = 20s;

std::string keepalived_path();
std::string peer_path();
std::string ctl_path();
// The source tree (for config/keepalived.toml); fails the test if not found.
std::string source_root();

// The seed of randomised tests: KEEPALIVE_TEST_SEED if set, else random; printed once.
std::uint64_t test_seed();
// A token unique to this run and call, for peer names that must not collide
// with earlier runs (e.g. in the journal): letters and digits only.
std::string unique_token();

std::string read_file(const std::string& path);
void write_file(const std::string& path, std::string_view content);  // throws on failure

// A fresh directory under $TMPDIR (or /tmp), removed on destruction unless the
// current test failed or KEEPALIVE_TEST_KEEP is set; a kept directory is printed.
// Paths stay short enough for Unix socket addresses.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const { return path_; }
    std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

private:
    std::string path_;
};

struct ExitStatus {
    int code = -1;   // exit code, or -1 if killed by a signal
    int signal = 0;  // the signal that killed it, or 0
    bool exited_with(int c) const { return signal == 0 && code == c; }
    std::string to_string() const;
};

struct SpawnOptions {
    std::string stdout_path;  // empty: /dev/null
    std::string stderr_path;  // empty: /dev/null
    // Changes to the environment: a value sets, nullopt removes. The inherited
    // environment is first stripped of NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*,
    // JOURNAL_STREAM and INVOCATION_ID so a child never talks to the systemd
    // that may be running the tests.
    std::map<std::string, std::optional<std::string>> env;
};

// A child process. The destructor SIGKILLs and reaps it if it is still running,
// and the child is SIGKILLed by the kernel if the test process dies first, so no
// test leaves processes behind.
class Process {
public:
    // Starts argv[0] (a path) with argv; throws std::runtime_error if it cannot be executed.
    Process(std::vector<std::string> argv, SpawnOptions options = {});
    ~Process();
    Process(Process&&) noexcept;
    Process& operator=(Process&&) noexcept;
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    pid_t pid() const { return pid_; }
    const std::string& name() const { return name_; }  // basename of argv[0]
    void signal(int sig) const;                        // no-op once reaped
    // True until the process has been reaped (reaps it if it has exited).
    bool running();
    // Waits up to `timeout` for the process to exit; nullopt if it is still running.
    std::optional<ExitStatus> wait(Millis timeout = kPatience);
    // SIGKILL and reap; the status it exited with (or was killed with).
    ExitStatus kill();
    std::optional<ExitStatus> status() const { return status_; }

    std::string stdout_text() const;
    std::string stderr_text() const;
    const std::string& stderr_path() const { return options_.stderr_path; }

private:
    void reap(int wstatus);

    pid_t pid_ = -1;
    std::string name_;
    SpawnOptions options_;
    std::optional<ExitStatus> status_;
};

// The result of running a short-lived command to completion.
struct RunResult {
    ExitStatus status;
    std::string out;
    std::string err;
};
// Runs argv with stdout and stderr captured; the child is killed after
// `timeout` (status.signal is then SIGKILL).
RunResult run(std::vector<std::string> argv, Millis timeout = kPatience, SpawnOptions options = {});

// Polls `predicate` every `poll_every` until it returns true (then true) or
// `timeout` has passed (then false, after one last try).
bool wait_until(const std::function<bool()>& predicate, Millis timeout = kPatience,
                Millis poll_every = 20ms);

// Whether a UDP socket can be bound to [::1].
bool ipv6_available();
// A UDP port outside the ephemeral range that is free on 127.0.0.1 and (if
// available) [::1] and that no earlier call in this process returned.
std::uint16_t free_udp_port();

// keepalived's TOML configuration.
struct DaemonConfig {
    std::vector<std::string> listen;  // "127.0.0.1:PORT", "[::1]:PORT"
    std::string control_socket;
    std::string min_interval = "10ms";
    std::string max_interval = "1h";
    int max_probes = 255;
    int max_peers = 1000;
    int max_per_host = 1000;
    std::string forget_after = "10m";
    std::string down_probe_interval = "1s";
    std::string extra;  // appended verbatim: more tables

    std::string to_toml() const;
};

// Runs keepalivectl with `args` plus --json and parses its output. try_ctl_json
// returns nullopt if keepalivectl fails or prints no JSON; ctl_json throws
// std::runtime_error with keepalivectl's stderr instead.
std::optional<nlohmann::json> try_ctl_json(const std::vector<std::string>& args);
nlohmann::json ctl_json(const std::vector<std::string>& args);

// One request on keepalived's control socket without keepalivectl (for tight
// polling loops where spawning a process per poll would be too slow); throws
// std::runtime_error on failure.
nlohmann::json control_request(const std::string& socket_path, std::string_view request);

// A message received on a NotifySocket.
struct NotifyMessage {
    Clock::time_point at;
    pid_t pid = 0;     // the sender, from SCM_CREDENTIALS (0 if not passed)
    std::string text;  // NAME=value lines, as sent

    // Whether one of the lines is exactly `line` (e.g. "READY=1").
    bool has(std::string_view line) const;
    // The value of NAME= in this message, if present.
    std::optional<std::string> value(std::string_view name) const;
};

// A NOTIFY_SOCKET the test owns: a Unix datagram socket bound to `path`,
// drained continuously by a background thread (the kernel queues only a few
// datagrams per socket, and a sender would block on a full queue).
class NotifySocket {
public:
    explicit NotifySocket(std::string path);  // throws std::runtime_error
    ~NotifySocket();
    NotifySocket(const NotifySocket&) = delete;
    NotifySocket& operator=(const NotifySocket&) = delete;

    const std::string& path() const { return path_; }
    std::vector<NotifyMessage> messages() const;
    // Messages having the line `line`.
    std::size_t count(std::string_view line) const;
    // The value of NAME= in the most recent message that has one.
    std::optional<std::string> latest(std::string_view name) const;
    // Index (into messages()) of the first message at or after `from` having `line`.
    std::optional<std::size_t> find(std::string_view line, std::size_t from = 0) const;
    // Returns once every datagram queued on the socket before the call is in messages().
    void flush() const;

private:
    void drain();

    std::string path_;
    int fd_ = -1;
    int stop_fd_ = -1;
    mutable std::mutex mutex_;
    std::vector<NotifyMessage> messages_;
    std::thread thread_;
};

// A systemd-journald the test can log to and read back: reuses one that
// accepts on /run/systemd/journal/socket, else starts /lib/systemd/systemd-journald
// and stops it again on destruction.
class Journald {
public:
    Journald();  // never throws: see available()
    ~Journald();
    Journald(const Journald&) = delete;
    Journald& operator=(const Journald&) = delete;

    bool available() const { return available_; }
    const std::string& why_unavailable() const { return reason_; }
    // Entries matching every FIELD=value in `matches`, via `journalctl -o json`.
    std::vector<nlohmann::json> entries(const std::vector<std::string>& matches) const;

private:
    bool available_ = false;
    std::string reason_;
    std::optional<Process> journald_;
    std::optional<TempDir> dir_;
};

}  // namespace keepalive::test
