// Hashes for tables indexed by values an attacker chooses (source addresses,
// peer names): SipHash-2-4 (libsodium's crypto_shorthash) under a key drawn
// once per process, so nobody outside can aim many keys at one bucket.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/crypto.hpp"

namespace keepalive {

// Random, drawn on first use, the same for the rest of the process.
const ShortHashKey& process_hash_key();

// Hashes the address family, bytes and port (not the scope id) under process_hash_key().
std::uint64_t keyed_hash(const class Address& a);
std::uint64_t keyed_hash(std::string_view text);

struct KeyedStringHash {
    std::size_t operator()(std::string_view s) const noexcept {
        return static_cast<std::size_t>(keyed_hash(s));
    }
};

}  // namespace keepalive
