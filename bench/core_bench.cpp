// core_bench: the cost of ServerCore's two hot paths, in process, with no
// sockets: handling one ACK (ServerCore::on_datagram) and sending one probe
// (ServerCore::on_timer). A fake clock drives the core and a null sink takes
// what it sends, so the figures are the core's own work: decode, lookups,
// state update, timer wheel, encode.
//
// Wall-clock figures (std::chrono) vary with the machine; for an exact,
// repeatable count run it under callgrind and divide the inclusive cost of
// deliver_acks / sweep_probes by the counts this program prints (see
// docs/benchmarks.md).
//
// Usage: core_bench [--peers N] [--rounds N] [--interval-ms MS] [--seed N]
// Prints figures; it is not a test and asserts nothing about them.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/peer_limits.hpp"
#include "core/random.hpp"
#include "core/server.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;
using WallClock = std::chrono::steady_clock;

// Counts what the core sends; keeps a copy of the last datagram only while a
// handshake needs it, so the measured paths pay for no more than a virtual call.
class NullSink final : public ServerSink {
public:
    void send(const Route&, const Address&, std::span<const std::uint8_t> data) override {
        ++sent;
        if (capture) {
            last_size = std::min(data.size(), last.size());
            std::memcpy(last.data(), data.data(), last_size);
        }
    }
    void peer_event(const PeerEvent&) override { ++events; }

    kap::Message last_message() const {
        auto m = kap::decode(std::span<const std::uint8_t>(last.data(), last_size));
        if (!m) throw std::runtime_error("the core sent an undecodable datagram");
        return *m;
    }

    bool capture = false;
    std::uint64_t sent = 0;
    std::uint64_t events = 0;
    std::array<std::uint8_t, kap::kMaxDecodableSize> last{};
    std::size_t last_size = 0;
};

struct Datagram {
    std::array<std::uint8_t, kap::kMaxDatagramSize> bytes{};
    std::size_t size = 0;
    Address from;

    std::span<const std::uint8_t> view() const { return {bytes.data(), size}; }
};

Datagram make_datagram(const kap::Message& m, const Address& from) {
    Datagram d;
    d.size = kap::encode(m, d.bytes);
    if (d.size == 0) throw std::logic_error("unencodable message");
    d.from = from;
    return d;
}

std::uint64_t wire_time(TimePoint t) {
    return static_cast<std::uint64_t>(t.time_since_epoch().count());
}

double ns_per(WallClock::duration d, std::uint64_t ops) {
    return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) /
           static_cast<double>(ops);
}

struct Bench {
    std::size_t peers = 10'000;
    std::size_t rounds = 20;
    std::uint32_t interval_ms = 1000;
    std::uint64_t seed = 1;
};

// Each peer registers from its own address, through the cookie handshake.
[[gnu::noinline]] void register_all(ServerCore& core, NullSink& sink, const Bench& b,
                                    const Route& route, TimePoint now,
                                    std::vector<Address>& addresses,
                                    std::vector<std::uint64_t>& incarnations) {
    sink.capture = true;
    for (std::size_t i = 0; i < b.peers; ++i) {
        const Address from = Address::v4(0x0a000000u + static_cast<std::uint32_t>(i) + 1,
                                         static_cast<std::uint16_t>(40000 + i % 20000));
        kap::Register reg{.nonce = 1000 + i,
                          .incarnation = 0x5eed0000u + i,
                          .interval_ms = b.interval_ms,
                          .probes = 3,
                          .cookie = {},
                          .name = fmt::format("peer-{}", i)};
        core.on_datagram(make_datagram({.session = 0, .body = reg}, from).view(), from, route, now);
        const kap::Message challenge = sink.last_message();
        reg.cookie = std::get<kap::Challenge>(challenge.body).cookie;
        core.on_datagram(make_datagram({.session = 0, .body = reg}, from).view(), from, route, now);
        if (!std::holds_alternative<kap::Accept>(sink.last_message().body))
            throw std::runtime_error("registration not accepted");
        addresses.push_back(from);
        incarnations.push_back(reg.incarnation);
    }
    sink.capture = false;
}

// Drives the clock over one interval in 1 ms steps, as the daemon's timerfd
// would, so every peer is probed exactly once. Returns the new time.
[[gnu::noinline]] TimePoint sweep_probes(ServerCore& core, TimePoint now, Duration interval) {
    const TimePoint end = now + interval;
    while (now < end) {
        now += 1ms;
        if (const auto next = core.next_deadline(); next && *next <= now) core.on_timer(now);
    }
    return now;
}

[[gnu::noinline]] void deliver_acks(ServerCore& core, const std::vector<Datagram>& acks,
                                    const Route& route, TimePoint now) {
    for (const Datagram& d : acks) core.on_datagram(d.view(), d.from, route, now);
}

// One ACK per peer for its latest probe, in a shuffled order (ACKs arrive in
// probe order, which the random phases make unrelated to the table's order).
std::vector<Datagram> make_acks(const ServerCore& core, TimePoint now, std::mt19937_64& rng) {
    std::vector<Datagram> acks;
    acks.reserve(core.peers().size());
    core.peers().for_each([&](PeerTable::Slot, const Peer& p) {
        acks.push_back(
            make_datagram({.session = p.session,
                           .body = kap::Ack{p.seq_sent, wire_time(now - 1ms), p.incarnation}},
                          p.address));
    });
    std::shuffle(acks.begin(), acks.end(), rng);
    return acks;
}

std::uint64_t total_acks(const ServerCore& core) {
    std::uint64_t n = 0;
    core.peers().for_each([&](PeerTable::Slot, const Peer& p) { n += p.acks_received; });
    return n;
}

