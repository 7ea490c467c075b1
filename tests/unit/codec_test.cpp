// KAP/1 codec: golden bytes from the contract's tables, every drop reason,
// size edges, the auth trailer, and a seeded mutation test.
#include "core/codec.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/crypto.hpp"

namespace keepalive::kap {
namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes enc(const Message& m, const AuthKey* key = nullptr) {
    Bytes out(kMaxDecodableSize + 16);
    const std::size_t n = encode(m, out, key);
    out.resize(n);
    return out;
}

void set_length(Bytes& b) {
    b[6] = static_cast<std::uint8_t>(b.size() >> 8);
    b[7] = static_cast<std::uint8_t>(b.size());
}

DecodeError error_of(const Bytes& b, const KeyRing* keys = nullptr, bool require_auth = false) {
    auto r = decode(b, keys, require_auth);
    EXPECT_FALSE(r.ok()) << "decoded although it should not";
    return r.ok() ? DecodeError::too_short : r.error();
}

Cookie counting_cookie(std::uint8_t first) {
    Cookie c;
    for (std::size_t i = 0; i < c.size(); ++i) c[i] = static_cast<std::uint8_t>(first + i);
    return c;
}

AuthKey make_key(std::uint32_t id, std::uint8_t fill) {
    AuthKey k;
    k.id = id;
    k.secret.assign(32, fill);
    return k;
}

std::vector<Message> one_of_each() {
    return {
        {Diag::none, 0, Register{1, 2, 200, 3, counting_cookie(0xA0), "web-1"}},
        {Diag::none, 0, Challenge{0xFFFFFFFFFFFFFFFF, counting_cookie(1)}},
        {Diag::none, 77, Accept{5, 6, kMaxIntervalMs, 255}},
        {Diag::server_full, 0, Reject{9}},
        {Diag::none, 0xFFFFFFFF, Probe{1, 123456789}},
        {Diag::none, 42, Ack{2, 3, 4}},
        {Diag::removed, 42, Bye{17}},
    };
}

TEST(Codec, TypeOfMatchesWireType) {
    const auto msgs = one_of_each();
    for (std::size_t i = 0; i < msgs.size(); ++i) {
        EXPECT_EQ(static_cast<int>(type_of(msgs[i])), static_cast<int>(i + 1));
        const Bytes b = enc(msgs[i]);
        ASSERT_FALSE(b.empty());
        EXPECT_EQ(b[3], i + 1);
    }
}

TEST(Codec, RoundTripEveryType) {
    for (const auto& m : one_of_each()) {
        const Bytes b = enc(m);
        ASSERT_EQ(b.size(), encoded_size(m)) << to_string(type_of(m));
        auto r = decode(b);
        ASSERT_TRUE(r.ok()) << to_string(type_of(m)) << ": " << to_string(r.error());
        EXPECT_EQ(*r, m) << to_string(type_of(m));
    }
}

TEST(Codec, GoldenRegister) {
    const Message m{
        Diag::none, 0,
        Register{0x0102030405060708, 0x1112131415161718, 200, 3, counting_cookie(0xA0), "web-1"}};
    // clang-format off
    const Bytes expected = {
        0x4B, 0x41, 0x01, 0x01, 0x00, 0x00, 0x00, 0x37, 0x00, 0x00, 0x00, 0x00,  // header, 55
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,                          // nonce
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,                          // incarnation
        0x00, 0x00, 0x00, 0xC8,                                                  // interval 200
        0x03,                                                                    // probes
        0x05,                                                                    // name_len
        0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,                          // cookie
        0xA8, 0xA9, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF,                          //
        'w',  'e',  'b',  '-',  '1',                                             // name
    };
    // clang-format on
    EXPECT_EQ(enc(m), expected);
    auto r = decode(expected);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, m);
}

TEST(Codec, GoldenChallengeAndReject) {
    // clang-format off
    const Bytes challenge = {
        0x4B, 0x41, 0x01, 0x02, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // nonce
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,  // cookie
        0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F,
    };
    // clang-format on
    EXPECT_EQ(enc({Diag::none, 0, Challenge{0x0102030405060708, counting_cookie(0x10)}}),
              challenge);
    // clang-format off
    const Bytes reject = {
        0x4B, 0x41, 0x01, 0x04, 0x00, 0x02, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    };
    // clang-format on
    EXPECT_EQ(enc({Diag::invalid_parameters, 0, Reject{0x0102030405060708}}), reject);
}

