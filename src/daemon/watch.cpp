#include "daemon/watch.hpp"

namespace keepalive {

std::optional<ControlServer::Producer> Watchers::open(std::optional<std::uint64_t> since) {
    if (*count_ >= kMaxWatchers) return std::nullopt;
    // Counts the stream for as long as the control server keeps its producer.
    struct Slot {
        std::shared_ptr<std::size_t> count;
        explicit Slot(std::shared_ptr<std::size_t> c) : count(std::move(c)) { ++*count; }
        ~Slot() { --*count; }
        Slot(const Slot&) = delete;
        Slot& operator=(const Slot&) = delete;
    };
    auto slot = std::make_shared<Slot>(count_);
    const std::uint64_t first = since ? *since + 1 : ring_.next_seq();
    return [this, slot, next = first](std::string& out) mutable {
        if (next < ring_.oldest_seq()) {
            const std::uint64_t missed = ring_.oldest_seq() - next;
            out += nlohmann::json{{"missed", missed},
                                  {"first_missed_seq", next},
                                  {"last_missed_seq", ring_.oldest_seq() - 1}}
                       .dump() +
                   "\n";
            next = ring_.oldest_seq();
        }
        for (std::size_t n = 0; n < kEventsPerPiece && next < ring_.next_seq(); ++n, ++next)
            out += ring_.find(next)->to_json().dump(-1, ' ', false,
                                                    nlohmann::json::error_handler_t::replace) +
                   "\n";
        return true;  // a stream ends only when its reader hangs up
    };
}

}  // namespace keepalive
