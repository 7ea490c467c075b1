#include "daemon/event_throttle.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace keepalive {

EventThrottle::EventThrottle(std::uint64_t key) : EventThrottle(key, Limits{}) {}

// FNV-1a over the key and the bytes, then a final mix: cheap, and with a
// random key per daemon, nobody outside can aim two names at one slot.
std::uint64_t EventThrottle::hash(std::string_view bytes) const {
    std::uint64_t h = 0xcbf29ce484222325ULL ^ key_;
    for (const char c : bytes) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h | 1;  // never 0, the owner of an unused bucket
}

bool EventThrottle::take(Bucket& b, std::uint64_t owner, double burst, double per_second,
                         TimePoint now) {
    if (b.owner != owner) b = Bucket{owner, burst, now, 0};
    const double elapsed = std::chrono::duration<double>(now - b.last).count();
    b.tokens = std::min(burst, b.tokens + std::max(0.0, elapsed) * per_second);
    b.last = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
}

bool EventThrottle::admit(EventKind kind, std::string_view peer, const Address& address,
                          TimePoint now) {
    if (period_start_ == TimePoint{}) period_start_ = now;
    const std::uint64_t peer_hash = hash(peer);
    const auto host_bytes = address.bytes();
    const std::uint64_t host_hash =
        hash(std::string_view(reinterpret_cast<const char*>(host_bytes.data()),
                              address.family() == Address::Family::v4 ? 4 : 16));
    Bucket& p = peers_[peer_hash % kSlots];
    Bucket& h = hosts_[host_hash % kSlots];
    // Both buckets pay, so that a host's flood also slows its other peers.
    const bool peer_ok = take(p, peer_hash, limits_.peer_burst, limits_.peer_per_second, now);
    const bool host_ok = take(h, host_hash, limits_.host_burst, limits_.host_per_second, now);
    if ((peer_ok && host_ok) || kind == EventKind::down) return true;
    ++suppressed_in_period_;
    ++suppressed_total_;
    if (++p.suppressed > noisiest_count_) {
        noisiest_count_ = p.suppressed;
        if (noisiest_ != peer) noisiest_ = std::string(peer);
    }
    return false;
}

std::optional<std::string> EventThrottle::summary(TimePoint now) {
    if (period_start_ == TimePoint{} || now - period_start_ < limits_.summary_period)
        return std::nullopt;
    std::optional<std::string> line;
    if (suppressed_in_period_ > 0) {
        const auto noisy = std::count_if(peers_.begin(), peers_.end(),
                                         [](const Bucket& b) { return b.suppressed > 0; });
        line = fmt::format(
            "{} peer events not logged in the last {} s (rate limit), from {} peer{}; most "
            "from {} ({}); keepalivectl peers shows every peer's current state",
            suppressed_in_period_,
            std::chrono::duration_cast<std::chrono::seconds>(now - period_start_).count(), noisy,
            noisy == 1 ? "" : "s", noisiest_, noisiest_count_);
    }
    for (Bucket& b : peers_) b.suppressed = 0;
    period_start_ = now;
    suppressed_in_period_ = 0;
    noisiest_.clear();
    noisiest_count_ = 0;
    return line;
}

}  // namespace keepalive
