// Hook commands run on peer events ([[hooks]] in keepalived.toml): spawned
// with posix_spawn, watched through a pidfd and a stderr pipe on the event
// loop, never waited for. Hooks of one peer run one at a time in event
// order; different peers' hooks run in parallel, at most kMaxRunning at once.
// A hook past its timeout is killed with its whole process group.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/clock.hpp"
#include "daemon/config.hpp"
#include "daemon/event_ring.hpp"
#include "daemon/log.hpp"
#include "net/event_loop.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {

using HookConfig = HookConfigEntry;
// Whether the hook runs for this event: its states list is empty or names
// the state the event leaves the peer in ("forgotten" for a forgotten one).
bool hook_matches(const HookConfig& hook, const EventRecord& e);

class HookRunner {
public:
    static constexpr std::size_t kMaxRunning = 16;
    // Pending runs beyond this are dropped (and counted, and logged) rather
    // than letting a flood of events grow the queue without bound.
    static constexpr std::size_t kMaxPending = 100'000;
    static constexpr std::size_t kMaxStderr = 4096;  // bytes of a hook's stderr kept for the log

    HookRunner(EventLoop& loop, Logger& log);
    ~HookRunner();  // kills and reaps what still runs
    HookRunner(const HookRunner&) = delete;
    HookRunner& operator=(const HookRunner&) = delete;

    // New hooks apply to events from now on; queued and running ones finish.
    void configure(std::vector<HookConfig> hooks) { hooks_ = std::move(hooks); }
    void on_event(const EventRecord& event);

    std::size_t running() const { return running_.size(); }
    std::size_t pending() const { return pending_; }
    std::uint64_t dropped() const { return dropped_; }
    std::uint64_t started() const { return started_; }

private:
    struct Job {
        HookConfig hook;
        EventRecord event;
    };
    struct Running {
        Job job;
        pid_t pid = -1;
        UniqueFd pidfd;
        UniqueFd err;  // read end of the hook's stderr
        std::string stderr_text;
        TimePoint started{};
        TimePoint deadline{};
        bool killed = false;
    };

    void pump();
    bool start(Job job);
    void on_exit(int pidfd);
    void read_stderr(Running& r);
    void on_timeout();
    void arm_timer();

    EventLoop& loop_;
    Logger& log_;
    std::vector<HookConfig> hooks_;
    std::unordered_map<std::string, std::deque<Job>> queues_;  // per peer name, event order
    std::unordered_map<std::string, bool> busy_;               // peer name -> a hook is running
    std::deque<std::string> ready_;   // peers with a queued job and none running, FIFO
    std::map<int, Running> running_;  // by pidfd
    std::size_t pending_ = 0;
    std::uint64_t dropped_ = 0;
    std::uint64_t started_ = 0;
    EventLoop::TimerId timer_;
};

}  // namespace keepalive
