// Stateful fuzz target for ServerCore: the input is a program of steps, each
// a datagram from one of a few sources (raw bytes, or a REGISTER / ACK / BYE
// built around what the server said, so that the fuzzer gets past cookies and
// seq numbers) or a clock advance. After every step the invariants hold:
//   - the table never holds more than max_peers;
//   - no reply is larger than the datagram that provoked it;
//   - states move only along the legal transitions;
//   - every event's cause is one its kind can have, with the figures it needs;
//   - no peer is declared down before (probes - 1) x interval has passed since
//     the last evidence that it was alive (registration or accepted ACK).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/legacy.hpp"
#include "core/server.hpp"

using namespace keepalive;
using namespace std::chrono_literals;

namespace {

using Bytes = std::vector<std::uint8_t>;

class Input {
public:
    Input(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
    bool done() const { return pos_ >= n_; }
    std::uint8_t u8() { return pos_ < n_ ? d_[pos_++] : 0; }
    std::uint16_t u16() { return static_cast<std::uint16_t>(u8() << 8 | u8()); }
    Bytes bytes(std::size_t n) {
        Bytes out;
        while (out.size() < n && pos_ < n_) out.push_back(d_[pos_++]);
        return out;
    }

private:
    const std::uint8_t* d_;
    std::size_t n_;
    std::size_t pos_ = 0;
};

[[noreturn]] void violated(const char* what) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
}

// The causes ServerCore may give each kind of event (the daemon's words for
// them are in daemon/event_text.hpp).
bool cause_fits(const PeerEvent& e) {
    using C = EventCause;
    switch (e.kind) {
        case EventKind::registered:
            return e.cause == C::registered || e.cause == C::registered_legacy ||
                   (e.cause == C::grant_changed && e.probes_before > 0);
        case EventKind::up:
            return e.cause == C::ack_received || e.cause == C::registered_again ||
                   e.cause == C::damping_ended || e.cause == C::recovered;
        case EventKind::suspect:
            return e.cause == C::unanswered && e.count > 0;
        case EventKind::down:
            return e.cause == C::detection_expired || (e.cause == C::icmp_refused && e.error);
        case EventKind::left:
            return e.cause == C::goodbye;
        case EventKind::restarted:
            return e.cause == C::restarted;
        case EventKind::moved:
            return (e.cause == C::moved || e.cause == C::taken_over) && e.previous_address;
        case EventKind::forgotten:
            return e.cause == C::forgotten && e.previous;
        case EventKind::degraded:
            return e.cause == C::degraded && e.health.degraded();
        case EventKind::damped:
            return e.cause == C::damped && e.count > 0;
    }
    return false;
}

struct Harness final : ServerSink {
    explicit Harness(bool auth) : server(limits(), random, *this, clock.now()) {
        if (auth) {
            kap::KeyRing ring;
            ring.add({7, Bytes(32, 0x42)});
            server.set_auth(ring);
            key = kap::AuthKey{7, Bytes(32, 0x42)};
        }
    }

    static PeerLimits limits() {
        PeerLimits l;
        l.min_interval = 100ms;
        l.max_interval = 2s;
        l.max_peers = 6;
        l.max_per_host = 4;
        l.legacy_max_peers = 2;
        l.forget_after = 5s;
        l.down_probe_interval = 500ms;
        return l;
    }

    void send(const Route&, const Address& to, std::span<const std::uint8_t> d) override {
        if (current_request > 0 && d.size() > current_request)
            violated("reply larger than request");
        last_reply[to] = Bytes(d.begin(), d.end());
    }

    void peer_event(const PeerEvent& e) override {
        const Peer& p = e.peer;
        const auto prev = e.previous;
        if (!cause_fits(e)) violated("cause");
        switch (e.kind) {
            case EventKind::suspect:
                if (prev != PeerState::up || p.state != PeerState::suspect) violated("suspect");
                break;
            case EventKind::down: {
                if (prev != PeerState::up && prev != PeerState::suspect) violated("down from");
                // A session that never answered is probed at most every
                // kProbationStep (ServerCore's probation), so its detection is shorter.
                const Duration step =
                    p.acks_received == 0
                        ? std::min<Duration>(p.interval, ServerCore::kProbationStep)
                        : p.interval;
                // And a legacy one that never answered gets only a few probes.
                const unsigned probes =
                    p.protocol == Protocol::legacy && p.acks_received == 0
                        ? std::min<unsigned>(p.probes, ServerCore::kUnansweredLegacyProbes)
                        : p.probes;
                const auto it = evidence.find(std::string(p.name));
                if (it != evidence.end() && probes > 1 &&
                    clock.now() - it->second < (probes - 1) * step)
                    violated("down before detection time");
                break;
            }
            case EventKind::up:
                if (prev == PeerState::up || p.state != PeerState::up) violated("up");
                evidence[std::string(p.name)] = clock.now();
                break;
            case EventKind::left:
                if (prev == PeerState::left || p.state != PeerState::left) violated("left");
                break;
            case EventKind::registered:
            case EventKind::restarted:
            case EventKind::moved:
                evidence[std::string(p.name)] = clock.now();
                break;
            case EventKind::forgotten:
                evidence.erase(std::string(p.name));
                break;
            case EventKind::degraded:
                if (!prev || !answering(*prev) || p.state != PeerState::degraded) violated("degraded");
                break;
            case EventKind::damped:  // a recovery held back: the peer stays where it was
                if (p.state != prev) violated("damped");
                break;
        }
    }

