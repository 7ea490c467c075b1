// The libsodium wrappers against published vectors (HMAC-SHA256: RFC 4231;
// SipHash-2-4: the SipHash paper), and the registration cookie's validity window and bindings.
#include "core/crypto.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/cookie.hpp"
#include "core/random.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;

std::string hex(std::span<const std::uint8_t> b) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (auto v : b) {
        out += kDigits[v >> 4];
        out += kDigits[v & 0xf];
    }
    return out;
}

std::vector<std::uint8_t> repeat(std::uint8_t v, std::size_t n) {
    return std::vector(n, v);
}

TEST(HmacSha256, Rfc4231) {
    struct Case {
        int number;
        std::vector<std::uint8_t> key;
        std::vector<std::uint8_t> data;
        const char* mac;
    };
    auto vec = [](std::string_view s) { return std::vector<std::uint8_t>(s.begin(), s.end()); };
    std::vector<std::uint8_t> key4;
    for (std::uint8_t i = 1; i <= 25; ++i) key4.push_back(i);
    const Case cases[] = {
        {1, repeat(0x0b, 20), vec("Hi There"),
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {2, vec("Jefe"), vec("what do ya want for nothing?"),
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {3, repeat(0xaa, 20), repeat(0xdd, 50),
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {4, key4, repeat(0xcd, 50),
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {6, repeat(0xaa, 131), vec("Test Using Larger Than Block-Size Key - Hash Key First"),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {7, repeat(0xaa, 131),
         vec("This is a test using a larger than block-size key and a larger than block-size "
             "data. The key needs to be hashed before being used by the HMAC algorithm."),
         "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (const auto& c : cases) {
        EXPECT_EQ(hex(hmac_sha256(c.key, c.data)), c.mac) << "RFC 4231 test case " << c.number;

        // Incremental, and from a copied keyed instance.
        const HmacSha256 keyed(c.key);
        HmacSha256 mac = keyed;
        const auto half = c.data.size() / 2;
        mac.update(std::span(c.data).first(half));
        mac.update(std::span(c.data).subspan(half));
        EXPECT_EQ(hex(mac.finish()), c.mac) << "incremental, case " << c.number;
    }
}

// Keys of any length work, the same key gives the same MAC in another instance,
// and one changed bit of the key or the data changes it.
TEST(HmacSha256, KeyAndDataBitsMatter) {
    const auto key = repeat(0x42, 32);
    const auto data = repeat(0x17, 100);
    const auto mac = hmac_sha256(key, data);
    EXPECT_EQ(mac, hmac_sha256(key, data));
    auto other_key = key;
    other_key[31] ^= 1;
    EXPECT_NE(mac, hmac_sha256(other_key, data));
    auto other_data = data;
    other_data[0] ^= 0x80;
    EXPECT_NE(mac, hmac_sha256(key, other_data));
}

// The reference vectors of SipHash-2-4 (key 00..0f; messages 00.., of length 0 and 15).
TEST(ShortHash, SipHashReferenceVectors) {
    ShortHashKey key;
    for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i);
    std::vector<std::uint8_t> msg;
    EXPECT_EQ(short_hash(key, msg), 0x726fdb47dd0e0e31ULL);
    for (std::uint8_t i = 0; i < 15; ++i) msg.push_back(i);
    EXPECT_EQ(short_hash(key, msg), 0xa129ca6149be45e5ULL);
    key[0] ^= 1;
    EXPECT_NE(short_hash(key, msg), 0xa129ca6149be45e5ULL);
}

TEST(RandomBytes, FillsAndDiffers) {
    std::array<std::uint8_t, 32> a{};
    std::array<std::uint8_t, 32> b{};
    random_bytes(a);
    random_bytes(b);
    const std::array<std::uint8_t, 32> zero{};
    EXPECT_NE(a, zero);  // 2^-256 odds of a false failure
    EXPECT_NE(a, b);
}

// Values come from a pool refilled 32 at a time: none repeats across
// refills, and two sources (two processes, or a restart) never share one.
TEST(SystemRandom, NoValueRepeatsAcrossRefillsOrSources) {
    SystemRandom a;
    SystemRandom b;
    std::set<std::uint64_t> seen;
    for (int i = 0; i < 1000; ++i) {
        EXPECT_TRUE(seen.insert(a.next_u64()).second) << i;  // 2^-44 odds of a false failure
        EXPECT_TRUE(seen.insert(b.next_u64()).second) << i;
    }
}

TEST(ConstantTimeEqual, ComparesContentAndLength) {
    const std::vector<std::uint8_t> a{1, 2, 3, 4};
    std::vector<std::uint8_t> b = a;
    EXPECT_TRUE(constant_time_equal(a, b));
    b[3] ^= 0x80;
    EXPECT_FALSE(constant_time_equal(a, b));
    b = a;
    b[0] ^= 1;
    EXPECT_FALSE(constant_time_equal(a, b));
    EXPECT_FALSE(constant_time_equal(a, std::span(a).first(3)));
    EXPECT_TRUE(constant_time_equal({}, {}));
}

class CookieTest : public ::testing::Test {
protected:
    static std::array<std::uint8_t, 32> secret(std::uint8_t first) {
        std::array<std::uint8_t, 32> s{};
        for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<std::uint8_t>(first + i);
        return s;
    }

    CookieJar jar_{secret(0)};
    Address source_ = *Address::parse("192.0.2.1:7000");
    std::uint64_t nonce_ = 0x0102030405060708;
    FakeClock clock_{TimePoint{3600s}};
};

// Pins the input layout: family | 16 address bytes | port | nonce | bucket (3600 s / 60 = 60),
// reference value from Python's hmac module.
TEST_F(CookieTest, MatchesReferenceLayout) {
    EXPECT_EQ(hex(jar_.make(source_, nonce_, clock_.now())), "576cad7567d475a4eb05aa0c1919f001");
}

TEST_F(CookieTest, ValidWindow) {
    // Made at the very start of a bucket (3600 s), so it lasts until the end of the next one.
    const auto cookie = jar_.make(source_, nonce_, clock_.now());
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now()));
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now() + 30s));
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now() + 59s));
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now() + 119s));
    EXPECT_FALSE(jar_.verify(cookie, source_, nonce_, clock_.now() + 120s));
    EXPECT_FALSE(jar_.verify(cookie, source_, nonce_, clock_.now() + 121s));
    // A cookie from the future (clock went backwards relative to it) is not accepted.
    EXPECT_FALSE(jar_.verify(cookie, source_, nonce_, clock_.now() - 1s));
}

