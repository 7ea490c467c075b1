// libFuzzer target for the KAP/1 decoder. The first input byte picks a mode, the rest is the
// datagram:
//   bit 0: decode with a key ring (else without keys)
//   bit 1: require authentication
//   bit 2: sign the datagram first (set AUTH, append a valid trailer, fix the length) so that
//          the code behind a successful MAC check is reached, which random bytes never manage
// Every successful decode must re-encode to the input bytes, except what decode() normalises
// (ACCEPT padding, and with it the MAC) or what encode() refuses (names over 64 bytes).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/codec.hpp"
#include "core/crypto.hpp"

namespace {

using namespace keepalive;
using namespace keepalive::kap;

const KeyRing& ring() {
    static const KeyRing r = [] {
        KeyRing k;
        AuthKey a{1, {}};
        a.secret.assign(32, 0x11);
        AuthKey b{0x01020304, {}};
        b.secret.assign(32, 0x22);
        k.add(a);
        k.add(b);
        return k;
    }();
    return r;
}

void put_mac(std::vector<std::uint8_t>& d, const AuthKey& key) {
    const auto mac = hmac_sha256(key.secret, std::span(d).first(d.size() - kAuthMacSize));
    std::copy(mac.begin(), mac.end(), d.end() - kAuthMacSize);
}

void sign(std::vector<std::uint8_t>& d, const AuthKey& key) {
    if (d.size() < kHeaderSize || d.size() + kAuthTrailerSize > 0xFFFF) return;
    d[4] |= kFlagAuth;
    d.insert(d.end(),
             {static_cast<std::uint8_t>(key.id >> 24), static_cast<std::uint8_t>(key.id >> 16),
              static_cast<std::uint8_t>(key.id >> 8), static_cast<std::uint8_t>(key.id)});
    d.resize(d.size() + kAuthMacSize);
    d[6] = static_cast<std::uint8_t>(d.size() >> 8);
    d[7] = static_cast<std::uint8_t>(d.size());
    put_mac(d, key);
}

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "fuzz_codec: %s\n", what);
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t mode = data[0];
    std::vector<std::uint8_t> in(data + 1, data + size);
    const KeyRing* keys = (mode & 1) ? &ring() : nullptr;
    const bool require_auth = (mode & 2) != 0;
    if (mode & 4) sign(in, *ring().find(mode & 8 ? 1 : 0x01020304));

    auto r = decode(in, keys, require_auth);
    if (!r.ok()) {
        if (static_cast<std::size_t>(r.error()) >= kDecodeErrorCount) fail("error out of range");
        return 0;
    }
    const Message& m = *r;

    const AuthKey* key = nullptr;
    if (auto id = auth_key_id(in)) {
        if (keys == nullptr || (key = keys->find(*id)) == nullptr)
            fail("AUTH accepted without key");
    } else if (require_auth) {
        fail("unauthenticated datagram accepted under require_auth");
    }

    std::vector<std::uint8_t> out(kMaxDecodableSize);
    out.resize(encode(m, out, key));
    if (const auto* reg = std::get_if<Register>(&m.body); reg && reg->name.size() > kMaxNameLen) {
        if (!out.empty()) fail("encoded a name longer than 64");
        return 0;
    }
    if (out.empty()) fail("decoded message does not encode");
    if (encoded_size(m, key != nullptr) != out.size()) fail("encoded_size disagrees with encode");

    std::vector<std::uint8_t> expected = in;
    if (type_of(m) == Type::accept) std::fill(expected.begin() + 33, expected.begin() + 36, 0);
    if (key != nullptr) put_mac(expected, *key);
    if (out != expected) fail("re-encoding differs from the input");

    auto again = decode(out, keys, require_auth);
    if (!again.ok() || !(*again == m)) fail("re-encoded datagram decodes differently");
    return 0;
}