    void deliver(const Bytes& d, const Address& from) {
        current_request = d.size();
        server.on_datagram(d, from, route, clock.now());
        current_request = 0;
    }

    Bytes encode(const kap::Message& m, bool wrong_key) {
        Bytes out(kap::kMaxDatagramSize);
        kap::AuthKey bad{7, Bytes(32, 0x43)};
        const kap::AuthKey* k = key ? (wrong_key ? &bad : &*key) : nullptr;
        out.resize(kap::encode(m, out, k));
        return out;
    }

    // After a step: acks accepted since the last look are evidence too.
    void observe() {
        if (server.peers().size() > limits().max_peers) violated("table size");
        server.peers().for_each([&](PeerTable::Slot, const Peer& p) {
            auto& seen = acks[std::string(p.name)];
            if (p.acks_received != seen) evidence[std::string(p.name)] = clock.now();
            seen = p.acks_received;
        });
    }

    void run_timers() {
        while (auto t = server.next_deadline()) {
            if (*t > clock.now()) break;
            server.on_timer(clock.now());
        }
    }

    FakeClock clock{TimePoint{std::chrono::hours(1)}};
    SeededRandom random{1};
    Route route{1, *Address::parse("192.0.2.1:7371")};
    ServerCore server;
    std::optional<kap::AuthKey> key;
    std::size_t current_request = 0;
    std::unordered_map<Address, Bytes, AddressHash> last_reply;
    std::map<std::string, TimePoint> evidence;
    std::map<std::string, std::uint64_t> acks;
};

const char* const kNames[] = {"a", "b", "c", "d", "e", "f", "g", "h"};

Address source(std::uint8_t b) {
    return Address::v4(0x0A000001u + (b & 3u), static_cast<std::uint16_t>(40000 + (b >> 2 & 1)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in(data, size);
    Harness h(in.u8() & 1);
    for (int step = 0; step < 100 && !in.done(); ++step) {
        const std::uint8_t op = in.u8();
        const Address from = source(in.u8());
        const bool wrong_key = (op & 0x80) != 0;
        switch (op & 7) {
            case 0: {  // raw bytes
                h.deliver(in.bytes(in.u8() % 80), from);
                break;
            }
            case 1: {  // REGISTER, answering the CHALLENGE when asked to
                kap::Register r{in.u8(), in.u8() & 3u, static_cast<std::uint32_t>(in.u16()),
                                in.u8(), {},           kNames[in.u8() & 7]};
                h.deliver(h.encode({.session = 0, .body = r}, wrong_key), from);
                if (op & 0x08) {
                    const auto it = h.last_reply.find(from);
                    if (it != h.last_reply.end())
                        if (auto m = kap::decode(it->second, nullptr, false); m.ok())
                            if (const auto* c = std::get_if<kap::Challenge>(&m->body)) {
                                r.cookie = c->cookie;
                                h.deliver(h.encode({.session = 0, .body = r}, wrong_key), from);
                            }
                }
                break;
            }
            case 2:
            case 3: {  // ACK or BYE for a peer in the table, near its seq
                std::vector<const Peer*> peers;
                h.server.peers().for_each(
                    [&](PeerTable::Slot, const Peer& p) { peers.push_back(&p); });
                const std::uint8_t pick = in.u8();
                const std::uint8_t back = in.u8();
                if (peers.empty()) break;
                const Peer& p = *peers[pick % peers.size()];
                const Address to = (op & 0x10) ? from : p.address;
                const std::uint64_t seq = p.seq_sent >= (back & 3u) ? p.seq_sent - (back & 3u) : 0;
                const std::uint64_t incarnation = (op & 0x20) ? p.incarnation + 1 : p.incarnation;
                if ((op & 7) == 2)
                    h.deliver(h.encode({.session = p.session,
                                        .body = kap::Ack{seq, in.u8(), incarnation}},
                                       wrong_key),
                              to);
                else
                    h.deliver(h.encode({.diag = static_cast<kap::Diag>(back >> 4),
                                        .session = p.session,
                                        .body = kap::Bye{seq}},
                                       wrong_key),
                              to);
                break;
            }
            case 4: {  // legacy registration or reply text
                const Bytes text = in.bytes(in.u8() % 40);
                if (op & 0x08)
                    h.server.on_legacy_register(text, from, h.route, 5002, h.clock.now());
                else
                    h.server.on_legacy_reply(text, from, h.clock.now());
                break;
            }
            default: {  // time passes
                h.clock.advance(std::chrono::milliseconds(in.u16() % 1500));
                h.run_timers();
                break;
            }
        }
        h.observe();
    }
    return 0;
}
