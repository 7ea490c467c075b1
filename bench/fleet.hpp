// Fleet: many simulated KAP/1 peers behind one UDP socket, for benchmarks and
// load tests of the real daemon over loopback. It speaks the protocol with the
// project's codec: registers (answering CHALLENGEs), answers PROBEs with ACKs,
// and records what it saw. Not thread-safe: one thread drives one fleet.
#pragma once

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <variant>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"

namespace keepalive::sim {

using namespace std::chrono_literals;
using std::chrono::duration_cast;

[[noreturn]] inline void fleet_fail(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Many simulated peers behind one UDP socket connected to the daemon. A PROBE
// is matched to its peer by session id, a CHALLENGE or ACCEPT by nonce (whose
// low 32 bits are the peer's index).
class Fleet {
public:
    enum class Phase : std::uint8_t { idle, registering, accepted, rejected, left };

    struct SimPeer {
        std::string name;
        std::uint64_t nonce = 0;
        std::uint64_t incarnation = 0;
        std::uint32_t interval_ms = 0;
        std::uint8_t probes = 0;
        Phase phase = Phase::idle;
        std::uint32_t session = 0;
        TimePoint register_sent{};
        std::uint64_t last_seq = 0;
        std::uint64_t probes_received = 0;
        // The first PROBE that arrived while answering was off.
        std::optional<TimePoint> first_unanswered;
        std::uint64_t first_unanswered_tx = 0;  // the daemon's tx_time in it
        std::uint64_t first_unanswered_seq = 0;
        std::uint8_t reject_diag = 0;  // when rejected
        bool silenced = false;         // reads probes but never answers them
        // Storm registration: the agent's backoff (1 s doubling to 30 s) and
        // when this peer tries again.
        Duration backoff{};
        TimePoint retry_at{};
        bool busy = false;  // paced: told busy, registering again at retry_at
        // min over probes of tx_time - (seq - 1) x interval: probe deadlines are whole
        // milliseconds spaced exactly one interval apart, so floor_ms of this is the
        // deadline of seq 1 (provided one probe went out less than 1 ms late).
        std::int64_t anchor_ns = INT64_MAX;

        // When the daemon meant to send probe `seq` (valid until the peer is down).
        TimePoint deadline_of(std::uint64_t seq) const {
            const std::int64_t ms = 1'000'000;
            const std::int64_t first = anchor_ns - anchor_ns % ms;
            return TimePoint{Duration(first + static_cast<std::int64_t>(seq - 1) *
                                                  static_cast<std::int64_t>(interval_ms) * ms)};
        }
    };

    struct Stats {
        std::uint64_t probes = 0;
        std::uint64_t acks = 0;
        std::uint64_t seq_gaps = 0;  // probes that never arrived
        std::uint64_t byes = 0;
        std::uint64_t rejects = 0;
        std::uint64_t undecodable = 0;
        std::uint64_t unknown_session = 0;
        std::uint64_t send_errors = 0;
    };

    // Binds to `source` (any 127.0.0.0/8 address: a fleet per address plays
    // peers on several hosts) and talks to `server`.
    Fleet(const Address& server, std::uint64_t seed,
          const Address& source = Address::v4(0x7f000001, 0))
        : random_(seed) {
        fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd_ < 0) fleet_fail("socket");
        // Room for bursts: the wheel sends a whole millisecond's probes at once.
        const int size = 8 << 20;
        if (::setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
            ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        ::setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        sockaddr_storage ss{};
        socklen_t len = source.to_sockaddr(ss);
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0) fleet_fail("bind");
        len = server.to_sockaddr(ss);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&ss), len) != 0) fleet_fail("connect");
        for (std::size_t i = 0; i < kBatch; ++i) {
            rx_iov_[i] = {rx_buf_[i].data(), rx_buf_[i].size()};
            rx_msg_[i].msg_hdr.msg_iov = &rx_iov_[i];
            rx_msg_[i].msg_hdr.msg_iovlen = 1;
        }
    }
    Fleet(const Fleet&) = delete;
    Fleet& operator=(const Fleet&) = delete;
    ~Fleet() { ::close(fd_); }

    void add(std::string_view prefix, std::size_t count, std::uint32_t interval_ms,
             std::uint8_t probes) {
        const std::uint64_t nonce_high = random_() << 32;
        for (std::size_t i = 0; i < count; ++i) {
            SimPeer p;
            p.name = fmt::format("{}{}", prefix, peers_.size());
            p.nonce = nonce_high | peers_.size();
            p.incarnation = random_();
            p.interval_ms = interval_ms;
            p.probes = probes;
            peers_.push_back(std::move(p));
        }
        sessions_.reserve(peers_.size());
    }

    // Registers every added peer, `window` handshakes at a time, answering
    // probes meanwhile. False if some are still not accepted at `timeout`.
    bool register_all(Duration timeout, std::size_t window = 256) {
        window_ = window;
        const TimePoint give_up = Clock::now() + timeout;
        while (accepted_ + rejected_ < peers_.size()) {
            if (Clock::now() > give_up) return false;
            pump_until(Clock::now() + 50ms, true);
        }
        return rejected_ == 0;
    }

    // Registers every added peer at once, each retrying as the agent does
    // (PeerSession): a new attempt after a jittered backoff between half and
    // all of 1 s, doubling up to 30 s; REJECT diag 9 (busy) means try again
    // later, not give up. False if some are still not accepted at `timeout`.
    bool register_storm(Duration timeout) {
        storm_ = true;
        window_ = peers_.size();
        const bool ok = register_all(timeout, peers_.size());
        storm_ = false;
        return ok;
    }

    void pump_for(Duration d) { pump_until(Clock::now() + d, false); }

    // For a caller that polls many fleets itself: the socket, and one round of
    // work without waiting (sending due registrations while `registering`,
    // then answering what is queued).
    int fd() const { return fd_; }
    void set_registration(std::size_t window, bool storm) {
        window_ = window;
        storm_ = storm;
    }
    // Paced, a peer told busy counts as done: it goes on registering again on
    // the agent's backoff (retry_busy) while the run goes on.
    bool registration_done() const {
        return accepted_ + rejected_ + left_ + (storm_ ? 0 : waiting_busy_) == peers_.size();
    }
    std::size_t waiting_busy() const { return waiting_busy_; }
    // Paced: registers again the peers told busy whose backoff ran out.
    void retry_busy() {
        if (waiting_busy_ == 0) return;
        const TimePoint now = Clock::now();
        if (now - last_busy_scan_ < 50ms) return;
        last_busy_scan_ = now;
        for (std::size_t i = 0; i < peers_.size(); ++i) {
            SimPeer& p = peers_[i];
            if (!p.busy || now < p.retry_at) continue;
            send_register(i, kap::Cookie{}, now);
            schedule_retry(p, now);
        }
        flush();
    }
    void service(bool registering) {
        if (registering) feed_registrations(Clock::now());
        flush();
        drain();
    }
    // Answers probes until `stop` is set (checked every 50 ms), e.g. on a thread of its own.
    void pump_while(const std::atomic<bool>& keep_going) {
        while (keep_going.load()) pump_for(50ms);
    }

    // While off, probes are still read and recorded but not answered.
    void set_answering(bool on) { answering_ = on; }
    // Peers [first, first + count) stop answering for good.
    void silence(std::size_t first, std::size_t count) {
        for (std::size_t i = first; i < std::min(first + count, peers_.size()); ++i)
            peers_[i].silenced = true;
    }
    std::uint64_t busy_rejects() const { return busy_rejects_; }
    // Peers [first, first + count) go away as an agent that stops: an accepted
    // one says BYE diag 5 (seq: the highest PROBE it got), one still registering
    // stops trying. Probes that arrive later are not answered.
    void leave(std::size_t first, std::size_t count) {
        for (std::size_t i = first; i < std::min(first + count, peers_.size()); ++i) {
            SimPeer& p = peers_[i];
            if (p.phase == Phase::accepted) {
                queue({.diag = kap::Diag::shutting_down,
                       .session = p.session,
                       .body = kap::Bye{p.last_seq}});
                sessions_.erase(p.session);
                --accepted_;
            } else if (p.phase == Phase::registering) {
                if (p.busy) {
                    p.busy = false;
                    --waiting_busy_;
                } else {
                    --in_flight_;
                }
            } else if (p.phase != Phase::idle) {
                continue;  // rejected for good, or gone already
            }
            p.phase = Phase::left;
            ++left_;
        }
        flush();
    }
    std::size_t left() const { return left_; }

    const std::vector<SimPeer>& peers() const { return peers_; }
    const Stats& stats() const { return stats_; }
    std::size_t accepted() const { return accepted_; }
    std::size_t rejected() const { return rejected_; }
    std::uint16_t local_port() const {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
        return Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len)->port();
    }