TEST(Codec, GoldenAccept) {
    const Message m{Diag::none, 0xDEADBEEF,
                    Accept{0x0102030405060708, 0x2122232425262728, 1000, 5}};
    // clang-format off
    const Bytes expected = {
        0x4B, 0x41, 0x01, 0x03, 0x00, 0x00, 0x00, 0x24, 0xDE, 0xAD, 0xBE, 0xEF,
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // nonce
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,  // epoch
        0x00, 0x00, 0x03, 0xE8,                          // interval 1000
        0x05,                                            // probes
        0x00, 0x00, 0x00,                                // padding
    };
    // clang-format on
    EXPECT_EQ(enc(m), expected);
    auto r = decode(expected);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, m);
}

TEST(Codec, GoldenProbeAckBye) {
    // clang-format off
    const Bytes probe = {
        0x4B, 0x41, 0x01, 0x05, 0x00, 0x00, 0x00, 0x1C, 0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,  // seq 1
        0x00, 0x00, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x00,  // tx_time
    };
    // clang-format on
    EXPECT_EQ(enc({Diag::none, 7, Probe{1, 0x0000018BCFE56800}}), probe);

    // clang-format off
    const Bytes ack = {
        0x4B, 0x41, 0x01, 0x06, 0x00, 0x00, 0x00, 0x24, 0x00, 0x00, 0x00, 0x07,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,  // seq
        0x00, 0x00, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x00,  // tx_time
        0xCA, 0xFE, 0xBA, 0xBE, 0x00, 0x00, 0x00, 0x01,  // incarnation
    };
    // clang-format on
    EXPECT_EQ(enc({Diag::none, 7, Ack{1, 0x0000018BCFE56800, 0xCAFEBABE00000001}}), ack);

    // clang-format off
    const Bytes bye = {
        0x4B, 0x41, 0x01, 0x07, 0x00, 0x05, 0x00, 0x14, 0x00, 0x00, 0x00, 0x09,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2A,  // seq 42
    };
    // clang-format on
    EXPECT_EQ(enc({Diag::shutting_down, 9, Bye{42}}), bye);

    for (const Bytes* b : {&probe, &ack, &bye}) EXPECT_TRUE(decode(*b).ok());
}

// Trailer layout: key_id, then HMAC-SHA256 over everything before the MAC, with
// AUTH set and the length covering the trailer. Reference MAC from Python's hmac.
TEST(Codec, GoldenAuthTrailer) {
    const AuthKey key = make_key(0x01020304, 0x42);
    // clang-format off
    const Bytes expected = {
        0x4B, 0x41, 0x01, 0x07, 0x01, 0x05, 0x00, 0x38, 0x00, 0x00, 0x00, 0x09,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2A,  // seq 42
        0x01, 0x02, 0x03, 0x04,                          // key_id
        0xc2, 0x8e, 0x2a, 0xdf, 0xeb, 0x37, 0x51, 0x9f, 0x44, 0x90, 0xf5,
        0xc3, 0xd4, 0x6e, 0xec, 0xe2, 0xeb, 0xd5, 0x68, 0x5f, 0x42, 0xab,
        0xeb, 0xf2, 0xa4, 0x44, 0xe2, 0xf7, 0xfc, 0xf7, 0xd1, 0x7d,
    };
    // clang-format on
    EXPECT_EQ(enc({Diag::shutting_down, 9, Bye{42}}, &key), expected);
    KeyRing ring;
    ring.add(key);
    EXPECT_TRUE(decode(expected, &ring).ok());
    EXPECT_EQ(auth_key_id(expected), 0x01020304u);
}

TEST(Codec, TooShort) {
    const Bytes probe = enc({Diag::none, 1, Probe{1, 1}});
    for (std::size_t n = 0; n < kHeaderSize; ++n) {
        const Bytes b(probe.begin(), probe.begin() + static_cast<std::ptrdiff_t>(n));
        EXPECT_EQ(error_of(b), DecodeError::too_short) << n;
    }
}

