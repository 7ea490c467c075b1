// SHA-256 against FIPS 180 vectors, HMAC-SHA256 against RFC 4231, and the
// registration cookie's validity window and bindings.
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/cookie.hpp"
#include "core/sha256.hpp"

namespace keepalive {
namespace {

using namespace std::chrono_literals;

std::span<const std::uint8_t> bytes_of(std::string_view s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

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

TEST(Sha256, Fips180Vectors) {
    EXPECT_EQ(hex(sha256(bytes_of(""))),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(hex(sha256(bytes_of("abc"))),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(hex(sha256(bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, MillionA) {
    const auto data = repeat('a', 1'000'000);
    const char* expected = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    EXPECT_EQ(hex(sha256(data)), expected);
    // The same through the incremental interface in uneven pieces.
    Sha256 h;
    std::size_t pos = 0;
    for (std::size_t step = 1; pos < data.size(); step = step % 131 + 1) {
        const std::size_t n = std::min(step, data.size() - pos);
        h.update(std::span(data).subspan(pos, n));
        pos += n;
    }
    EXPECT_EQ(hex(h.finish()), expected);
}

// Lengths around the padding boundaries (55/56 bytes fit or spill the length field).
TEST(Sha256, PaddingBoundaries) {
    const std::pair<std::size_t, const char*> cases[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
        {128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
    };
    for (const auto& [n, expected] : cases) {
        EXPECT_EQ(hex(sha256(repeat('a', n))), expected) << "length " << n;
    }
}

TEST(Sha256, ResetStartsOver) {
    Sha256 h;
    h.update(bytes_of("garbage"));
    (void)h.finish();
    h.reset();
    h.update(bytes_of("abc"));
    EXPECT_EQ(hex(h.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
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
