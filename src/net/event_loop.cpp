#include "net/event_loop.hpp"

#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <stdexcept>
#include <string>
#include <system_error>

namespace keepalive {

namespace {

// epoll tokens: user fds carry (serial << 32 | fd); the loop's own fds use values no user
// registration can produce because fds are < 2^31.
constexpr std::uint64_t kTimerToken = ~std::uint64_t{0};
constexpr std::uint64_t kSignalToken = ~std::uint64_t{0} - 1;
constexpr int kMaxEvents = 64;

[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::system_category(), what);
}

std::uint64_t make_token(int fd, std::uint32_t serial) {
    return (std::uint64_t{serial} << 32) | static_cast<std::uint32_t>(fd);
}

timespec to_timespec(TimePoint t) {
    auto ns = t.time_since_epoch().count();
    // An all-zero it_value would disarm the timerfd; a deadline at or before the epoch is simply
    // overdue.
    if (ns <= 0) ns = 1;
    return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

int to_epoll_timeout(std::optional<Duration> timeout) {
    if (!timeout) return -1;
    if (*timeout <= Duration::zero()) return 0;
    // Round up so that a sub-millisecond timeout still waits instead of spinning.
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(*timeout).count();
    return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

}  // namespace

EventLoop::EventLoop(const ClockSource& clock, sys::Ops& ops)
    : clock_(clock), ops_(ops), now_(clock.now()) {
    epoll_fd_.reset(ops_.epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_fd_) throw_errno("epoll_create1");
    // The injected clock is steady_clock (CLOCK_MONOTONIC) in production, so its time points can
    // be handed to a CLOCK_MONOTONIC timerfd as absolute deadlines.
    timer_fd_.reset(ops_.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer_fd_) throw_errno("timerfd_create");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kTimerToken;
    if (ops_.epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, timer_fd_.get(), &ev) < 0)
        throw_errno("epoll_ctl(timerfd)");
    sigemptyset(&signal_mask_);
}

EventLoop::~EventLoop() = default;

void EventLoop::add_fd(int fd, std::uint32_t events, IoHandler handler) {
    if (fd < 0) throw std::system_error(EBADF, std::system_category(), "EventLoop::add_fd");
    if (io_.contains(fd))
        throw std::system_error(EEXIST, std::system_category(), "EventLoop::add_fd");
    const std::uint32_t serial = next_serial_++;
    if (next_serial_ == 0) next_serial_ = 1;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = make_token(fd, serial);
    if (ops_.epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) throw_errno("epoll_ctl(ADD)");
    io_.emplace(fd, IoSource{serial, std::make_shared<IoHandler>(std::move(handler))});
}

void EventLoop::modify_fd(int fd, std::uint32_t events) {
    const auto it = io_.find(fd);
    if (it == io_.end())
        throw std::system_error(ENOENT, std::system_category(), "EventLoop::modify_fd");
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = make_token(fd, it->second.serial);
    if (ops_.epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &ev) < 0) throw_errno("epoll_ctl(MOD)");
}

void EventLoop::remove_fd(int fd) {
    const auto it = io_.find(fd);
    if (it == io_.end()) return;
    // Failure (EBADF after an early close) leaves nothing to undo: a closed fd has already left
    // the epoll set.
    ops_.epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
    io_.erase(it);
}

EventLoop::TimerId EventLoop::add_timer(std::function<void()> handler) {
    timers_.push_back(Timer{std::make_shared<std::function<void()>>(std::move(handler)), {}});
    return timers_.size() - 1;
}

void EventLoop::arm_timer(TimerId id, std::optional<TimePoint> deadline) {
    timers_.at(id).deadline = deadline;
    if (!dispatching_) sync_timerfd();
}

std::optional<TimePoint> EventLoop::timer_deadline(TimerId id) const {
    return timers_.at(id).deadline;
}

std::optional<TimePoint> EventLoop::earliest_deadline() const {
    std::optional<TimePoint> earliest;
    for (const auto& t : timers_)
        if (t.deadline && (!earliest || *t.deadline < *earliest)) earliest = t.deadline;
    return earliest;
}

void EventLoop::sync_timerfd() {
    const auto earliest = earliest_deadline();
    if (earliest == armed_deadline_ && !timerfd_stale_) return;
    itimerspec spec{};
    if (earliest) spec.it_value = to_timespec(*earliest);
    ++timerfd_arms_;
    // Never thrown from the running loop: the deadline stays unsynced, and run_once() caps its
    // wait and tries again.
    if (ops_.timerfd_settime(timer_fd_.get(), TFD_TIMER_ABSTIME, &spec) < 0) {
        ++timerfd_failures_;
        timerfd_stale_ = true;
        return;
    }
    timerfd_stale_ = false;
    armed_deadline_ = earliest;
}