TEST(Codec, BadMagicVersion) {
    const Bytes good = enc({Diag::none, 1, Probe{1, 1}});
    Bytes b = good;
    b[0] = 'k';
    EXPECT_EQ(error_of(b), DecodeError::bad_magic);
    b = good;
    b[1] = 0x42;
    EXPECT_EQ(error_of(b), DecodeError::bad_magic);
    for (std::uint8_t v : {0, 2, 255}) {
        b = good;
        b[2] = v;
        EXPECT_EQ(error_of(b), DecodeError::bad_version) << int{v};
    }
    // Header rules are checked in order: magic before everything else.
    b = good;
    b[0] = 0;
    b[2] = 9;
    b[4] = 0xFF;
    EXPECT_EQ(error_of(b), DecodeError::bad_magic);
}

TEST(Codec, BadLength) {
    const Bytes good = enc({Diag::none, 1, Probe{1, 1}});
    Bytes b = good;
    b[7] = static_cast<std::uint8_t>(b[7] + 1);
    EXPECT_EQ(error_of(b), DecodeError::bad_length);
    b = good;
    b[7] = static_cast<std::uint8_t>(b[7] - 1);
    EXPECT_EQ(error_of(b), DecodeError::bad_length);
    b = good;
    b[6] = 1;  // 256 + 28
    EXPECT_EQ(error_of(b), DecodeError::bad_length);
    b = good;
    b.push_back(0);  // trailing byte not covered by the length
    EXPECT_EQ(error_of(b), DecodeError::bad_length);
    b = good;
    b.pop_back();
    EXPECT_EQ(error_of(b), DecodeError::bad_length);
    // A bare header claiming 12 bytes is framed correctly; its body is what is wrong.
    Bytes header(good.begin(), good.begin() + kHeaderSize);
    set_length(header);
    EXPECT_EQ(error_of(header), DecodeError::bad_size);
}

TEST(Codec, BadFlags) {
    const Bytes good = enc({Diag::none, 1, Probe{1, 1}});
    for (std::uint8_t f : {0x02, 0x04, 0x80, 0x03, 0xFF}) {
        Bytes b = good;
        b[4] = f;
        EXPECT_EQ(error_of(b), DecodeError::bad_flags) << int{f};
    }
}

TEST(Codec, BadType) {
    const Bytes good = enc({Diag::none, 1, Probe{1, 1}});
    for (std::uint8_t t : {0, 8, 9, 0x80, 0xFF}) {
        Bytes b = good;
        b[3] = t;
        EXPECT_EQ(error_of(b), DecodeError::bad_type) << int{t};
    }
}

TEST(Codec, BadSizeFixedTypes) {
    // One byte more and one byte less than the table, with a consistent length field.
    for (const auto& m : one_of_each()) {
        if (type_of(m) == Type::register_) continue;
        const Bytes good = enc(m);
        Bytes longer = good;
        longer.push_back(0);
        set_length(longer);
        EXPECT_EQ(error_of(longer), DecodeError::bad_size) << to_string(type_of(m));
        Bytes shorter = good;
        shorter.pop_back();
        set_length(shorter);
        EXPECT_EQ(error_of(shorter), DecodeError::bad_size) << to_string(type_of(m));
    }
    // A valid body under another type's number.
    Bytes b = enc({Diag::none, 1, Probe{1, 1}});
    b[3] = static_cast<std::uint8_t>(Type::ack);
    EXPECT_EQ(error_of(b), DecodeError::bad_size);
}

