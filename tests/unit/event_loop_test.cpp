#include "net/event_loop.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "core/clock.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {
namespace {

using std::chrono::milliseconds;

UniqueFd make_eventfd(std::uint64_t initial = 0) {
    UniqueFd fd(eventfd(static_cast<unsigned>(initial), EFD_NONBLOCK | EFD_CLOEXEC));
    if (!fd) throw std::system_error(errno, std::system_category(), "eventfd");
    return fd;
}

void signal_eventfd(int fd) {
    const std::uint64_t one = 1;
    ASSERT_EQ(write(fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
}

std::uint64_t drain_eventfd(int fd) {
    std::uint64_t value = 0;
    if (read(fd, &value, sizeof value) != static_cast<ssize_t>(sizeof value)) return 0;
    return value;
}

TEST(UniqueFdTest, OwnsMovesReleasesAndResets) {
    int raw = eventfd(0, EFD_CLOEXEC);
    ASSERT_GE(raw, 0);
    UniqueFd a(raw);
    EXPECT_TRUE(a);
    EXPECT_EQ(a.get(), raw);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): moved-from state is specified
    EXPECT_EQ(b.get(), raw);
    UniqueFd c;
    c = std::move(b);
    EXPECT_EQ(c.get(), raw);
    EXPECT_EQ(c.release(), raw);
    EXPECT_FALSE(c);
    EXPECT_EQ(fcntl(raw, F_GETFD), FD_CLOEXEC);  // release() did not close
    c.reset(raw);
    c.reset();
    EXPECT_EQ(fcntl(raw, F_GETFD), -1);  // reset() closed it
    EXPECT_EQ(errno, EBADF);
}

TEST(EventLoopTest, NothingReadyRunsNothing) {
    FakeClock clock;
    EventLoop loop(clock);
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
    EXPECT_EQ(loop.now(), clock.now());
    EXPECT_EQ(loop.timerfd_arms(), 0u);
}

TEST(EventLoopTest, TimersFireInDeadlineOrderOnlyWhenDue) {
    FakeClock clock;
    EventLoop loop(clock);
    const TimePoint t0 = clock.now();
    std::vector<std::string> fired;
    const auto a = loop.add_timer([&] { fired.push_back("a"); });
    const auto b = loop.add_timer([&] { fired.push_back("b"); });
    const auto c = loop.add_timer([&] { fired.push_back("c"); });
    loop.arm_timer(a, t0 + milliseconds(30));
    loop.arm_timer(b, t0 + milliseconds(10));
    loop.arm_timer(c, t0 + milliseconds(20));

    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
    clock.advance(milliseconds(9));
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
    EXPECT_TRUE(fired.empty());

    clock.advance(milliseconds(1));  // exactly b's deadline: due
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(fired, (std::vector<std::string>{"b"}));
    EXPECT_FALSE(loop.timer_deadline(b).has_value());

    clock.advance(milliseconds(25));  // both a and c overdue: fired in deadline order
    EXPECT_EQ(loop.run_once(Duration::zero()), 2u);
    EXPECT_EQ(fired, (std::vector<std::string>{"b", "c", "a"}));

    clock.advance(milliseconds(100));
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);  // fired timers stay disarmed
    EXPECT_EQ(fired.size(), 3u);
}

TEST(EventLoopTest, EqualDeadlinesFireInCreationOrder) {
    FakeClock clock;
    EventLoop loop(clock);
    std::vector<int> fired;
    const auto first = loop.add_timer([&] { fired.push_back(1); });
    const auto second = loop.add_timer([&] { fired.push_back(2); });
    loop.arm_timer(second, clock.now());
    loop.arm_timer(first, clock.now());
    EXPECT_EQ(loop.run_once(Duration::zero()), 2u);
    EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

TEST(EventLoopTest, HandlerRearmsItsOwnTimer) {
    FakeClock clock;
    EventLoop loop(clock);
    int ticks = 0;
    EventLoop::TimerId id = 0;
    id = loop.add_timer([&] {
        ++ticks;
        loop.arm_timer(id, loop.now() + milliseconds(10));
    });
    loop.arm_timer(id, clock.now() + milliseconds(10));
    for (int i = 0; i < 5; ++i) {
        clock.advance(milliseconds(5));
        loop.run_once(Duration::zero());
        EXPECT_EQ(ticks, i) << "at +" << (2 * i + 1) * 5 << " ms";
        clock.advance(milliseconds(5));
        loop.run_once(Duration::zero());
    }
    EXPECT_EQ(ticks, 5);
    ASSERT_TRUE(loop.timer_deadline(id).has_value());
    EXPECT_EQ(*loop.timer_deadline(id), clock.now() + milliseconds(10));
}

TEST(EventLoopTest, RearmToPastFiresOnNextIterationNotThisOne) {
    FakeClock clock;
    EventLoop loop(clock);
    int ticks = 0;
    EventLoop::TimerId id = 0;
    id = loop.add_timer([&] {
        ++ticks;
        if (ticks < 3) loop.arm_timer(id, loop.now());
    });
    loop.arm_timer(id, clock.now());
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(ticks, 1);
    // Already due, so even an unbounded wait must return without the clock moving.
    EXPECT_EQ(loop.run_once(std::nullopt), 1u);
    EXPECT_EQ(ticks, 2);
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(ticks, 3);
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
}

TEST(EventLoopTest, DisarmedTimersDoNotFire) {
    FakeClock clock;
    EventLoop loop(clock);
    int a_fired = 0;
    int b_fired = 0;
    EventLoop::TimerId b = 0;
    const auto a = loop.add_timer([&] {
        ++a_fired;
        loop.arm_timer(b, std::nullopt);  // b is due in this same iteration
    });
    b = loop.add_timer([&] { ++b_fired; });
    const auto c = loop.add_timer([] { FAIL() << "disarmed timer fired"; });
    loop.arm_timer(a, clock.now() + milliseconds(1));
    loop.arm_timer(b, clock.now() + milliseconds(2));
    loop.arm_timer(c, clock.now() + milliseconds(3));
    loop.arm_timer(c, std::nullopt);
    EXPECT_FALSE(loop.timer_deadline(c).has_value());
    clock.advance(milliseconds(10));
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(a_fired, 1);
    EXPECT_EQ(b_fired, 0);
}

TEST(EventLoopTest, UnknownTimerIdThrows) {
    FakeClock clock;
    EventLoop loop(clock);
    EXPECT_THROW(loop.arm_timer(3, clock.now()), std::out_of_range);
}

TEST(EventLoopTest, TimerfdRearmedOnlyWhenEarliestDeadlineChanges) {
    FakeClock clock;
    EventLoop loop(clock);
    const TimePoint t0 = clock.now();
    const auto a = loop.add_timer([] {});
    const auto b = loop.add_timer([] {});
    const auto c = loop.add_timer([] {});
    EXPECT_EQ(loop.timerfd_arms(), 0u);

    loop.arm_timer(a, t0 + milliseconds(100));
    EXPECT_EQ(loop.timerfd_arms(), 1u);
    loop.arm_timer(b, t0 + milliseconds(200));  // later than the earliest
    EXPECT_EQ(loop.timerfd_arms(), 1u);
    loop.arm_timer(b, t0 + milliseconds(300));
    EXPECT_EQ(loop.timerfd_arms(), 1u);
    loop.arm_timer(a, t0 + milliseconds(100));  // same deadline again
    EXPECT_EQ(loop.timerfd_arms(), 1u);
    loop.arm_timer(c, t0 + milliseconds(50));  // new earliest
    EXPECT_EQ(loop.timerfd_arms(), 2u);
    loop.arm_timer(c, std::nullopt);  // earliest back to a
    EXPECT_EQ(loop.timerfd_arms(), 3u);

    for (int i = 0; i < 10; ++i) loop.run_once(Duration::zero());
    EXPECT_EQ(loop.timerfd_arms(), 3u);  // iterations without changes never touch the timerfd

    clock.advance(milliseconds(100));  // a fires; earliest becomes b
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(loop.timerfd_arms(), 4u);

    loop.arm_timer(b, std::nullopt);  // nothing armed: one disarming call
    EXPECT_EQ(loop.timerfd_arms(), 5u);
    loop.arm_timer(b, std::nullopt);
    EXPECT_EQ(loop.timerfd_arms(), 5u);
}

TEST(EventLoopTest, ArmingInsideHandlersIsCoalescedPerIteration) {
    FakeClock clock;
    EventLoop loop(clock);
    EventLoop::TimerId id = 0;
    const auto other = loop.add_timer([] {});
    id = loop.add_timer([&] {
        // Churn that ends with a new earliest deadline: one timerfd_settime, not four.
        loop.arm_timer(id, loop.now() + milliseconds(5));
        loop.arm_timer(other, loop.now() + milliseconds(1));
        loop.arm_timer(id, std::nullopt);
        loop.arm_timer(id, loop.now() + milliseconds(10));
    });
    loop.arm_timer(id, clock.now());
    const auto before = loop.timerfd_arms();
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(loop.timerfd_arms(), before + 1);
    EXPECT_EQ(*loop.timer_deadline(other), loop.now() + milliseconds(1));
}

TEST(EventLoopTest, NowIsReadOnceForTheWholeIteration) {
    FakeClock clock;
    EventLoop loop(clock);
    UniqueFd e1 = make_eventfd(1);
    UniqueFd e2 = make_eventfd(1);
    std::vector<TimePoint> seen;
    const TimePoint start = clock.now();
    auto handler = [&](int fd) {
        return [&, fd](std::uint32_t) {
            drain_eventfd(fd);
            seen.push_back(loop.now());
            clock.advance(milliseconds(7));  // time passes while handlers run
        };
    };
    loop.add_fd(e1.get(), EPOLLIN, handler(e1.get()));
    loop.add_fd(e2.get(), EPOLLIN, handler(e2.get()));
    bool late_fired = false;
    const auto late = loop.add_timer([&] {
        late_fired = true;
        seen.push_back(loop.now());
    });
    const auto due = loop.add_timer([&] { seen.push_back(loop.now()); });
    // Due only by the clock as read *after* the io handlers advanced it: must wait a turn.
    loop.arm_timer(late, start + milliseconds(5));
    loop.arm_timer(due, start);

    EXPECT_EQ(loop.run_once(Duration::zero()), 3u);
    EXPECT_FALSE(late_fired);
    ASSERT_EQ(seen.size(), 3u);
    for (const TimePoint t : seen) EXPECT_EQ(t, start);
    EXPECT_EQ(loop.now(), start);

    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_TRUE(late_fired);
    EXPECT_EQ(loop.now(), start + milliseconds(14));
    EXPECT_EQ(seen.back(), start + milliseconds(14));
}

TEST(EventLoopTest, EventfdReadinessAndModify) {
    FakeClock clock;
    EventLoop loop(clock);
    UniqueFd efd = make_eventfd();
    std::vector<std::uint32_t> events;
    loop.add_fd(efd.get(), EPOLLIN, [&](std::uint32_t ev) {
        events.push_back(ev);
        if (ev & EPOLLIN) drain_eventfd(efd.get());
    });
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
    signal_eventfd(efd.get());
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0], static_cast<std::uint32_t>(EPOLLIN));
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);  // drained: level-triggered readiness gone

    loop.modify_fd(efd.get(), EPOLLOUT);  // an eventfd is always writable
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(events.back(), static_cast<std::uint32_t>(EPOLLOUT));
    loop.modify_fd(efd.get(), EPOLLIN);
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
}

