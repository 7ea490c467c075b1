#include "net/udp_socket.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "net/unique_fd.hpp"

namespace keepalive {
namespace {

Address addr(const char* text) {
    auto a = Address::parse(text);
    if (!a) throw std::invalid_argument(text);
    return *a;
}

UdpSocket bind_or_die(const char* text) {
    auto r = UdpSocket::bind(addr(text));
    if (!r) throw std::runtime_error(r.error());
    return std::move(r).value();
}

// nullopt when the host has no usable IPv6 loopback.
std::optional<UdpSocket> bind_v6(const char* text) {
    auto r = UdpSocket::bind(addr(text));
    if (!r) return std::nullopt;
    return std::move(r).value();
}

// A received datagram, copied out of the socket's reused buffers.
struct Got {
    Address from;
    Address to;
    std::vector<std::uint8_t> data;
    bool truncated;
};

// Receives until `want` datagrams arrived. poll() only waits for readiness (loopback delivery is
// immediate in practice); the timeout and the iteration cap turn a lost datagram into a failure
// instead of a hang.
std::vector<Got> receive(UdpSocket& sock, std::size_t want, std::size_t max_per_batch = 64) {
    std::vector<Got> got;
    for (int i = 0; i < 1000 && got.size() < want; ++i) {
        pollfd p{sock.fd(), POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0) break;
        sock.receive_batch(
            [&](const UdpSocket::Received& r) {
                got.push_back(Got{r.from, r.to, {r.data.begin(), r.data.end()}, r.truncated});
            },
            max_per_batch);
    }
    return got;
}

OutDatagram datagram(const Address& to, std::string_view text,
                     std::optional<Address> from = std::nullopt) {
    OutDatagram d;
    d.to = to;
    d.from = from;
    std::memcpy(d.data.data(), text.data(), text.size());
    d.size = static_cast<std::uint16_t>(text.size());
    return d;
}

std::string text(const Got& g) {
    return std::string(g.data.begin(), g.data.end());
}

bool is_nonblocking_cloexec(int fd) {
    return (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0 && (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
}

TEST(UdpSocketTest, BindV4LoopbackResolvesPort) {
    UdpSocket s = bind_or_die("127.0.0.1:0");
    EXPECT_EQ(s.local().family(), Address::Family::v4);
    EXPECT_EQ(s.local().host_string(), "127.0.0.1");
    EXPECT_NE(s.local().port(), 0);
    EXPECT_TRUE(is_nonblocking_cloexec(s.fd()));
    // Bound to one address, it needs no pktinfo: that address is every datagram's.
    int pktinfo = 1;
    socklen_t len = sizeof pktinfo;
    ASSERT_EQ(getsockopt(s.fd(), IPPROTO_IP, IP_PKTINFO, &pktinfo, &len), 0);
    EXPECT_EQ(pktinfo, 0);
}

TEST(UdpSocketTest, WildcardSocketAsksForPktinfo) {
    UdpSocket s = bind_or_die("0.0.0.0:0");
    int pktinfo = 0;
    socklen_t len = sizeof pktinfo;
    ASSERT_EQ(getsockopt(s.fd(), IPPROTO_IP, IP_PKTINFO, &pktinfo, &len), 0);
    EXPECT_EQ(pktinfo, 1);
}

TEST(UdpSocketTest, BindV6LoopbackIsV6Only) {
    auto s = bind_v6("[::1]:0");
    if (!s) GTEST_SKIP() << "no IPv6 loopback";
    EXPECT_EQ(s->local().family(), Address::Family::v6);
    EXPECT_EQ(s->local().host_string(), "::1");
    EXPECT_NE(s->local().port(), 0);
    EXPECT_TRUE(is_nonblocking_cloexec(s->fd()));
    int v6only = 0;
    socklen_t len = sizeof v6only;
    ASSERT_EQ(getsockopt(s->fd(), IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len), 0);
    EXPECT_EQ(v6only, 1);
}

TEST(UdpSocketTest, BindErrorNamesAddressAndReason) {
    UdpSocket first = bind_or_die("127.0.0.1:0");
    const std::string taken = first.local().to_string();
    auto second = UdpSocket::bind(first.local());
    ASSERT_FALSE(second);
    EXPECT_NE(second.error().find(taken), std::string::npos) << second.error();
    EXPECT_NE(second.error().find("Address already in use"), std::string::npos) << second.error();
}

TEST(UdpSocketTest, NothingPendingReceivesZero) {
    UdpSocket s = bind_or_die("127.0.0.1:0");
    EXPECT_EQ(s.receive_batch([](const UdpSocket::Received&) { FAIL(); }), 0u);
}

void exchange_batch_of_100(UdpSocket& a, UdpSocket& b) {
    std::vector<OutDatagram> batch;
    for (int i = 0; i < 100; ++i) batch.push_back(datagram(b.local(), "msg " + std::to_string(i)));
    EXPECT_EQ(a.send_batch(batch), 100u);
    EXPECT_EQ(a.send_errors(), 0u);

    const auto got = receive(b, 100);
    ASSERT_EQ(got.size(), 100u);
    std::map<std::string, int> seen;
    for (const Got& g : got) {
        ++seen[text(g)];
        EXPECT_EQ(g.from, a.local());
        EXPECT_EQ(g.to, b.local());
        EXPECT_FALSE(g.truncated);
    }
    for (int i = 0; i < 100; ++i) EXPECT_EQ(seen["msg " + std::to_string(i)], 1) << i;
    EXPECT_EQ(b.receive_errors(), 0u);
}

TEST(UdpSocketTest, BatchOf100V4) {
    UdpSocket a = bind_or_die("127.0.0.1:0");
    UdpSocket b = bind_or_die("127.0.0.1:0");
    exchange_batch_of_100(a, b);
}

TEST(UdpSocketTest, BatchOf100V6) {
    auto a = bind_v6("[::1]:0");
    auto b = bind_v6("[::1]:0");
    if (!a || !b) GTEST_SKIP() << "no IPv6 loopback";
    exchange_batch_of_100(*a, *b);
}

TEST(UdpSocketTest, ReceiveBatchHonoursMax) {
    UdpSocket a = bind_or_die("127.0.0.1:0");
    UdpSocket b = bind_or_die("127.0.0.1:0");
    std::vector<OutDatagram> batch;
    for (int i = 0; i < 10; ++i) batch.push_back(datagram(b.local(), std::to_string(i)));
    ASSERT_EQ(a.send_batch(batch), 10u);
    const auto first = receive(b, 3, 3);
    ASSERT_EQ(first.size(), 3u);
    EXPECT_EQ(text(first[0]), "0");  // arrival order is kept
    EXPECT_EQ(text(first[2]), "2");
    const auto rest = receive(b, 7);
    ASSERT_EQ(rest.size(), 7u);
    EXPECT_EQ(text(rest[6]), "9");
}

TEST(UdpSocketTest, PktinfoOnWildcardBindReportsDestinationAndRepliesFromIt) {
    UdpSocket server = bind_or_die("0.0.0.0:0");
    const std::uint16_t port = server.local().port();
    UdpSocket client = bind_or_die("127.0.0.1:0");
    const Address to1 = Address::v4(0x7f000001, port);
    const Address to2 = Address::v4(0x7f000002, port);

    ASSERT_TRUE(client.send_to(to1, std::vector<std::uint8_t>{'1'}));
    ASSERT_TRUE(client.send_to(to2, std::vector<std::uint8_t>{'2'}));
    const auto got = receive(server, 2);
    ASSERT_EQ(got.size(), 2u);
    std::map<std::string, Address> to_by_text;
    for (const Got& g : got) {
        EXPECT_EQ(g.from, client.local());
        to_by_text[text(g)] = g.to;
    }
    EXPECT_EQ(to_by_text["1"], to1);
    EXPECT_EQ(to_by_text["2"], to2);

    // The reply with from = 127.0.0.2 leaves from 127.0.0.2; without `from` the kernel picks
    // 127.0.0.1 for this destination, which shows the control message is what decides.
    const std::vector<OutDatagram> replies{datagram(client.local(), "pinned", to2),
                                           datagram(client.local(), "default")};
    EXPECT_EQ(server.send_batch(replies), 2u);
    const auto back = receive(client, 2);
    ASSERT_EQ(back.size(), 2u);
    std::map<std::string, Address> from_by_text;
    for (const Got& g : back) {
        from_by_text[text(g)] = g.from;
        EXPECT_EQ(g.to, client.local());
    }
    EXPECT_EQ(from_by_text["pinned"], to2);
    EXPECT_EQ(from_by_text["default"], to1);
    EXPECT_EQ(server.send_errors(), 0u);
}

TEST(UdpSocketTest, PktinfoOnV6WildcardBind) {
    auto server = bind_v6("[::]:0");
    auto client = bind_v6("[::1]:0");
    if (!server || !client) GTEST_SKIP() << "no IPv6 loopback";
    const Address to = *Address::parse_host("::1", server->local().port());
    ASSERT_TRUE(client->send_to(to, std::vector<std::uint8_t>{'x'}));
    const auto got = receive(*server, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].to, to);
    EXPECT_EQ(got[0].from, client->local());

    EXPECT_EQ(server->send_batch(std::vector{datagram(got[0].from, "re", got[0].to)}), 1u);
    const auto back = receive(*client, 1);
    ASSERT_EQ(back.size(), 1u);
    EXPECT_EQ(back[0].from, to);
}

TEST(UdpSocketTest, OversizedDatagramIsTruncated) {
    UdpSocket a = bind_or_die("127.0.0.1:0");
    UdpSocket b = bind_or_die("127.0.0.1:0");
    const std::vector<std::uint8_t> big(3000, 0xab);
    ASSERT_TRUE(a.send_to(b.local(), big));
    ASSERT_TRUE(a.send_to(b.local(), std::vector<std::uint8_t>(100, 0xcd)));
    const auto got = receive(b, 2);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_TRUE(got[0].truncated);
    EXPECT_EQ(got[0].data.size(), UdpSocket::kReceiveBufferSize);
    EXPECT_EQ(got[0].data.back(), 0xab);
    EXPECT_FALSE(got[1].truncated);
    EXPECT_EQ(got[1].data.size(), 100u);
}

TEST(UdpSocketTest, SendErrorsAreCountedAndSkipped) {
    UdpSocket a = bind_or_die("127.0.0.1:0");
    UdpSocket b = bind_or_die("127.0.0.1:0");
    std::vector<OutDatagram> batch;
    batch.push_back(datagram(b.local(), "ok1"));
    batch.push_back(datagram(Address::v4(0x7f000001, 0), "port 0"));  // EINVAL from the kernel
    batch.push_back(datagram(b.local(), "ok2"));
    batch.push_back(datagram(b.local(), "not local", addr("192.0.2.1:0")));  // EINVAL
    batch.push_back(datagram(addr("[::1]:9"), "wrong family"));
    OutDatagram too_big = datagram(b.local(), "x");
    too_big.size = kMaxPayload + 1;
    batch.push_back(too_big);
    batch.push_back(datagram(b.local(), "ok3"));

    EXPECT_EQ(a.send_batch(batch), 3u);
    EXPECT_EQ(a.send_errors(), 4u);
    const auto got = receive(b, 3);
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(text(got[0]), "ok1");
    EXPECT_EQ(text(got[1]), "ok2");
    EXPECT_EQ(text(got[2]), "ok3");

    EXPECT_FALSE(a.send_to(Address::v4(0x7f000001, 0), std::vector<std::uint8_t>{1}));
    EXPECT_EQ(a.send_errors(), 5u);
}

TEST(UdpSocketTest, AdoptExistingFd) {
    UniqueFd raw(socket(AF_INET, SOCK_DGRAM, 0));  // blocking, no CLOEXEC, like an inherited fd
    ASSERT_TRUE(raw);
    sockaddr_storage ss;
    const socklen_t len = Address::v4(0x7f000001, 0).to_sockaddr(ss);
    ASSERT_EQ(::bind(raw.get(), reinterpret_cast<const sockaddr*>(&ss), len), 0);
    const int number = raw.get();

    auto adopted = UdpSocket::adopt(std::move(raw));
    ASSERT_TRUE(adopted) << adopted.error();
    UdpSocket& s = *adopted;
    EXPECT_EQ(s.fd(), number);
    EXPECT_TRUE(is_nonblocking_cloexec(s.fd()));
    EXPECT_EQ(s.local().host_string(), "127.0.0.1");
    EXPECT_NE(s.local().port(), 0);

    EXPECT_EQ(s.receive_batch([](const UdpSocket::Received&) {}), 0u);  // did not block
    UdpSocket peer = bind_or_die("127.0.0.1:0");
    ASSERT_TRUE(peer.send_to(s.local(), std::vector<std::uint8_t>{'h', 'i'}));
    const auto got = receive(s, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].to, s.local());
    EXPECT_EQ(got[0].from, peer.local());
}

TEST(UdpSocketTest, AdoptRejectsNonUdp) {
    UniqueFd efd(eventfd(0, EFD_CLOEXEC));
    auto r1 = UdpSocket::adopt(std::move(efd));
    EXPECT_FALSE(r1);
    UniqueFd tcp(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    auto r2 = UdpSocket::adopt(std::move(tcp));
    ASSERT_FALSE(r2);
    EXPECT_NE(r2.error().find("not a UDP socket"), std::string::npos) << r2.error();
}

TEST(UdpSocketTest, AdoptDualStackSocketSpeaksV4AsV4) {
    UniqueFd raw(socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!raw) GTEST_SKIP() << "no IPv6";
    const int off = 0;
    ASSERT_EQ(setsockopt(raw.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off), 0);
    sockaddr_storage ss;
    const socklen_t len = addr("[::]:0").to_sockaddr(ss);
    if (::bind(raw.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0)
        GTEST_SKIP() << "cannot bind [::]";
    auto adopted = UdpSocket::adopt(std::move(raw));
    ASSERT_TRUE(adopted) << adopted.error();
    UdpSocket& server = *adopted;
    const Address to2 = Address::v4(0x7f000002, server.local().port());

    UdpSocket client = bind_or_die("127.0.0.1:0");
    ASSERT_TRUE(client.send_to(to2, std::vector<std::uint8_t>{'q'}));
    const auto got = receive(server, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].from, client.local());
    EXPECT_EQ(got[0].to, to2);

    EXPECT_EQ(server.send_batch(std::vector{datagram(got[0].from, "a", got[0].to)}), 1u);
    const auto back = receive(client, 1);
    ASSERT_EQ(back.size(), 1u);
    EXPECT_EQ(back[0].from, to2);
    EXPECT_EQ(server.send_errors(), 0u);
}

TEST(UdpSocketTest, MovedSocketKeepsWorking) {
    UdpSocket a = bind_or_die("127.0.0.1:0");
    UdpSocket b = bind_or_die("127.0.0.1:0");
    UdpSocket moved = std::move(b);
    ASSERT_TRUE(a.send_to(moved.local(), std::vector<std::uint8_t>{'m'}));
    const auto got = receive(moved, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(text(got[0]), "m");
}

}  // namespace
}  // namespace keepalive
