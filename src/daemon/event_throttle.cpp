#include "daemon/event_throttle.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace keepalive {

bool EventThrottle::take(Bucket& b, double burst, double per_second, TimePoint now) {
    if (b.last == TimePoint{}) {
        b.tokens = burst;
    } else {
        const double elapsed = std::chrono::duration<double>(now - b.last).count();
        b.tokens = std::min(burst, b.tokens + std::max(0.0, elapsed) * per_second);
    }
    b.last = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
}

bool EventThrottle::admit(EventKind kind, const std::string& peer, const Address& address,
                          TimePoint now) {
    if (period_start_ == TimePoint{}) period_start_ = now;
    Address host = address;
    host.set_port(0);
    Bucket& p = peers_[peer];
    Bucket& h = hosts_[host];
    // Both buckets pay, so that a host's flood also slows its other peers.
    const bool peer_ok = take(p, limits_.peer_burst, limits_.peer_per_second, now);
    const bool host_ok = take(h, limits_.host_burst, limits_.host_per_second, now);
    if ((peer_ok && host_ok) || kind == EventKind::down) return true;
    ++p.suppressed;
    ++suppressed_in_period_;
    ++suppressed_total_;
    return false;
}

std::optional<std::string> EventThrottle::summary(TimePoint now) {
    if (period_start_ == TimePoint{} || now - period_start_ < limits_.summary_period)
        return std::nullopt;
    std::optional<std::string> line;
    if (suppressed_in_period_ > 0) {
        const auto worst = std::max_element(
            peers_.begin(), peers_.end(),
            [](const auto& a, const auto& b) { return a.second.suppressed < b.second.suppressed; });
        std::size_t noisy = 0;
        for (const auto& [name, b] : peers_) noisy += b.suppressed > 0 ? 1 : 0;
        line = fmt::format(
            "{} peer events not logged in the last {} s (rate limit), from {} peer{}; most "
            "from {} ({}); keepalivectl peers shows every peer's current state",
            suppressed_in_period_,
            std::chrono::duration_cast<std::chrono::seconds>(now - period_start_).count(), noisy,
            noisy == 1 ? "" : "s", worst->first, worst->second.suppressed);
    }
    // Full buckets carry no memory worth keeping.
    const auto full = [&](const Bucket& b, double burst, double rate) {
        const double elapsed = std::chrono::duration<double>(now - b.last).count();
        return b.tokens + elapsed * rate >= burst;
    };
    for (auto& [name, b] : peers_) b.suppressed = 0;
    std::erase_if(peers_, [&](const auto& e) {
        return full(e.second, limits_.peer_burst, limits_.peer_per_second);
    });
    std::erase_if(hosts_, [&](const auto& e) {
        return full(e.second, limits_.host_burst, limits_.host_per_second);
    });
    period_start_ = now;
    suppressed_in_period_ = 0;
    return line;
}

}  // namespace keepalive
