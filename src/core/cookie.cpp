#include "core/cookie.hpp"

#include <algorithm>

namespace keepalive {

namespace {

std::uint64_t bucket_of(TimePoint now) {
    // steady_clock may start anywhere; only the difference between buckets matters.
    return static_cast<std::uint64_t>(now.time_since_epoch() / CookieJar::kBucket);
}

bool all_zero(const kap::Cookie& c) {
    return std::all_of(c.begin(), c.end(), [](std::uint8_t b) { return b == 0; });
}

void put_be(std::uint8_t* out, std::uint64_t v, std::size_t width) {
    for (std::size_t i = 0; i < width; ++i)
        out[i] = static_cast<std::uint8_t>(v >> (8 * (width - 1 - i)));
}

}  // namespace

CookieJar::CookieJar(const std::array<std::uint8_t, 32>& secret) : keyed_(secret) {}

kap::Cookie CookieJar::compute(const Address& source, std::uint64_t nonce,
                               std::uint64_t bucket) const {
    // family(1) | address(16) | port(2) | nonce(8) | bucket(8)
    std::array<std::uint8_t, 35> input{};
    input[0] = source.family() == Address::Family::v4 ? 4 : 6;
    std::copy(source.bytes().begin(), source.bytes().end(), input.begin() + 1);
    put_be(&input[17], source.port(), 2);
    put_be(&input[19], nonce, 8);
    put_be(&input[27], bucket, 8);

    HmacSha256 mac = keyed_;
    mac.update(input);
    const Sha256Digest digest = mac.finish();
    kap::Cookie cookie;
    std::copy_n(digest.begin(), cookie.size(), cookie.begin());
    // An all-zero cookie means "none" on the wire; 2^-128 odds, but make() must never emit one.
    if (all_zero(cookie)) cookie[0] = 1;
    return cookie;
}

kap::Cookie CookieJar::make(const Address& source, std::uint64_t nonce, TimePoint now) const {
    return compute(source, nonce, bucket_of(now));
}

bool CookieJar::verify(const kap::Cookie& cookie, const Address& source, std::uint64_t nonce,
                       TimePoint now) const {
    if (all_zero(cookie)) return false;
    const std::uint64_t bucket = bucket_of(now);
    const kap::Cookie current = compute(source, nonce, bucket);
    const kap::Cookie previous = compute(source, nonce, bucket - 1);
    // Both are always computed so the timing does not say which bucket matched.
    const bool a = constant_time_equal(cookie, current);
    const bool b = constant_time_equal(cookie, previous);
    return a || b;
}

}  // namespace keepalive
