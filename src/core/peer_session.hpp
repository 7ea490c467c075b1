// The peer side of KAP/1 without I/O: registration handshake, answering
// probes, noticing a lost server and re-registering with backoff. The caller
// delivers only datagrams that came from the server's address.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/random.hpp"

namespace keepalive {

struct PeerSessionOptions {
    std::string name;
    std::uint32_t interval_ms = 1000;
    std::uint8_t probes = 3;
    // With keys, everything sent is signed with the active key and every datagram
    // received must carry a valid AUTH trailer under one of them.
    std::optional<kap::KeyRing> keys;
};

enum class SessionState : std::uint8_t { registering, registered, stopped };

enum class SessionEventKind : std::uint8_t {
    registered,        // ACCEPT received
    server_restarted,  // ACCEPT with a new epoch
    rejected,          // REJECT received (diag says why)
    lost,              // no probe for probes × interval + interval (+ kRestartGrace after BYE 8)
    goodbye,           // BYE from the server (diag says why; 8: the session is kept)
};

struct SessionEvent {
    SessionEventKind kind;
    kap::Diag diag = kap::Diag::none;
};

class PeerSessionSink {
public:
    virtual ~PeerSessionSink() = default;
    virtual void send(std::span<const std::uint8_t> datagram) = 0;
    virtual void session_event(const SessionEvent& event) = 0;
};

class PeerSession {
public:
    static constexpr Duration kMinBackoff = std::chrono::seconds(1);
    static constexpr Duration kMaxBackoff = std::chrono::seconds(30);
    // After BYE diag 8 (restarting) the server is given this much longer
    // before it counts as lost: it comes back with our session.
    static constexpr Duration kRestartGrace = std::chrono::seconds(30);

    PeerSession(PeerSessionOptions options, RandomSource& random, PeerSessionSink& sink);
    PeerSession(const PeerSession&) = delete;
    PeerSession& operator=(const PeerSession&) = delete;

    // Sends the first REGISTER.
    void start(TimePoint now);
    void on_datagram(std::span<const std::uint8_t> data, TimePoint now);
    void on_timer(TimePoint now);
    std::optional<TimePoint> next_deadline() const;
    // Says goodbye (BYE diag 5) if registered, and stops.
    void stop();
    // Replaces the keys (see PeerSessionOptions::keys); the session goes on.
    void set_keys(std::optional<kap::KeyRing> keys) { options_.keys = std::move(keys); }

    SessionState state() const { return state_; }
    std::uint32_t session() const { return session_; }
    std::uint64_t incarnation() const { return incarnation_; }
    std::uint64_t epoch() const { return epoch_; }
    std::uint32_t granted_interval_ms() const { return granted_interval_ms_; }
    std::uint8_t granted_probes() const { return granted_probes_; }
    std::uint64_t probes_answered() const { return probes_answered_; }
    std::uint64_t dropped() const { return dropped_; }

private:
    void register_now(TimePoint now);
    void send_register(const kap::Cookie& cookie);
    void send(const kap::Message& m);
    Duration lost_after() const;

    PeerSessionOptions options_;
    RandomSource& random_;
    PeerSessionSink& sink_;
    std::uint64_t incarnation_;

    SessionState state_ = SessionState::stopped;
    std::uint64_t nonce_ = 0;
    Duration backoff_ = kMinBackoff;
    TimePoint deadline_{};  // retry (registering) or server lost (registered)

    std::uint32_t session_ = 0;
    std::uint64_t epoch_ = 0;
    std::uint32_t granted_interval_ms_ = 0;
    std::uint8_t granted_probes_ = 0;
    std::uint64_t highest_seq_ = 0;
    // Set by BYE 8 to its seq: in the restart grace until a probe above it.
    std::optional<std::uint64_t> grace_until_seq_;
    std::uint64_t probes_answered_ = 0;
    std::uint64_t dropped_ = 0;
};

}  // namespace keepalive
