#include "core/cidr.hpp"

#include <charconv>

namespace keepalive {
namespace {

bool prefix_equal(const std::array<std::uint8_t, 16>& a, std::size_t a_off,
                  const std::array<std::uint8_t, 16>& b, unsigned bits) {
    for (unsigned i = 0; i < bits / 8; ++i)
        if (a[a_off + i] != b[i]) return false;
    if (bits % 8 == 0) return true;
    const auto mask = static_cast<std::uint8_t>(0xFF << (8 - bits % 8));
    return (a[a_off + bits / 8] & mask) == (b[bits / 8] & mask);
}

bool is_v4_mapped(const Address& a) {
    const auto& b = a.bytes();
    for (int i = 0; i < 10; ++i)
        if (b[i] != 0) return false;
    return b[10] == 0xFF && b[11] == 0xFF;
}

}  // namespace

std::optional<Cidr> Cidr::parse(std::string_view text) {
    const auto slash = text.find('/');
    const auto host = Address::parse_host(text.substr(0, slash), 0);
    if (!host || host->scope_id() != 0) return std::nullopt;
    const unsigned max = host->family() == Address::Family::v4 ? 32 : 128;
    unsigned length = max;
    if (slash != std::string_view::npos) {
        const auto digits = text.substr(slash + 1);
        const auto [end, ec] =
            std::from_chars(digits.data(), digits.data() + digits.size(), length);
        if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() ||
            length > max)
            return std::nullopt;
    }
    // No bits beyond the prefix: "10.0.0.1/8" is more likely a mistake than a network.
    for (unsigned bit = length; bit < max; ++bit)
        if (host->bytes()[bit / 8] & (0x80 >> (bit % 8))) return std::nullopt;
    Cidr c;
    c.network_ = *host;
    c.length_ = static_cast<std::uint8_t>(length);
    return c;
}

bool Cidr::contains(const Address& a) const {
    if (network_.family() == Address::Family::v4) {
        if (a.family() == Address::Family::v4)
            return prefix_equal(a.bytes(), 0, network_.bytes(), length_);
        return is_v4_mapped(a) && prefix_equal(a.bytes(), 12, network_.bytes(), length_);
    }
    return a.family() == Address::Family::v6 &&
           prefix_equal(a.bytes(), 0, network_.bytes(), length_);
}

std::string Cidr::to_string() const {
    return network_.host_string() + "/" + std::to_string(length_);
}

}  // namespace keepalive
