#include "core/peer_table.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace keepalive {

std::string_view to_string(PeerState s) {
    switch (s) {
        case PeerState::up:
            return "up";
        case PeerState::suspect:
            return "suspect";
        case PeerState::down:
            return "down";
        case PeerState::left:
            return "left";
        case PeerState::degraded:
            return "degraded";
    }
    return "?";
}

std::string_view to_string(Protocol p) {
    switch (p) {
        case Protocol::kap1:
            return "kap1";
        case Protocol::legacy:
            return "legacy";
        case Protocol::tcp:
            return "tcp";
    }
    return "?";
}

std::string_view to_string(EventKind k) {
    switch (k) {
        case EventKind::registered:
            return "registered";
        case EventKind::up:
            return "up";
        case EventKind::suspect:
            return "suspect";
        case EventKind::down:
            return "down";
        case EventKind::left:
            return "left";
        case EventKind::restarted:
            return "restarted";
        case EventKind::moved:
            return "moved";
        case EventKind::forgotten:
            return "forgotten";
        case EventKind::degraded:
            return "degraded";
        case EventKind::damped:
            return "damped";
    }
    return "?";
}

PeerName PeerNameBuffer::assign(std::string_view name) {
    if (name.size() >= bytes_.size()) throw std::length_error("peer name longer than 255 bytes");
    bytes_[0] = static_cast<char>(name.size());
    std::copy(name.begin(), name.end(), bytes_.begin() + 1);
    return this->name();
}

bool valid_peer_name(std::string_view name) {
    if (name.empty() || name.size() > 64) return false;
    for (const char c : name) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == ':' ||
                        c == '@';
        if (!ok) return false;
    }
    return true;
}

namespace {

Address host_of(Address a) {
    a.set_port(0);
    return a;
}

}  // namespace

void PeerTable::reserve(std::size_t n) {
    slots_.reserve(n);
    used_.reserve(n);
    free_.reserve(n);
    by_session_.reserve(n);
    by_name_.reserve(n);
    per_host_.reserve(n);
}

std::size_t PeerTable::capacity() const {
    return std::min({slots_.capacity(), free_.capacity(), by_session_.capacity() * 4 / 5,
                     by_name_.capacity() * 4 / 5});
}

PeerTable::Slot PeerTable::insert(Peer peer) {
    // Whatever may allocate comes first, and is undone if a later part throws;
    // from the first change of a slot or an index on, nothing throws, so the
    // indexes and counts cannot get out of step.
    std::string_view name = peer.name;
    std::string moved_name;  // only if the arena is rebuilt while `name` points into it
    const Route* route = nullptr;
    const auto [host, new_host] = per_host_.try_emplace(host_of(peer.address), 0);
    try {
        by_session_.reserve(counts_.total + 1);
        by_name_.reserve(counts_.total + 1);
        if (free_.empty()) {
            // free_ must hold every slot, so that erase() never allocates.
            free_.reserve(slots_.size() + 1);
            slots_.emplace_back();
            used_.push_back(false);
            free_.push_back(static_cast<Slot>(slots_.size() - 1));
        }
        if (peer.route) route = intern_route(*peer.route);
        if (names_.size() + 1 + name.size() > names_.capacity()) {
            moved_name.assign(name);
            rebuild_names(name.size());
            name = moved_name;
        }
    } catch (...) {
        if (new_host) per_host_.erase(host);
        throw;
    }
    const Slot slot = free_.back();
    free_.pop_back();
    Peer& p = slots_[slot];
    p = std::move(peer);
    p.route = route;
    append_name(slot, name);  // fits: made room above
    used_[slot] = true;
    index_session(slot);
    index_name(slot);
    ++host->second;
    ++counts_.total;
    ++counts_.by_state[static_cast<std::size_t>(p.state)];
    return slot;
}

