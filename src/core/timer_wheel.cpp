#include "core/timer_wheel.hpp"

#include <algorithm>
#include <bit>
#include <limits>
#include <stdexcept>
#include <utility>

#include "core/prefetch.hpp"

namespace keepalive {

namespace {

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
    const std::int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

}  // namespace

TimerWheel::TimerWheel(TimePoint start, Duration tick, std::size_t slots)
    : tick_ns_(tick.count()), mask_(slots - 1), now_(start) {
    if (tick_ns_ <= 0) {
        throw std::invalid_argument("TimerWheel: tick must be positive");
    }
    if (!std::has_single_bit(slots) || slots > (std::size_t{1} << 30)) {
        throw std::invalid_argument("TimerWheel: slots must be a power of two <= 2^30");
    }
    slots_.resize(slots);
    occupied_.resize((slots + 63) / 64);
    cur_tick_ = tick_of(start);
}

std::int64_t TimerWheel::tick_of(TimePoint t) const {
    return floor_div(t.time_since_epoch().count(), tick_ns_);
}

TimePoint TimerWheel::tick_start(std::int64_t tick, std::uint64_t plus) const {
    // Saturates: only reachable within a tick of TimePoint's limits.
    constexpr auto int64_max = std::numeric_limits<std::int64_t>::max();
    std::int64_t t = 0;
    std::int64_t ns = 0;
    if (plus > static_cast<std::uint64_t>(int64_max) ||
        __builtin_add_overflow(tick, static_cast<std::int64_t>(plus), &t)) {
        return TimePoint::max();
    }
    if (__builtin_mul_overflow(t, tick_ns_, &ns)) {
        return t < 0 ? TimePoint::min() : TimePoint::max();
    }
    return TimePoint(Duration(ns));
}

bool TimerWheel::live(Handle h) const {
    return h.index < entries_.size() && entries_[h.index].generation == h.generation &&
           !entries_[h.index].free();
}

bool TimerWheel::pending(Handle h) const {
    return live(h);
}

std::optional<TimePoint> TimerWheel::deadline(Handle h) const {
    if (!live(h)) {
        return std::nullopt;
    }
    return entries_[h.index].deadline;
}

std::uint32_t TimerWheel::new_block() {
    std::uint32_t b = free_block_;
    if (b != nil) {
        free_block_ = blocks_[b].next;
    } else {
        if (blocks_.size() >= (std::size_t{1} << 28)) {
            throw std::length_error("TimerWheel: too many blocks");
        }
        b = static_cast<std::uint32_t>(blocks_.size());
        blocks_.emplace_back();
    }
    blocks_[b].next = nil;
    blocks_[b].used = 0;
    return b;
}

// May throw (a new block) before it changes anything.
void TimerWheel::append(std::uint32_t index, std::size_t slot) {
    Slot& s = slots_[slot];
    if (s.tail == nil || blocks_[s.tail].used == kBlockIds) {
        const std::uint32_t b = new_block();
        if (s.tail == nil) {
            s.head = b;
        } else {
            blocks_[s.tail].next = b;
        }
        s.tail = b;
    }
    Block& block = blocks_[s.tail];
    const std::uint32_t pos = block.used++;
    block.ids[pos] = index;
    entries_[index].slot = static_cast<std::uint32_t>(slot);
    entries_[index].place = place_of(s.tail, pos);
    if (s.live++ == 0) {
        occupied_[slot >> 6] |= std::uint64_t{1} << (slot & 63);
    }
}

// Puts the chain of blocks first .. last on the free list.
void TimerWheel::free_blocks(std::uint32_t first, std::uint32_t last) {
    blocks_[last].next = free_block_;
    free_block_ = first;
}

// Gives all of a slot's blocks back; it holds nothing waiting.
void TimerWheel::empty_slot(std::size_t slot) {
    Slot& s = slots_[slot];
    free_blocks(s.head, s.tail);
    s = Slot{};
    occupied_[slot >> 6] &= ~(std::uint64_t{1} << (slot & 63));
}

// Takes a waiting entry out of its slot, leaving a hole in its block.
void TimerWheel::remove(std::uint32_t index) {
    Entry& e = entries_[index];
    blocks_[block_of(e.place)].ids[pos_of(e.place)] = nil;
    if (--slots_[e.slot].live == 0) {
        empty_slot(e.slot);
    }
    e.slot = kDue;  // the caller releases it, or it is due
}

void TimerWheel::release(std::uint32_t index) {
    Entry& e = entries_[index];
    ++e.generation;
    e.slot = kFree;
    e.place = free_head_;
    free_head_ = index;
    --size_;
}

TimerWheel::Handle TimerWheel::schedule(TimePoint deadline, std::uint32_t payload) {
    const bool reused = free_head_ != nil;
    const std::uint32_t index = reused ? free_head_ : static_cast<std::uint32_t>(entries_.size());
    if (!reused) {
        if (entries_.size() >= (std::size_t{1} << 31)) {
            throw std::length_error("TimerWheel: too many pending entries");
        }
        entries_.emplace_back();  // free, but on no list: harmless if append() throws
    }
    const std::uint32_t next_free = entries_[index].place;
    // A deadline in an already passed tick goes into the current slot: the
    // next advance() visits it first and fires it since deadline <= now.
    append(index, slot_of_tick(std::max(tick_of(deadline), cur_tick_)));
    if (reused) free_head_ = next_free;
    Entry& e = entries_[index];
    e.deadline = deadline;
    e.payload = payload;
    ++size_;
    return Handle{index, e.generation};
}

bool TimerWheel::cancel(Handle h) {
    if (!live(h)) {
        return false;
    }
    // A due entry is out of its slot; releasing it bumps its generation, so the
    // running advance() skips it.
    if (entries_[h.index].waiting()) {
        remove(h.index);
    }
    release(h.index);
    return true;
}

std::size_t TimerWheel::next_occupied(std::size_t from) const {
    const std::size_t words = occupied_.size();
    std::size_t w = from >> 6;
    std::uint64_t bits = occupied_[w] & (~std::uint64_t{0} << (from & 63));
    // words + 1 rounds: the last one re-reads the first word for the slots
    // below `from`.
    for (std::size_t i = 0; i <= words; ++i) {
        if (bits != 0) {
            const std::size_t slot = (w << 6) + static_cast<std::size_t>(std::countr_zero(bits));
            return (slot - from) & mask_;
        }
        w = (w + 1 == words) ? 0 : w + 1;
        bits = occupied_[w];
    }
    return slots_.size();
}

std::optional<TimePoint> TimerWheel::next_wakeup() const {
    std::optional<TimePoint> best;
    // Due entries not fired yet (inside fn, or left by a limited advance()):
    // due now. due_ is sorted, so the first still-live one is the earliest.
    for (std::size_t i = fire_pos_; i < due_.size(); ++i) {
        const Entry& e = entries_[due_[i].index];
        if (e.due()) {
            best = e.deadline;
            break;
        }
    }

    const std::size_t from = slot_of_tick(cur_tick_);
    const std::size_t dist = next_occupied(from);
    if (dist == slots_.size()) {
        return best;
    }
    // In a slot ahead of the cursor no entry is due before the start of that
    // slot's tick (overdue entries sit in the cursor's own slot), so one due
    // right then is the earliest and the walk stops there. Probe deadlines
    // are whole ticks, and a slot is in schedule order, so that is usually
    // its first entry rather than the whole slot.
    const TimePoint lowest = dist > 0 ? tick_start(cur_tick_, dist) : TimePoint::min();
    TimePoint earliest = TimePoint::max();
    for (std::uint32_t b = slots_[(from + dist) & mask_].head; b != nil && earliest != lowest;
         b = blocks_[b].next) {
        const Block& block = blocks_[b];
        for (std::uint32_t k = 0; k < block.used && earliest != lowest; ++k) {
            if (block.ids[k] != nil) earliest = std::min(earliest, entries_[block.ids[k]].deadline);
        }
    }

    TimePoint wake;
    if (earliest <= now_) {
        wake = earliest;
    } else {
        // earliest > now_, so t >= cur_tick_.
        const std::int64_t t = tick_of(earliest);
        if (static_cast<std::uint64_t>(t) - static_cast<std::uint64_t>(cur_tick_) > dist) {
            // Only later revolutions in this slot: wake when the cursor has
            // passed it, then look again.
            wake = tick_start(cur_tick_, dist + 1);
        } else {
            wake = tick_start(t) == earliest ? earliest : tick_start(t, 1);
        }
    }
    return best ? std::min(*best, wake) : wake;
}

// Takes out what is due and closes the holes: what stays keeps its order,
// packed into the slot's first blocks, and the blocks left over are freed.
// The entries of the next block are prefetched while this one is read.
void TimerWheel::collect_slot(std::size_t slot, TimePoint now) {
    Slot& s = slots_[slot];
    // Room first, so that nothing is taken out when growing due_ throws.
    if (due_.capacity() - due_.size() < s.live) {
        due_.reserve(std::max(due_.size() + s.live, 2 * due_.capacity()));
    }
    const auto prefetch_entries = [this](std::uint32_t b) {
        if (b == nil) return;
        const Block& block = blocks_[b];
        for (std::uint32_t k = 0; k < block.used; ++k) {
            if (block.ids[k] != nil) prefetch_read(&entries_[block.ids[k]]);
        }
        if (block.next != nil) prefetch_read(&blocks_[block.next]);
    };
    prefetch_entries(s.head);
    std::uint32_t keep_block = s.head;  // where the next kept entry goes
    std::uint32_t keep_pos = 0;
    std::uint32_t kept = 0;
    for (std::uint32_t b = s.head; b != nil; b = blocks_[b].next) {
        prefetch_entries(blocks_[b].next);
        const Block& block = blocks_[b];
        for (std::uint32_t k = 0; k < block.used; ++k) {
            const std::uint32_t i = block.ids[k];
            if (i == nil) continue;  // cancelled
            Entry& e = entries_[i];
            if (e.deadline <= now) {
                e.slot = kDue;
                due_.push_back(Due{i, static_cast<std::uint32_t>(due_.size())});
                continue;
            }
            if (keep_pos == kBlockIds) {  // never passes b: kept <= read
                keep_block = blocks_[keep_block].next;
                keep_pos = 0;
            }
            blocks_[keep_block].ids[keep_pos] = i;
            e.place = place_of(keep_block, keep_pos++);
            ++kept;
        }
    }
    if (kept == 0) {
        empty_slot(slot);
        return;
    }
    Block& last = blocks_[keep_block];
    last.used = keep_pos;
    if (last.next != nil) {  // the blocks after it go back
        free_blocks(last.next, s.tail);
        last.next = nil;
    }
    s.tail = keep_block;
    s.live = kept;
}

bool TimerWheel::begin_advance() {
    // Checked before the caller's AdvanceScope exists, so a nested call
    // unwinds without touching the outer call's state.
    if (advancing_) {
        throw std::logic_error("TimerWheel::advance() called from inside its callback");
    }
    advancing_ = true;
    // What a limited advance() left fires alone; what a throw (or a `now`
    // earlier than their deadlines) left is sorted in among what is
    // collected now.
    const bool leftovers = fire_pos_ < due_.size();
    if (std::exchange(limit_leftovers_, false) && leftovers) return true;
    if (!leftovers) return false;
    // First out go the leftovers cancelled since: an index reused and
    // collected now must not be in due_ twice.
    const auto first = due_.begin() + static_cast<std::ptrdiff_t>(fire_pos_);
    due_.erase(std::remove_if(first, due_.end(),
                              [this](const Due& d) { return !entries_[d.index].due(); }),
               due_.end());
    return false;
}

void TimerWheel::collect_due(TimePoint now) {
    // `now` before now_ (a caller's clock read earlier than a previous one)
    // only fires what is due; the cursor stays.
    const std::int64_t new_tick = std::max(tick_of(now), cur_tick_);
    const std::uint64_t crossed =
        static_cast<std::uint64_t>(new_tick) - static_cast<std::uint64_t>(cur_tick_);
    const std::size_t visit =
        crossed >= slots_.size() ? slots_.size() : static_cast<std::size_t>(crossed) + 1;

    // Visit the slots of ticks cur_tick_..new_tick, each at most once; past a
    // whole revolution every slot is visited and the deadline compare picks
    // what is due.
    const std::size_t from = slot_of_tick(cur_tick_);
    std::size_t pos = 0;
    try {
        while (pos < visit) {
            const std::size_t dist = next_occupied((from + pos) & mask_);
            if (dist >= visit - pos) {
                break;
            }
            pos += dist;
            collect_slot((from + pos) & mask_, now);
            ++pos;
        }
    } catch (...) {
        sort_due();  // what was collected fires first, in order, next time
        throw;
    }
    sort_due();

    // Move the cursor before any callback runs, so entries scheduled from fn
    // land in the current slot and are not collected by this call.
    cur_tick_ = new_tick;
    now_ = std::max(now_, now);
}

// Entries of one deadline are in one slot, in schedule order: each was
// appended to the slot of its deadline's tick, or of the current tick if that
// had passed, and an advance() collects every entry due by then before the
// current tick moves again. So collection order breaks deadline ties as
// schedule order would. What a throw left unfired was collected earlier, so
// its ties stay ahead of anything collected since. Slots are usually
// collected in order already (one slot); sort only when needed.
void TimerWheel::sort_due() {
    const auto before = [this](const Due& a, const Due& b) {
        const TimePoint da = entries_[a.index].deadline;
        const TimePoint db = entries_[b.index].deadline;
        return da != db ? da < db : a.order < b.order;
    };
    const auto first = due_.begin() + static_cast<std::ptrdiff_t>(fire_pos_);
    if (!std::is_sorted(first, due_.end(), before)) {
        std::sort(first, due_.end(), before);
    }
}

bool TimerWheel::take_due(std::uint32_t index) {
    const Entry& e = entries_[index];
    if (!e.due()) {
        return false;  // cancelled by an earlier callback of this advance()
    }
    release(index);
    return true;
}

void TimerWheel::end_advance() noexcept {
    advancing_ = false;
    // Stopped at its limit, or fn threw: what did not fire stays in due_,
    // due (a cancel still works on it), and the next advance() fires it first.
    if (fire_pos_ < due_.size()) return;
    due_.clear();
    fire_pos_ = 0;
}

}  // namespace keepalive
