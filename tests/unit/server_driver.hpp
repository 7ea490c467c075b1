// A small driver for ServerCore in tests of the parts built on it (metrics,
// peer health): registers peers through the real handshake, answers or
// ignores probes, and steps a fake clock from deadline to deadline.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "daemon/event_text.hpp"
#include "test_support.hpp"

namespace keepalive::test_support {

// How a simulated peer answers: not at all, or after `delay`.
struct Behaviour {
    bool answering = true;
    Duration delay = std::chrono::milliseconds(1);
    std::uint64_t incarnation = 0x1111;
    std::uint64_t drop_every = 0;  // when set, probes whose seq is a multiple go unanswered
};

class ServerDriver final : public ServerSink {
public:
    struct Reply {
        Address to;
        kap::Message msg;
    };
    struct Event {
        TimePoint at;
        EventKind kind;
        std::optional<PeerState> previous;
        std::string name;
        PeerState state;
        EventCause cause;
        std::string reason;  // in the daemon's words
    };
    explicit ServerDriver(PeerLimits limits = {}, std::uint64_t seed = 42) : random_(seed) {
        server = std::make_unique<ServerCore>(limits, random_, *this, clock.now());
    }

    void send(const Route&, const Address& to, std::span<const std::uint8_t> data) override {
        auto m = kap::decode(data);
        ASSERT_TRUE(static_cast<bool>(m));
        replies.push_back({to, *m});
        if (kap::type_of(*m) != kap::Type::probe) return;
        const auto it = peers.find(to);
        if (it == peers.end() || !it->second.answering) return;
        const auto& p = std::get<kap::Probe>(m->body);
        if (it->second.drop_every != 0 && p.seq % it->second.drop_every == 0) return;
        in_flight.emplace(
            clock.now() + it->second.delay,
            std::pair{to, encode({.session = m->session,
                                  .body = kap::Ack{p.seq, p.tx_time, it->second.incarnation}})});
    }
    void peer_event(const PeerEvent& e) override {
        events.push_back({clock.now(), e.kind, e.previous, std::string(e.peer.name), e.peer.state,
                          e.cause, event_reason(e)});
    }

    // Registers `name` from `from` through CHALLENGE and ACCEPT.
    void add_peer(const std::string& name, const Address& from, std::uint32_t interval_ms = 100,
                  std::uint8_t probes = 3, Behaviour behaviour = {}) {
        peers[from] = behaviour;
        kap::Register r{nonce_++, behaviour.incarnation, interval_ms, probes, {}, name};
        server->on_datagram(encode({.body = r}), from, route, clock.now());
        ASSERT_FALSE(replies.empty());
        ASSERT_EQ(kap::type_of(replies.back().msg), kap::Type::challenge);
        r.cookie = std::get<kap::Challenge>(replies.back().msg.body).cookie;
        server->on_datagram(encode({.body = r}), from, route, clock.now());
        ASSERT_EQ(kap::type_of(replies.back().msg), kap::Type::accept);
    }

    // Runs timers and deliveries in time order up to `until`.
    void run_until(TimePoint until) {
        for (;;) {
            const auto deadline = server->next_deadline();
            const bool delivery = !in_flight.empty() && in_flight.begin()->first <= until &&
                                  (!deadline || in_flight.begin()->first <= *deadline);
            if (delivery) {
                auto node = in_flight.extract(in_flight.begin());
                clock.set(std::max(clock.now(), node.key()));
                // Behaviour may have changed while it was in flight.
                const auto it = peers.find(node.mapped().first);
                if (it != peers.end() && it->second.answering)
                    server->on_datagram(node.mapped().second, node.mapped().first, route,
                                        clock.now());
                continue;
            }
            if (deadline && *deadline <= until) {
                clock.set(std::max(clock.now(), *deadline));
                server->on_timer(clock.now());
                continue;
            }
            clock.set(std::max(clock.now(), until));
            return;
        }
    }
    void run_for(Duration d) { run_until(clock.now() + d); }

    const Peer& peer(std::string_view name) const { return peer_named(*server, name); }
    std::size_t count(EventKind kind, std::string_view name) const {
        std::size_t n = 0;
        for (const auto& e : events) n += e.kind == kind && e.name == name;
        return n;
    }

    FakeClock clock{kStart};
    std::unique_ptr<ServerCore> server;
    Route route{1, addr("192.0.2.1:7371")};
    std::unordered_map<Address, Behaviour, AddressHash> peers;
    std::multimap<TimePoint, std::pair<Address, Bytes>> in_flight;
    std::vector<Reply> replies;
    std::vector<Event> events;

private:
    SeededRandom random_;
    std::uint64_t nonce_ = 0x5000;
};

}  // namespace keepalive::test_support
