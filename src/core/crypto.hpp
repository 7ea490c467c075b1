// The few cryptographic primitives KAP/1 needs, on libsodium: HMAC-SHA256 for
// the auth trailer and the registration cookie, a constant-time compare,
// random bytes, and a keyed short hash for tables indexed by attacker-chosen
// values. Pure functions and value types: no I/O beyond the kernel's CSPRNG.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace keepalive {

using Sha256Digest = std::array<std::uint8_t, 32>;

// Initialises libsodium once (thread-safe, idempotent); throws std::runtime_error
// if it cannot. Every function below calls it, so callers need not.
void crypto_init();

// SHA-256 (FIPS 180-4), e.g. a checksum over saved state.
Sha256Digest sha256(std::span<const std::uint8_t> data);

// SHA-256 over data given a piece at a time: update, then finish once.
class Sha256 {
public:
    Sha256();
    void update(std::span<const std::uint8_t> data);
    Sha256Digest finish();

private:
    // crypto_hash_sha256_state, kept opaque so that the header needs no sodium.h.
    alignas(16) std::array<std::uint8_t, 128> state_;
};

// HMAC-SHA256 (RFC 2104) with a key of any length.
Sha256Digest hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data);

// A key absorbed once, to MAC many messages without rehashing it: copy, update, finish.
class HmacSha256 {
public:
    explicit HmacSha256(std::span<const std::uint8_t> key);
    HmacSha256(const HmacSha256&) = default;
    HmacSha256& operator=(const HmacSha256&) = default;
    ~HmacSha256();
    void update(std::span<const std::uint8_t> data);
    Sha256Digest finish();

private:
    // crypto_auth_hmacsha256_state, kept opaque so that the header needs no sodium.h.
    alignas(16) std::array<std::uint8_t, 208> state_;
};

// Compares without an early exit (sodium_memcmp). Different lengths compare
// unequal (length is not secret).
bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b);

// Fills `out` from the kernel's CSPRNG (randombytes_buf).
void random_bytes(std::span<std::uint8_t> out);

// Overwrites secrets before their memory is released (sodium_memzero).
void wipe(std::span<std::uint8_t> secret);

// SipHash-2-4 (crypto_shorthash) of `data` under a 16-byte key.
using ShortHashKey = std::array<std::uint8_t, 16>;
std::uint64_t short_hash(const ShortHashKey& key, std::span<const std::uint8_t> data);

}  // namespace keepalive