TEST(EventLoopTest, PipeAndSocketpairReadiness) {
    FakeClock clock;
    EventLoop loop(clock);
    int p[2];
    ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
    UniqueFd pipe_r(p[0]);
    UniqueFd pipe_w(p[1]);
    int s[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, s), 0);
    UniqueFd left(s[0]);
    UniqueFd right(s[1]);

    std::string pipe_data;
    loop.add_fd(pipe_r.get(), EPOLLIN, [&](std::uint32_t) {
        char buf[16];
        const ssize_t n = read(pipe_r.get(), buf, sizeof buf);
        if (n > 0) pipe_data.append(buf, static_cast<std::size_t>(n));
    });
    std::uint32_t right_events = 0;
    loop.add_fd(right.get(), EPOLLIN | EPOLLRDHUP, [&](std::uint32_t ev) { right_events = ev; });

    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
    ASSERT_EQ(write(pipe_w.get(), "ping", 4), 4);
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(pipe_data, "ping");

    left.reset();  // peer hang-up
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_TRUE(right_events & EPOLLRDHUP);
}

TEST(EventLoopTest, AddFdErrorsThrow) {
    FakeClock clock;
    EventLoop loop(clock);
    UniqueFd efd = make_eventfd();
    loop.add_fd(efd.get(), EPOLLIN, [](std::uint32_t) {});
    EXPECT_THROW(loop.add_fd(efd.get(), EPOLLIN, [](std::uint32_t) {}), std::system_error);
    EXPECT_THROW(loop.add_fd(-1, EPOLLIN, [](std::uint32_t) {}), std::system_error);
    int unused[2];
    ASSERT_EQ(pipe2(unused, O_CLOEXEC), 0);
    close(unused[0]);
    close(unused[1]);
    EXPECT_THROW(loop.add_fd(unused[0], EPOLLIN, [](std::uint32_t) {}), std::system_error);
    EXPECT_THROW(loop.modify_fd(unused[0], EPOLLIN), std::system_error);
    loop.remove_fd(unused[0]);  // unknown fd: no-op
    // A failed add left no registration behind: the number can be added once it is open.
    UniqueFd again = make_eventfd(1);
    ASSERT_EQ(again.get(), unused[0]);
    int runs = 0;
    loop.add_fd(again.get(), EPOLLIN, [&](std::uint32_t) {
        ++runs;
        drain_eventfd(again.get());
    });
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(runs, 1);
}

