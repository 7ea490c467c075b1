#include "core/keyed_hash.hpp"

#include <array>

#include "core/address.hpp"

namespace keepalive {

const ShortHashKey& process_hash_key() {
    static const ShortHashKey key = [] {
        ShortHashKey k;
        random_bytes(k);
        return k;
    }();
    return key;
}

std::uint64_t keyed_hash(const Address& a) {
    // family(1) | bytes(16) | port(2)
    std::array<std::uint8_t, 19> input{};
    input[0] = static_cast<std::uint8_t>(a.family());
    std::copy(a.bytes().begin(), a.bytes().end(), input.begin() + 1);
    input[17] = static_cast<std::uint8_t>(a.port() >> 8);
    input[18] = static_cast<std::uint8_t>(a.port());
    return short_hash(process_hash_key(), input);
}

std::uint64_t keyed_hash(std::string_view text) {
    return short_hash(process_hash_key(),
                      {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

}  // namespace keepalive