std::uint64_t total_drops(const ServerCore& core) {
    std::uint64_t n = 0;
    for (auto d : core.drops()) n += d;
    return n;
}

struct Stat {
    double min = 0, median = 0, max = 0;
};

Stat stat_of(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return {v.front(), v[(v.size() - 1) / 2], v.back()};
}

int run(const Bench& b) {
    SeededRandom random(b.seed);
    std::mt19937_64 rng(b.seed);
    NullSink sink;
    PeerLimits limits;
    limits.min_interval = 1ms;
    limits.max_peers = static_cast<std::uint32_t>(std::max<std::size_t>(b.peers, 1));
    TimePoint now{std::chrono::hours(1)};
    ServerCore core(limits, random, sink, now);
    const Route route{0, Address::v4(0x7f000001, kap::kDefaultPort)};
    const Duration interval = std::chrono::milliseconds(b.interval_ms);

    std::vector<Address> addresses;
    std::vector<std::uint64_t> incarnations;
    const auto reg_start = WallClock::now();
    register_all(core, sink, b, route, now, addresses, incarnations);
    const auto reg_time = WallClock::now() - reg_start;

    fmt::print("# ServerCore benchmark\n\n");
    fmt::print(
        "peers {}, interval {} ms, probes 3, {} rounds (one probe and one ACK per peer "
        "each), seed {}\n\n",
        b.peers, b.interval_ms, b.rounds, b.seed);
    fmt::print(
        "registration (REGISTER, CHALLENGE, REGISTER with cookie, ACCEPT): "
        "{:.0f} ns per peer\n\n",
        ns_per(reg_time, b.peers));

    std::vector<double> probe_ns;
    std::vector<double> ack_ns;
    std::uint64_t probes_total = 0;
    std::uint64_t acks_total = 0;
    for (std::size_t round = 0; round < b.rounds; ++round) {
        const std::uint64_t sent0 = sink.sent;
        const auto t0 = WallClock::now();
        now = sweep_probes(core, now, interval);
        const auto t1 = WallClock::now();
        const std::uint64_t probes = sink.sent - sent0;
        probes_total += probes;
        probe_ns.push_back(ns_per(t1 - t0, probes));

        const auto acks = make_acks(core, now, rng);
        const std::uint64_t acked0 = total_acks(core);
        const std::uint64_t drops0 = total_drops(core);
        const auto t2 = WallClock::now();
        deliver_acks(core, acks, route, now);
        const auto t3 = WallClock::now();
        const std::uint64_t accepted = total_acks(core) - acked0;
        if (accepted != acks.size() || total_drops(core) != drops0 || probes != b.peers) {
            fmt::print(stderr, "round {}: {} probes, {} of {} ACKs accepted, {} dropped\n", round,
                       probes, accepted, acks.size(), total_drops(core) - drops0);
            return 1;
        }
        acks_total += accepted;
        ack_ns.push_back(ns_per(t3 - t2, accepted));
    }

    // The decoding share of an ACK: kap::decode alone on the same datagrams.
    const auto acks = make_acks(core, now, rng);
    std::uint64_t decoded = 0;
    const auto t4 = WallClock::now();
    for (std::size_t r = 0; r < b.rounds; ++r)
        for (const Datagram& d : acks) decoded += kap::decode(d.view()).ok() ? 1 : 0;
    const auto t5 = WallClock::now();

    const Stat p = stat_of(probe_ns);
    const Stat a = stat_of(ack_ns);
    fmt::print("| path | operations | min ns/op | median ns/op | max ns/op |\n");
    fmt::print("|---|---:|---:|---:|---:|\n");
    fmt::print("| ACK: ServerCore::on_datagram | {} | {:.0f} | {:.0f} | {:.0f} |\n", acks_total,
               a.min, a.median, a.max);
    fmt::print("| probe: ServerCore::on_timer, per probe sent | {} | {:.0f} | {:.0f} | {:.0f} |\n",
               probes_total, p.min, p.median, p.max);
    fmt::print("| ACK decode only: kap::decode | {} | - | {:.0f} | - |\n", decoded,
               ns_per(t5 - t4, decoded));
    fmt::print("\n(min/median/max over rounds; each round = {} ops)\n", b.peers);
    fmt::print("for callgrind: deliver_acks handled {} ACKs, sweep_probes sent {} probes\n",
               acks_total, probes_total);
    return 0;
}

}  // namespace
}  // namespace keepalive

int main(int argc, char** argv) {
    keepalive::Bench b;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::puts("Usage: core_bench [--peers N] [--rounds N] [--interval-ms MS] [--seed N]");
            return 0;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "core_bench: %s needs a value (see --help)\n", arg.c_str());
            return 2;
        }
        const char* value = argv[++i];
        if (arg == "--peers")
            b.peers = std::strtoull(value, nullptr, 10);
        else if (arg == "--rounds")
            b.rounds = std::strtoull(value, nullptr, 10);
        else if (arg == "--interval-ms")
            b.interval_ms = static_cast<std::uint32_t>(std::strtoul(value, nullptr, 10));
        else if (arg == "--seed")
            b.seed = std::strtoull(value, nullptr, 0);
        else {
            std::fprintf(stderr, "core_bench: unknown argument %s (see --help)\n", arg.c_str());
            return 2;
        }
    }
    if (b.peers == 0 || b.rounds == 0 || b.interval_ms == 0) {
        std::fputs("core_bench: --peers, --rounds and --interval-ms must be positive\n", stderr);
        return 2;
    }
    try {
        return keepalive::run(b);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "core_bench: %s\n", e.what());
        return 1;
    }
}