TEST(EventLoopTest, HandlerRemovesItsOwnFd) {
    FakeClock clock;
    EventLoop loop(clock);
    UniqueFd efd = make_eventfd(1);
    // Captured state that would be freed with the handler: ASan catches a use after free.
    auto payload = std::make_shared<std::vector<int>>(1000, 7);
    int sum_after_remove = 0;
    loop.add_fd(efd.get(), EPOLLIN, [&loop, &efd, &sum_after_remove, payload](std::uint32_t) {
        loop.remove_fd(efd.get());
        for (const int v : *payload) sum_after_remove += v;
    });
    payload.reset();
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(sum_after_remove, 7000);
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);  // still readable, but no longer watched
}

TEST(EventLoopTest, HandlerRemovesAnotherReadyFdEvenIfItsNumberIsReused) {
    FakeClock clock;
    EventLoop loop(clock);
    std::array<UniqueFd, 2> fds{make_eventfd(1), make_eventfd(1)};
    int original_runs = 0;
    int replacement_runs = 0;
    UniqueFd replacement;
    // Both fds are ready in the same epoll_wait; whichever runs first removes and closes the other
    // and registers a fresh, idle eventfd that gets the same number. The stale event collected
    // for the old fd must not reach the new handler.
    auto make_handler = [&](std::size_t self) {
        return [&, self](std::uint32_t) {
            drain_eventfd(fds[self].get());
            ++original_runs;
            UniqueFd& other = fds[1 - self];
            const int other_number = other.get();
            loop.remove_fd(other_number);
            other.reset();
            replacement = make_eventfd(0);
            ASSERT_EQ(replacement.get(), other_number);
            loop.add_fd(replacement.get(), EPOLLIN, [&](std::uint32_t) { ++replacement_runs; });
        };
    };
    loop.add_fd(fds[0].get(), EPOLLIN, make_handler(0));
    loop.add_fd(fds[1].get(), EPOLLIN, make_handler(1));
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(original_runs, 1);
    EXPECT_EQ(replacement_runs, 0);
    signal_eventfd(replacement.get());
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(replacement_runs, 1);
}

