// The system calls the running daemon makes, behind one small interface, so
// that tests can make any of them fail (EAGAIN, ENOBUFS, EINTR, EMFILE, a
// short write) while everything else stays real. Production uses system(),
// which calls the kernel directly. Calls that move datagrams are batch calls
// (recvmmsg/sendmmsg), so the indirection costs one virtual call per batch,
// not per datagram.
//
// Each member has the contract of the system call it is named after: a
// result < 0 means failure with the reason in errno.
#pragma once

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <span>
#include <string>

struct itimerspec;

namespace keepalive::sys {

class Ops {
public:
    virtual ~Ops() = default;

    virtual int epoll_create1(int flags) = 0;
    virtual int epoll_ctl(int epfd, int op, int fd, epoll_event* event) = 0;
    virtual int epoll_wait(int epfd, epoll_event* events, int max, int timeout_ms) = 0;
    virtual int timerfd_create(int clock, int flags) = 0;
    virtual int timerfd_settime(int fd, int flags, const itimerspec* value) = 0;
    // Reads of the loop's timerfd and signalfd.
    virtual ssize_t read(int fd, void* buf, std::size_t len) = 0;

    virtual int recvmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) = 0;
    virtual int sendmmsg(int fd, mmsghdr* msgs, unsigned n, int flags) = 0;
    virtual ssize_t recvmsg(int fd, msghdr* msg, int flags) = 0;
    virtual ssize_t sendto(int fd, const void* buf, std::size_t len, int flags, const sockaddr* to,
                           socklen_t tolen) = 0;

    // The control socket's stream calls.
    virtual int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) = 0;
    virtual ssize_t recv(int fd, void* buf, std::size_t len, int flags) = 0;
    virtual ssize_t send(int fd, const void* buf, std::size_t len, int flags) = 0;
};

// The kernel's calls, unchanged.
Ops& system();

// Messages to the service manager (sd_notify(3)). A separate interface
// because only the daemon speaks to systemd: the net library does not link
// libsystemd.
class Notifier {
public:
    virtual ~Notifier() = default;
    // As sd_notify(0, state): > 0 sent, 0 no service manager, < 0 -errno.
    virtual int notify(const std::string& state) = 0;
    // As sd_pid_notify_with_fds(0, 0, state, fds): hands `fds` to the manager (the fd store).
    virtual int notify_with_fds(const std::string& state, std::span<const int> fds) = 0;
};

}  // namespace keepalive::sys
