// An IPv4 or IPv6 socket address as a plain value: comparable, hashable,
// printable. Conversion to and from sockaddr is pure (no I/O).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace keepalive {

class Address {
public:
    enum class Family : std::uint8_t { v4, v6 };

    Address() = default;
    static Address v4(std::uint32_t host_order_addr, std::uint16_t port);

    // "1.2.3.4:80", "[::1]:80", "[fe80::1%2]:80". Port is required and may be 0.
    static std::optional<Address> parse(std::string_view text);
    // "1.2.3.4" or "::1" with a separately given port.
    static std::optional<Address> parse_host(std::string_view host, std::uint16_t port);
    static std::optional<Address> from_sockaddr(const sockaddr* sa, socklen_t len);

    socklen_t to_sockaddr(sockaddr_storage& out) const;
    std::string to_string() const;    // with port, IPv6 in brackets
    std::string host_string() const;  // without port
    Family family() const { return family_; }
    std::uint16_t port() const { return port_; }
    void set_port(std::uint16_t p) { port_ = p; }
    bool is_any() const;  // 0.0.0.0 or ::
    const std::array<std::uint8_t, 16>& bytes() const { return bytes_; }
    std::uint32_t scope_id() const { return scope_id_; }

    bool same_host(const Address& o) const { return family_ == o.family_ && bytes_ == o.bytes_; }
    friend bool operator==(const Address&, const Address&) = default;

private:
    Family family_ = Family::v4;
    std::array<std::uint8_t, 16> bytes_{};  // v4 uses the first 4 bytes
    std::uint16_t port_ = 0;
    std::uint32_t scope_id_ = 0;
};

// Keyed with a per-process random secret (see core/keyed_hash.hpp).
struct AddressHash {
    std::size_t operator()(const Address& a) const noexcept;
};

}  // namespace keepalive
