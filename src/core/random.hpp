// Randomness is injected like time: the kernel's CSPRNG in production, a
// seeded generator in tests so that runs repeat.
#pragma once

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
// and cookie secrets.
class SystemRandom final : public RandomSource {
public:
    std::uint64_t next_u64() override;
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
