#include "core/random.hpp"

#include <utility>

#include "core/crypto.hpp"

namespace keepalive {

std::uint64_t RandomSource::below(std::uint64_t bound) {
    // Rejection sampling avoids modulo bias.
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    std::uint64_t v;
    do {
        v = next_u64();
    } while (v >= limit);
    return v % bound;
}

std::uint64_t SystemRandom::next_u64() {
    if (next_ == pool_.size()) {
        random_bytes({reinterpret_cast<std::uint8_t*>(pool_.data()), sizeof pool_});
        next_ = 0;
    }
    return std::exchange(pool_[next_++], 0);
}

std::uint64_t SeededRandom::next_u64() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

}  // namespace keepalive