TEST(EventLoopTest, SignalIsDeliveredThroughSignalfd) {
    FakeClock clock;
    EventLoop loop(clock);
    int usr1 = 0;
    int usr2 = 0;
    loop.on_signal(SIGUSR1, [&] { ++usr1; });
    loop.on_signal(SIGUSR2, [&] { ++usr2; });
    sigset_t blocked;
    ASSERT_EQ(pthread_sigmask(SIG_BLOCK, nullptr, &blocked), 0);
    EXPECT_EQ(sigismember(&blocked, SIGUSR1), 1);
    EXPECT_EQ(sigismember(&blocked, SIGUSR2), 1);

    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);
    // Blocked, so raise() leaves it pending instead of killing the test.
    ASSERT_EQ(raise(SIGUSR1), 0);
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(usr1, 1);
    EXPECT_EQ(usr2, 0);

    ASSERT_EQ(raise(SIGUSR2), 0);
    ASSERT_EQ(raise(SIGUSR1), 0);
    EXPECT_EQ(loop.run_once(Duration::zero()), 2u);  // both read in one wake-up
    EXPECT_EQ(usr1, 2);
    EXPECT_EQ(usr2, 1);
    EXPECT_EQ(loop.run_once(Duration::zero()), 0u);

    // Re-registering replaces the handler.
    int replaced = 0;
    loop.on_signal(SIGUSR1, [&] { ++replaced; });
    ASSERT_EQ(raise(SIGUSR1), 0);
    EXPECT_EQ(loop.run_once(std::nullopt), 1u);
    EXPECT_EQ(replaced, 1);
    EXPECT_EQ(usr1, 2);
}

