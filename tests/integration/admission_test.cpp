// Spoofing against the real keepalived: REGISTERs with random cookies from
// thousands of forged 127.x source addresses, as fast as the daemon reads
// them. No peer-table state may appear, the daemon's memory must stay flat,
// and it must send fewer bytes than it receives. Sent with a raw socket
// (IP_HDRINCL), observed with another (every UDP datagram on loopback); needs
// CAP_NET_RAW, so it is skipped with the reason where that is missing.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/codec.hpp"
#include "harness.hpp"

namespace keepalive::test {
namespace {

using nlohmann::json;
using Bytes = std::vector<std::uint8_t>;

std::uint64_t rss_kib(pid_t pid) {
    const std::string status = read_file("/proc/" + std::to_string(pid) + "/status");
    const auto at = status.find("VmRSS:");
    return at == std::string::npos ? 0 : std::stoull(status.substr(at + 6));
}

class RawUdp {
public:
    RawUdp() {
        send_fd_ = ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
        capture_fd_ = ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_UDP);
        if (send_fd_ < 0 || capture_fd_ < 0) {
            why_not_ = std::string("raw sockets: ") + std::strerror(errno);
            return;
        }
        const int size = 64 << 20;
        ::setsockopt(capture_fd_, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    }
    ~RawUdp() {
        if (send_fd_ >= 0) ::close(send_fd_);
        if (capture_fd_ >= 0) ::close(capture_fd_);
    }
    const std::string& why_not() const { return why_not_; }

    // One UDP datagram from src (host order address) to 127.0.0.1:dport.
    void send(std::uint32_t src, std::uint16_t sport, std::uint16_t dport, const Bytes& payload) {
        Bytes packet(sizeof(iphdr) + sizeof(udphdr) + payload.size());
        auto* ip = reinterpret_cast<iphdr*>(packet.data());
        ip->version = 4;
        ip->ihl = 5;
        ip->ttl = 64;
        ip->protocol = IPPROTO_UDP;
        ip->tot_len = htons(static_cast<std::uint16_t>(packet.size()));
        ip->saddr = htonl(src);
        ip->daddr = htonl(INADDR_LOOPBACK);
        auto* udp = reinterpret_cast<udphdr*>(packet.data() + sizeof(iphdr));
        udp->source = htons(sport);
        udp->dest = htons(dport);
        udp->len = htons(static_cast<std::uint16_t>(sizeof(udphdr) + payload.size()));
        udp->check = 0;  // none: allowed over IPv4
        std::memcpy(packet.data() + sizeof(iphdr) + sizeof(udphdr), payload.data(), payload.size());
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        while (::sendto(send_fd_, packet.data(), packet.size(), 0, reinterpret_cast<sockaddr*>(&to),
                        sizeof to) < 0) {
            if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR)
                throw std::runtime_error(std::string("raw sendto: ") + std::strerror(errno));
            ::usleep(1000);
        }
    }

