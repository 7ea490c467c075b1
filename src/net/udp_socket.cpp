#include "net/udp_socket.hpp"

#include <fcntl.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

namespace keepalive {

namespace {

// Room for one IP_PKTINFO or IPV6_PKTINFO message, with slack for anything else the kernel adds.
constexpr std::size_t kControlSize = 128;
// Asked of every socket the daemon binds; the kernel grants at most
// net.core.rmem_max (and counts twice that). 8 MiB was tried: at 100 000
// peers at 1 s on a machine where they took 80% of a core, ACKs queued
// instead of dropped gave 24 928 false suspects in a run against 1 642 at
// 1 MiB (docs/benchmarks.md, "Fifth session").
constexpr int kReceiveBufferBytes = 1 << 20;

struct alignas(cmsghdr) ControlBuffer {
    unsigned char bytes[kControlSize];
};

std::string error_text(std::string_view what, std::string_view subject, int err) {
    std::string s(what);
    s += ' ';
    s += subject;
    s += ": ";
    s += std::system_category().message(err);
    return s;
}

bool set_int_option(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value) == 0;
}

bool enable_pktinfo(int fd, int family) {
    // On a dual-stack IPv6 socket IPV6_RECVPKTINFO also reports IPv4 datagrams (v4-mapped).
    return family == AF_INET ? set_int_option(fd, IPPROTO_IP, IP_PKTINFO, 1)
                             : set_int_option(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1);
}

// ICMP errors for sent datagrams come back through the error queue, so that the
// daemon can tell "host up, no agent" from "unreachable". Best effort: without
// it only the distinction is lost. A dual-stack socket takes both options.
void enable_recverr(int fd, int family) {
    set_int_option(fd, IPPROTO_IP, IP_RECVERR, 1);
    if (family == AF_INET6) set_int_option(fd, IPPROTO_IPV6, IPV6_RECVERR, 1);
}

// Errors the kernel reports on a send or receive call once IP_RECVERR is on:
// they belong to an earlier datagram (read from the error queue), not this call.
bool is_reported_icmp_error(int error) {
    return error == ECONNREFUSED || error == EHOSTUNREACH || error == ENETUNREACH ||
           error == EHOSTDOWN || error == EPROTO || error == ENOPROTOOPT || error == EMSGSIZE;
}

void set_v4_mapped(in6_addr& out, const Address& v4) {
    std::memset(&out, 0, sizeof out);
    out.s6_addr[10] = 0xff;
    out.s6_addr[11] = 0xff;
    std::memcpy(&out.s6_addr[12], v4.bytes().data(), 4);
}

// The local address a datagram arrived on, from its pktinfo control message,
// and the socket's receive-queue drop count when the kernel attached it.
std::optional<Address> local_address(msghdr& h, std::uint16_t port, std::uint32_t& drops) {
    std::optional<Address> result;
    for (cmsghdr* c = CMSG_FIRSTHDR(&h); c != nullptr; c = CMSG_NXTHDR(&h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL &&
            c->cmsg_len >= CMSG_LEN(sizeof(std::uint32_t))) {
            std::memcpy(&drops, CMSG_DATA(c), sizeof drops);
        } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
                   c->cmsg_len >= CMSG_LEN(sizeof(in_pktinfo))) {
            in_pktinfo info;
            std::memcpy(&info, CMSG_DATA(c), sizeof info);
            sockaddr_in sin{};
            sin.sin_family = AF_INET;
            sin.sin_addr = info.ipi_addr;  // the header's destination, not the routing address
            sin.sin_port = htons(port);
            result = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof sin);
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO &&
                   c->cmsg_len >= CMSG_LEN(sizeof(in6_pktinfo))) {
            in6_pktinfo info;
            std::memcpy(&info, CMSG_DATA(c), sizeof info);
            sockaddr_in6 sin6{};
            sin6.sin6_family = AF_INET6;
            sin6.sin6_addr = info.ipi6_addr;
            sin6.sin6_port = htons(port);
            // A link-local source is only usable for the reply together with its interface.
            if (IN6_IS_ADDR_LINKLOCAL(&info.ipi6_addr)) sin6.sin6_scope_id = info.ipi6_ifindex;
            result = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin6), sizeof sin6);
        }
    }
    return result;
}

}  // namespace

struct UdpSocket::Buffers {
    struct Slots {
        std::array<mmsghdr, kBatchSize> msgs;
        std::array<iovec, kBatchSize> iovs;
        std::array<sockaddr_storage, kBatchSize> names;
        std::array<ControlBuffer, kBatchSize> controls;
    };
    // Separate send slots, so that a receive callback can send without clobbering the batch
    // still being delivered.
    Slots rx;
    Slots tx;
    std::array<std::array<std::uint8_t, kReceiveBufferSize>, kBatchSize> data;
};

