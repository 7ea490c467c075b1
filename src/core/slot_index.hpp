// SlotIndex: an open-addressing hash index from a key to a 32-bit slot, for
// the peer table's session and name lookups. It stores only (hash, slot),
// 8 bytes a cell, and at most 4/5 of the cells are used: 10 to 20 bytes per
// entry against some 40 to 70 for a node of std::unordered_map. At 4/5 a
// lookup that finds its key reads 3 cells on average, one that does not 13
// (linear probing): one or two cache lines, as the stored hash spares a look
// at the key for every cell but the one that matches. The keys stay where they are (in the table's slots): every
// call takes the key's hash and a predicate that tells whether a slot holds
// the key.
//
// Linear probing; erase shifts the following cells back, so there are no
// tombstones and a lookup never scans more than the run its hash falls in.
// Not thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/keyed_hash.hpp"
#include "core/prefetch.hpp"

namespace keepalive {

class SlotIndex {
public:
    using Slot = std::uint32_t;
    static constexpr Slot kNone = UINT32_MAX;

    // The slot holding the key, or kNone. `holds(slot)` says if `slot` has it.
    template <typename Holds>
    Slot find(std::uint32_t hash, Holds&& holds) const {
        if (cells_.empty()) return kNone;
        for (std::size_t i = hash & mask(); cells_[i].slot != kNone; i = (i + 1) & mask())
            if (cells_[i].hash == hash && holds(cells_[i].slot)) return cells_[i].slot;
        return kNone;
    }

    // Cache hints for a find() coming soon, so the misses of many lookups
    // overlap: prefetch() asks for the cell the probe sequence of `hash`
    // starts at; guess() returns the first slot stored under `hash` without
    // asking holds() (maybe another key's, or kNone), for prefetching that
    // slot's record once the cell is in cache.
    void prefetch(std::uint32_t hash) const {
        if (!cells_.empty()) prefetch_read(&cells_[hash & mask()]);
    }
    Slot guess(std::uint32_t hash) const {
        return find(hash, [](Slot) { return true; });
    }

    // Adds `slot` under `hash`; the caller makes sure the key is not there yet.
    void insert(std::uint32_t hash, Slot slot) {
        if ((size_ + 1) * 5 > cells_.size() * 4) grow();
        place(hash, slot);
        ++size_;
    }

    // Removes the entry of the key. False if it was not there.
    template <typename Holds>
    bool erase(std::uint32_t hash, Holds&& holds) {
        if (cells_.empty()) return false;
        std::size_t i = hash & mask();
        for (;; i = (i + 1) & mask()) {
            if (cells_[i].slot == kNone) return false;
            if (cells_[i].hash == hash && holds(cells_[i].slot)) break;
        }
        // Backward shift: pull each later cell of the run into the hole unless
        // its home lies cyclically within (hole, its position].
        std::size_t hole = i;
        for (std::size_t j = (i + 1) & mask(); cells_[j].slot != kNone; j = (j + 1) & mask()) {
            const std::size_t home = cells_[j].hash & mask();
            const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
            if (stays) continue;
            cells_[hole] = cells_[j];
            hole = j;
        }
        cells_[hole] = Cell{};
        --size_;
        return true;
    }

    // Room for `n` entries: up to that many, insert() allocates nothing (and cannot throw).
    void reserve(std::size_t n) {
        std::size_t cells = std::max<std::size_t>(16, cells_.size());
        while (cells * 4 < n * 5) cells *= 2;
        if (cells > cells_.size()) rehash(cells);
    }

    std::size_t size() const { return size_; }
    std::size_t capacity() const { return cells_.size(); }

    // The hashes the peer table uses: well mixed, so that sequential session
    // ids and names differing in a digit spread over the cells.
    static std::uint32_t hash_u32(std::uint32_t key) {
        std::uint64_t x = key;
        x *= 0x9E3779B97F4A7C15ull;
        return static_cast<std::uint32_t>(x >> 32);
    }
    // Names are chosen by peers: SipHash under the process's random key, so
    // nobody outside can aim many names at one probe sequence.
    static std::uint32_t hash_bytes(std::string_view key) {
        return static_cast<std::uint32_t>(keyed_hash(key) >> 32);
    }

private:
    struct Cell {
        std::uint32_t hash = 0;
        Slot slot = kNone;
    };

    std::size_t mask() const { return cells_.size() - 1; }

    void place(std::uint32_t hash, Slot slot) {
        std::size_t i = hash & mask();
        while (cells_[i].slot != kNone) i = (i + 1) & mask();
        cells_[i] = Cell{hash, slot};
    }

    void grow() { rehash(std::max<std::size_t>(16, cells_.size() * 2)); }

    void rehash(std::size_t cells) {
        std::vector<Cell> old(cells);
        old.swap(cells_);
        for (const Cell& c : old)
            if (c.slot != kNone) place(c.hash, c.slot);
    }

    std::vector<Cell> cells_;
    std::size_t size_ = 0;
};

}  // namespace keepalive