    // Counts the UDP payload bytes sent from 127.0.0.1:sport to addresses in `net`/16.
    void drain(std::uint16_t sport, std::uint32_t net, std::uint64_t& datagrams,
               std::uint64_t& bytes, std::size_t& largest) {
        std::array<std::uint8_t, 2048> buf;
        for (;;) {
            const ssize_t n = ::recv(capture_fd_, buf.data(), buf.size(), 0);
            if (n < static_cast<ssize_t>(sizeof(iphdr) + sizeof(udphdr))) return;
            const auto* ip = reinterpret_cast<const iphdr*>(buf.data());
            const auto* udp = reinterpret_cast<const udphdr*>(buf.data() + ip->ihl * 4);
            if (ntohs(udp->source) != sport || (ntohl(ip->daddr) & 0xFFFF0000u) != net) continue;
            const std::size_t payload = ntohs(udp->len) - sizeof(udphdr);
            ++datagrams;
            bytes += payload;
            largest = std::max(largest, payload);
        }
    }

private:
    int send_fd_ = -1;
    int capture_fd_ = -1;
    std::string why_not_;
};

TEST(Spoofing, RandomCookiesFromThousandsOfAddressesCreateNothingAndAmplifyNothing) {
    RawUdp raw;
    if (!raw.why_not().empty()) GTEST_SKIP() << raw.why_not() << " (needs CAP_NET_RAW)";

    TempDir dir;
    const std::uint16_t port = free_udp_port();
    DaemonConfig config;
    config.listen = {"127.0.0.1:" + std::to_string(port)};
    config.control_socket = dir.file("control.sock");
    write_file(dir.file("keepalived.toml"), config.to_toml());
    SpawnOptions options;
    options.stderr_path = dir.file("keepalived.log");
    Process daemon(
        {keepalived_path(), "--config", dir.file("keepalived.toml"), "--log-target", "stderr"},
        options);
    const auto status = [&] { return control_request(config.control_socket, "status"); };
    ASSERT_TRUE(wait_until([&] {
        try {
            status();
            return true;
        } catch (const std::exception&) {
            return !daemon.running();
        }
    }));
    ASSERT_TRUE(daemon.running()) << daemon.stderr_text();

    std::mt19937_64 rng(test_seed());
    const auto spoofed_register = [&] {
        kap::Register r{rng(), rng(), 200, 3, {}, "spoof"};
        for (auto& b : r.cookie) b = static_cast<std::uint8_t>(rng());
        Bytes d(kap::kMaxDatagramSize);
        d.resize(kap::encode({.session = 0, .body = r}, d));
        return d;
    };
    const std::size_t request_size = spoofed_register().size();

    // Warm up (the first of everything allocates), then measure.
    constexpr std::uint32_t kNet = 0x7F0A0000u;  // 127.10.0.0/16
    constexpr int kSources = 5000;
    constexpr int kRounds = 8;  // datagrams per source
    std::uint64_t replies = 0;
    std::uint64_t reply_bytes = 0;
    std::size_t largest = 0;
    const auto send_round = [&](int round) {
        for (int s = 0; s < kSources; ++s) {
            raw.send(kNet | static_cast<std::uint32_t>(s + 1),
                     static_cast<std::uint16_t>(20000 + round), port, spoofed_register());
            if (s % 500 == 499) raw.drain(port, kNet, replies, reply_bytes, largest);
        }
    };
    // Every datagram the kernel queued for the daemon has been read once its
    // counter has stopped moving; the kernel may have dropped some on a full queue.
    const auto settle = [&] {
        std::uint64_t last = UINT64_MAX;
        return wait_until(
            [&] {
                raw.drain(port, kNet, replies, reply_bytes, largest);
                const auto now = status().at("datagrams_received").get<std::uint64_t>();
                const bool settled = now == last;
                last = now;
                return settled;
            },
            kPatience, 300ms);
    };
    const auto t0 = Clock::now();
    send_round(0);
    std::cout << "warm-up sent in " << std::chrono::duration<double>(Clock::now() - t0).count()
              << " s" << std::endl;
    ASSERT_TRUE(settle());
    const std::uint64_t rss_before = rss_kib(daemon.pid());
    const json s1 = status();
    replies = reply_bytes = 0;
    largest = 0;

    const auto start = Clock::now();
    for (int round = 1; round <= kRounds; ++round) send_round(round);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const std::uint64_t sent_total = std::uint64_t{kSources} * kRounds;
    ASSERT_TRUE(settle());
    raw.drain(port, kNet, replies, reply_bytes, largest);
    const json s2 = status();
    const std::uint64_t rss_after = rss_kib(daemon.pid());

    const auto delta = [&](const char* reason) {
        return s2.at("drops").at(reason).get<std::uint64_t>() -
               s1.at("drops").at(reason).get<std::uint64_t>();
    };
    const std::uint64_t received = s2.at("datagrams_received").get<std::uint64_t>() -
                                   s1.at("datagrams_received").get<std::uint64_t>();
    const std::uint64_t received_bytes = received * request_size;
    const double ratio = received_bytes ? static_cast<double>(reply_bytes) / received_bytes : 0;
    std::cout << "spoofing: " << sent_total << " REGISTERs (" << request_size << " bytes) from "
              << kSources << " forged sources in " << seconds << " s; daemon read " << received
              << " (" << received_bytes << " bytes), answered " << replies << " (" << reply_bytes
              << " bytes), rate-limited " << delta("rate_limited")
              << "; bytes sent / bytes received = " << ratio << "; RSS " << rss_before << " -> "
              << rss_after << " KiB; the kernel dropped " << s2.at("daemon").at("receive_overflows")
              << std::endl;

    // A flood can make the daemon busy enough to shed: a newcomer is then told
    // "busy" before its cookie is even looked at.
    const auto shed = [&](const json& s) {
        return s.at("daemon").at("load").at("registrations_shed").get<std::uint64_t>();
    };
    const std::uint64_t shed_delta = shed(s2) - shed(s1);
    std::cout << "shed as busy: " << shed_delta << std::endl;

    // The kernel drops what the daemon's queue cannot hold (about half of a
    // burst this fast): a quarter read is thousands of sources, enough to judge.
    ASSERT_GT(received, sent_total / 4) << "the daemon read too little to judge";
    EXPECT_EQ(delta("stale_cookie") + shed_delta, received);
    // Every REGISTER is answered with one CHALLENGE (or REJECT busy) or counted
    // as rate-limited: this also proves the capture saw every answer.
    EXPECT_EQ(replies + delta("rate_limited"), received);
    EXPECT_LE(largest, request_size);
    EXPECT_LE(ratio, 1.0);
    EXPECT_EQ(s2.at("peers"), 0);
    EXPECT_LE(rss_after, rss_before + 1024) << "RSS grew by more than 1 MiB";
    daemon.signal(SIGTERM);
    EXPECT_TRUE(daemon.wait());
}

}  // namespace
}  // namespace keepalive::test
