// A single-level hashed timer wheel (Varghese & Lauck, scheme 6) for the
// daemon's per-peer probe deadlines: O(1) schedule and cancel, and a cheap
// next_wakeup() to arm one TFD_TIMER_ABSTIME timerfd.
//
// Time is cut into ticks of `tick` width. Tick boundaries are whole multiples
// of `tick` since the clock's epoch (not since `start`), so a deadline aligned
// to a whole tick is a boundary whatever the wheel's start time. An entry fires
// when its exact deadline <= the `now` given to advance(): never early, and
// exactly at an aligned deadline.
//
// A slot keeps its entries' indexes in blocks of one cache line, not in a
// list threaded through the entries: collecting a slot then reads its
// indexes in order and prefetches the entries a block ahead, where a list
// walk waited on one cache miss per entry (the daemon's largest user-space
// cost at 100 000 peers). A cancel leaves a hole in its block; the next
// collection of that slot closes it.
//
// Not thread-safe. No allocation after the entry and block pools have grown
// to their high-water marks. An entry is 24 bytes and its place in a block
// 4 more (the daemon keeps one entry per peer); its payload is a 32-bit tag,
// such as the index of the caller's record.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "core/clock.hpp"

namespace keepalive {

class TimerWheel {
public:
    // Identifies one scheduled entry. Carries a generation, so a handle whose
    // entry has fired or been cancelled is stale, even once its index is
    // reused: cancel() on it is a no-op and pending() is false.
    // (Generations are 32-bit: a stale handle is recognised until its index
    // has been reused 2^32 times.)
    struct Handle {
        std::uint32_t index = UINT32_MAX;
        std::uint32_t generation = 0;
        bool valid() const { return index != UINT32_MAX; }
    };

    // `tick` is the slot width and must be positive; `slots` must be a power of
    // two, at most 2^30. `start` is the wheel's initial current time. Throws
    // std::invalid_argument on bad parameters.
    explicit TimerWheel(TimePoint start, Duration tick = std::chrono::milliseconds(1),
                        std::size_t slots = 4096);

    TimerWheel(const TimerWheel&) = delete;
    TimerWheel& operator=(const TimerWheel&) = delete;
    // A moved-from wheel may only be destroyed or assigned to.
    TimerWheel(TimerWheel&&) = default;
    TimerWheel& operator=(TimerWheel&&) = default;

    // Adds an entry firing at `deadline`. Any deadline is accepted: one at or
    // before the wheel's current time (the latest `now` given to advance(), or
    // `start`) fires on the next advance(). Throws std::length_error if 2^31
    // entries are already pending, and std::bad_alloc when the pool cannot grow.
    Handle schedule(TimePoint deadline, std::uint32_t payload);
    // Room for `n` pending entries: up to that many, schedule() and advance()
    // allocate nothing but the blocks of slots fuller than ever before.
    void reserve(std::size_t n) {
        entries_.reserve(n);
        due_.reserve(n);
        blocks_.reserve(n / kBlockIds + slots_.size());
    }

    // Removes a pending entry, also one due but not yet fired by an advance()
    // currently running. Returns false (and does nothing) if `h` is invalid or
    // stale.
    bool cancel(Handle h);

    bool pending(Handle h) const;
    // The exact deadline of a pending entry; nullopt if `h` is invalid or stale.
    std::optional<TimePoint> deadline(Handle h) const;

