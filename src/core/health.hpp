// Gray failure and flapping, judged per peer without I/O: a sliding window of
// probe outcomes and a smoothed RTT decide "degraded" (with hysteresis), and
// a record of recent recoveries decides "damped". ServerCore feeds them.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

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

// The outcomes of a peer's last probes, newest last. Only peers under a loss
// policy have one (in the peer's boxed rare part, core/peer.hpp).
class LossWindow {
public:
    void record(bool lost, std::uint32_t size);
    std::uint32_t lost() const { return lost_; }
    std::uint32_t size() const { return static_cast<std::uint32_t>(bits_.size()); }
    void clear() { *this = LossWindow(); }  // frees the bits

private:
    std::vector<bool> bits_;  // a ring once full
    std::uint32_t next_ = 0;
    std::uint32_t lost_ = 0;
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

// A peer's smoothed RTT, judged with its loss window (if it has one) against
// the policy.
class PeerHealth {
public:
    void rtt_sample(Duration rtt);
    // Forget the past: a new session, or a peer back from down (its loss
    // window is cleared apart).
    void reset() { srtt_us_ = -1; }

    // The peer's figures, and what is over its limit under `policy` (nothing
    // if it is healthy). `degraded_now` selects the thresholds: entering needs
    // the high one, staying needs only more than the low one (hysteresis).
    // `window`: the peer's loss window, null if it has none (no loss yet).
    HealthFigures judge(const HealthPolicy& policy, bool degraded_now,
                        const LossWindow* window) const;

    std::optional<Duration> smoothed_rtt() const {
        return srtt_us_ < 0 ? std::nullopt
                            : std::optional<Duration>(std::chrono::microseconds(srtt_us_));
    }

private:
    // Whole microseconds, as shown, in 4 bytes (a peer record holds it);
    // saturates at 2^31-1 us. None yet: an RTT is never negative.
    std::int32_t srtt_us_ = -1;
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

    bool held() const { return held_; }
    bool answering() const { return answering_since_.has_value(); }
    void hold() { held_ = true; }
    void release() { *this = FlapDamper(); }  // frees the history
    std::size_t recent_flaps() const { return recoveries_.size(); }

private:
    // Made at a peer's first recovery from down, and only under a hold_down
    // policy (in the peer's boxed rare part); most peers never have one.
    std::vector<TimePoint> recoveries_;  // at most flap_threshold + 1
    bool held_ = false;
    std::optional<TimePoint> answering_since_;
};

}  // namespace keepalive