UdpSocket::UdpSocket(UniqueFd fd, int family, bool v6only, Address local, sys::Ops& ops)
    : fd_(std::move(fd)),
      ops_(&ops),
      family_(family),
      v6only_(v6only),
      local_(local),
      buffers_(std::make_unique<Buffers>()) {}

UdpSocket::UdpSocket(UdpSocket&&) noexcept = default;
UdpSocket& UdpSocket::operator=(UdpSocket&&) noexcept = default;
UdpSocket::~UdpSocket() = default;

Result<UdpSocket, std::string> UdpSocket::finish_setup(UniqueFd fd, std::string_view what,
                                                       sys::Ops& ops) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) < 0)
        return Err{error_text("cannot read the address of", what, errno)};
    const int family = ss.ss_family;
    if (family != AF_INET && family != AF_INET6)
        return Err{error_text("not an IP socket:", what, EAFNOSUPPORT)};
    // A v6 socket bound to a v4-mapped address reports it as IPv4, like its peers.
    const auto local = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
    if (!local) return Err{error_text("cannot read the address of", what, EAFNOSUPPORT)};

    int v6only = 0;
    if (family == AF_INET6) {
        socklen_t optlen = sizeof v6only;
        if (getsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) < 0)
            return Err{error_text("cannot read IPV6_V6ONLY of", what, errno)};
    }
    // Only a wildcard socket needs to be told which address a datagram came
    // to: one bound to an address receives on that address alone, and it is
    // the source of its replies anyway (see send_batch). The control message
    // would cost each datagram a few hundred nanoseconds for nothing.
    if (local->is_any() && !enable_pktinfo(fd.get(), family))
        return Err{error_text("cannot enable pktinfo on", what, errno)};
    enable_recverr(fd.get(), family);
    // The kernel then tells, with the datagrams that follow, how many it
    // dropped for want of buffer space: the daemon's evidence that an ACK it
    // never saw may have been sent after all.
    if (!set_int_option(fd.get(), SOL_SOCKET, SO_RXQ_OVFL, 1))
        return Err{error_text("cannot enable SO_RXQ_OVFL on", what, errno)};
    return UdpSocket(std::move(fd), family, v6only != 0, *local, ops);
}

Result<UdpSocket, std::string> UdpSocket::bind(const Address& local, sys::Ops& ops) {
    const std::string name = local.to_string();
    const int family = local.family() == Address::Family::v4 ? AF_INET : AF_INET6;
    UniqueFd fd(socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return Err{error_text("cannot create a UDP socket for", name, errno)};
    if (family == AF_INET6 && !set_int_option(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1))
        return Err{error_text("cannot set IPV6_V6ONLY on", name, errno)};
    // Best effort: the kernel caps this at net.core.rmem_max, and a smaller buffer only means
    // earlier drops under a burst.
    set_int_option(fd.get(), SOL_SOCKET, SO_RCVBUF, kReceiveBufferBytes);
    sockaddr_storage ss;
    const socklen_t len = local.to_sockaddr(ss);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) < 0)
        return Err{error_text("cannot bind a UDP socket to", name, errno)};
    return finish_setup(std::move(fd), name, ops);
}

Result<UdpSocket, std::string> UdpSocket::adopt(UniqueFd fd, sys::Ops& ops) {
    const std::string name = "fd " + std::to_string(fd.get());
    int type = 0;
    int protocol = 0;
    socklen_t optlen = sizeof type;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &optlen) < 0)
        return Err{error_text("cannot adopt", name, errno)};
    optlen = sizeof protocol;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_PROTOCOL, &protocol, &optlen) < 0)
        return Err{error_text("cannot adopt", name, errno)};
    if (type != SOCK_DGRAM || protocol != IPPROTO_UDP)
        return Err{error_text("cannot adopt", name + " (not a UDP socket)", ENOTSUP)};
    const int flags = fcntl(fd.get(), F_GETFL);
    if (flags < 0 || fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0)
        return Err{error_text("cannot make non-blocking:", name, errno)};
    if (fcntl(fd.get(), F_SETFD, FD_CLOEXEC) < 0)
        return Err{error_text("cannot set FD_CLOEXEC on", name, errno)};
    return finish_setup(std::move(fd), name, ops);
}

socklen_t UdpSocket::destination(const Address& to, sockaddr_storage& sa) const {
    const bool to_v4 = to.family() == Address::Family::v4;
    if (family_ == AF_INET) return to_v4 ? to.to_sockaddr(sa) : 0;
    if (!to_v4) return to.to_sockaddr(sa);
    if (v6only_) return 0;
    // A dual-stack socket reaches IPv4 peers through v4-mapped addresses.
    std::memset(&sa, 0, sizeof sa);
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&sa);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(to.port());
    set_v4_mapped(sin6->sin6_addr, to);
    return sizeof(sockaddr_in6);
}

