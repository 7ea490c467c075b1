// The peer side of the Go module's protocol, without I/O, for
// `keepalive-peer --legacy` against an old ka-server. It behaves like the old
// ka-client on the wire and improves on it only where the old server cannot
// tell: it repeats its registration while no probe comes, and registers
// again when the server goes quiet.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "core/clock.hpp"
#include "core/legacy.hpp"
#include "core/random.hpp"

namespace keepalive {

class LegacyPeerSink {
public:
    virtual ~LegacyPeerSink() = default;
    virtual void send_registration(std::span<const std::uint8_t> datagram) = 0;  // to server:5001
    virtual void send_reply(std::span<const std::uint8_t> datagram) = 0;         // to server:5002
    enum class Event { probed, lost, retrying };
    virtual void legacy_event(Event event) = 0;
};

class LegacyPeerSession {
public:
    static constexpr Duration kMinBackoff = std::chrono::seconds(1);
    static constexpr Duration kMaxBackoff = std::chrono::seconds(30);
    // Repeat the registration when no probe came within this many intervals.
    static constexpr unsigned kRegisterPatience = 3;

    LegacyPeerSession(legacy::Registration registration, RandomSource& random,
                      LegacyPeerSink& sink);

    void start(TimePoint now);
    // A datagram that came from the server's IP:5002.
    void on_probe(std::span<const std::uint8_t> data, TimePoint now);
    void on_timer(TimePoint now);
    TimePoint next_deadline() const { return deadline_; }

    bool probed() const { return probed_; }
    std::uint64_t replies() const { return replies_; }

private:
    void send_registration(TimePoint now);
    Duration interval() const { return std::chrono::seconds(registration_.interval_s); }

    legacy::Registration registration_;
    RandomSource& random_;
    LegacyPeerSink& sink_;
    bool probed_ = false;  // a probe came since the last registration
    Duration backoff_ = kMinBackoff;
    TimePoint deadline_{};
    std::uint64_t replies_ = 0;
};

}  // namespace keepalive
