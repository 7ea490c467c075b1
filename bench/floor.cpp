// keepalive-floor: the kernel's own cost of keepalives, for keepalive-bench to
// compare the daemon against in the same run.
//
// It makes the daemon's system calls and nothing else: one UDP socket
// (SO_RXQ_OVFL, 1 MiB receive buffer, as the daemon's), epoll, one
// CLOCK_MONOTONIC timerfd armed absolutely every tick, recvmmsg and sendmmsg
// in batches of 64 with the source address, one PROBE per peer per interval.
// ACKs are counted, not checked. A REGISTER is answered at once with ACCEPT
// (no CHALLENGE, no state machine), so the same simulated fleet can drive it.
//
// With --read-on-tick the socket is read on each tick instead of on each
// arrival, as the daemon does with many peers (it reads on its wheel's grid).
//
// Usage: keepalive-floor --listen 127.0.0.1:PORT [--interval-ms MS] [--tick-ms MS]
//                        [--read-on-tick]
// Prints "floor ready: listening on ADDRESS" on stderr when it is ready;
// SIGTERM stops it.
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "core/address.hpp"
#include "core/codec.hpp"

namespace {

using namespace keepalive;

constexpr std::size_t kBatch = 64;
constexpr int kBatchesPerWakeup = 8;
volatile sig_atomic_t g_stop = 0;

[[noreturn]] void fail(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

std::uint64_t now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
           static_cast<std::uint64_t>(ts.tv_nsec);
}

class Floor {
public:
    Floor(const Address& listen, std::uint32_t interval_ms, std::uint32_t tick_ms,
          bool read_on_tick)
        : interval_ms_(interval_ms),
          tick_ms_(tick_ms),
          read_on_tick_(read_on_tick),
          buckets_(interval_ms) {
        fd_ = ::socket(listen.family() == Address::Family::v4 ? AF_INET : AF_INET6,
                       SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd_ < 0) fail("socket");
        const int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
        const int rcvbuf = 1 << 20;
        ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        sockaddr_storage ss{};
        const socklen_t len = listen.to_sockaddr(ss);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0) fail("bind");
        timer_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (timer_ < 0) fail("timerfd_create");
        epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
        if (epoll_ < 0) fail("epoll_create1");
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = 0;
        if (!read_on_tick_ && ::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd_, &ev) != 0) fail("epoll_ctl");
        ev.data.u32 = 1;
        if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, timer_, &ev) != 0) fail("epoll_ctl");
        for (std::size_t i = 0; i < kBatch; ++i) {
            rx_iov_[i] = {rx_buf_[i].data(), rx_buf_[i].size()};
            auto& h = rx_msg_[i].msg_hdr;
            h.msg_iov = &rx_iov_[i];
            h.msg_iovlen = 1;
        }
    }

    void run() {
        const std::uint64_t tick_ns = std::uint64_t{tick_ms_} * 1'000'000;
        next_tick_ns_ = (now_ns() / tick_ns + 1) * tick_ns;
        arm();
        std::array<epoll_event, 16> events;
        while (!g_stop) {
            const int n = ::epoll_wait(epoll_, events.data(), events.size(), -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                fail("epoll_wait");
            }
            for (int i = 0; i < n; ++i) {
                if (events[i].data.u32 == 0) {
                    receive();
                } else {
                    std::uint64_t expirations;
                    [[maybe_unused]] auto r = ::read(timer_, &expirations, sizeof expirations);
                    if (read_on_tick_) receive();
                    probe_due();
                    arm();
                }
            }
        }
    }