bool UdpSocket::is_bound_to(const Address& a) const {
    return !local_.is_any() && a.same_host(local_) && a.scope_id() == local_.scope_id();
}

std::size_t UdpSocket::receive_batch(const std::function<void(const Received&)>& fn,
                                     std::size_t max, const BatchHint& before) {
    auto& rx = buffers_->rx;
    std::size_t read_total = 0;
    std::size_t delivered = 0;
    while (read_total < max) {
        const std::size_t want = std::min(max - read_total, kBatchSize);
        for (std::size_t i = 0; i < want; ++i) {
            rx.iovs[i] = iovec{buffers_->data[i].data(), kReceiveBufferSize};
            msghdr& h = rx.msgs[i].msg_hdr;
            h = msghdr{};
            h.msg_name = &rx.names[i];
            h.msg_namelen = sizeof(sockaddr_storage);
            h.msg_iov = &rx.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = rx.controls[i].bytes;
            h.msg_controllen = kControlSize;
            rx.msgs[i].msg_len = 0;
        }
        const int r =
            ops_->recvmmsg(fd_.get(), rx.msgs.data(), static_cast<unsigned>(want), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            // A pending ICMP error or similar: count it; epoll reports the socket again if
            // datagrams remain.
            if (errno != EAGAIN && errno != EWOULDBLOCK && !is_reported_icmp_error(errno))
                ++receive_errors_;
            break;
        }
        const auto got = static_cast<std::size_t>(r);
        read_total += got;
        if (before) {
            std::array<std::span<const std::uint8_t>, kBatchSize> datagrams;
            for (std::size_t i = 0; i < got; ++i)
                datagrams[i] = {buffers_->data[i].data(),
                                std::min<std::size_t>(rx.msgs[i].msg_len, kReceiveBufferSize)};
            before(std::span(datagrams.data(), got));
        }
        for (std::size_t i = 0; i < got; ++i) {
            msghdr& h = rx.msgs[i].msg_hdr;
            const auto from = Address::from_sockaddr(
                reinterpret_cast<const sockaddr*>(&rx.names[i]), h.msg_namelen);
            if (!from) {
                ++receive_errors_;
                continue;
            }
            std::uint32_t drops = 0;
            const auto to = local_address(h, local_.port(), drops);
            // The count is cumulative (and wraps at 2^32): it only ever moves on.
            if (drops != 0 && drops != static_cast<std::uint32_t>(overflow_drops_))
                overflow_drops_ +=
                    static_cast<std::uint32_t>(drops - static_cast<std::uint32_t>(overflow_drops_));
            const std::size_t size = std::min<std::size_t>(rx.msgs[i].msg_len, kReceiveBufferSize);
            const Received received{*from, to.value_or(local_),
                                    std::span<const std::uint8_t>(buffers_->data[i].data(), size),
                                    (h.msg_flags & MSG_TRUNC) != 0};
            fn(received);
            ++delivered;
        }
        if (got < want) break;  // drained; spare the syscall that would return EAGAIN
    }
    return delivered;
}

