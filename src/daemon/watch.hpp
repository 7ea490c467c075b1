// `keepalivectl watch`: the event ring streamed over the control socket as
// JSON lines, in seq order and without gaps. A reader that falls so far
// behind that the ring has dropped events it has not read gets a line
// saying how many it missed, then the stream goes on from the oldest held.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "daemon/control.hpp"
#include "daemon/event_ring.hpp"

namespace keepalive {

class Watchers {
public:
    // Readers at once; the control server's other slots stay for queries.
    static constexpr std::size_t kMaxWatchers = 16;
    static constexpr std::size_t kEventsPerPiece = 256;

    explicit Watchers(const EventRing& ring) : ring_(ring) {}

    // A stream of events after `since` (a seq the reader has seen), or from
    // the next event on. Nullopt when kMaxWatchers are already watching.
    std::optional<ControlServer::Producer> open(std::optional<std::uint64_t> since);
    std::size_t count() const { return *count_; }

private:
    const EventRing& ring_;
    std::shared_ptr<std::size_t> count_ = std::make_shared<std::size_t>(0);
};

}  // namespace keepalive
