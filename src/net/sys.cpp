#include "net/sys.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

namespace keepalive::sys {
namespace {

class SystemOps final : public Ops {
public:
    int epoll_create1(int flags) override { return ::epoll_create1(flags); }
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event) override {
        return ::epoll_ctl(epfd, op, fd, event);
    }
    int epoll_wait(int epfd, epoll_event* events, int max, int timeout_ms) override {
        return ::epoll_wait(epfd, events, max, timeout_ms);
    }
    int timerfd_create(int clock, int flags) override { return ::timerfd_create(clock, flags); }
    int timerfd_settime(int fd, int flags, const itimerspec* value) override {
        return ::timerfd_settime(fd, flags, value, nullptr);
    }
    ssize_t read(int fd, void* buf, std::size_t len) override { return ::read(fd, buf, len); }
    int recvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) override {
        return ::recvmmsg(fd, msgs, n, flags, nullptr);
    }
    int sendmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) override {
        return ::sendmmsg(fd, msgs, n, flags);
    }
    ssize_t recvmsg(int fd, msghdr* msg, int flags) override { return ::recvmsg(fd, msg, flags); }
    ssize_t sendto(int fd, const void* buf, std::size_t len, int flags, const sockaddr* to,
                   socklen_t tolen) override {
        return ::sendto(fd, buf, len, flags, to, tolen);
    }
    int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) override {
        return ::accept4(fd, addr, len, flags);
    }
    ssize_t recv(int fd, void* buf, std::size_t len, int flags) override {
        return ::recv(fd, buf, len, flags);
    }
    ssize_t send(int fd, const void* buf, std::size_t len, int flags) override {
        return ::send(fd, buf, len, flags);
    }
};

}  // namespace

Ops& system() {
    static SystemOps ops;
    return ops;
}

}  // namespace keepalive::sys
