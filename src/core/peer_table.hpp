// Peers indexed by slot, session id and name, with per-state counts kept
// current so a status summary is O(1).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/peer.hpp"
#include "core/slot_index.hpp"

namespace keepalive {

struct PeerCounts {
    std::size_t total = 0;
    std::array<std::size_t, kPeerStateCount> by_state{};
    std::size_t in(PeerState s) const { return by_state[static_cast<std::size_t>(s)]; }
};

class PeerTable {
public:
    using Slot = std::uint32_t;
    static constexpr Slot kNone = UINT32_MAX;

    // Room for `n` peers: up to that many, insert() never grows the table's
    // slots or indexes, so filling the table cannot fail half-way for want of
    // memory (the name arena may still grow). Never shrinks. Throws
    // std::bad_alloc, leaving the table as it was.
    void reserve(std::size_t n);
    // How many peers fit without growing the slots and indexes.
    std::size_t capacity() const;

    // Inserts a peer whose name and session are not yet in the table. Its
    // name is copied into the table (peer.name may point anywhere), its route
    // interned (see intern_route). Strong guarantee: if it throws
    // (std::bad_alloc), nothing changed.
    Slot insert(Peer peer);
    void erase(Slot slot);

    Peer& at(Slot slot) { return slots_[slot]; }
    const Peer& at(Slot slot) const { return slots_[slot]; }

    // The table's copy of `route`, shared by every peer whose probes leave that
    // way: a few per socket, kept for the table's lifetime.
    const Route* intern_route(const Route& route);
    Slot find_session(std::uint32_t session) const;
    Slot find_name(std::string_view name) const;

    // Keep the indexes and counts right: every change of these goes through here.
    void set_state(Slot slot, PeerState state, TimePoint now);
    void set_session(Slot slot, std::uint32_t session);
    void set_address(Slot slot, const Address& address);

    // Peers whose address is on `host` (any port).
    std::size_t on_host(const Address& host) const;

    const PeerCounts& counts() const { return counts_; }
    std::size_t size() const { return counts_.total; }

    // Slots run from 0 to slot_limit(); find_slot() is null for an unused one. For walking the
    // table a piece at a time, across changes: a slot is never moved, only freed and reused.
    Slot slot_limit() const { return static_cast<Slot>(slots_.size()); }
    const Peer* find_slot(Slot slot) const {
        return slot < slots_.size() && used_[slot] ? &slots_[slot] : nullptr;
    }

    template <typename Fn>
    void for_each(Fn&& fn) const {
        for (Slot s = 0; s < slots_.size(); ++s)
            if (used_[s]) fn(s, slots_[s]);
    }

    // Visits the used slots from `begin` on, at most `max_used` of them and at
    // most 4 x max_used slots in all, so the work of one call is bounded
    // however sparse the table. Returns where to go on, or kNone at the end.
    template <typename Fn>
    Slot for_each_from(Slot begin, std::size_t max_used, Fn&& fn) const {
        std::size_t used = 0;
        const std::size_t limit = std::min<std::size_t>(slots_.size(), begin + 4 * max_used);
        Slot s = begin;
        for (; s < limit && used < max_used; ++s)
            if (used_[s]) {
                fn(s, slots_[s]);
                ++used;
            }
        return s < slots_.size() ? s : kNone;
    }

private:
    void index_session(Slot slot);
    void unindex_session(std::uint32_t session);
    void index_name(Slot slot);
    void unindex_name(std::string_view name);

    void append_name(Slot slot, std::string_view name);
    void rebuild_names(std::size_t room);

    std::vector<Peer> slots_;
    std::vector<bool> used_;
    std::vector<Slot> free_;
    // Every peer's name, back to back, each after its length byte; Peer::name
    // points at that byte. Erased names
    // leave holes until the buffer is full: then it is rebuilt with the live
    // names only, at twice their size, and the names are pointed at the copy.
    std::vector<char> names_;
    std::size_t live_name_bytes_ = 0;
    std::deque<Route> routes_;  // interned; a deque, so pointers stay valid
    // Flat indexes that keep no copy of the keys (see slot_index.hpp).
    SlotIndex by_session_;
    SlotIndex by_name_;
    std::unordered_map<Address, std::uint32_t, AddressHash> per_host_;  // keyed by host, port 0
    PeerCounts counts_;
};

}  // namespace keepalive