private:
    static constexpr std::size_t kBatch = 64;
    static constexpr std::size_t kRxSize = 512;
    static constexpr std::uint8_t kDiagBusy = 9;  // REJECT: over capacity, come back later

    void pump_until(TimePoint deadline, bool registering) {
        for (;;) {
            TimePoint now = Clock::now();
            if (registering) feed_registrations(now);
            retry_busy();
            flush();
            if (now >= deadline) return;
            if (registering && accepted_ + rejected_ == peers_.size()) return;
            const auto left = duration_cast<std::chrono::nanoseconds>(deadline - now);
            const auto cap = registering ? std::chrono::nanoseconds(5ms) : left;
            const auto wait = std::min(left, cap);
            timespec ts{static_cast<time_t>(wait.count() / 1'000'000'000),
                        static_cast<long>(wait.count() % 1'000'000'000)};
            pollfd pfd{fd_, POLLIN, 0};
            const int r = ::ppoll(&pfd, 1, &ts, nullptr);
            if (r < 0 && errno != EINTR) fleet_fail("ppoll");
            if (r <= 0) continue;
            drain();
        }
    }

    // Reads what is queued, answering batch by batch.
    void drain() {
        for (int round = 0; round < 64; ++round) {
            const int n = ::recvmmsg(fd_, rx_msg_.data(), kBatch, MSG_DONTWAIT, nullptr);
            if (n <= 0) break;
            const TimePoint now = Clock::now();
            for (int i = 0; i < n; ++i)
                on_datagram(std::span<const std::uint8_t>(rx_buf_[i].data(), rx_msg_[i].msg_len),
                            now);
            flush();
            if (static_cast<std::size_t>(n) < kBatch) break;
        }
    }

    void feed_registrations(TimePoint now) {
        while (in_flight_ < window_ && next_ < peers_.size()) {
            if (peers_[next_].phase == Phase::left) {
                ++next_;
                continue;
            }
            send_register(next_, kap::Cookie{}, now);
            if (storm_) schedule_retry(peers_[next_], now);
            ++in_flight_;
            ++next_;
        }
        if (storm_) {
            if (now - last_retry_scan_ < 20ms) return;
            last_retry_scan_ = now;
            for (std::size_t i = 0; i < next_; ++i) {
                SimPeer& p = peers_[i];
                if (p.phase != Phase::registering || now < p.retry_at) continue;
                send_register(i, kap::Cookie{}, now);
                schedule_retry(p, now);
            }
            return;
        }
        // A lost datagram anywhere in the handshake: start it again.
        if (now - last_retry_scan_ < 250ms) return;
        last_retry_scan_ = now;
        for (std::size_t i = 0; i < next_; ++i)
            if (peers_[i].phase == Phase::registering && !peers_[i].busy &&
                now - peers_[i].register_sent > 1s)
                send_register(i, kap::Cookie{}, now);
    }

    void send_register(std::size_t index, const kap::Cookie& cookie, TimePoint now) {
        SimPeer& p = peers_[index];
        p.phase = Phase::registering;
        p.register_sent = now;
        queue({.session = 0,
               .body =
                   kap::Register{p.nonce, p.incarnation, p.interval_ms, p.probes, cookie, p.name}});
    }

    void schedule_retry(SimPeer& p, TimePoint now) {
        if (p.backoff == Duration{}) p.backoff = 1s;
        const auto half = p.backoff / 2;
        p.retry_at = now + half +
                     Duration(static_cast<Duration::rep>(
                         random_() % (static_cast<std::uint64_t>(half.count()) + 1)));
        p.backoff = std::min<Duration>(p.backoff * 2, 30s);
    }

    SimPeer* by_nonce(std::uint64_t nonce) {
        const std::uint64_t index = nonce & 0xffffffffu;
        if (index >= peers_.size() || peers_[index].nonce != nonce) return nullptr;
        return &peers_[index];
    }

    void on_datagram(std::span<const std::uint8_t> data, TimePoint now) {
        auto decoded = kap::decode(data);
        if (!decoded) {
            ++stats_.undecodable;
            return;
        }
        const kap::Message& m = *decoded;
        if (const auto* probe = std::get_if<kap::Probe>(&m.body)) {
            on_probe(m.session, *probe, now);
        } else if (const auto* challenge = std::get_if<kap::Challenge>(&m.body)) {
            SimPeer* p = by_nonce(challenge->nonce);
            if (p != nullptr && p->phase == Phase::registering)
                send_register(static_cast<std::size_t>(p - peers_.data()), challenge->cookie, now);
        } else if (const auto* accept = std::get_if<kap::Accept>(&m.body)) {
            SimPeer* p = by_nonce(accept->nonce);
            if (p == nullptr || p->phase != Phase::registering) return;
            p->phase = Phase::accepted;
            if (p->busy) {
                p->busy = false;
                --waiting_busy_;
            } else {
                --in_flight_;
            }
            p->session = m.session;
            p->interval_ms = accept->interval_ms;
            p->probes = accept->probes;
            sessions_[m.session] = static_cast<std::uint32_t>(p - peers_.data());
            ++accepted_;
        } else if (const auto* reject = std::get_if<kap::Reject>(&m.body)) {
            SimPeer* p = by_nonce(reject->nonce);
            ++stats_.rejects;
            if (p == nullptr || p->phase != Phase::registering) return;
            // Busy: the agent backs off and registers again later. In a
            // storm every peer retries on its backoff anyway; paced, a peer
            // told busy leaves the window and retry_busy() plays the agent.
            const bool busy = static_cast<std::uint8_t>(m.diag) == kDiagBusy;
            busy_rejects_ += busy ? 1 : 0;
            if (storm_ && busy) return;
            if (busy) {
                if (!p->busy) {
                    p->busy = true;
                    ++waiting_busy_;
                    --in_flight_;
                }
                // The agent keeps its backoff timer: 1 s, doubling to 30 s.
                if (p->retry_at < now) schedule_retry(*p, now);
                return;
            }
            p->phase = Phase::rejected;
            ++rejected_;
            --in_flight_;
            p->reject_diag = static_cast<std::uint8_t>(m.diag);
        } else if (std::holds_alternative<kap::Bye>(m.body)) {
            ++stats_.byes;
        }
    }

    void on_probe(std::uint32_t session, const kap::Probe& probe, TimePoint now) {
        ++stats_.probes;
        const auto it = sessions_.find(session);
        if (it == sessions_.end()) {
            ++stats_.unknown_session;
            return;
        }
        SimPeer& p = peers_[it->second];
        ++p.probes_received;
        if (probe.seq > p.last_seq + 1) stats_.seq_gaps += probe.seq - p.last_seq - 1;
        p.last_seq = std::max(p.last_seq, probe.seq);
        const bool answering = answering_ && !p.silenced;
        const bool in_chain = answering || !p.first_unanswered;
        if (in_chain) {
            const auto since_first = static_cast<std::int64_t>(probe.seq - 1) *
                                     static_cast<std::int64_t>(p.interval_ms) * 1'000'000;
            p.anchor_ns =
                std::min(p.anchor_ns, static_cast<std::int64_t>(probe.tx_time) - since_first);
        }
        if (!answering) {
            if (!p.first_unanswered) {
                p.first_unanswered = now;
                p.first_unanswered_tx = probe.tx_time;
                p.first_unanswered_seq = probe.seq;
            }
            return;
        }
        queue({.session = session, .body = kap::Ack{probe.seq, probe.tx_time, p.incarnation}});
        ++stats_.acks;
    }

    void queue(const kap::Message& m) {
        tx_len_[tx_count_] = kap::encode(m, tx_buf_[tx_count_]);
        if (tx_len_[tx_count_] == 0) throw std::logic_error("unencodable message");
        if (++tx_count_ == kBatch) flush();
    }

    void flush() {
        std::array<mmsghdr, kBatch> msgs{};
        std::array<iovec, kBatch> iov{};
        for (std::size_t i = 0; i < tx_count_; ++i) {
            iov[i] = {tx_buf_[i].data(), tx_len_[i]};
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        std::size_t done = 0;
        while (done < tx_count_) {
            const int n =
                ::sendmmsg(fd_, msgs.data() + done, static_cast<unsigned>(tx_count_ - done), 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                ++stats_.send_errors;  // e.g. ECONNREFUSED once the daemon is gone
                ++done;
                continue;
            }
            done += static_cast<std::size_t>(n);
        }
        tx_count_ = 0;
    }

    int fd_ = -1;
    std::mt19937_64 random_;
    std::vector<SimPeer> peers_;
    std::unordered_map<std::uint32_t, std::uint32_t> sessions_;
    bool answering_ = true;
    Stats stats_;

    std::size_t window_ = 256;
    std::size_t next_ = 0;
    std::size_t in_flight_ = 0;
    std::size_t accepted_ = 0;
    std::size_t rejected_ = 0;
    std::size_t waiting_busy_ = 0;
    std::size_t left_ = 0;
    TimePoint last_busy_scan_{};
    TimePoint last_retry_scan_{};
    bool storm_ = false;
    std::uint64_t busy_rejects_ = 0;

    std::array<std::array<std::uint8_t, kRxSize>, kBatch> rx_buf_{};
    std::array<iovec, kBatch> rx_iov_{};
    std::array<mmsghdr, kBatch> rx_msg_{};
    std::array<std::array<std::uint8_t, kap::kMaxDatagramSize>, kBatch> tx_buf_{};
    std::array<std::size_t, kBatch> tx_len_{};
    std::size_t tx_count_ = 0;
};

}  // namespace keepalive::sim