void EventLoop::on_signal(int signo, std::function<void()> handler) {
    sigset_t one;
    sigemptyset(&one);
    if (sigaddset(&one, signo) < 0) throw_errno("sigaddset");
    // pthread_sigmask is sigprocmask with defined behaviour in a multi-threaded process; blocking
    // before other threads start makes every thread inherit the mask.
    if (const int err = pthread_sigmask(SIG_BLOCK, &one, nullptr); err != 0)
        throw std::system_error(err, std::system_category(), "pthread_sigmask");
    sigset_t mask = signal_mask_;
    sigaddset(&mask, signo);
    if (!signal_fd_) {
        UniqueFd fd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
        if (!fd) throw_errno("signalfd");
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = kSignalToken;
        if (ops_.epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd.get(), &ev) < 0)
            throw_errno("epoll_ctl(signalfd)");
        signal_fd_ = std::move(fd);
    } else if (signalfd(signal_fd_.get(), &mask, 0) < 0) {
        throw_errno("signalfd");
    }
    signal_mask_ = mask;
    signal_handlers_[signo] = std::make_shared<std::function<void()>>(std::move(handler));
}

std::size_t EventLoop::run_once(std::optional<Duration> timeout) {
    // Re-sync here too: an exception from a handler may have skipped the sync at the end of
    // the previous iteration.
    sync_timerfd();

    int wait_ms = to_epoll_timeout(timeout);
    // A deadline that is already due (the timerfd was consumed but the handler re-armed to a past
    // time, or a fake clock was advanced) must not wait for the real timerfd.
    if (wait_ms != 0) {
        if (const auto earliest = earliest_deadline(); earliest && *earliest <= clock_.now())
            wait_ms = 0;
    }

    if (timerfd_stale_ && earliest_deadline()) {
        const int cap = to_epoll_timeout(kRearmRetry);
        if (wait_ms < 0 || wait_ms > cap) wait_ms = cap;
    }

    std::array<epoll_event, kMaxEvents> events;
    int n = ops_.epoll_wait(epoll_fd_.get(), events.data(), kMaxEvents, wait_ms);
    if (n < 0) {
        // EINTR, or (never seen on a valid epoll fd) another error: nothing was collected, so
        // nothing is lost; level-triggered fds are reported again by the next wait.
        ++interrupted_waits_;
        n = 0;
    }
    now_ = clock_.now();

    struct DispatchGuard {
        EventLoop& loop;
        explicit DispatchGuard(EventLoop& l) : loop(l) { loop.dispatching_ = true; }
        ~DispatchGuard() { loop.dispatching_ = false; }
    } guard(*this);

    std::size_t ran = 0;
    bool timer_ready = false;
    bool signal_ready = false;
    for (int i = 0; i < n; ++i) {
        const std::uint64_t token = events[i].data.u64;
        if (token == kTimerToken) {
            timer_ready = true;
            continue;
        }
        if (token == kSignalToken) {
            signal_ready = true;
            continue;
        }
        const int fd = static_cast<int>(token & 0xffffffffU);
        const auto it = io_.find(fd);
        // Removed (or removed and re-added) by an earlier handler of this iteration.
        if (it == io_.end() || it->second.serial != static_cast<std::uint32_t>(token >> 32))
            continue;
        // The copy keeps the handler alive if it removes its own fd.
        const auto handler = it->second.handler;
        (*handler)(events[i].events);
        ++ran;
    }
    if (signal_ready) ran += dispatch_signals();
    if (timer_ready) drain_timerfd();
    ran += dispatch_timers();

    sync_timerfd();
    return ran;
}

void EventLoop::run() {
    while (!stop_) run_once(std::nullopt);
    stop_ = false;
}

std::size_t EventLoop::dispatch_signals() {
    std::size_t ran = 0;
    std::array<signalfd_siginfo, 16> infos;
    for (;;) {
        const ssize_t r = ops_.read(signal_fd_.get(), infos.data(), sizeof infos);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;  // EAGAIN: all pending signals consumed
        }
        const std::size_t count = static_cast<std::size_t>(r) / sizeof(signalfd_siginfo);
        for (std::size_t i = 0; i < count; ++i) {
            const auto it = signal_handlers_.find(static_cast<int>(infos[i].ssi_signo));
            if (it == signal_handlers_.end()) continue;
            const auto handler = it->second;
            (*handler)();
            ++ran;
        }
        if (count < infos.size()) break;
    }
    return ran;
}

void EventLoop::drain_timerfd() {
    // Due timers are found by comparing deadlines with now_, not by this count; reading only
    // clears the readiness.
    std::uint64_t expirations;
    while (ops_.read(timer_fd_.get(), &expirations, sizeof expirations) < 0 && errno == EINTR) {
    }
}

std::size_t EventLoop::dispatch_timers() {
    due_.clear();
    for (TimerId id = 0; id < timers_.size(); ++id)
        if (timers_[id].deadline && *timers_[id].deadline <= now_) due_.push_back(id);
    if (due_.empty()) return 0;
    std::sort(due_.begin(), due_.end(), [this](TimerId a, TimerId b) {
        const auto da = *timers_[a].deadline;
        const auto db = *timers_[b].deadline;
        return da != db ? da < db : a < b;
    });
    std::size_t ran = 0;
    // The due set is fixed up front, so a handler re-arming its own timer to <= now cannot run
    // again in this iteration; one that was disarmed by an earlier handler is skipped.
    for (const TimerId id : due_) {
        Timer& t = timers_[id];
        if (!t.deadline || *t.deadline > now_) continue;
        t.deadline.reset();
        // Copy: the handler may add timers and reallocate timers_.
        const auto handler = t.handler;
        (*handler)();
        ++ran;
    }
    return ran;
}

}  // namespace keepalive
