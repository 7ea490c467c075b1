// ICMP errors on UdpSocket (IP_RECVERR), on loopback: a datagram to a port
// nobody listens on comes back as "port unreachable" in the error queue, with
// the destination and the start of the datagram; and the errors such
// datagrams leave pending cost no other datagram sent.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/epoll.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "net/udp_socket.hpp"

namespace keepalive {
namespace {

Address loopback(std::uint16_t port) {
    return *Address::parse("127.0.0.1:" + std::to_string(port));
}

// A loopback port with nobody behind it: bound, read, closed.
std::uint16_t closed_port() {
    auto s = UdpSocket::bind(loopback(0));
    EXPECT_TRUE(s);
    return s->local().port();
}

bool wait_for(int fd, short events) {
    pollfd p{fd, events, 0};
    return ::poll(&p, 1, 5000) == 1 && (p.revents & events) != 0;
}

TEST(UdpErrors, PortUnreachableIsReadFromTheErrorQueue) {
    auto sender = UdpSocket::bind(loopback(0));
    ASSERT_TRUE(sender) << sender.error();
    const Address nobody = loopback(closed_port());
    const std::uint8_t probe[] = {0x4B, 0x41, 1, 5, 0, 0, 0, 28, 0xDE, 0xAD, 0xBE, 0xEF};
    ASSERT_TRUE(sender->send_to(nobody, probe));
    ASSERT_TRUE(wait_for(sender->fd(), POLLERR));

    std::vector<UdpSocket::SendError> seen;
    std::vector<std::uint8_t> quoted;
    sender->drain_errors([&](const UdpSocket::SendError& e) {
        seen.push_back(e);
        quoted.assign(e.quoted.begin(), e.quoted.end());
    });
    ASSERT_EQ(seen.size(), 1U);
    EXPECT_EQ(seen[0].to, nobody);
    EXPECT_EQ(seen[0].error, ECONNREFUSED);
    ASSERT_TRUE(seen[0].reporter);
    EXPECT_EQ(seen[0].reporter->host_string(), "127.0.0.1");
    EXPECT_EQ(quoted, std::vector<std::uint8_t>(std::begin(probe), std::end(probe)));
    // Drained: nothing left to report.
    pollfd p{sender->fd(), POLLERR, 0};
    EXPECT_EQ(::poll(&p, 1, 0), 0);
}

TEST(UdpErrors, APendingErrorDoesNotCostTheNextDatagram) {
    auto sender = UdpSocket::bind(loopback(0));
    auto receiver = UdpSocket::bind(loopback(0));
    ASSERT_TRUE(sender && receiver);
    const std::uint8_t one[] = {1};
    ASSERT_TRUE(sender->send_to(loopback(closed_port()), one));
    ASSERT_TRUE(wait_for(sender->fd(), POLLERR));  // the ICMP error is pending now

    std::vector<OutDatagram> batch(1);
    batch[0].to = receiver->local();
    batch[0].data[0] = 42;
    batch[0].size = 1;
    EXPECT_EQ(sender->send_batch(batch), 1U);
    EXPECT_EQ(sender->send_errors(), 0U);
    ASSERT_TRUE(wait_for(receiver->fd(), POLLIN));
    std::size_t got = 0;
    receiver->receive_batch([&](const UdpSocket::Received& r) {
        ASSERT_EQ(r.data.size(), 1U);
        EXPECT_EQ(r.data[0], 42);
        ++got;
    });
    EXPECT_EQ(got, 1U);
}

// On loopback the ICMP error for a datagram to a closed port is there before
// sendmmsg moves to the next datagram of the batch, and fails it (sendmmsg
// then returns a short count). A BYE 8 to a dead peer, with an error still
// pending from its last probe, must not cost the live peers after it theirs.
TEST(UdpErrors, DatagramsToClosedPortsInABatchCostNoOtherDatagram) {
    auto sender = UdpSocket::bind(loopback(0));
    auto receiver = UdpSocket::bind(loopback(0));
    ASSERT_TRUE(sender && receiver);
    const std::uint8_t one[] = {1};
    ASSERT_TRUE(sender->send_to(loopback(closed_port()), one));
    ASSERT_TRUE(wait_for(sender->fd(), POLLERR));  // an error is pending

    const Address nobody = loopback(closed_port());
    std::vector<OutDatagram> batch;
    for (std::uint8_t n = 0; n < 12; ++n) {
        OutDatagram& d = batch.emplace_back();
        d.to = n % 3 == 0 ? nobody : receiver->local();
        d.data[0] = n;
        d.size = 1;
    }
    EXPECT_EQ(sender->send_batch(batch), batch.size());
    EXPECT_EQ(sender->send_errors(), 0U);

    std::vector<std::uint8_t> got;
    while (got.size() < 8 && wait_for(receiver->fd(), POLLIN))
        receiver->receive_batch([&](const UdpSocket::Received& r) { got.push_back(r.data[0]); });
    EXPECT_EQ(got, (std::vector<std::uint8_t>{1, 2, 4, 5, 7, 8, 10, 11}));
}

}  // namespace
}  // namespace keepalive
