// FaultOps: the real system calls, except those a test asks to fail. Each
// call is forwarded to the kernel (real loopback sockets, real epoll) unless
// an injected fault is due: then it fails with the given errno without
// touching the kernel, so whatever it would have read stays queued and
// whatever it would have sent is not sent. A short write sends fewer bytes
// than asked, for real.
#pragma once

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "net/sys.hpp"

namespace keepalive::test_support {

enum class Call : std::size_t {
    epoll_wait,
    epoll_ctl,
    timerfd_settime,
    read,
    recvmmsg,
    sendmmsg,
    recvmsg,
    sendto,
    accept4,
    recv,
    send,
    count_
};

class FaultOps final : public sys::Ops, public sys::Notifier {
public:
    // The next `times` calls of `call`, after `skip` successful ones, fail with `error`.
    void fail(Call call, int error, int times = 1, int skip = 0) {
        faults_[index(call)].push_back({error, times, skip});
    }
    // The next `times` send() calls write at most `max_bytes` bytes.
    void short_writes(std::size_t max_bytes, int times) {
        short_max_ = max_bytes;
        short_left_ = times;
    }

    // Calls made (including failed ones), and faults injected, per kind.
    std::uint64_t calls(Call c) const { return calls_[index(c)]; }
    std::uint64_t injected(Call c) const { return injected_[index(c)]; }
    std::uint64_t short_writes_done() const { return short_done_; }
    bool faults_pending() const {
        for (const auto& q : faults_)
            if (!q.empty()) return true;
        return short_left_ > 0;
    }

    // Everything sent to the "service manager", in order.
    std::vector<std::string> notifications;
    int notify_result = 1;

    int epoll_create1(int flags) override { return sys::system().epoll_create1(flags); }
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event) override {
        if (inject(Call::epoll_ctl)) return -1;
        return sys::system().epoll_ctl(epfd, op, fd, event);
    }
    int epoll_wait(int epfd, epoll_event* events, int max, int timeout_ms) override {
        if (inject(Call::epoll_wait)) return -1;
        return sys::system().epoll_wait(epfd, events, max, timeout_ms);
    }
    int timerfd_create(int clock, int flags) override {
        return sys::system().timerfd_create(clock, flags);
    }
    int timerfd_settime(int fd, int flags, const itimerspec* value) override {
        if (inject(Call::timerfd_settime)) return -1;
        return sys::system().timerfd_settime(fd, flags, value);
    }
    ssize_t read(int fd, void* buf, std::size_t len) override {
        if (inject(Call::read)) return -1;
        return sys::system().read(fd, buf, len);
    }
    int recvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) override {
        if (inject(Call::recvmmsg)) return -1;
        return sys::system().recvmmsg(fd, msgs, n, flags);
    }
    int sendmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) override {
        if (inject(Call::sendmmsg)) return -1;
        return sys::system().sendmmsg(fd, msgs, n, flags);
    }
    ssize_t recvmsg(int fd, msghdr* msg, int flags) override {
        if (inject(Call::recvmsg)) return -1;
        return sys::system().recvmsg(fd, msg, flags);
    }
    ssize_t sendto(int fd, const void* buf, std::size_t len, int flags, const sockaddr* to,
                   socklen_t tolen) override {
        if (inject(Call::sendto)) return -1;
        return sys::system().sendto(fd, buf, len, flags, to, tolen);
    }
    int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) override {
        if (inject(Call::accept4)) return -1;
        return sys::system().accept4(fd, addr, len, flags);
    }
    ssize_t recv(int fd, void* buf, std::size_t len, int flags) override {
        if (inject(Call::recv)) return -1;
        return sys::system().recv(fd, buf, len, flags);
    }
    ssize_t send(int fd, const void* buf, std::size_t len, int flags) override {
        if (inject(Call::send)) return -1;
        if (short_left_ > 0 && len > short_max_) {
            --short_left_;
            ++short_done_;
            len = short_max_;
        }
        return sys::system().send(fd, buf, len, flags);
    }

    int notify(const std::string& state) override {
        notifications.push_back(state);
        return notify_result;
    }
    int notify_with_fds(const std::string& state, std::span<const int>) override {
        notifications.push_back(state);
        return notify_result;
    }

private:
    struct Fault {
        int error;
        int times;
        int skip;
    };
    static constexpr std::size_t index(Call c) { return static_cast<std::size_t>(c); }

    // True (with errno set) when this call is to fail.
    bool inject(Call c) {
        ++calls_[index(c)];
        auto& queue = faults_[index(c)];
        if (queue.empty()) return false;
        Fault& f = queue.front();
        if (f.skip > 0) {
            --f.skip;
            return false;
        }
        const int error = f.error;
        if (--f.times <= 0) queue.pop_front();
        ++injected_[index(c)];
        errno = error;
        return true;
    }

    static constexpr std::size_t kCalls = static_cast<std::size_t>(Call::count_);
    std::array<std::deque<Fault>, kCalls> faults_;
    std::array<std::uint64_t, kCalls> calls_{};
    std::array<std::uint64_t, kCalls> injected_{};
    std::size_t short_max_ = 0;
    int short_left_ = 0;
    std::uint64_t short_done_ = 0;
};

}  // namespace keepalive::test_support