void PeerTable::erase(Slot slot) {
    Peer& p = slots_[slot];
    unindex_session(p.session);
    unindex_name(p.name);
    if (const auto it = per_host_.find(host_of(p.address));
        it != per_host_.end() && --it->second == 0)
        per_host_.erase(it);
    --counts_.total;
    --counts_.by_state[static_cast<std::size_t>(p.state)];
    live_name_bytes_ -= 1 + p.name.size();
    p = Peer{};  // release what its boxes hold now
    used_[slot] = false;
    free_.push_back(slot);
}

const Route* PeerTable::intern_route(const Route& route) {
    // Few: one per socket and local address. The latest is the likeliest.
    for (auto it = routes_.rbegin(); it != routes_.rend(); ++it)
        if (*it == route) return &*it;
    return &routes_.emplace_back(route);
}

void PeerTable::append_name(Slot slot, std::string_view name) {
    const std::size_t at = names_.size();
    names_.push_back(static_cast<char>(name.size()));
    names_.insert(names_.end(), name.begin(), name.end());
    slots_[slot].name = PeerName(names_.data() + at);
    live_name_bytes_ += 1 + name.size();
}

void PeerTable::rebuild_names(std::size_t room) {
    std::vector<char> fresh;
    fresh.reserve(std::max<std::size_t>(4096, 2 * (live_name_bytes_ + 1 + room)));
    for (Slot s = 0; s < slots_.size(); ++s) {
        if (!used_[s]) continue;
        Peer& p = slots_[s];
        const std::size_t at = fresh.size();
        fresh.insert(fresh.end(), p.name.counted(), p.name.end());
        p.name = PeerName(fresh.data() + at);
    }
    names_ = std::move(fresh);
}

PeerTable::Slot PeerTable::find_session(std::uint32_t session) const {
    return by_session_.find(SlotIndex::hash_u32(session),
                            [&](Slot s) { return slots_[s].session == session; });
}

PeerTable::Slot PeerTable::find_name(std::string_view name) const {
    return by_name_.find(SlotIndex::hash_bytes(name),
                         [&](Slot s) { return slots_[s].name == name; });
}

// As a map's emplace: a key already indexed keeps its slot.
void PeerTable::index_session(Slot slot) {
    const std::uint32_t session = slots_[slot].session;
    if (find_session(session) == kNone) by_session_.insert(SlotIndex::hash_u32(session), slot);
}

void PeerTable::unindex_session(std::uint32_t session) {
    by_session_.erase(SlotIndex::hash_u32(session),
                      [&](Slot s) { return slots_[s].session == session; });
}

void PeerTable::index_name(Slot slot) {
    const std::string_view name = slots_[slot].name;
    if (find_name(name) == kNone) by_name_.insert(SlotIndex::hash_bytes(name), slot);
}

void PeerTable::unindex_name(std::string_view name) {
    by_name_.erase(SlotIndex::hash_bytes(name), [&](Slot s) { return slots_[s].name == name; });
}

void PeerTable::set_state(Slot slot, PeerState state, TimePoint now) {
    Peer& p = slots_[slot];
    if (p.state == state) return;
    --counts_.by_state[static_cast<std::size_t>(p.state)];
    ++counts_.by_state[static_cast<std::size_t>(state)];
    p.state = state;
    p.since = now;
    ++p.state_changes;
}

void PeerTable::set_session(Slot slot, std::uint32_t session) {
    Peer& p = slots_[slot];
    unindex_session(p.session);
    p.session = session;
    index_session(slot);
}

void PeerTable::set_address(Slot slot, const Address& address) {
    Peer& p = slots_[slot];
    if (!p.address.same_host(address)) {
        // The new host's entry first: if it cannot be made, nothing changed.
        ++per_host_[host_of(address)];
        if (const auto it = per_host_.find(host_of(p.address));
            it != per_host_.end() && --it->second == 0)
            per_host_.erase(it);
    }
    p.address = address;
}

std::size_t PeerTable::on_host(const Address& host) const {
    const auto it = per_host_.find(host_of(host));
    return it == per_host_.end() ? 0 : it->second;
}

}  // namespace keepalive