    // Fires every entry whose deadline <= now by calling fn(payload, deadline)
    // (payload is std::uint32_t, deadline a TimePoint), in deadline order, ties
    // in schedule order. The entry is no longer pending when fn runs.
    // fn may schedule and cancel freely, including cancelling entries that are
    // due but not yet fired in this call (they then do not fire). Entries
    // scheduled from inside fn are not fired by the same call even when already
    // due; next_wakeup() then reports a time <= now.
    // `now` earlier than a previous advance() fires only what is due at `now`;
    // the wheel's current time never moves backwards.
    // If fn throws, the entries not yet fired stay pending and the exception
    // propagates; the next advance() fires them in their order among what is
    // due by then. Calling advance() from inside fn is a programming error: it
    // throws std::logic_error and leaves the running advance() intact.
    // Cost: O(ticks crossed, at most `slots`) + O(entries in the visited slots)
    // + O(k log k) for k fired entries.
    template <typename Fn>
    void advance(TimePoint now, Fn&& fn) {
        advance(now, std::forward<Fn>(fn), [](std::uint64_t) {});
    }
    // The same, and ahead(payload) sees each entry about to fire a few entries
    // before fn does (a hint, e.g. to prefetch what fn will read; the entry
    // may still be cancelled before its turn). ahead must not touch the wheel.
    // At most `limit` entries fire; the rest of those due stay pending, ahead
    // of anything scheduled since, and the next advance() fires them first
    // (up to its own limit, collecting nothing new meanwhile: O(limit) a call
    // however long the backlog). Returns true when it stopped at `limit`, or
    // fired such leftovers only and more is due by `now`: call again.
    template <typename Fn, typename Ahead>
    bool advance(TimePoint now, Fn&& fn, Ahead&& ahead,
                 std::size_t limit = std::numeric_limits<std::size_t>::max());

    // The earliest time at which advance() has something to do, or nullopt when
    // nothing is pending. Normally the earliest deadline rounded up to a tick
    // boundary (so an aligned deadline is reported exactly, and entries within
    // one tick share a wake-up). A deadline at or before the current time is
    // reported as is (<= the current time).
    // Cheap: finds the next occupied slot through an occupancy bitmap and
    // looks only at that slot's entries. When that slot holds only entries of
    // later revolutions, the end of the slot's tick is reported instead: a
    // spurious wake-up at which advance() fires nothing, at most once per
    // revolution (slots * tick) per occupied slot until the entry is due.
    // Cost: O(slots / 64) bitmap words + O(entries in that slot).
    std::optional<TimePoint> next_wakeup() const;

    // Pending entries, including due ones a running advance() has not fired yet.
    std::size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

    // The latest `now` given to advance() (initially `start`).
    TimePoint now() const { return now_; }
    Duration tick() const { return Duration(tick_ns_); }
    std::size_t slots() const { return slots_.size(); }

private:
    static constexpr std::uint32_t nil = UINT32_MAX;

    // An entry is 24 bytes (one per peer). `slot` says where it is and what
    // state it is in: a slot number while it waits in that slot, kFree on the
    // free list, kDue once taken out by advance().
    static constexpr std::uint32_t kFree = UINT32_MAX;
    static constexpr std::uint32_t kDue = UINT32_MAX - 1;

    // No schedule order is stored: entries of one deadline are always in one
    // slot, appended in schedule order (see collect_due).
    struct Entry {
        TimePoint deadline;
        std::uint32_t payload = 0;
        std::uint32_t generation = 0;
        std::uint32_t slot = kFree;
        std::uint32_t place = nil;  // in a slot: block * 16 + position; free: the next free entry
        bool free() const { return slot == kFree; }
        bool due() const { return slot == kDue; }
        bool waiting() const { return !free() && !due(); }
    };
    static_assert(sizeof(Entry) == 24);

    // One cache line of a slot's entry indexes, in schedule order; nil marks
    // a cancelled one. A free block is on the free list through `next`.
    static constexpr std::uint32_t kBlockIds = 14;
    struct Block {
        std::uint32_t next = nil;  // the slot's next block
        std::uint32_t used = 0;    // ids[0, used) are filled (holes included)
        std::uint32_t ids[kBlockIds];
    };
    static_assert(sizeof(Block) == 64);
    // An entry's place: its block and its position there (below 16).
    static std::uint32_t place_of(std::uint32_t block, std::uint32_t pos) {
        return block << 4 | pos;
    }
    static std::uint32_t block_of(std::uint32_t place) { return place >> 4; }
    static std::uint32_t pos_of(std::uint32_t place) { return place & 15; }

    struct Slot {
        std::uint32_t head = nil;  // first block, or nil when the slot holds nothing
        std::uint32_t tail = nil;  // last block, the one appended to
        std::uint32_t live = 0;    // entries waiting here (holes not counted)
    };

