// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), self-contained so that the
// core needs no crypto library. Pure functions and value types: no I/O.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace keepalive {

using Sha256Digest = std::array<std::uint8_t, 32>;

// Incremental SHA-256. update() any number of times, then finish() once; after
// finish() the object must be reset() before it is used again.
class Sha256 {
public:
    static constexpr std::size_t kBlockSize = 64;
    static constexpr std::size_t kDigestSize = 32;

    Sha256() { reset(); }
    void reset();
    void update(std::span<const std::uint8_t> data);
    Sha256Digest finish();

private:
    void compress(const std::uint8_t* block);

    std::array<std::uint32_t, 8> state_{};
    std::array<std::uint8_t, kBlockSize> buffer_{};
    std::size_t buffered_ = 0;
    std::uint64_t total_bytes_ = 0;
};

Sha256Digest sha256(std::span<const std::uint8_t> data);

// Incremental HMAC-SHA256. The key is absorbed at construction, so a keyed
// instance can be copied to MAC many messages without rehashing the key.
class HmacSha256 {
public:
    explicit HmacSha256(std::span<const std::uint8_t> key);
    void update(std::span<const std::uint8_t> data) { inner_.update(data); }
    Sha256Digest finish();

private:
    Sha256 inner_;
    Sha256 outer_;
};

Sha256Digest hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data);

// Compares without an early exit, so the time taken does not reveal where the
// first difference is. Different lengths compare unequal (length is not secret).
bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b);

}  // namespace keepalive