TEST(Codec, BadSizeRegister) {
    const Bytes good = enc({Diag::none, 0, Register{1, 2, 3, 4, {}, "abc"}});
    ASSERT_EQ(good.size(), 53u);
    Bytes b = good;
    b[33] = 4;  // name_len claims one byte more than present
    EXPECT_EQ(error_of(b), DecodeError::bad_size);
    b[33] = 2;
    EXPECT_EQ(error_of(b), DecodeError::bad_size);
    b[33] = 255;
    EXPECT_EQ(error_of(b), DecodeError::bad_size);
    // Shorter than the fixed part: name_len itself may be missing.
    for (std::size_t n : {kHeaderSize, std::size_t{33}, std::size_t{34}, std::size_t{49}}) {
        Bytes s(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
        set_length(s);
        EXPECT_EQ(error_of(s), DecodeError::bad_size) << n;
    }
    // 50 bytes with name_len 0 is well formed.
    Bytes empty(good.begin(), good.begin() + 50);
    empty[33] = 0;
    set_length(empty);
    auto r = decode(empty);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(std::get<Register>(r->body).name, "");
}

TEST(Codec, NameLengthEdges) {
    for (std::size_t len : {std::size_t{0}, std::size_t{1}, kMaxNameLen}) {
        const Message m{Diag::none, 0, Register{1, 2, 3, 4, {}, std::string(len, 'n')}};
        EXPECT_EQ(encoded_size(m), 50 + len);
        EXPECT_EQ(encoded_size(m, true), 50 + len + kAuthTrailerSize);
        const Bytes b = enc(m);
        ASSERT_EQ(b.size(), 50 + len);
        auto r = decode(b);
        ASSERT_TRUE(r.ok()) << len;
        EXPECT_EQ(*r, m);
    }
    const Message too_long{Diag::none, 0, Register{1, 2, 3, 4, {}, std::string(65, 'n')}};
    EXPECT_EQ(encoded_size(too_long), 0u);
    std::array<std::uint8_t, 1024> big{};
    EXPECT_EQ(encode(too_long, big), 0u);
    const AuthKey key = make_key(1, 1);
    EXPECT_EQ(encode(too_long, big, &key), 0u);

    // The largest datagram we send is kMaxDatagramSize.
    const Message longest{Diag::none, 0, Register{1, 2, 3, 4, {}, std::string(kMaxNameLen, 'n')}};
    EXPECT_EQ(encoded_size(longest, true), kMaxDatagramSize);
}

// Names longer than 64 are a REJECT (diag 2) matter for the server, not a drop, so decode()
// must deliver them; the longest possible REGISTER fits kMaxDecodableSize.
TEST(Codec, DecodesOverlongNameForTheServerToReject) {
    Bytes b = enc({Diag::none, 0, Register{1, 2, 3, 4, {}, std::string(kMaxNameLen, 'x')}});
    for (std::size_t len : {std::size_t{65}, std::size_t{255}}) {
        b.resize(50 + len, 'y');
        b[33] = static_cast<std::uint8_t>(len);
        set_length(b);
        auto r = decode(b);
        ASSERT_TRUE(r.ok()) << len;
        EXPECT_EQ(std::get<Register>(r->body).name.size(), len);
    }
    b.resize(b.size() + kAuthTrailerSize);
    EXPECT_EQ(b.size(), kMaxDecodableSize);
}

TEST(Codec, NameIsRawBytes) {
    const std::string name("a\0b\xff c", 6);
    const Message m{Diag::none, 0, Register{1, 2, 3, 4, {}, name}};
    auto r = decode(enc(m));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(std::get<Register>(r->body).name, name);
}

// Only the drop reasons the contract lists are enforced.
TEST(Codec, AcceptsWhatTheContractDoesNotForbid) {
    // Nonzero diag on a PROBE, nonzero session on a REGISTER, an unknown diag value.
    for (const Message& m : {Message{Diag::server_full, 0, Probe{1, 2}},
                             Message{Diag::none, 1234, Register{1, 2, 3, 4, {}, "a"}},
                             Message{static_cast<Diag>(200), 5, Bye{0}}}) {
        auto r = decode(enc(m));
        ASSERT_TRUE(r.ok()) << to_string(type_of(m));
        EXPECT_EQ(*r, m);
    }
    // Nonzero ACCEPT padding is ignored.
    const Message accept{Diag::none, 3, Accept{1, 2, 3, 4}};
    Bytes b = enc(accept);
    b[33] = 0xFF;
    b[35] = 0x01;
    auto r = decode(b);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, accept);
}

TEST(Codec, EncodeBufferTooSmall) {
    const Message m{Diag::none, 1, Ack{1, 2, 3}};
    std::array<std::uint8_t, 36> exact{};
    EXPECT_EQ(encode(m, exact), 36u);
    std::array<std::uint8_t, 35> small{};
    EXPECT_EQ(encode(m, small), 0u);
    const AuthKey key = make_key(1, 1);
    EXPECT_EQ(encode(m, exact, &key), 0u);
    std::array<std::uint8_t, 72> with_trailer{};
    EXPECT_EQ(encode(m, with_trailer, &key), 72u);
    EXPECT_EQ(encode(m, {}), 0u);
}

