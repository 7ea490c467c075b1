#include "core/reply_budget.hpp"

#include <array>

namespace keepalive {

ReplyBudget::ReplyBudget(const ShortHashKey& key) : key_(key), slots_(kSlots) {}

bool ReplyBudget::allow(const Address& from, TimePoint now, std::uint32_t per_second) {
    // The host only: family and address bytes, not the port (an attacker picks ports freely).
    std::array<std::uint8_t, 17> host{};
    host[0] = static_cast<std::uint8_t>(from.family());
    std::copy(from.bytes().begin(), from.bytes().end(), host.begin() + 1);
    Slot& slot = slots_[short_hash(key_, host) % kSlots];
    // +1 so that a zeroed slot never looks like the current window.
    const auto window = static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count() + 1);
    if (slot.window != window) {
        slot.window = window;
        slot.used = 0;
    }
    if (slot.used >= per_second) return false;
    ++slot.used;
    return true;
}

}  // namespace keepalive