    // An entry collected by advance(): 8 bytes, as a backlog may collect
    // every pending entry at once and the scratch keeps its high-water pages.
    // The deadline and payload are read from the entry. No generation is
    // needed: an entry is `due` only while its one Due waits in due_ (an
    // entry due is in no slot, so it is not collected again, and leftovers
    // cancelled since are dropped before collecting), so a cancelled entry,
    // reused or not, is never taken for it. `order` is its
    // place in collection order, which breaks deadline ties.
    struct Due {
        std::uint32_t index;
        std::uint32_t order;
    };
    static_assert(sizeof(Due) == 8);

    // Ends an advance() even when fn throws.
    struct AdvanceScope {
        TimerWheel& wheel;
        ~AdvanceScope() { wheel.end_advance(); }
    };

    std::int64_t tick_of(TimePoint t) const;
    TimePoint tick_start(std::int64_t tick, std::uint64_t plus = 0) const;  // of tick + plus
    std::size_t slot_of_tick(std::int64_t tick) const {
        return static_cast<std::size_t>(static_cast<std::uint64_t>(tick) & mask_);
    }
    bool live(Handle h) const;
    std::size_t next_occupied(std::size_t from) const;
    std::uint32_t new_block();
    void append(std::uint32_t index, std::size_t slot);
    void remove(std::uint32_t index);
    void free_blocks(std::uint32_t first, std::uint32_t last);
    void empty_slot(std::size_t slot);
    void release(std::uint32_t index);

    bool begin_advance();  // true when leftovers of a limited advance() wait in due_
    void collect_due(TimePoint now);
    void collect_slot(std::size_t slot, TimePoint now);
    void sort_due();
    bool take_due(std::uint32_t index);
    void end_advance() noexcept;

    std::vector<Entry> entries_;
    std::vector<Block> blocks_;
    std::vector<Slot> slots_;
    std::vector<std::uint64_t> occupied_;  // bit per slot: it holds a waiting entry
    std::vector<Due> due_;                 // scratch for advance(), kept for its capacity
    std::size_t fire_pos_ = 0;             // next Due to fire in a running advance()
    std::int64_t tick_ns_;
    std::uint64_t mask_;
    TimePoint now_;
    std::int64_t cur_tick_;  // tick_of(now_)
    std::uint32_t free_head_ = nil;
    std::uint32_t free_block_ = nil;
    std::size_t size_ = 0;
    bool advancing_ = false;
    bool limit_leftovers_ = false;  // due_ holds what a limited advance() left
};

template <typename Fn, typename Ahead>
bool TimerWheel::advance(TimePoint now, Fn&& fn, Ahead&& ahead, std::size_t limit) {
    // Far enough for a cache miss to be served meanwhile, near enough to
    // stay in cache until its turn.
    constexpr std::size_t look_ahead = 8;
    // Leftovers of a limited advance() come first; only then is more collected.
    const bool carried = begin_advance();
    AdvanceScope scope{*this};
    if (!carried) collect_due(now);
    for (std::size_t i = fire_pos_; i < fire_pos_ + look_ahead && i < due_.size(); ++i)
        ahead(entries_[due_[i].index].payload);
    std::size_t fired = 0;
    while (fire_pos_ < due_.size()) {
        if (fired == limit) {
            limit_leftovers_ = true;  // end_advance() keeps the rest for the next call
            return true;
        }
        if (fire_pos_ + look_ahead < due_.size())
            ahead(entries_[due_[fire_pos_ + look_ahead].index].payload);
        const std::uint32_t index = due_[fire_pos_].index;
        // Read before fn runs: fn may reuse the released entry.
        const std::uint32_t payload = entries_[index].payload;
        const TimePoint deadline = entries_[index].deadline;
        // Left by an earlier call whose `now` was later than this one's:
        // what is not due at this `now` waits (due_ is in deadline order).
        if (entries_[index].due() && deadline > now) break;
        ++fire_pos_;
        if (take_due(index)) {
            ++fired;
            fn(payload, deadline);
        }
    }
    if (!carried) return false;
    const auto next = next_wakeup();  // the leftovers are done: is more due already?
    return next && *next <= now;
}

}  // namespace keepalive