TEST(Codec, ToString) {
    std::set<std::string_view> names;
    for (std::size_t i = 0; i < kDecodeErrorCount; ++i) {
        const auto name = to_string(static_cast<DecodeError>(i));
        EXPECT_NE(name, "unknown");
        for (char c : name) EXPECT_TRUE((c >= 'a' && c <= 'z') || c == '_') << name;
        names.insert(name);
    }
    EXPECT_EQ(names.size(), kDecodeErrorCount);
    EXPECT_EQ(to_string(DecodeError::bad_magic), "bad_magic");
    EXPECT_EQ(to_string(DecodeError::unauthenticated), "unauthenticated");
    EXPECT_EQ(to_string(Type::register_), "REGISTER");
    EXPECT_EQ(to_string(Type::bye), "BYE");
    EXPECT_EQ(to_string(static_cast<Type>(0)), "UNKNOWN");
    EXPECT_EQ(to_string(Diag::unknown_session), "unknown session");
    EXPECT_EQ(to_string(static_cast<Diag>(99)), "unknown");
}

TEST(KeyRing, ActiveAndFind) {
    KeyRing ring;
    EXPECT_TRUE(ring.empty());
    EXPECT_EQ(ring.active(), nullptr);
    ring.add(make_key(1, 0x11));
    ring.add(make_key(2, 0x22));
    ASSERT_NE(ring.active(), nullptr);
    EXPECT_EQ(ring.active()->id, 1u);  // the first key added
    ring.set_active(2);
    EXPECT_EQ(ring.active()->id, 2u);
    EXPECT_EQ(ring.find(3), nullptr);
    ring.add(make_key(2, 0x33));  // replaces
    EXPECT_EQ(ring.size(), 2u);
    EXPECT_EQ(ring.find(2)->secret[0], 0x33);
    ring.set_active(9);
    EXPECT_EQ(ring.active(), nullptr);
}

class CodecAuth : public ::testing::Test {
protected:
    void SetUp() override {
        ring_.add(key1_);
        ring_.add(key2_);
    }
    AuthKey key1_ = make_key(1, 0x11);
    AuthKey key2_ = make_key(0xFFFFFFFF, 0x22);
    KeyRing ring_;
    Message msg_{Diag::none, 42, Ack{7, 8, 9}};
};

TEST_F(CodecAuth, RoundTripEveryType) {
    for (const auto& m : one_of_each()) {
        const Bytes b = enc(m, &key1_);
        ASSERT_EQ(b.size(), encoded_size(m, true));
        EXPECT_EQ(b[4], kFlagAuth);
        EXPECT_EQ(std::size_t{b[6]} << 8 | b[7], b.size());
        for (bool require : {false, true}) {
            auto r = decode(b, &ring_, require);
            ASSERT_TRUE(r.ok()) << to_string(type_of(m)) << ": " << to_string(r.error());
            EXPECT_EQ(*r, m);
        }
    }
}

TEST_F(CodecAuth, WrongKeySameId) {
    const AuthKey forged = make_key(key1_.id, 0x12);
    EXPECT_EQ(error_of(enc(msg_, &forged), &ring_), DecodeError::unauthenticated);
}

TEST_F(CodecAuth, UnknownKeyId) {
    const AuthKey other = make_key(7, 0x11);  // right secret, unknown id
    EXPECT_EQ(error_of(enc(msg_, &other), &ring_), DecodeError::unauthenticated);
}

TEST_F(CodecAuth, EveryFlippedByteIsCaught) {
    const Bytes good = enc(msg_, &key1_);
    for (std::size_t i = 0; i < good.size(); ++i) {
        Bytes b = good;
        b[i] ^= 0x01;
        auto r = decode(b, &ring_);
        ASSERT_FALSE(r.ok()) << "byte " << i;
        // Framing bytes fail framing checks first; everything else fails the MAC.
        if (i >= kHeaderSize) {
            EXPECT_EQ(r.error(), DecodeError::unauthenticated) << "byte " << i;
        }
    }
    Bytes session = good;
    session[11] ^= 0x80;
    EXPECT_EQ(error_of(session, &ring_), DecodeError::unauthenticated);
    Bytes diag = good;
    diag[5] = 1;
    EXPECT_EQ(error_of(diag, &ring_), DecodeError::unauthenticated);
}

TEST_F(CodecAuth, NoKeyRing) {
    const Bytes b = enc(msg_, &key1_);
    EXPECT_EQ(error_of(b), DecodeError::unauthenticated);
    const KeyRing empty;
    EXPECT_EQ(error_of(b, &empty), DecodeError::unauthenticated);
}

