// Where log records go without ever blocking the event loop. A record is
// handed to the journal socket or to stderr at once if they take it; if not
// (journald stopped or slow, a full pipe), it waits in a bounded queue that
// flush() retries, and past the bound it is dropped and counted. When the
// queue drains after drops, one record says how many were lost.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "net/unique_fd.hpp"

namespace keepalive {

// One journal entry in journald's native protocol: "NAME=value\n" per field,
// or NAME, '\n', a 64-bit little-endian length and the bytes, for a value
// holding a newline.
std::string journal_datagram(const std::vector<std::pair<std::string_view, std::string>>& fields);

class LogWriter {
public:
    static constexpr std::size_t kMaxQueued = 10'000;
    static constexpr std::size_t kMaxQueuedBytes = 8 << 20;

    enum class Kind { journal, stderr_ };
    // For the journal, connects to journald's socket (again later if it is
    // not there yet). `journal_socket` is for tests.
    explicit LogWriter(Kind kind, std::string journal_socket = "/run/systemd/journal/socket");
    // Waits up to a second for what is still queued: the last words of a
    // stopping daemon are worth that much.
    ~LogWriter();
    LogWriter(const LogWriter&) = delete;
    LogWriter& operator=(const LogWriter&) = delete;

    // A journal datagram, or a stderr line with its newline.
    void write(std::string record);
    // Hands queued records over while the destination takes them.
    void flush();
    bool pending() const { return !queue_.empty(); }
    std::uint64_t dropped_total() const { return dropped_total_; }

    // How a record went: taken, try again later, or never (drop it).
    enum class Outcome { sent, retry, failed };

private:
    Outcome send(const std::string& record);
    void connect_journal();

    Kind kind_;
    std::string journal_path_;
    UniqueFd journal_;
    bool stderr_is_socket_ = false;
    std::deque<std::string> queue_;
    std::size_t queued_bytes_ = 0;
    std::uint64_t dropped_ = 0;  // since the queue last drained
    std::uint64_t dropped_total_ = 0;
};

}  // namespace keepalive