std::size_t UdpSocket::send_batch(std::span<const OutDatagram> batch) noexcept {
    auto& tx = buffers_->tx;
    std::size_t sent = 0;
    std::size_t pending = 0;
    bool buffer_full = false;

    const auto flush = [&] {
        std::size_t i = 0;
        bool retried = false;
        while (i < pending) {
            const int r = ops_->sendmmsg(fd_.get(), &tx.msgs[i], static_cast<unsigned>(pending - i),
                                         MSG_DONTWAIT);
            if (r > 0) {
                sent += static_cast<std::size_t>(r);
                i += static_cast<std::size_t>(r);
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            // An ICMP error for an earlier datagram surfaces on the next send and
            // is cleared by it; this datagram was not sent, so send it again (once).
            if (r < 0 && is_reported_icmp_error(errno) && !retried) {
                retried = true;
                continue;
            }
            if (r < 0 &&
                (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == ENOMEM)) {
                // The socket buffer (or the device queue, or memory) is full: nothing more fits
                // now, so drop the rest rather than fail one syscall per datagram.
                send_errors_ += pending - i;
                send_no_room_ += pending - i;
                buffer_full = true;
                break;
            }
            // sendmmsg reports only the first failure; skip that datagram and go on.
            ++send_errors_;
            ++i;
        }
        pending = 0;
    };

    for (const OutDatagram& d : batch) {
        if (buffer_full) {
            ++send_errors_;
            ++send_no_room_;
            continue;
        }
        if (d.size > kMaxPayload) {
            ++send_errors_;
            continue;
        }
        const std::size_t k = pending;
        const socklen_t namelen = destination(d.to, tx.names[k]);
        if (namelen == 0) {
            ++send_errors_;
            continue;
        }
        msghdr& h = tx.msgs[k].msg_hdr;
        h = msghdr{};
        h.msg_name = &tx.names[k];
        h.msg_namelen = namelen;
        // sendmsg does not write through iov_base.
        tx.iovs[k] = iovec{const_cast<std::uint8_t*>(d.data.data()), d.size};
        h.msg_iov = &tx.iovs[k];
        h.msg_iovlen = 1;
        tx.msgs[k].msg_len = 0;

        // No pktinfo when the socket is bound to that very address: the kernel
        // takes it as the source by itself.
        if (d.from && !d.from->is_any() && !is_bound_to(*d.from)) {
            const bool via_v4 = d.to.family() == Address::Family::v4;
            if ((d.from->family() == Address::Family::v4) != via_v4) {
                ++send_errors_;
                continue;
            }
            unsigned char* control = tx.controls[k].bytes;
            h.msg_control = control;
            if (family_ == AF_INET) {
                h.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo));
                cmsghdr* c = CMSG_FIRSTHDR(&h);
                c->cmsg_level = IPPROTO_IP;
                c->cmsg_type = IP_PKTINFO;
                c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
                in_pktinfo info{};
                std::memcpy(&info.ipi_spec_dst, d.from->bytes().data(), 4);
                std::memcpy(CMSG_DATA(c), &info, sizeof info);
            } else {
                h.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo));
                cmsghdr* c = CMSG_FIRSTHDR(&h);
                c->cmsg_level = IPPROTO_IPV6;
                c->cmsg_type = IPV6_PKTINFO;
                c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
                in6_pktinfo info{};
                if (via_v4) {
                    set_v4_mapped(info.ipi6_addr, *d.from);
                } else {
                    std::memcpy(&info.ipi6_addr, d.from->bytes().data(), 16);
                    info.ipi6_ifindex = d.from->scope_id();
                }
                std::memcpy(CMSG_DATA(c), &info, sizeof info);
            }
        }
        if (++pending == kBatchSize) flush();
    }
    flush();
    return sent;
}

std::size_t UdpSocket::drain_errors(const std::function<void(const SendError&)>& fn,
                                    std::size_t max) {
    std::size_t read = 0;
    std::array<std::uint8_t, kReceiveBufferSize> data;
    ControlBuffer control;
    for (; read < max; ++read) {
        sockaddr_storage name{};
        iovec iov{data.data(), data.size()};
        msghdr h{};
        h.msg_name = &name;
        h.msg_namelen = sizeof name;
        h.msg_iov = &iov;
        h.msg_iovlen = 1;
        h.msg_control = control.bytes;
        h.msg_controllen = kControlSize;
        const ssize_t n = ops_->recvmsg(fd_.get(), &h, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;  // EAGAIN: drained
        }
        const auto to =
            Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&name), h.msg_namelen);
        for (cmsghdr* c = CMSG_FIRSTHDR(&h); c != nullptr; c = CMSG_NXTHDR(&h, c)) {
            const bool v4 = c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR;
            const bool v6 = c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_RECVERR;
            if ((!v4 && !v6) || c->cmsg_len < CMSG_LEN(sizeof(sock_extended_err))) continue;
            sock_extended_err ee;
            std::memcpy(&ee, CMSG_DATA(c), sizeof ee);
            if (ee.ee_origin != SO_EE_ORIGIN_ICMP && ee.ee_origin != SO_EE_ORIGIN_ICMP6) continue;
            if (!to) continue;
            // The reporter's address follows the extended error (SO_EE_OFFENDER).
            std::optional<Address> reporter;
            const std::size_t offender_at = sizeof ee;
            const std::size_t room = c->cmsg_len - CMSG_LEN(0);
            if (room > offender_at) {
                sockaddr_storage off{};
                std::memcpy(&off, CMSG_DATA(c) + offender_at,
                            std::min(room - offender_at, sizeof off));
                if (off.ss_family == AF_INET || off.ss_family == AF_INET6)
                    reporter = Address::from_sockaddr(
                        reinterpret_cast<const sockaddr*>(&off),
                        off.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
            }
            fn(SendError{
                *to, static_cast<int>(ee.ee_errno), reporter,
                std::span<const std::uint8_t>(
                    data.data(), std::min<std::size_t>(static_cast<std::size_t>(n), data.size()))});
        }
    }
    return read;
}

bool UdpSocket::send_to(const Address& to, std::span<const std::uint8_t> data) {
    sockaddr_storage ss;
    const socklen_t len = destination(to, ss);
    if (len == 0) {
        ++send_errors_;
        return false;
    }
    ssize_t r;
    do {
        r = ops_->sendto(fd_.get(), data.data(), data.size(), MSG_DONTWAIT,
                         reinterpret_cast<const sockaddr*>(&ss), len);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        ++send_errors_;
        return false;
    }
    return true;
}

}  // namespace keepalive
