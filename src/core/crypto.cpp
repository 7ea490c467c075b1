#include "core/crypto.hpp"

#include <sodium.h>

#include <cstring>
#include <stdexcept>

namespace keepalive {

static_assert(sizeof(crypto_auth_hmacsha256_state) <= 208, "HmacSha256::state_ is too small");
static_assert(alignof(crypto_auth_hmacsha256_state) <= 16);
static_assert(sizeof(crypto_hash_sha256_state) <= 128, "Sha256::state_ is too small");
static_assert(alignof(crypto_hash_sha256_state) <= 16);
static_assert(crypto_shorthash_KEYBYTES == 16 && crypto_shorthash_BYTES == 8);

void crypto_init() {
    // sodium_init() is itself idempotent and thread-safe; the static saves the call.
    static const bool ready = sodium_init() >= 0;
    if (!ready) throw std::runtime_error("libsodium cannot be initialised");
}

Sha256Digest sha256(std::span<const std::uint8_t> data) {
    crypto_init();
    Sha256Digest out;
    crypto_hash_sha256(out.data(), data.data(), data.size());
    return out;
}

Sha256::Sha256() {
    crypto_init();
    crypto_hash_sha256_init(reinterpret_cast<crypto_hash_sha256_state*>(state_.data()));
}

void Sha256::update(std::span<const std::uint8_t> data) {
    crypto_hash_sha256_update(reinterpret_cast<crypto_hash_sha256_state*>(state_.data()),
                              data.data(), data.size());
}

Sha256Digest Sha256::finish() {
    Sha256Digest out;
    crypto_hash_sha256_final(reinterpret_cast<crypto_hash_sha256_state*>(state_.data()),
                             out.data());
    return out;
}

Sha256Digest hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> data) {
    HmacSha256 mac(key);
    mac.update(data);
    return mac.finish();
}

namespace {
crypto_auth_hmacsha256_state* as_state(std::array<std::uint8_t, 208>& raw) {
    return reinterpret_cast<crypto_auth_hmacsha256_state*>(raw.data());
}
}  // namespace

HmacSha256::HmacSha256(std::span<const std::uint8_t> key) {
    crypto_init();
    crypto_auth_hmacsha256_init(as_state(state_), key.data(), key.size());
}

HmacSha256::~HmacSha256() {
    sodium_memzero(state_.data(), state_.size());
}

void HmacSha256::update(std::span<const std::uint8_t> data) {
    crypto_auth_hmacsha256_update(as_state(state_), data.data(), data.size());
}

Sha256Digest HmacSha256::finish() {
    Sha256Digest out;
    crypto_auth_hmacsha256_final(as_state(state_), out.data());
    return out;
}

bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b) {
    if (a.size() != b.size()) return false;
    if (a.empty()) return true;
    return sodium_memcmp(a.data(), b.data(), a.size()) == 0;
}

void random_bytes(std::span<std::uint8_t> out) {
    crypto_init();
    randombytes_buf(out.data(), out.size());
}

void wipe(std::span<std::uint8_t> secret) {
    sodium_memzero(secret.data(), secret.size());
}

std::uint64_t short_hash(const ShortHashKey& key, std::span<const std::uint8_t> data) {
    std::array<std::uint8_t, crypto_shorthash_BYTES> out;
    crypto_shorthash(out.data(), data.data(), data.size(), key.data());
    std::uint64_t v;
    std::memcpy(&v, out.data(), sizeof v);
    return v;
}

}  // namespace keepalive
