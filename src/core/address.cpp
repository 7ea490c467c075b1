#include "core/address.hpp"

#include <arpa/inet.h>
#include <net/if.h>

#include <charconv>
#include <cstring>

#include "core/keyed_hash.hpp"

namespace keepalive {

Address Address::v4(std::uint32_t host_order_addr, std::uint16_t port) {
    Address a;
    a.family_ = Family::v4;
    const std::uint32_t n = htonl(host_order_addr);
    std::memcpy(a.bytes_.data(), &n, 4);
    a.port_ = port;
    return a;
}

std::optional<Address> Address::parse_host(std::string_view host, std::uint16_t port) {
    std::string h(host);
    Address a;
    a.port_ = port;
    if (inet_pton(AF_INET, h.c_str(), a.bytes_.data()) == 1) {
        a.family_ = Family::v4;
        return a;
    }
    std::uint32_t scope = 0;
    if (const auto pct = h.find('%'); pct != std::string::npos) {
        const std::string zone = h.substr(pct + 1);
        h.resize(pct);
        auto [p, ec] = std::from_chars(zone.data(), zone.data() + zone.size(), scope);
        if (ec != std::errc{} || p != zone.data() + zone.size()) {
            scope = if_nametoindex(zone.c_str());
            if (scope == 0) return std::nullopt;
        }
    }
    if (inet_pton(AF_INET6, h.c_str(), a.bytes_.data()) == 1) {
        a.family_ = Family::v6;
        a.scope_id_ = scope;
        return a;
    }
    return std::nullopt;
}

std::optional<Address> Address::parse(std::string_view text) {
    std::string_view host;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return std::nullopt;
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
        if (host.find(':') == std::string_view::npos) return std::nullopt;
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos) return std::nullopt;
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) return std::nullopt;  // v6 needs brackets
    }
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc{} || p != port.data() + port.size() || value > 65535)
        return std::nullopt;
    auto a = parse_host(host, static_cast<std::uint16_t>(value));
    if (a && text.front() == '[' && a->family_ != Family::v6) return std::nullopt;
    return a;
}

std::optional<Address> Address::from_sockaddr(const sockaddr* sa, socklen_t len) {
    Address a;
    if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        a.family_ = Family::v4;
        std::memcpy(a.bytes_.data(), &in->sin_addr, 4);
        a.port_ = ntohs(in->sin_port);
        return a;
    }
    if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        // A v4-mapped address is the v4 peer it stands for.
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            a.family_ = Family::v4;
            std::memcpy(a.bytes_.data(), &in6->sin6_addr.s6_addr[12], 4);
        } else {
            a.family_ = Family::v6;
            std::memcpy(a.bytes_.data(), &in6->sin6_addr, 16);
            a.scope_id_ = in6->sin6_scope_id;
        }
        a.port_ = ntohs(in6->sin6_port);
        return a;
    }
    return std::nullopt;
}

socklen_t Address::to_sockaddr(sockaddr_storage& out) const {
    std::memset(&out, 0, sizeof out);
    if (family_ == Family::v4) {
        auto* in = reinterpret_cast<sockaddr_in*>(&out);
        in->sin_family = AF_INET;
        in->sin_port = htons(port_);
        std::memcpy(&in->sin_addr, bytes_.data(), 4);
        return sizeof(sockaddr_in);
    }
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port_);
    std::memcpy(&in6->sin6_addr, bytes_.data(), 16);
    in6->sin6_scope_id = scope_id_;
    return sizeof(sockaddr_in6);
}

std::string Address::host_string() const {
    char buf[INET6_ADDRSTRLEN + 16];
    inet_ntop(family_ == Family::v4 ? AF_INET : AF_INET6, bytes_.data(), buf, sizeof buf);
    std::string s(buf);
    if (family_ == Family::v6 && scope_id_ != 0) s += "%" + std::to_string(scope_id_);
    return s;
}

std::string Address::to_string() const {
    if (family_ == Family::v4) return host_string() + ":" + std::to_string(port_);
    return "[" + host_string() + "]:" + std::to_string(port_);
}

bool Address::is_any() const {
    const std::size_t n = family_ == Family::v4 ? 4 : 16;
    for (std::size_t i = 0; i < n; ++i)
        if (bytes_[i] != 0) return false;
    return true;
}

std::size_t AddressHash::operator()(const Address& a) const noexcept {
    // Keyed (SipHash under a per-process secret): tables of addresses are filled
    // by whoever sends us datagrams, and must not be steerable into one bucket.
    return static_cast<std::size_t>(keyed_hash(a));
}

}  // namespace keepalive
