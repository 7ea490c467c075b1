// UdpSocket: a non-blocking UDP socket that reads and writes in batches
// (recvmmsg/sendmmsg) and knows the local address of every received datagram
// (IP_PKTINFO / IPV6_RECVPKTINFO), so that a reply leaves from the address the
// request came to even when the socket is bound to a wildcard address.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/address.hpp"
#include "core/result.hpp"
#include "net/sys.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {

// The largest datagram this project ever sends.
inline constexpr std::size_t kMaxPayload = 512;

struct OutDatagram {
    Address to;
    // Local source address (its port is ignored); nullopt lets the kernel choose.
    std::optional<Address> from;
    std::array<std::uint8_t, kMaxPayload> data;
    std::uint16_t size = 0;
};

class UdpSocket {
public:
    // Receive buffer size per datagram: anything larger is reported as truncated.
    static constexpr std::size_t kReceiveBufferSize = 2048;
    // Datagrams per recvmmsg/sendmmsg call.
    static constexpr std::size_t kBatchSize = 64;

    // Creates a socket bound to `local` (port 0 picks one; IPv6 sockets are IPV6_V6ONLY), with
    // CLOEXEC, NONBLOCK, pktinfo enabled and a receive buffer of up to 1 MiB. The error text names
    // the address and the system error. The socket's datagram calls go through `ops`, which
    // must outlive it.
    static Result<UdpSocket, std::string> bind(const Address& local, sys::Ops& ops = sys::system());
    // Takes over an already bound UDP socket (e.g. from socket activation): makes it CLOEXEC and
    // non-blocking and enables pktinfo. A dual-stack IPv6 socket (IPV6_V6ONLY=0) is supported;
    // its IPv4 peers appear as IPv4 addresses. Fails if `fd` is not a UDP socket.
    static Result<UdpSocket, std::string> adopt(UniqueFd fd, sys::Ops& ops = sys::system());

    // A moved-from socket may only be destroyed or assigned to.
    UdpSocket(UdpSocket&&) noexcept;
    UdpSocket& operator=(UdpSocket&&) noexcept;
    ~UdpSocket();

    int fd() const { return fd_.get(); }
    // The bound address, with the port resolved if 0 was requested.
    const Address& local() const { return local_; }

    struct Received {
        Address from;
        // The local address the datagram was sent to, with the socket's bound port.
        Address to;
        // At most kReceiveBufferSize bytes; valid only during the callback.
        std::span<const std::uint8_t> data;
        // The datagram was larger than kReceiveBufferSize and `data` is its head.
        bool truncated;
    };
    // Reads up to `max` pending datagrams without blocking and calls `fn` for each, in arrival
    // order. Returns how many were passed to `fn`: 0 when nothing was pending. `fn` may send on
    // this socket but must not call receive_batch() on it. Receive errors are counted in
    // receive_errors(), never thrown.
    // `before`, if given, sees the data of every datagram one recvmmsg call
    // read before `fn` sees the first of them (e.g. to prefetch what they will need).
    using BatchHint = std::function<void(std::span<const std::span<const std::uint8_t>>)>;
    std::size_t receive_batch(const std::function<void(const Received&)>& fn,
                              std::size_t max = kBatchSize, const BatchHint& before = {});

    // An ICMP error the kernel queued for a datagram this socket sent (IP_RECVERR and
    // IPV6_RECVERR are enabled on every socket).
    struct SendError {
        Address to;                       // where the datagram was going
        int error;                        // errno: ECONNREFUSED (port unreachable), EHOSTUNREACH, ...
        std::optional<Address> reporter;  // the host that sent the ICMP error, if given
        std::span<const std::uint8_t> quoted;  // the start of the datagram; valid during the call
    };
    // Reads up to `max` queued errors (MSG_ERRQUEUE) without blocking and calls `fn` for each
    // ICMP one. Call when epoll reports EPOLLERR: until the queue is drained it keeps doing so.
    // Returns how many errors were read.
    std::size_t drain_errors(const std::function<void(const SendError&)>& fn,
                             std::size_t max = kBatchSize);

    // Sends the datagrams in order, setting the source address from `from` when given. Returns how
    // many were handed to the kernel. A datagram that cannot be sent (kernel error, size over
    // kMaxPayload, address family the socket cannot reach) is counted in send_errors() and
    // skipped; when the socket buffer is full (EAGAIN) the rest of the batch is counted and
    // dropped; ENOBUFS and ENOMEM (the host's own queues or memory) count as a full buffer too.
    // Never throws.
    std::size_t send_batch(std::span<const OutDatagram> batch) noexcept;
    // One datagram of any size, no source address. Failures are counted in send_errors().
    bool send_to(const Address& to, std::span<const std::uint8_t> data);

    std::uint64_t send_errors() const { return send_errors_; }
    // Of send_errors(), the datagrams that never left because this host had no room for them
    // (EAGAIN, ENOBUFS, ENOMEM): no evidence about where they were going.
    std::uint64_t send_no_room() const { return send_no_room_; }
    std::uint64_t receive_errors() const { return receive_errors_; }
    // Datagrams the kernel dropped because this socket's receive queue was
    // full (SO_RXQ_OVFL), as last reported with a received datagram.
    std::uint64_t overflow_drops() const { return overflow_drops_; }

private:
    struct Buffers;

    UdpSocket(UniqueFd fd, int family, bool v6only, Address local, sys::Ops& ops);
    static Result<UdpSocket, std::string> finish_setup(UniqueFd fd, std::string_view what,
                                                       sys::Ops& ops);
    // Fills `sa` with the destination for `to`; 0 if this socket cannot reach that family.
    socklen_t destination(const Address& to, struct sockaddr_storage& sa) const;
    // Bound to this very address (not a wildcard): it is the source of what the socket sends.
    bool is_bound_to(const Address& a) const;

    UniqueFd fd_;
    sys::Ops* ops_;
    int family_;
    bool v6only_;
    Address local_;
    std::unique_ptr<Buffers> buffers_;
    std::uint64_t send_errors_ = 0;
    std::uint64_t send_no_room_ = 0;
    std::uint64_t receive_errors_ = 0;
    std::uint64_t overflow_drops_ = 0;
};

}  // namespace keepalive
