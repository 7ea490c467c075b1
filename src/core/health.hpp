// Gray failure and flapping, judged per peer without I/O: a sliding window of
// probe outcomes and a smoothed RTT decide "degraded" (with hysteresis), and
// a record of recent recoveries decides "damped". ServerCore feeds them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
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

// The outcomes of a peer's last probes, newest last.
class LossWindow {
public:
    void record(bool lost, std::uint32_t size);
    std::uint32_t lost() const { return lost_; }
    std::uint32_t size() const { return static_cast<std::uint32_t>(bits_.size()); }
    void clear();

private:
    std::vector<bool> bits_;  // a ring once full
    std::uint32_t next_ = 0;
    std::uint32_t lost_ = 0;
};

class PeerHealth {
public:
    // One probe's fate, known when the next one is due.
    void probe_outcome(bool lost, const HealthPolicy& policy);
    void rtt_sample(Duration rtt);
    // Forget the past: a new session, or a peer back from down.
    void reset();

    // Why the peer is degraded under `policy`, or nullopt if it is healthy.
    // `degraded_now` selects the thresholds: entering needs the high one,
    // staying needs only more than the low one (hysteresis).
    std::optional<std::string> degraded_reason(const HealthPolicy& policy, bool degraded_now) const;
    // "loss 12/50, rtt 3.1 ms" for event reasons.
    std::string describe() const;

    std::optional<Duration> smoothed_rtt() const { return srtt_; }
    const LossWindow& window() const { return window_; }

private:
    LossWindow window_;
    std::optional<Duration> srtt_;
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
    void unanswered() { answering_since_.reset(); }
    bool released(TimePoint now, const HealthPolicy& policy) const;

    bool held() const { return held_; }
    bool answering() const { return answering_since_.has_value(); }
    void hold() { held_ = true; }
    void release();
    std::size_t recent_flaps() const { return recoveries_.size(); }

private:
    // At most flap_threshold + 1 entries; a vector, because an empty deque
    // allocates, and every peer has one of these.
    std::vector<TimePoint> recoveries_;
    bool held_ = false;
    std::optional<TimePoint> answering_since_;
};

}  // namespace keepalive
