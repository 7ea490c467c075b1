// keepalive-micro-bench: the core's hot operations on Google Benchmark, in
// process, with a fake clock and no sockets. Replaces core_bench and
// timer_wheel_bench: Google Benchmark gives repetitions, statistics and JSON
// (--benchmark_repetitions=5 --benchmark_format=json).
//
//   TimerWheel  schedule, cancel, expire (1 ms steps, as the daemon) with 1 M timers
//   Codec       encode and decode of an ACK, a PROBE and a REGISTER
//   PeerTable   find_session and find_name in tables of 10 k to 1 M peers
//   ServerCore  one ACK (on_datagram) and one probe (on_timer), 10 k to 1 M peers
//
// Figures per operation are in docs/benchmarks.md; nothing here asserts them.
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/peer_limits.hpp"
#include "core/peer_table.hpp"
#include "core/random.hpp"
#include "core/server.hpp"
#include "core/timer_wheel.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;

const TimePoint kStart = TimePoint{std::chrono::hours(1)};

// ---- timer wheel ----------------------------------------------------------

// Deadlines spread over 10 s (about 2.4 turns of the default 4096-slot wheel).
std::vector<TimePoint> spread_deadlines(std::size_t n) {
    std::mt19937_64 rng(1);
    std::vector<TimePoint> d(n);
    for (auto& t : d) t = kStart + std::chrono::microseconds(rng() % 10'000'000);
    return d;
}