TEST_F(CodecAuth, RequireAuth) {
    const Bytes plain = enc(msg_);
    EXPECT_EQ(error_of(plain, &ring_, true), DecodeError::unauthenticated);
    EXPECT_EQ(error_of(plain, nullptr, true), DecodeError::unauthenticated);
    EXPECT_TRUE(decode(plain, &ring_, false).ok());  // keys held but not required
    // Stripping the trailer and the flag from an authenticated datagram does not help.
    Bytes stripped = enc(msg_, &key1_);
    stripped.resize(stripped.size() - kAuthTrailerSize);
    stripped[4] = 0;
    set_length(stripped);
    EXPECT_EQ(error_of(stripped, &ring_, true), DecodeError::unauthenticated);
}

TEST_F(CodecAuth, TrailerSizeErrors) {
    // AUTH set on a datagram too short to hold a trailer.
    Bytes b = enc({Diag::none, 1, Bye{1}});
    b[4] = kFlagAuth;
    EXPECT_EQ(error_of(b, &ring_), DecodeError::bad_size);
    // AUTH set, room for a trailer, but the body before it has the wrong size.
    Bytes c = enc(msg_, &key1_);
    c.erase(c.begin() + 20);
    set_length(c);
    EXPECT_EQ(error_of(c, &ring_), DecodeError::bad_size);
    // A trailer appended without the flag is just a wrong body size.
    Bytes d = enc(msg_, &key1_);
    d[4] = 0;
    EXPECT_EQ(error_of(d, &ring_), DecodeError::bad_size);
    EXPECT_EQ(auth_key_id(d), std::nullopt);
    EXPECT_EQ(auth_key_id(enc(msg_, &key2_)), key2_.id);
}

TEST_F(CodecAuth, KeyRotation) {
    // The receiver holds both keys during the rollover, so either sender key works.
    EXPECT_TRUE(decode(enc(msg_, &key1_), &ring_, true).ok());
    EXPECT_TRUE(decode(enc(msg_, &key2_), &ring_, true).ok());
    // The sender follows its ring's active key.
    KeyRing sender = ring_;
    sender.set_active(key2_.id);
    const Bytes b = enc(msg_, sender.active());
    EXPECT_EQ(auth_key_id(b), key2_.id);
    // After the old key is retired, its datagrams stop decoding.
    KeyRing retired;
    retired.add(key2_);
    EXPECT_TRUE(decode(b, &retired, true).ok());
    EXPECT_EQ(error_of(enc(msg_, &key1_), &retired, true), DecodeError::unauthenticated);
}

// ---- randomised mutation test ----

std::uint64_t test_seed() {
    if (const char* env = std::getenv("KEEPALIVE_TEST_SEED"); env != nullptr && *env != '\0')
        return std::strtoull(env, nullptr, 0);
    return std::random_device{}() ^ (std::uint64_t{std::random_device{}()} << 32);
}

Message random_message(std::mt19937_64& rng) {
    auto u64 = [&] {
        switch (rng() % 4) {
            case 0:
                return std::uint64_t{0};
            case 1:
                return ~std::uint64_t{0};
            default:
                return static_cast<std::uint64_t>(rng());
        }
    };
    auto u32 = [&] { return static_cast<std::uint32_t>(u64()); };
    auto u8 = [&] { return static_cast<std::uint8_t>(rng()); };
    auto cookie = [&] {
        Cookie c{};
        if (rng() % 2) {
            for (auto& b : c) b = u8();
        }
        return c;
    };
    Message m;
    m.diag = static_cast<Diag>(rng() % 3 == 0 ? u8() : rng() % 8);
    m.session = u32();
    switch (rng() % 7) {
        case 0: {
            std::string name(rng() % (kMaxNameLen + 1), '\0');
            for (auto& c : name) c = static_cast<char>(u8());
            m.body = Register{u64(), u64(), u32(), u8(), cookie(), name};
            break;
        }
        case 1:
            m.body = Challenge{u64(), cookie()};
            break;
        case 2:
            m.body = Accept{u64(), u64(), u32(), u8()};
            break;
        case 3:
            m.body = Reject{u64()};
            break;
        case 4:
            m.body = Probe{u64(), u64()};
            break;
        case 5:
            m.body = Ack{u64(), u64(), u64()};
            break;
        default:
            m.body = Bye{u64()};
            break;
    }
    return m;
}

