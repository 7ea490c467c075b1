// EventLoop: one thread, one epoll fd, with io, timer and signal sources.
//
// Timers are a handful of named deadlines sharing one CLOCK_MONOTONIC timerfd
// (TFD_TIMER_ABSTIME) armed to the earliest of them. Signals arrive through a
// signalfd. Time comes from an injected ClockSource and is read once per
// iteration, so every handler of one iteration sees the same now().
#pragma once

#include <signal.h>
#include <sys/epoll.h>  // EPOLLIN, EPOLLOUT, ... for callers of add_fd()

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "core/clock.hpp"
#include "net/sys.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {

// Not thread-safe: every member, stop() included, must be called from the loop's thread.
class EventLoop {
public:
    // `clock` and `ops` must outlive the loop; every epoll, timerfd and read call goes through
    // `ops`. Throws std::system_error if epoll/timerfd creation fails.
    explicit EventLoop(const ClockSource& clock, sys::Ops& ops = sys::system());
    // Closes the loop's own descriptors (not the registered fds). Signals registered with
    // on_signal() stay blocked: unblocking could deliver a pending one with its default action.
    ~EventLoop();
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // ---- io ----
    using IoHandler = std::function<void(std::uint32_t epoll_events)>;
    // Watches `fd` (level-triggered unless EPOLLET is given) and calls `handler` with the ready
    // events. The fd stays owned by the caller and must be removed before it is closed.
    // Throws std::system_error on failure (e.g. the fd is already registered).
    void add_fd(int fd, std::uint32_t events, IoHandler handler);
    // Changes the watched events. Throws std::system_error if the fd is not registered.
    void modify_fd(int fd, std::uint32_t events);
    // Stops watching `fd`; a no-op if it is not registered. Safe from inside any handler, even the
    // fd's own: the running handler is kept alive until it returns, and events already collected
    // for a removed fd are dropped (also when the same fd number is registered again meanwhile).
    void remove_fd(int fd);

    // ---- timers ----
    using TimerId = std::size_t;
    // Creates a disarmed timer. Ids are dense and stay valid for the loop's lifetime.
    TimerId add_timer(std::function<void()> handler);
    // Sets (or with nullopt clears) the timer's deadline on the loop's clock. Calls made while the
    // loop is dispatching are coalesced: the timerfd is re-armed at most once per iteration, and
    // only when the earliest armed deadline changed. Throws std::out_of_range for an unknown id.
    void arm_timer(TimerId id, std::optional<TimePoint> deadline);
    // The timer's current deadline, nullopt when disarmed.
    std::optional<TimePoint> timer_deadline(TimerId id) const;

    // ---- signals ----
    // Blocks `signo` for the calling thread (and, when called before other threads start, for
    // the whole process) and delivers it through the signalfd. Registering a signal again
    // replaces its handler. Throws std::system_error on failure.
    void on_signal(int signo, std::function<void()> handler);

    // ---- running ----
    // One iteration: waits at most `timeout` (nullopt = until something is ready, 0 = poll; the
    // wait is skipped when a timer is already due), reads the clock once, then runs the handlers
    // of ready fds, then of received signals, then of every timer whose deadline <= now() in
    // deadline order. A timer is disarmed just before its handler runs; a handler that re-arms
    // its own timer to a deadline <= now() runs again on the next iteration, not this one.
    // An interrupted wait (EINTR) is an iteration that found nothing ready: what was ready stays
    // ready for the next one. A timerfd that cannot be armed is counted and retried every
    // iteration, the wait meanwhile capped so that no timer is late by more than kRearmRetry.
    // Exceptions from handlers propagate. Returns the number of handlers run.
    std::size_t run_once(std::optional<Duration> timeout);
    // Calls run_once(nullopt) until stop(). Returns at once if stop() was called before.
    void run();
    // Makes run() return after the current iteration.
    void stop() { stop_ = true; }

    // The time read at the start of the current (or last) iteration; the clock's time at
    // construction before the first iteration.
    TimePoint now() const { return now_; }
    // How many times timerfd_settime() was called (arming and disarming), for tests.
    std::uint64_t timerfd_arms() const { return timerfd_arms_; }
    // Waits cut short by a signal (EINTR), and timerfd_settime() failures, since construction.
    std::uint64_t interrupted_waits() const { return interrupted_waits_; }
    std::uint64_t timerfd_failures() const { return timerfd_failures_; }
    // The system calls the loop makes, for its users' own (sockets, control socket).
    sys::Ops& sys() const { return ops_; }

    // The longest wait while the timerfd could not be armed.
    static constexpr Duration kRearmRetry = std::chrono::milliseconds(10);

private:
    struct IoSource {
        std::uint32_t serial;
        std::shared_ptr<IoHandler> handler;
    };
    struct Timer {
        std::shared_ptr<std::function<void()>> handler;
        std::optional<TimePoint> deadline;
    };

    std::optional<TimePoint> earliest_deadline() const;
    void sync_timerfd();
    std::size_t dispatch_signals();
    std::size_t dispatch_timers();
    void drain_timerfd();

    const ClockSource& clock_;
    sys::Ops& ops_;
    UniqueFd epoll_fd_;
    UniqueFd timer_fd_;
    UniqueFd signal_fd_;
    TimePoint now_;

    std::unordered_map<int, IoSource> io_;
    std::uint32_t next_serial_ = 1;

    std::vector<Timer> timers_;
    std::vector<TimerId> due_;                 // scratch for dispatch_timers()
    std::optional<TimePoint> armed_deadline_;  // what the timerfd is set to
    std::uint64_t timerfd_arms_ = 0;
    bool timerfd_stale_ = false;  // the last timerfd_settime() failed
    std::uint64_t interrupted_waits_ = 0;
    std::uint64_t timerfd_failures_ = 0;

    sigset_t signal_mask_{};
    std::unordered_map<int, std::shared_ptr<std::function<void()>>> signal_handlers_;

    bool dispatching_ = false;
    bool stop_ = false;
};

}  // namespace keepalive
