// An address prefix ("10.0.0.0/8", "2001:db8::/32", or one host without a
// length) for the [peers] allow list. IPv4-mapped IPv6 sources (::ffff:a.b.c.d,
// as a dual-stack socket reports IPv4 peers) match IPv4 prefixes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/address.hpp"

namespace keepalive {

class Cidr {
public:
    // nullopt if `text` is not an address with an optional "/LENGTH" in range,
    // or if it has bits set beyond the prefix (e.g. "10.0.0.1/8").
    static std::optional<Cidr> parse(std::string_view text);

    bool contains(const Address& a) const;
    std::string to_string() const;
    friend bool operator==(const Cidr&, const Cidr&) = default;

private:
    Address network_;  // port 0
    std::uint8_t length_ = 0;
};

}  // namespace keepalive
