// Gray failure and flapping, judged per peer without I/O: a sliding window of
// probe outcomes and a smoothed RTT decide "degraded" (with hysteresis), and
// a record of recent recoveries decides "damped". ServerCore feeds them.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/boxed.hpp"
#include "core/clock.hpp"

namespace keepalive {

// [peers] degraded_* and hold_down/flap_threshold; every part is off when unset.
struct HealthPolicy {
    // Degraded when more than this share of the last `loss_window` probes went
    // unanswered; healthy again at half of it or less. 0.01 .. 1.
    std::optional<double> loss{};
    std::uint32_t loss_window = 50;  // 10 .. 1000 probes
    // Degraded when the smoothed RTT exceeds this; healthy again below 80% of it.
    std::optional<Duration> rtt{};
    // Damping: more than `flap_threshold` recoveries from down within
    // `hold_down` hold the peer down until it has answered for `hold_down`.
    std::optional<Duration> hold_down{};
    std::uint32_t flap_threshold = 3;  // 1 .. 100

    friend bool operator==(const HealthPolicy&, const HealthPolicy&) = default;
};

// The outcomes of a peer's last probes, newest last. Boxed: only peers under
// a loss policy have one.
class LossWindow {
public:
    void record(bool lost, std::uint32_t size);
    std::uint32_t lost() const { return ring_ ? ring_->lost : 0; }
    std::uint32_t size() const {
        return ring_ ? static_cast<std::uint32_t>(ring_->bits.size()) : 0;
    }
    void clear() { ring_.reset(); }

private:
    struct Ring {
        std::vector<bool> bits;  // a ring once full
        std::uint32_t next = 0;
        std::uint32_t lost = 0;
    };
    Boxed<Ring> ring_;
};

// A peer's health as an event reports it (degraded, recovered).
struct HealthFigures {
    std::uint32_t lost = 0;         // probes unanswered in the loss window
    std::uint32_t window = 0;       // probes in the loss window
    std::optional<Duration> rtt{};  // smoothed round trip
    bool loss_over = false;         // degraded by loss
    bool rtt_over = false;          // degraded by round trip
    bool degraded() const { return loss_over || rtt_over; }
    friend bool operator==(const HealthFigures&, const HealthFigures&) = default;
};

class PeerHealth {
public:
    // One probe's fate, known when the next one is due.
    void probe_outcome(bool lost, const HealthPolicy& policy);
    void rtt_sample(Duration rtt);
    // Forget the past: a new session, or a peer back from down.
    void reset();

    // The peer's figures, and what is over its limit under `policy` (nothing
    // if it is healthy). `degraded_now` selects the thresholds: entering needs
    // the high one, staying needs only more than the low one (hysteresis).
    HealthFigures judge(const HealthPolicy& policy, bool degraded_now) const;

    std::optional<Duration> smoothed_rtt() const {
        return srtt_ns_ < 0 ? std::nullopt : std::optional<Duration>(Duration(srtt_ns_));
    }
    const LossWindow& window() const { return window_; }

private:
    LossWindow window_;
    std::int64_t srtt_ns_ = -1;  // none yet: an RTT is never negative
};

// Recent recoveries of one peer, for damping.
class FlapDamper {
public:
    // The peer answered again after being down at `now`. True if it has now
    // recovered more than flap_threshold times within hold_down: hold it down.
    bool recovered(TimePoint now, const HealthPolicy& policy);
    // While held: an ACK at `now` (starts the quiet stretch if none runs) or a
    // probe found unanswered (ends it). released() says when it is over.
    void answered(TimePoint now);
    void unanswered();
    bool released(TimePoint now, const HealthPolicy& policy) const;

    bool held() const { return state_ && state_->held; }
    bool answering() const { return state_ && state_->answering_since.has_value(); }
    void hold() { state_.make().held = true; }
    void release() { state_.reset(); }
    std::size_t recent_flaps() const { return state_ ? state_->recoveries.size() : 0; }

private:
    // Boxed: made at a peer's first recovery from down, and only under a
    // hold_down policy; most peers never have one.
    struct State {
        std::vector<TimePoint> recoveries;  // at most flap_threshold + 1
        bool held = false;
        std::optional<TimePoint> answering_since;
    };
    Boxed<State> state_;
};

}  // namespace keepalive