TEST_F(CookieTest, MadeLateInBucketStillLastsSixtySeconds) {
    clock_.advance(59s + 999ms);
    const auto cookie = jar_.make(source_, nonce_, clock_.now());
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now()));
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now() + 30s));
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now() + 59s));
    EXPECT_TRUE(jar_.verify(cookie, source_, nonce_, clock_.now() + 60s));
    EXPECT_FALSE(jar_.verify(cookie, source_, nonce_, clock_.now() + 61s));
    EXPECT_FALSE(jar_.verify(cookie, source_, nonce_, clock_.now() + 121s));
}

TEST_F(CookieTest, BoundToSourceNonceAndSecret) {
    const auto now = clock_.now();
    const auto cookie = jar_.make(source_, nonce_, now);
    EXPECT_FALSE(jar_.verify(cookie, *Address::parse("192.0.2.1:7001"), nonce_, now));
    EXPECT_FALSE(jar_.verify(cookie, *Address::parse("192.0.2.2:7000"), nonce_, now));
    EXPECT_FALSE(jar_.verify(cookie, *Address::parse("[::ffff:192.0.2.1]:7000"), nonce_, now));
    EXPECT_FALSE(jar_.verify(cookie, source_, nonce_ + 1, now));
    EXPECT_FALSE(CookieJar(secret(1)).verify(cookie, source_, nonce_, now));
    auto flipped = cookie;
    flipped[15] ^= 1;
    EXPECT_FALSE(jar_.verify(flipped, source_, nonce_, now));
}

TEST_F(CookieTest, Ipv6) {
    const auto v6 = *Address::parse("[2001:db8::1]:7371");
    const auto now = clock_.now();
    const auto cookie = jar_.make(v6, nonce_, now);
    EXPECT_TRUE(jar_.verify(cookie, v6, nonce_, now));
    EXPECT_FALSE(jar_.verify(cookie, *Address::parse("[2001:db8::2]:7371"), nonce_, now));
    EXPECT_NE(cookie, jar_.make(source_, nonce_, now));
}

TEST_F(CookieTest, AllZeroNeverVerifies) {
    EXPECT_FALSE(jar_.verify(kap::Cookie{}, source_, nonce_, clock_.now()));
    EXPECT_NE(jar_.make(source_, nonce_, clock_.now()), kap::Cookie{});
}

}  // namespace
}  // namespace keepalive