void mutate(Bytes& b, std::mt19937_64& rng) {
    const int ops = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < ops; ++i) {
        switch (rng() % 7) {
            case 0:
                if (!b.empty()) b[rng() % b.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
                break;
            case 1:
                if (!b.empty()) b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
                break;
            case 2:
                b.resize(rng() % (b.size() + 1));
                break;
            case 3:
                for (auto n = rng() % 40; n > 0; --n) b.push_back(static_cast<std::uint8_t>(rng()));
                break;
            case 4:  // hit the header fields specifically
                if (b.size() >= kHeaderSize)
                    b[2 + rng() % 6] = static_cast<std::uint8_t>(rng() % 10);
                break;
            case 5:  // REGISTER name_len
                if (b.size() > 33) b[33] = static_cast<std::uint8_t>(rng());
                break;
            default:
                break;
        }
    }
    // Usually keep the length field consistent so that the deeper checks are reached.
    if (b.size() >= kHeaderSize && rng() % 4 != 0) set_length(b);
}

// A successful decode must re-encode to the received bytes, except for what decode() is
// documented to normalise (ACCEPT padding, and with it the MAC) or what encode() refuses.
void expect_reencodes(const Bytes& in, const Message& m, const KeyRing* ring) {
    const AuthKey* key = nullptr;
    if (auto id = auth_key_id(in)) {
        ASSERT_NE(ring, nullptr);
        key = ring->find(*id);
        ASSERT_NE(key, nullptr);
    }
    Bytes out(kMaxDecodableSize);
    out.resize(encode(m, out, key));
    if (const auto* r = std::get_if<Register>(&m.body); r && r->name.size() > kMaxNameLen) {
        EXPECT_TRUE(out.empty());
        return;
    }
    Bytes expected = in;
    if (type_of(m) == Type::accept) std::fill(expected.begin() + 33, expected.begin() + 36, 0);
    if (key != nullptr) {
        const auto covered = std::span(expected).first(expected.size() - kAuthMacSize);
        const auto mac = hmac_sha256(key->secret, covered);
        std::copy(mac.begin(), mac.end(), expected.end() - kAuthMacSize);
    }
    EXPECT_EQ(out, expected);
    auto again = decode(out, ring);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, m);
}

TEST(CodecRandom, MutationsNeverCrashAndReencode) {
    const std::uint64_t seed = test_seed();
    std::cout << "KEEPALIVE_TEST_SEED=" << seed << '\n';
    RecordProperty("seed", std::to_string(seed));
    std::mt19937_64 rng(seed);

    KeyRing ring;
    ring.add(make_key(1, 0x11));
    ring.add(make_key(2, 0x22));
    const AuthKey unknown = make_key(3, 0x33);

    int decoded = 0;
    std::array<int, kDecodeErrorCount> dropped{};
    for (int i = 0; i < 10'000 && !HasFailure(); ++i) {
        const Message m = random_message(rng);
        const AuthKey* key = nullptr;
        switch (rng() % 4) {
            case 0:
                key = ring.find(1);
                break;
            case 1:
                key = ring.find(2);
                break;
            case 2:
                key = rng() % 8 == 0 ? &unknown : nullptr;
                break;
            default:
                break;
        }
        Bytes b = enc(m, key);
        ASSERT_EQ(b.size(), encoded_size(m, key != nullptr));
        if (key != &unknown) {
            auto r = decode(b, &ring);
            ASSERT_TRUE(r.ok()) << "iteration " << i << ": " << to_string(r.error());
            ASSERT_EQ(*r, m) << "iteration " << i;
        }
        if (rng() % 8 != 0) mutate(b, rng);
        for (const KeyRing* keys : std::array<const KeyRing*, 2>{nullptr, &ring}) {
            for (bool require : {false, true}) {
                auto r = decode(b, keys, require);
                if (!r.ok()) {
                    ASSERT_LT(static_cast<std::size_t>(r.error()), kDecodeErrorCount);
                    ++dropped[static_cast<std::size_t>(r.error())];
                    continue;
                }
                ++decoded;
                expect_reencodes(b, *r, keys);
                if (HasFailure()) {
                    ADD_FAILURE() << "iteration " << i << ", seed " << seed;
                    return;
                }
            }
        }
    }
    std::cout << "decoded " << decoded;
    for (std::size_t e = 0; e < kDecodeErrorCount; ++e) {
        std::cout << ", " << to_string(static_cast<DecodeError>(e)) << ' ' << dropped[e];
        EXPECT_GT(dropped[e], 0) << to_string(static_cast<DecodeError>(e)) << " never reached";
    }
    std::cout << '\n';
    EXPECT_GT(decoded, 0);
}

}  // namespace
}  // namespace keepalive::kap
