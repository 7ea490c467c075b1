#include "core/timer_wheel.hpp"

#include <algorithm>
#include <bit>
#include <limits>
#include <stdexcept>
#include <utility>

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

void TimerWheel::link(std::uint32_t index, std::size_t slot) {
    Entry& e = entries_[index];
    Slot& s = slots_[slot];
    const std::uint32_t end = kEnd | static_cast<std::uint32_t>(slot);
    e.next = end;
    if (s.tail == nil) {
        e.prev = end;
        s.head = index;
        occupied_[slot >> 6] |= std::uint64_t{1} << (slot & 63);
    } else {
        e.prev = s.tail;
        entries_[s.tail].next = index;
    }
    s.tail = index;
}

void TimerWheel::link_front(std::uint32_t index, std::size_t slot) {
    Entry& e = entries_[index];
    Slot& s = slots_[slot];
    const std::uint32_t end = kEnd | static_cast<std::uint32_t>(slot);
    e.prev = end;
    if (s.head == nil) {
        e.next = end;
        s.tail = index;
        occupied_[slot >> 6] |= std::uint64_t{1} << (slot & 63);
    } else {
        e.next = s.head;
        entries_[s.head].prev = index;
    }
    s.head = index;
}

void TimerWheel::unlink(std::uint32_t index) {
    Entry& e = entries_[index];
    const bool head = (e.prev & kEnd) != 0;
    const bool tail = (e.next & kEnd) != 0;
    // A neighbour takes over this entry's link, an end mark included.
    if (head) {
        slots_[e.prev & ~kEnd].head = tail ? nil : e.next;
    } else {
        entries_[e.prev].next = e.next;
    }
    if (tail) {
        slots_[e.next & ~kEnd].tail = head ? nil : e.prev;
    } else {
        entries_[e.next].prev = e.prev;
    }
    if (head && tail) {
        const std::uint32_t slot = e.prev & ~kEnd;
        occupied_[slot >> 6] &= ~(std::uint64_t{1} << (slot & 63));
    }
    e.next = nil;
    e.prev = kDue;  // the caller releases it, or it is due
}

void TimerWheel::release(std::uint32_t index) {
    Entry& e = entries_[index];
    ++e.generation;
    e.prev = kFree;
    e.next = free_head_;
    free_head_ = index;
    --size_;
}

TimerWheel::Handle TimerWheel::schedule(TimePoint deadline, std::uint32_t payload) {
    std::uint32_t index = free_head_;
    if (index != nil) {
        free_head_ = entries_[index].next;
    } else {
        if (entries_.size() >= kEnd) {
            throw std::length_error("TimerWheel: too many pending entries");
        }
        index = static_cast<std::uint32_t>(entries_.size());
        entries_.emplace_back();
    }
    Entry& e = entries_[index];
    e.deadline = deadline;
    e.payload = payload;
    // A deadline in an already passed tick goes into the current slot: the
    // next advance() visits it first and fires it since deadline <= now.
    link(index, slot_of_tick(std::max(tick_of(deadline), cur_tick_)));
    ++size_;
    return Handle{index, e.generation};
}

bool TimerWheel::cancel(Handle h) {
    if (!live(h)) {
        return false;
    }
    // A due entry is out of its slot; releasing it bumps its generation, so the
    // running advance() skips it.
    if (entries_[h.index].linked()) {
        unlink(h.index);
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
    // are whole ticks, and a slot's list is in schedule order, so that is
    // usually its first entry rather than the whole list.
    const TimePoint lowest = dist > 0 ? tick_start(cur_tick_, dist) : TimePoint::min();
    TimePoint earliest = TimePoint::max();
    for (std::uint32_t i = slots_[(from + dist) & mask_].head; (i & kEnd) == 0;
         i = entries_[i].next) {
        earliest = std::min(earliest, entries_[i].deadline);
        if (earliest == lowest) break;
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

void TimerWheel::collect_slot(std::size_t slot, TimePoint now) {
    std::uint32_t i = slots_[slot].head;
    while ((i & kEnd) == 0) {  // nil or the tail's end mark
        const std::uint32_t next = entries_[i].next;
        Entry& e = entries_[i];
        if (e.deadline <= now) {
            unlink(i);  // now due
            due_.push_back(Due{i, static_cast<std::uint32_t>(due_.size())});
        }
        i = next;
    }
}

bool TimerWheel::begin_advance() {
    // Checked before the caller's AdvanceScope exists, so a nested call
    // unwinds without touching the outer call's state.
    if (advancing_) {
        throw std::logic_error("TimerWheel::advance() called from inside its callback");
    }
    advancing_ = true;
    if (fire_pos_ < due_.size()) return true;
    fire_pos_ = 0;
    due_.clear();
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
    while (pos < visit) {
        const std::size_t dist = next_occupied((from + pos) & mask_);
        if (dist >= visit - pos) {
            break;
        }
        pos += dist;
        collect_slot((from + pos) & mask_, now);
        ++pos;
    }

    // Entries of one deadline are in one slot, in schedule order: each was
    // appended to the list of its deadline's tick, or of the current tick if
    // that had passed, and an advance() collects every entry due by then
    // before the current tick moves again (end_advance puts back what did not
    // fire ahead of anything scheduled since). So collection order breaks
    // deadline ties as schedule order would. Slots are usually collected in
    // order already (one slot); sort only when needed.
    const auto before = [this](const Due& a, const Due& b) {
        const TimePoint da = entries_[a.index].deadline;
        const TimePoint db = entries_[b.index].deadline;
        return da != db ? da < db : a.order < b.order;
    };
    if (!std::is_sorted(due_.begin(), due_.end(), before)) {
        std::sort(due_.begin(), due_.end(), before);
    }

    // Move the cursor before any callback runs, so entries scheduled from fn
    // land in the current slot and are not collected by this call.
    cur_tick_ = new_tick;
    now_ = std::max(now_, now);
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
    // Stopped at its limit: what did not fire stays in due_, due (a cancel
    // still works on it), and the next advance() fires it first.
    if (std::exchange(stopped_at_limit_, false)) return;
    // Non-empty when fn (or collecting) threw: put back what did not fire.
    // They are due, so the current slot is where the next advance() looks
    // first; at its front, in firing order, so that they stay ahead of the
    // entries fn scheduled (later ones, maybe with the same deadline).
    for (std::size_t i = due_.size(); i > fire_pos_; --i) {
        const std::uint32_t index = due_[i - 1].index;
        if (entries_[index].due()) {
            link_front(index, slot_of_tick(cur_tick_));
        }
    }
    due_.clear();
    fire_pos_ = 0;
}

}  // namespace keepalive
