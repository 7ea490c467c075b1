// Randomness is injected like time: the kernel's CSPRNG in production, a
// seeded generator in tests so that runs repeat.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace keepalive {

class RandomSource {
public:
    virtual ~RandomSource() = default;
    virtual std::uint64_t next_u64() = 0;
    // Uniform in [0, bound) for bound > 0.
    std::uint64_t below(std::uint64_t bound);
};

// libsodium's randombytes_buf (the kernel's getrandom): unpredictable session ids, nonces, epochs
// and cookie secrets. Fetched 256 bytes at a time: one getrandom call per
// value was 7% of the daemon's CPU while a fleet registered. A value handed
// out is wiped from the buffer.
class SystemRandom final : public RandomSource {
public:
    std::uint64_t next_u64() override;

private:
    std::array<std::uint64_t, 32> pool_{};
    std::size_t next_ = 32;  // pool_ is empty
};

// splitmix64: deterministic, for tests.
class SeededRandom final : public RandomSource {
public:
    explicit SeededRandom(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next_u64() override;

private:
    std::uint64_t state_;
};

}  // namespace keepalive