TEST(EventLoopTest, DispatchOrderIsIoThenSignalsThenTimers) {
    FakeClock clock;
    EventLoop loop(clock);
    std::vector<std::string> order;
    UniqueFd efd = make_eventfd(1);
    loop.add_fd(efd.get(), EPOLLIN, [&](std::uint32_t) {
        drain_eventfd(efd.get());
        order.push_back("io");
    });
    loop.on_signal(SIGUSR2, [&] { order.push_back("signal"); });
    const auto t = loop.add_timer([&] { order.push_back("timer"); });
    loop.arm_timer(t, clock.now());
    ASSERT_EQ(raise(SIGUSR2), 0);
    EXPECT_EQ(loop.run_once(Duration::zero()), 3u);
    EXPECT_EQ(order, (std::vector<std::string>{"io", "signal", "timer"}));
}

TEST(EventLoopTest, RunUntilStop) {
    FakeClock clock;
    EventLoop loop(clock);
    UniqueFd efd = make_eventfd(1);
    int io_runs = 0;
    int timer_runs = 0;
    const auto t = loop.add_timer([&] {
        ++timer_runs;
        loop.stop();
    });
    loop.add_fd(efd.get(), EPOLLIN, [&](std::uint32_t) {
        ++io_runs;
        drain_eventfd(efd.get());
        loop.arm_timer(t, loop.now());
    });
    loop.run();
    EXPECT_EQ(io_runs, 1);
    EXPECT_EQ(timer_runs, 1);

    // stop() before run(): run() returns without waiting; afterwards the loop runs again.
    loop.stop();
    loop.run();
    EXPECT_EQ(timer_runs, 1);
    signal_eventfd(efd.get());
    loop.run();
    EXPECT_EQ(io_runs, 2);
    EXPECT_EQ(timer_runs, 2);
}

TEST(EventLoopTest, HandlerExceptionPropagatesAndLoopStaysUsable) {
    FakeClock clock;
    EventLoop loop(clock);
    const auto bad = loop.add_timer([] { throw std::runtime_error("boom"); });
    int good_runs = 0;
    const auto good = loop.add_timer([&] { ++good_runs; });
    loop.arm_timer(bad, clock.now());
    EXPECT_THROW(loop.run_once(Duration::zero()), std::runtime_error);
    loop.arm_timer(good, clock.now() + milliseconds(1));
    clock.advance(milliseconds(1));
    EXPECT_EQ(loop.run_once(Duration::zero()), 1u);
    EXPECT_EQ(good_runs, 1);
}

// The only test on the real clock: the timerfd itself must wake epoll_wait. No sleeping; the
// iteration cap only guards against a broken loop returning early forever.
TEST(EventLoopTest, RealTimerfdWakesAnUnboundedWait) {
    SystemClock clock;
    EventLoop loop(clock);
    const TimePoint deadline = clock.now() + milliseconds(20);
    bool fired = false;
    const auto t = loop.add_timer([&] { fired = true; });
    loop.arm_timer(t, deadline);
    int iterations = 0;
    while (!fired && iterations < 1000) {
        loop.run_once(std::nullopt);
        ++iterations;
    }
    EXPECT_TRUE(fired);
    EXPECT_GE(loop.now(), deadline);
    EXPECT_GE(clock.now(), deadline);
}

}  // namespace
}  // namespace keepalive