void BM_TimerWheelSchedule(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto deadlines = spread_deadlines(n);
    std::vector<TimerWheel::Handle> handles(n);
    TimerWheel wheel(kStart);
    for (auto _ : state) {
        for (std::size_t i = 0; i < n; ++i) handles[i] = wheel.schedule(deadlines[i], i);
        state.PauseTiming();
        for (auto h : handles) wheel.cancel(h);  // the pool stays grown: warm schedules
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}
BENCHMARK(BM_TimerWheelSchedule)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

void BM_TimerWheelCancel(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto deadlines = spread_deadlines(n);
    std::vector<TimerWheel::Handle> handles(n);
    TimerWheel wheel(kStart);
    for (auto _ : state) {
        state.PauseTiming();
        for (std::size_t i = 0; i < n; ++i) handles[i] = wheel.schedule(deadlines[i], i);
        state.ResumeTiming();
        for (auto h : handles) benchmark::DoNotOptimize(wheel.cancel(h));
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}
BENCHMARK(BM_TimerWheelCancel)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

// The daemon's pattern: advance 1 ms at a time until every timer has fired.
// Arguments: timers, wheel slots (ServerCore's wheel has ServerCore::kWheelSlots).
void BM_TimerWheelExpire(benchmark::State& state) {
    const auto n = static_cast<std::size_t>(state.range(0));
    const auto slots = static_cast<std::size_t>(state.range(1));
    const auto deadlines = spread_deadlines(n);
    std::uint64_t fired = 0;
    for (auto _ : state) {
        state.PauseTiming();
        auto wheel = std::make_unique<TimerWheel>(kStart, 1ms, slots);
        for (std::size_t i = 0; i < n; ++i) wheel->schedule(deadlines[i], i);
        state.ResumeTiming();
        for (TimePoint t = kStart; t <= kStart + 10s; t += 1ms)
            wheel->advance(t, [&](std::uint64_t payload, TimePoint) { fired += payload; });
    }
    benchmark::DoNotOptimize(fired);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}
BENCHMARK(BM_TimerWheelExpire)
    ->Args({1'000'000, 4096})
    ->Args({1'000'000, ServerCore::kWheelSlots})
    ->Unit(benchmark::kMillisecond);

// ---- codec ----------------------------------------------------------------

const kap::Message kAck{.session = 0x1234, .body = kap::Ack{41, 123'456'789, 0xfeed}};
const kap::Message kProbe{.session = 0x1234, .body = kap::Probe{41, 123'456'789}};
const kap::Message kRegister{
    .session = 0, .body = kap::Register{7, 0xfeed, 1000, 3, kap::Cookie{}, "node-0042.example"}};

void BM_CodecEncode(benchmark::State& state, const kap::Message& m) {
    std::array<std::uint8_t, kap::kMaxDatagramSize> out{};
    for (auto _ : state) {
        benchmark::DoNotOptimize(kap::encode(m, out));
        benchmark::ClobberMemory();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK_CAPTURE(BM_CodecEncode, ack, kAck);
BENCHMARK_CAPTURE(BM_CodecEncode, probe, kProbe);
BENCHMARK_CAPTURE(BM_CodecEncode, register, kRegister);

void BM_CodecDecode(benchmark::State& state, const kap::Message& m) {
    std::array<std::uint8_t, kap::kMaxDatagramSize> bytes{};
    const std::size_t size = kap::encode(m, bytes);
    for (auto _ : state) {
        auto decoded = kap::decode(std::span<const std::uint8_t>(bytes.data(), size));
        benchmark::DoNotOptimize(decoded);
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK_CAPTURE(BM_CodecDecode, ack, kAck);
BENCHMARK_CAPTURE(BM_CodecDecode, probe, kProbe);
BENCHMARK_CAPTURE(BM_CodecDecode, register, kRegister);

// ---- peer table -----------------------------------------------------------

struct FilledTable {
    PeerTable table;
    std::vector<std::uint32_t> sessions;
    std::vector<std::string> names;
};

FilledTable& table_of(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<FilledTable>> cache;
    auto& t = cache[n];
    if (t) return *t;
    t = std::make_unique<FilledTable>();
    std::mt19937 rng(7);
    for (std::size_t i = 0; i < n; ++i) {
        Peer p;
        const std::string name = fmt::format("node-{}.example", i);
        const PeerNameBuffer buffer(name);
        p.name = buffer.name();  // the table copies it
        p.session = static_cast<std::uint32_t>(rng()) | 1;
        if (t->table.find_session(p.session) != PeerTable::kNone) continue;
        p.address = Address::v4(0x0a000000u + static_cast<std::uint32_t>(i), 7000);
        t->sessions.push_back(p.session);
        t->names.push_back(name);
        t->table.insert(std::move(p));
    }
    std::shuffle(t->sessions.begin(), t->sessions.end(), std::mt19937(9));
    std::shuffle(t->names.begin(), t->names.end(), std::mt19937(9));
    return *t;
}

void BM_PeerTableFindSession(benchmark::State& state) {
    auto& t = table_of(static_cast<std::size_t>(state.range(0)));
    std::size_t i = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(t.table.find_session(t.sessions[i]));
        if (++i == t.sessions.size()) i = 0;
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_PeerTableFindSession)->Arg(10'000)->Arg(100'000)->Arg(1'000'000);

void BM_PeerTableFindName(benchmark::State& state) {
    auto& t = table_of(static_cast<std::size_t>(state.range(0)));
    std::size_t i = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(t.table.find_name(t.names[i]));
        if (++i == t.names.size()) i = 0;
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(BM_PeerTableFindName)->Arg(10'000)->Arg(100'000)->Arg(1'000'000);

// ---- ServerCore -----------------------------------------------------------

// Counts what the core sends; keeps the last datagram only while registering.
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

// A core with n peers registered through the cookie handshake, each from its
// own address, at interval 1 s.
struct Server {
    SeededRandom random{1};
    NullSink sink;
    PeerLimits limits;
    TimePoint now = kStart;
    std::unique_ptr<ServerCore> core;
    Route route{0, Address::v4(0x7f000001, kap::kDefaultPort)};

    explicit Server(std::size_t n) {
        limits.min_interval = 1ms;
        limits.max_peers = static_cast<std::uint32_t>(n);
        limits.max_per_host = static_cast<std::uint32_t>(n);
        limits.shed_busy_percent = 0;  // all at one instant: pacing would turn most away
        core = std::make_unique<ServerCore>(limits, random, sink, now);
        sink.capture = true;
        for (std::size_t i = 0; i < n; ++i) {
            const Address from = Address::v4(0x0a000000u + static_cast<std::uint32_t>(i) + 1,
                                             static_cast<std::uint16_t>(40000 + i % 20000));
            kap::Register reg{1000 + i, 0x5eed0000u + i, 1000, 3, {}, fmt::format("peer-{}", i)};
            core->on_datagram(make_datagram({.session = 0, .body = reg}, from).view(), from, route,
                              now);
            reg.cookie = std::get<kap::Challenge>(sink.last_message().body).cookie;
            core->on_datagram(make_datagram({.session = 0, .body = reg}, from).view(), from, route,
                              now);
        }
        sink.capture = false;
        if (core->peers().size() != n) throw std::runtime_error("registration failed");
    }

    // One interval in 1 ms steps: every peer probed once. Returns probes sent.
    std::uint64_t sweep() {
        const std::uint64_t sent0 = sink.sent;
        const TimePoint end = now + 1s;
        while (now < end) {
            now += 1ms;
            if (const auto next = core->next_deadline(); next && *next <= now)
                while (core->on_timer(now)) {
                }
        }
        return sink.sent - sent0;
    }

    // One ACK per peer for its latest probe, shuffled.
    std::vector<Datagram> acks(std::mt19937_64& rng) const {
        std::vector<Datagram> out;
        out.reserve(core->peers().size());
        const auto tx = static_cast<std::uint64_t>((now - 1ms).time_since_epoch().count());
        core->peers().for_each([&](PeerTable::Slot, const Peer& p) {
            out.push_back(make_datagram(
                {.session = p.session, .body = kap::Ack{p.seq_sent, tx, p.incarnation}},
                p.address));
        });
        std::shuffle(out.begin(), out.end(), rng);
        return out;
    }
};

Server& server_of(std::size_t n) {
    static std::map<std::size_t, std::unique_ptr<Server>> cache;
    auto& s = cache[n];
    if (!s) s = std::make_unique<Server>(n);
    return *s;
}

// Per probe: one on_timer sweep over a whole interval, divided by probes sent.
void BM_ServerCoreProbe(benchmark::State& state) {
    Server& s = server_of(static_cast<std::size_t>(state.range(0)));
    std::mt19937_64 rng(3);
    std::uint64_t probes = 0;
    for (auto _ : state) {
        probes += s.sweep();
        state.PauseTiming();
        for (const auto& d : s.acks(rng)) s.core->on_datagram(d.view(), d.from, s.route, s.now);
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(probes));
}
BENCHMARK(BM_ServerCoreProbe)
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMillisecond);

// Per ACK: every peer's ACK for its latest probe, in a random order.
void BM_ServerCoreAck(benchmark::State& state) {
    Server& s = server_of(static_cast<std::size_t>(state.range(0)));
    std::mt19937_64 rng(4);
    std::uint64_t acks = 0;
    for (auto _ : state) {
        state.PauseTiming();
        s.sweep();
        const auto batch = s.acks(rng);
        state.ResumeTiming();
        for (const auto& d : batch) s.core->on_datagram(d.view(), d.from, s.route, s.now);
        acks += batch.size();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(acks));
}
BENCHMARK(BM_ServerCoreAck)
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMillisecond);

// Per ACK as the daemon serves them: in batches of 64 (one recvmmsg), each
// batch given to ServerCore::prefetch() first.
void BM_ServerCoreAckPrefetched(benchmark::State& state) {
    Server& s = server_of(static_cast<std::size_t>(state.range(0)));
    std::mt19937_64 rng(4);
    std::uint64_t acks = 0;
    constexpr std::size_t kBatch = 64;
    std::array<std::span<const std::uint8_t>, kBatch> views;
    for (auto _ : state) {
        state.PauseTiming();
        s.sweep();
        const auto batch = s.acks(rng);
        state.ResumeTiming();
        for (std::size_t i = 0; i < batch.size(); i += kBatch) {
            const std::size_t n = std::min(kBatch, batch.size() - i);
            for (std::size_t j = 0; j < n; ++j) views[j] = batch[i + j].view();
            s.core->prefetch(std::span(views.data(), n));
            for (std::size_t j = 0; j < n; ++j)
                s.core->on_datagram(views[j], batch[i + j].from, s.route, s.now);
        }
        acks += batch.size();
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(acks));
}
BENCHMARK(BM_ServerCoreAckPrefetched)
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace keepalive

BENCHMARK_MAIN();
