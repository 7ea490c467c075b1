// Stateless registration cookies (HMAC-SHA256 from libsodium) (SYN-cookie style): the server
// answers a REGISTER without a valid cookie with a CHALLENGE carrying one, and keeps no state until
// the peer echoes it from the same address and port with the same nonce. Pure: time is passed in.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/codec.hpp"
#include "core/crypto.hpp"

namespace keepalive {

class CookieJar {
public:
    static constexpr std::chrono::seconds kBucket{60};

    // `secret` is drawn at server start and never leaves the process.
    explicit CookieJar(const std::array<std::uint8_t, 32>& secret);

    // The first 16 bytes of HMAC-SHA256(secret, family | 16 address bytes | port | nonce |
    // bucket), bucket = now / kBucket. Never all zero.
    kap::Cookie make(const Address& source, std::uint64_t nonce, TimePoint now) const;

    // True if `cookie` was made for this source and nonce in the current or the previous bucket:
    // a cookie stays valid for at least 60 s and less than 120 s (the contract asks for 30..120).
    // An all-zero cookie (a first REGISTER) never verifies.
    bool verify(const kap::Cookie& cookie, const Address& source, std::uint64_t nonce,
                TimePoint now) const;

private:
    kap::Cookie compute(const Address& source, std::uint64_t nonce, std::uint64_t bucket) const;

    HmacSha256 keyed_;  // copied per cookie, so the secret is hashed once
};

}  // namespace keepalive
