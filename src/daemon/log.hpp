// Where the daemon's words go: the journal with structured fields, or stderr
// as readable lines with <N> priority prefixes (which journald also parses
// when stderr is a stream to it).
#pragma once

#include <fmt/format.h>
#include <syslog.h>

#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"
#include "core/peer.hpp"
#include "daemon/event_text.hpp"
#include "daemon/log_writer.hpp"

namespace keepalive {

enum class LogTarget { automatic, journal, stderr_ };
std::optional<LogTarget> parse_log_target(std::string_view text);
// automatic: the journal when JOURNAL_STREAM names our stderr, as under systemd.
LogTarget resolve_log_target(LogTarget requested);

// The fixed MESSAGE_ID of each event kind (documented in the journal catalog).
std::string_view message_id(EventKind kind);
// The PRIORITY of a peer event: down is a warning, suspect a notice, the rest info.
int event_priority(EventKind kind);

class Logger {
public:
    explicit Logger(LogTarget target);

    void log(int priority, std::string_view message);
    template <typename... Args>
    void logf(int priority, fmt::format_string<Args...> format, Args&&... args) {
        log(priority, fmt::format(format, std::forward<Args>(args)...));
    }
    // At most one line per `period` for a given key; the rest are counted and
    // the count reported with the next line that gets through.
    void log_limited(std::string_view key, int priority, std::string_view message, TimePoint now);

    void peer_event(const PeerEvent& event);

    LogTarget target() const { return target_; }
    // Lines log_limited() has suppressed since start.
    std::uint64_t suppressed() const { return suppressed_; }

    // Writing never blocks: what the destination cannot take now waits in a
    // bounded queue. Call flush() again (e.g. each loop iteration) while
    // pending(); records dropped because the queue was full are counted.
    void flush() { writer_.flush(); }
    bool pending() const { return writer_.pending(); }
    std::uint64_t dropped_total() const { return writer_.dropped_total(); }

private:
    LogTarget target_;
    LogWriter writer_;
    struct Limiter {
        std::string key;
        TimePoint last{};
        unsigned suppressed = 0;
    };
    std::vector<Limiter> limiters_;
    std::uint64_t suppressed_ = 0;
};

}  // namespace keepalive
