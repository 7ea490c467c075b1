// A per-source budget for the replies the server sends before any session
// exists (CHALLENGE, REJECT, BYE diag 7, the first probes of a legacy peer):
// at most a given number per source host and one-second window. The counters
// live in a fixed table indexed by a keyed hash of the host, so a flood from
// any number of (spoofed) addresses costs no memory; hosts that share a slot
// share a budget, which errs towards answering less. Pure: time is passed in.
#pragma once

#include <cstdint>
#include <vector>

#include "core/address.hpp"
#include "core/clock.hpp"
#include "core/crypto.hpp"

namespace keepalive {

class ReplyBudget {
public:
    static constexpr std::size_t kSlots = 8192;  // 64 KiB

    // `key`: the hash key, secret and random in production.
    explicit ReplyBudget(const ShortHashKey& key);

    // Whether one more reply to `from` (any port) may go out now, `per_second`
    // being the budget; counts it if so.
    bool allow(const Address& from, TimePoint now, std::uint32_t per_second);

private:
    struct Slot {
        std::uint32_t window = 0;  // the second the count is for
        std::uint32_t used = 0;
    };
    ShortHashKey key_;
    std::vector<Slot> slots_;  // sized once
};

}  // namespace keepalive