private:
    // Every peer whose slot fell due since the last tick gets one PROBE.
    void probe_due() {
        const std::uint64_t now = now_ns();
        const std::uint64_t tick_ns = std::uint64_t{tick_ms_} * 1'000'000;
        while (next_tick_ns_ <= now) {
            const std::uint64_t first_ms = next_tick_ns_ / 1'000'000;
            for (std::uint64_t ms = first_ms; ms < first_ms + tick_ms_; ++ms)
                for (std::uint32_t index : buckets_[ms % interval_ms_]) {
                    Peer& p = peers_[index];
                    queue(p.address, {.session = index + 1, .body = kap::Probe{++p.seq, now}});
                }
            next_tick_ns_ += tick_ns;
        }
        flush();
    }

    void arm() {
        itimerspec spec{};
        spec.it_value.tv_sec = static_cast<time_t>(next_tick_ns_ / 1'000'000'000);
        spec.it_value.tv_nsec = static_cast<long>(next_tick_ns_ % 1'000'000'000);
        if (::timerfd_settime(timer_, TFD_TIMER_ABSTIME, &spec, nullptr) != 0)
            fail("timerfd_settime");
    }

    void receive() {
        for (int round = 0; round < kBatchesPerWakeup; ++round) {
            for (std::size_t i = 0; i < kBatch; ++i) {
                auto& h = rx_msg_[i].msg_hdr;
                h.msg_name = &rx_name_[i];
                h.msg_namelen = sizeof rx_name_[i];
                h.msg_control = rx_control_[i].data();
                h.msg_controllen = rx_control_[i].size();
            }
            const int n = ::recvmmsg(fd_, rx_msg_.data(), kBatch, MSG_DONTWAIT, nullptr);
            if (n <= 0) break;
            for (int i = 0; i < n; ++i) {
                const std::span<const std::uint8_t> data(rx_buf_[i].data(), rx_msg_[i].msg_len);
                // An ACK is only counted: the floor has no logic to run on it.
                if (data.size() > 3 && data[3] == static_cast<std::uint8_t>(kap::Type::register_))
                    accept(data, i);
                else
                    ++acks_;
            }
            flush();
            if (static_cast<std::size_t>(n) < kBatch) break;
        }
    }

    void accept(std::span<const std::uint8_t> data, int i) {
        const auto m = kap::decode(data);
        if (!m) return;
        const auto* reg = std::get_if<kap::Register>(&m->body);
        if (reg == nullptr) return;
        const auto from = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&rx_name_[i]),
                                                 rx_msg_[i].msg_hdr.msg_namelen);
        if (!from) return;
        const auto index = static_cast<std::uint32_t>(peers_.size());
        peers_.push_back({*from, 0});
        buckets_[index % interval_ms_].push_back(index);
        queue(*from, {.session = index + 1,
                      .body = kap::Accept{reg->nonce, 1, interval_ms_, reg->probes}});
    }

    void queue(const Address& to, const kap::Message& m) {
        tx_len_[tx_count_] = kap::encode(m, tx_buf_[tx_count_]);
        tx_name_len_[tx_count_] = to.to_sockaddr(tx_name_[tx_count_]);
        if (++tx_count_ == kBatch) flush();
    }

    void flush() {
        std::array<mmsghdr, kBatch> msgs{};
        std::array<iovec, kBatch> iov{};
        for (std::size_t i = 0; i < tx_count_; ++i) {
            iov[i] = {tx_buf_[i].data(), tx_len_[i]};
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &tx_name_[i];
            msgs[i].msg_hdr.msg_namelen = tx_name_len_[i];
        }
        std::size_t done = 0;
        while (done < tx_count_) {
            const int n = ::sendmmsg(fd_, msgs.data() + done,
                                     static_cast<unsigned>(tx_count_ - done), MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EINTR) continue;
                ++done;  // as the daemon: skip the failed datagram, go on
                continue;
            }
            done += static_cast<std::size_t>(n);
        }
        tx_count_ = 0;
    }

    struct Peer {
        Address address;
        std::uint64_t seq;
    };

    int fd_ = -1;
    int timer_ = -1;
    int epoll_ = -1;
    std::uint32_t interval_ms_;
    std::uint32_t tick_ms_;
    bool read_on_tick_;
    std::uint64_t next_tick_ns_ = 0;
    std::vector<Peer> peers_;
    std::vector<std::vector<std::uint32_t>> buckets_;
    std::uint64_t acks_ = 0;

    std::array<std::array<std::uint8_t, 2048>, kBatch> rx_buf_{};
    std::array<iovec, kBatch> rx_iov_{};
    std::array<mmsghdr, kBatch> rx_msg_{};
    std::array<sockaddr_storage, kBatch> rx_name_{};
    std::array<std::array<std::uint8_t, 64>, kBatch> rx_control_{};
    std::array<std::array<std::uint8_t, kap::kMaxDatagramSize>, kBatch> tx_buf_{};
    std::array<std::size_t, kBatch> tx_len_{};
    std::array<sockaddr_storage, kBatch> tx_name_{};
    std::array<socklen_t, kBatch> tx_name_len_{};
    std::size_t tx_count_ = 0;
};

constexpr const char* kUsage =
    "Usage: keepalive-floor --listen ADDRESS:PORT [--interval-ms MS] [--tick-ms MS]\n"
    "                       [--read-on-tick]\n";

}  // namespace

int main(int argc, char** argv) {
    std::string listen;
    std::uint32_t interval_ms = 1000;
    std::uint32_t tick_ms = 1;
    bool read_on_tick = false;
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg == "--help" || arg == "-h") {
                std::fputs(kUsage, stdout);
                return 0;
            }
            if (arg == "--read-on-tick") {
                read_on_tick = true;
                continue;
            }
            if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
            const std::string value = argv[++i];
            if (arg == "--listen")
                listen = value;
            else if (arg == "--interval-ms")
                interval_ms = static_cast<std::uint32_t>(std::stoul(value));
            else if (arg == "--tick-ms")
                tick_ms = static_cast<std::uint32_t>(std::stoul(value));
            else
                throw std::invalid_argument("unknown argument " + arg);
        }
        if (listen.empty() || interval_ms == 0 || tick_ms == 0)
            throw std::invalid_argument("--listen, a non-zero interval and tick are needed");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "keepalive-floor: %s\n%s", e.what(), kUsage);
        return 2;
    }
    const auto address = keepalive::Address::parse(listen);
    if (!address) {
        std::fprintf(stderr, "keepalive-floor: bad address %s\n%s", listen.c_str(), kUsage);
        return 2;
    }
    struct sigaction sa {};
    sa.sa_handler = [](int) { g_stop = 1; };
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    try {
        Floor floor(*address, interval_ms, tick_ms, read_on_tick);
        std::fprintf(stderr, "floor ready: listening on %s\n", listen.c_str());
        std::fflush(stderr);
        floor.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "keepalive-floor: cannot start: %s\n", e.what());
        return 1;
    }
    return 0;
}
